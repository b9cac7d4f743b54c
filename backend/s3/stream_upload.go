package s3

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"sort"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
)

// Streamed multipart uploads. A file written sequentially past two parts
// starts a multipart upload at once, and each part-sized run of staged
// ciphertext that a sequential run of writes has covered is uploaded in the
// background while the writer goes on; the Sync or Close that ends the
// upload only sends what is left (the tail, and parts changed since they
// were sent) and completes it. Before, the whole file went up at close, so
// a large write took the time to stage it plus the time to upload it.
//
// The guarantees of the whole-file upload hold: the object changes only at
// CompleteMultipartUpload (atomic: readers see the old object until then,
// never a part of the new one); a part changed after it was sent is sent
// again (every write bumps the generation of the parts it touches, and a
// part counts only if its generation did not move while it was being
// uploaded); a failed sync aborts the upload; a killed process leaves an
// upload that CleanupUploads aborts at the next mount; closing the last
// handle of a file whose upload did not complete (unlinked, or its sync
// failed) aborts it.
//
// S3 fixes an object's metadata when the upload is created, but the mode,
// times and xattrs are final only at sync; when they changed meanwhile (the
// mtime of a file still being written does), the completed object gets its
// final metadata with a CopyObject onto itself, as chmod does.

// streamMinParts: streaming starts once this many parts are staged, so a
// file that ends up at most one part long (one PutObject) rarely starts a
// multipart upload it then aborts.
const streamMinParts = 2

// partState is one part of a streamed upload.
type partState struct {
	gen    uint64 // bumped by every change to the part's bytes
	etag   string // "" : not uploaded, or changed since
	size   int64  // bytes the uploaded part holds
	busy   bool   // an UploadPart is under way
	failed bool   // the background upload failed; left to sync
}

// streamUpload is a multipart upload being filled while the file is
// written. Guarded by openFile.upMu.
type streamUpload struct {
	key      string
	name     string // volume path at creation (for logs and errors)
	staging  *os.File
	partSize int64
	meta     map[string]string // metadata given at creation
	id       string            // upload ID, "" until created
	creating bool
	err      error // creation failed: the sync uploads the whole file
	parts    []partState
	inflight int // goroutines (create, parts) under way
	done     *sync.Cond
}

// noteWrite records that [off, off+n) changed and the file is now size
// bytes, and starts uploads of parts that are ready. f.mu held exclusively.
func (f *openFile) noteWrite(off, n, size int64) {
	f.upMu.Lock()
	defer f.upMu.Unlock()
	// Track the current sequential run of writes (a small gap, up to one
	// part, still extends it: FUSE may deliver writes slightly out of order,
	// and bytes in a gap are staged content too).
	if off >= f.runStart && off <= f.runEnd+f.b.partSize {
		f.runEnd = max(f.runEnd, off+n)
	} else {
		f.runStart, f.runEnd = off, off+n
	}
	f.staged = size
	f.invalidateParts(off, off+n)
	if f.up == nil && !f.detached.Load() && f.runStart == 0 && f.runEnd >= streamMinParts*f.b.partSize &&
		size <= maxParts*f.b.partSize {
		f.up = &streamUpload{
			key: f.b.prefix + f.name, name: f.name, staging: f.staging,
			partSize: f.b.partSize, meta: f.attrs.encode(),
		}
		f.up.done = sync.NewCond(&f.upMu)
	}
	f.kick()
}

// noteTruncate records a truncation to size. f.mu held exclusively.
func (f *openFile) noteTruncate(size int64) {
	f.upMu.Lock()
	defer f.upMu.Unlock()
	f.invalidateParts(size, max(size, f.staged))
	f.staged = size
	f.runStart, f.runEnd = 0, 0
}

// invalidateParts marks the parts overlapping [from, to) changed. upMu held.
func (f *openFile) invalidateParts(from, to int64) {
	up := f.up
	if up == nil || to <= from {
		return
	}
	first := int(from / up.partSize)
	last := min(int((to-1)/up.partSize), len(up.parts)-1)
	for k := first; k <= last; k++ {
		up.parts[k].gen++
		up.parts[k].etag = ""
		up.parts[k].failed = false
	}
}

