package shared

import (
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/kmsfs/kmsfs/backend/shared/meta"
)

// Early uploads. A commit (close, fsync) of a small new file costs one PUT
// and one statement, one after the other. But the programs that write
// trees change a file's attributes after its data and before its close:
// cp -a sets the times and the ACL (the mode) through the open descriptor,
// rsync the times and mode of its temporary file before renaming it, tar
// the same. When such a change reaches a file with staged data, its dirty
// chunks start uploading at once, in parallel with the change's own round
// trip to the database, and the commit at close uses them if the data has
// not changed since (else they are deleted and the commit uploads afresh).
// Nothing is committed early: what other mounts see is unchanged.

// maxEarlyChunks bounds what a file uploads early: the dirty chunks of a
// small file, not the staged gigabytes of a large one (whose commit
// uploads them in parallel anyway).
const maxEarlyChunks = uploadConcurrency

// earlyBatch is the early upload of one file's dirty chunks as of one
// data version.
type earlyBatch struct {
	wver   uint64 // openFile.wver when the data was taken
	gen    int64  // openFile.gen then: the chunk headers name gen+1
	chunks map[int64]meta.Chunk
	done   chan struct{}
	err    error // the first upload error; set before done is closed
}

// startEarly starts uploading f's dirty chunks, unless they are already
// going up as they are now.
func (f *openFile) startEarly() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.dirty) == 0 || len(f.dirty) > maxEarlyChunks || f.staging == nil {
		return
	}
	if e := f.early; e != nil {
		if e.wver == f.wver && e.gen == f.gen {
			return
		}
		f.early = nil
		go f.b.discardEarly(e)
	}
	cs, rs, vid := f.b.chunkGeometry()
	dataEnd, keep := f.extent(cs)
	region := make([]byte, min(int64(rs), f.size))
	if f.readLocked(region, 0) != nil {
		return // the commit will say why
	}
	e := &earlyBatch{wver: f.wver, gen: f.gen, chunks: map[int64]meta.Chunk{}, done: make(chan struct{})}
	type part struct {
		h    ChunkHeader
		data []byte
	}
	var parts []part
	for idx := range f.dirty {
		if idx >= keep {
			continue
		}
		// As the commit does: a chunk with no data staged is a hole,
		// dropped and not uploaded.
		sp, ok, err := f.storedPartOf(idx, cs, dataEnd)
		if err != nil {
			return // the commit looks again and says why
		}
		if !ok {
			continue
		}
		data, err := f.readStored(sp, cs)
		if err != nil {
			return
		}
		e.chunks[idx] = sp.chunk
		parts = append(parts, part{sp.header(vid, f.ino, f.gen+1, cs), data})
	}
	if len(parts) == 0 {
		return // holes only: nothing to upload
	}
	f.early = e
	go func() {
		defer close(e.done)
		var wg sync.WaitGroup
		var mu sync.Mutex
		for _, p := range parts {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := f.b.putChunk(f.b.ctx, p.h, region, rs, e.chunks[p.h.Index].Key, p.data); err != nil {
					mu.Lock()
					if e.err == nil {
						e.err = err
					}
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
	}()
}

// takeEarly returns the early upload of exactly the chunks idxs, of the
// data as it is now, once it is done; nil if there is none to use (a stale
// or failed one is deleted). Called by commit, under commitMu and mu.
func (f *openFile) takeEarly(idxs []int64) *earlyBatch {
	e := f.early
	if e == nil {
		return nil
	}
	f.early = nil
	usable := e.wver == f.wver && e.gen == f.gen && len(e.chunks) == len(idxs)
	for _, idx := range idxs {
		if _, ok := e.chunks[idx]; !ok {
			usable = false
		}
	}
	if !usable {
		go f.b.discardEarly(e)
		return nil
	}
	<-e.done
	if e.err != nil {
		go f.b.discardEarly(e)
		return nil
	}
	return e
}

// discardEarly deletes what an unused early upload put: nothing points to
// it (what this misses, `kmsfs gc --sweep` finds).
func (b *Backend) discardEarly(e *earlyBatch) {
	<-e.done
	for _, c := range e.chunks {
		b.client.DeleteObject(b.ctx, &awss3.DeleteObjectInput{Bucket: aws.String(b.bucket), Key: aws.String(b.chunkKey(c))})
	}
}

// earlyFor starts the early upload of the file open for writing here under
// name, if there is one. The name may be stale after a rename: an early
// upload is only ever a head start, so the worst case is a wasted one.
func (b *Backend) earlyFor(name string) {
	b.mu.Lock()
	f := b.writing[name]
	b.mu.Unlock()
	if f != nil {
		f.startEarly()
	}
}