// kick creates the upload and starts background uploads of the parts that
// a sequential run has covered, up to the backend's concurrency. upMu held.
func (f *openFile) kick() {
	up := f.up
	if up == nil || up.err != nil || f.detached.Load() {
		return
	}
	b := f.b
	if up.id == "" {
		if !up.creating {
			up.creating = true
			up.inflight++
			go f.createUpload(up)
		}
		return
	}
	ready := int(min(f.runEnd, f.staged, maxParts*up.partSize) / up.partSize)
	if f.runStart > 0 {
		ready = 0
	}
	for len(up.parts) < ready {
		up.parts = append(up.parts, partState{})
	}
	for k := 0; k < ready && up.inflight < b.concurrency; k++ {
		p := &up.parts[k]
		if p.etag != "" || p.busy || p.failed {
			continue
		}
		p.busy = true
		up.inflight++
		go f.uploadPart(up, k, p.gen, up.partSize)
	}
}

func (f *openFile) createUpload(up *streamUpload) {
	b := f.b
	out, err := b.client.CreateMultipartUpload(b.ctx, &s3.CreateMultipartUploadInput{
		Bucket: aws.String(b.bucket), Key: aws.String(up.key), Metadata: up.meta,
	})
	f.upMu.Lock()
	defer f.upMu.Unlock()
	up.creating = false
	up.inflight--
	if err != nil {
		up.err = b.fail("write", up.name, up.key, err)
	} else {
		up.id = aws.ToString(out.UploadId)
	}
	up.done.Broadcast()
	if f.up == up {
		f.kick()
	} else if up.id != "" {
		go b.abortUpload(up.key, up.id)
	}
}

// uploadPart sends part k (size bytes) from the staging file; the result
// counts only if the part did not change meanwhile (generation gen).
func (f *openFile) uploadPart(up *streamUpload, k int, gen uint64, size int64) {
	etag, err := f.b.sendPart(f.b.ctx, up, k, size)
	f.upMu.Lock()
	defer f.upMu.Unlock()
	up.inflight--
	p := &up.parts[k]
	p.busy = false
	switch {
	case err != nil:
		p.failed = true
		f.b.log.Debug("s3: background part upload failed; retried at sync", "key", up.key, "part", k+1, "err", err)
	case p.gen == gen:
		p.etag, p.size = etag, size
	}
	up.done.Broadcast()
	if f.up == up {
		f.kick()
	}
}

// sendPart uploads part k (size bytes) of the staging file. The part is
// read into memory with one pread: the SDK reads a body twice over plain
// HTTP (SHA-256 for the signature, then the send), in 32 KiB reads, and
// system calls are what this machine (a paravirtualised VM) pays most for.
func (b *Backend) sendPart(ctx context.Context, up *streamUpload, k int, size int64) (string, error) {
	buf := b.partBufs.get(size)
	defer b.partBufs.put(buf)
	// A short read (the file was truncated meanwhile: the part's generation
	// moved, so this upload will not count) must not send stale bytes of
	// the pooled buffer either way.
	if got, err := up.staging.ReadAt(buf, int64(k)*up.partSize); int64(got) < size {
		return "", fmt.Errorf("s3 staging for %s: part %d: %d of %d bytes: %w", up.name, k+1, got, size, err)
	}
	out, err := b.client.UploadPart(ctx, &s3.UploadPartInput{
		Bucket: aws.String(b.bucket), Key: aws.String(up.key), UploadId: aws.String(up.id),
		PartNumber: aws.Int32(int32(k + 1)), ContentLength: aws.Int64(size),
		Body: bytes.NewReader(buf),
	})
	if err != nil {
		return "", err
	}
	return aws.ToString(out.ETag), nil
}

// bufferPool recycles part buffers. Fresh multi-MiB allocations cost a
// zeroing pass, page faults on first touch and frequent garbage collections
// (which also empty the volume's sync.Pool of block buffers).
type bufferPool struct {
	size int64
	free chan []byte
}

func newBufferPool(size int64, keep int) *bufferPool {
	return &bufferPool{size: size, free: make(chan []byte, keep)}
}

// get returns a buffer of n bytes (contents undefined).
func (p *bufferPool) get(n int64) []byte {
	if n > p.size {
		return make([]byte, n)
	}
	select {
	case b := <-p.free:
		return b[:n]
	default:
		return make([]byte, n, p.size)
	}
}

// put gives a buffer back; others than the pool's size, and any beyond
// its capacity, are left to the garbage collector.
func (p *bufferPool) put(b []byte) {
	if int64(cap(b)) != p.size {
		return
	}
	select {
	case p.free <- b[:0]:
	default:
	}
}

// abortUpload aborts a multipart upload nobody will complete.
func (b *Backend) abortUpload(key, id string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(b.ctx), abortTimeout)
	defer cancel()
	_, err := b.client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{
		Bucket: aws.String(b.bucket), Key: aws.String(key), UploadId: aws.String(id),
	})
	if err != nil && !isCode(err, "NoSuchUpload") {
		// CleanupUploads at the next mount removes it.
		b.log.Warn("s3: aborting multipart upload failed", "key", key, "upload_id", id, "code", errorCode(err), "err", err)
	}
}

// takeUpload waits for the background work of the streamed upload to
// settle and hands it to the caller (f.up becomes nil). f.mu held (shared
// is enough: writers are what changes parts).
func (f *openFile) takeUpload() *streamUpload {
	f.upMu.Lock()
	defer f.upMu.Unlock()
	up := f.up
	if up == nil {
		return nil
	}
	for up.inflight > 0 {
		up.done.Wait()
	}
	f.up = nil
	f.runStart, f.runEnd = 0, 0
	return up
}

// dropUpload aborts the streamed upload, if any, once its background work
// is done (the staging file must stay open until then). f.mu held.
func (f *openFile) dropUpload() {
	if up := f.takeUpload(); up != nil && up.id != "" {
		f.b.abortUpload(up.key, up.id)
	}
}

// finishUpload completes a streamed upload of the file as it is now (size
// bytes, metadata meta): it sends the parts not sent or changed since,
// completes, and gives the object its final metadata if that changed since
// the upload was created. ok is false when the upload cannot be used (the
// file is one part or less now, it was renamed, its creation failed): the
// caller then uploads the whole file. On error the upload is aborted.
func (b *Backend) finishUpload(ctx context.Context, up *streamUpload, name, key string, size int64, meta map[string]string, exclusive bool) (etag string, ok bool, err error) {
	if up.id == "" || up.key != key || size <= up.partSize || size > maxParts*up.partSize {
		if up.id != "" {
			b.abortUpload(up.key, up.id)
		}
		return "", false, nil
	}
	nparts := int((size + up.partSize - 1) / up.partSize)
	completed := make([]types.CompletedPart, nparts)
	g := b.partGroup()
	for k := range nparts {
		n := min(up.partSize, size-int64(k)*up.partSize)
		if k < len(up.parts) && up.parts[k].etag != "" && up.parts[k].size == n {
			completed[k] = types.CompletedPart{ETag: aws.String(up.parts[k].etag), PartNumber: aws.Int32(int32(k + 1))}
			continue
		}
		g.Go(func() error {
			etag, err := b.sendPart(ctx, up, k, n)
			completed[k] = types.CompletedPart{ETag: aws.String(etag), PartNumber: aws.Int32(int32(k + 1))}
			return err
		})
	}
	fail := func(err error) (string, bool, error) {
		b.abortUpload(up.key, up.id)
		return "", true, b.fail("sync", name, key, err)
	}
	if err := g.Wait(); err != nil {
		return fail(err)
	}
	sort.Slice(completed, func(i, j int) bool { return *completed[i].PartNumber < *completed[j].PartNumber })
	in := &s3.CompleteMultipartUploadInput{
		Bucket: aws.String(b.bucket), Key: aws.String(key), UploadId: aws.String(up.id),
		MultipartUpload: &types.CompletedMultipartUpload{Parts: completed},
	}
	if exclusive {
		in.IfNoneMatch = aws.String("*")
	}
	out, err := b.client.CompleteMultipartUpload(ctx, in)
	if err != nil {
		return fail(err)
	}
	etag = aws.ToString(out.ETag)
	if !maps.Equal(meta, up.meta) {
		// The content is in place (atomically); now its final attributes.
		etag, err = b.copyObject(ctx, "sync", name, key, key, size, meta, etag, false)
		if err != nil {
			return "", true, fmt.Errorf("s3 metadata of %s after upload: %w", name, err)
		}
	}
	return etag, true, nil
}
