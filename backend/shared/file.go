package shared

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"golang.org/x/sync/errgroup"

	"github.com/kmsfs/kmsfs/backend"
	"github.com/kmsfs/kmsfs/backend/shared/meta"
)

const (
	// uploadConcurrency is how many chunks of one file go up at once.
	uploadConcurrency = 4
	// smallChunk is the largest chunk kept in memory once read, and
	// maxSmallChunks how many are (the cache is emptied when full).
	smallChunk     = 4096
	maxSmallChunks = 8192
)

// openFile is the state of one inode open in this process, shared by its
// handles. Writes are staged in a local (unlinked) file, chunk by chunk:
// a chunk is staged whole (fetched first unless the write covers it) and
// marked dirty; a commit uploads the dirty chunks as new objects and
// switches the chunk list from the generation the file was read at.
//
// Locking: commitMu serialises commits; mu guards the rest (reads take it
// shared, writes exclusively). Lock order: commitMu, mu, Backend.mu.
type openFile struct {
	b        *Backend
	ino      uint64
	commitMu sync.Mutex
	mu       sync.RWMutex

	refs int // guarded by Backend.mu

	attr    meta.Attr // committed attributes (size and gen as read or committed)
	gen     int64     // the generation the staged changes are based on
	size    int64     // current stream size
	chunks  map[int64]meta.Chunk
	staged  map[int64]bool // chunk content held in staging, current
	dirty   map[int64]bool // staged and not committed
	resized bool           // size changed since the last commit
	touched bool           // data changed since the last commit or utimens
	mtime   time.Time      // when data last changed here
	wver    uint64         // counts data changes (writes, quiet ones too, and truncates)
	// sparseFrom is where the file's sparse tail starts (SetSparseTail):
	// stream bytes [sparseFrom, size) are zeros that no chunk holds. -1:
	// none.
	sparseFrom int64
	early      *earlyBatch   // an upload started before the commit (early.go)
	pend       *meta.SetAttr // attribute changes that join the commit (deferred.go)
	staging    *os.File

	// rmu guards the read pattern and the chunk kept for a sequential
	// reader (reads run concurrently under mu held shared).
	rmu              sync.Mutex
	lastIdx, lastEnd int64
	whole            struct {
		key  string
		data []byte
	}
}

func (b *Backend) chunkGeometry() (int64, int, [16]byte) {
	b.volMu.RLock()
	defer b.volMu.RUnlock()
	return b.chunkSize, b.regionSize, b.volID
}

// Open opens or creates a regular file. A new file is an entry in the
// store at once (empty, no chunks); its data appears at the first commit.
func (b *Backend) Open(ctx context.Context, name string, flags int, mode uint32, o *backend.Owner) (backend.File, error) {
	ctx = opCtx(ctx)
	var a meta.Attr
	var err error
	if flags&syscall.O_CREAT != 0 {
		a, err = b.create(ctx, "open", name, meta.New{Mode: syscall.S_IFREG | mode&0o7777}, o, flags&syscall.O_EXCL != 0)
		if err != nil {
			return nil, err
		}
	} else {
		if !b.isReady() {
			return nil, b.fail("open", name, syscall.ENOENT)
		}
		if a, err = b.store.Lookup(ctx, split(name)); err != nil {
			return nil, b.fail("open", name, err)
		}
	}
	switch a.Mode & syscall.S_IFMT {
	case syscall.S_IFREG:
	case syscall.S_IFDIR:
		return nil, b.fail("open", name, syscall.EISDIR)
	default:
		return nil, b.fail("open", name, syscall.EINVAL)
	}
	f, err := b.acquire(ctx, a)
	if err != nil {
		return nil, b.fail("open", name, err)
	}
	h := &handle{f: f, name: name, writer: flags&syscall.O_ACCMODE != syscall.O_RDONLY}
	if h.writer {
		b.mu.Lock()
		b.writing[name] = f
		b.mu.Unlock()
	}
	return h, nil
}

// acquire returns the open state of inode a.Ino, loading its chunk list.
// While a file stays open here, its handles share one snapshot (and the
// volume one set of file keys, which a rewrite elsewhere may replace): an
// open sees another process's later commit once every earlier handle here
// is closed (close-to-open).
func (b *Backend) acquire(ctx context.Context, a meta.Attr) (*openFile, error) {
	b.mu.Lock()
	f := b.open[a.Ino]
	if f == nil {
		f = &openFile{b: b, ino: a.Ino, gen: -1, lastIdx: -2}
		b.open[a.Ino] = f
	}
	f.refs++
	b.mu.Unlock()
	if err := f.loadOnce(ctx, a); err != nil {
		b.release(f)
		return nil, err
	}
	return f, nil
}

// loadOnce reads the file's attributes and chunk list when it is first
// opened here. A file at generation 0 has never had a chunk list committed
// (every commit raises the generation, and only a commit sets the size), so
// the attributes a it was opened with, read in one statement, are its whole
// state then: a new file costs no second round trip.
func (f *openFile) loadOnce(ctx context.Context, a meta.Attr) error {
	f.commitMu.Lock()
	defer f.commitMu.Unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.gen >= 0 {
		return nil
	}
	attr, chunks := a, []meta.Chunk(nil)
	if a.Gen != 0 {
		var err error
		if attr, chunks, err = f.b.store.File(ctx, f.ino); err != nil {
			return err
		}
	}
	f.attr, f.gen, f.size = attr, attr.Gen, attr.Size
	f.chunks = make(map[int64]meta.Chunk, len(chunks))
	cs, _, _ := f.b.chunkGeometry()
	dataEnd := int64(0)
	for _, c := range chunks {
		f.chunks[c.Index] = c
		dataEnd = max(dataEnd, c.Index*cs+c.Len)
	}
	// Chunks that end before the size: a sparse tail (FORMAT.md section
	// 12), kept as one until a write reaches it.
	f.sparseFrom = -1
	if dataEnd < f.size {
		f.sparseFrom = dataEnd
	}
	f.staged, f.dirty = map[int64]bool{}, map[int64]bool{}
	return nil
}

func (b *Backend) release(f *openFile) {
	b.mu.Lock()
	f.refs--
	last := f.refs == 0
	if last {
		delete(b.open, f.ino)
	}
	b.mu.Unlock()
	if last && f.staging != nil {
		f.staging.Close()
		f.staging = nil
	}
}

func (f *openFile) overlay(a *meta.Attr) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.pend != nil {
		a.Mode, a.Uid, a.Gid = f.attr.Mode, f.attr.Uid, f.attr.Gid
		a.Atime, a.Mtime, a.Ctime = f.attr.Atime, f.attr.Mtime, f.attr.Ctime
	}
	if len(f.dirty) > 0 || f.resized {
		a.Size = f.size
		if f.touched {
			a.Mtime, a.Ctime = f.mtime, f.mtime
		}
	}
}

func (f *openFile) setAttrs(a meta.Attr, s meta.SetAttr) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.attr.Mode, f.attr.Uid, f.attr.Gid = a.Mode, a.Uid, a.Gid
	f.attr.Atime, f.attr.Mtime, f.attr.Ctime, f.attr.Nlink = a.Atime, a.Mtime, a.Ctime, a.Nlink
	if s.Mtime != nil {
		// An explicit utimens after the writes (cp -a) wins over the
		// commit's time.
		f.touched = false
	}
	if f.pend != nil {
		f.supersede(s)
	}
}

func (f *openFile) stat(st *syscall.Stat_t) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	a := f.attr
	a.Size = f.size
	if f.touched {
		a.Mtime, a.Ctime = f.mtime, f.mtime
	}
	fillStat(a, st)
}

func (b *Backend) chunkKey(c meta.Chunk) string { return b.prefix + c.Key }

// fetch reads len(p) data bytes at offset off within committed chunk c.
// Small chunks (directory ID files, short files) are kept in memory:
// chunks are immutable, so a cached one is never stale.
func (f *openFile) fetch(c meta.Chunk, off int64, p []byte) error {
	if c.Len <= smallChunk {
		data, err := f.b.smallChunk(c)
		if err != nil {
			return err
		}
		copy(p, data[off:])
		return nil
	}
	if f.sequential(c, off, len(p)) {
		data, err := f.wholeChunk(c)
		if err != nil {
			return err
		}
		copy(p, data[off:])
		return nil
	}
	return f.b.fetchRange(c, off, p)
}

// sequential reports whether a read of n bytes at off in chunk c follows
// the previous read of this file; a sequential reader gets whole chunks
// (one GET per chunk rather than one per read), a random one ranges.
func (f *openFile) sequential(c meta.Chunk, off int64, n int) bool {
	f.rmu.Lock()
	defer f.rmu.Unlock()
	seq := (c.Index == f.lastIdx && off == f.lastEnd) || (c.Index == f.lastIdx+1 && off == 0) || f.whole.key == c.Key
	f.lastIdx, f.lastEnd = c.Index, off+int64(n)
	return seq
}

// wholeChunk returns chunk c's data, from the one kept for a sequential
// reader if it is that chunk (chunks are immutable: never stale).
func (f *openFile) wholeChunk(c meta.Chunk) ([]byte, error) {
	f.rmu.Lock()
	if f.whole.key == c.Key {
		data := f.whole.data
		f.rmu.Unlock()
		return data, nil
	}
	f.rmu.Unlock()
	data := make([]byte, c.Len)
	if err := f.b.fetchRange(c, 0, data); err != nil {
		return nil, err
	}
	f.rmu.Lock()
	f.whole.key, f.whole.data = c.Key, data
	f.rmu.Unlock()
	return data, nil
}

// smallChunk returns the data of small chunk c, from memory if it can.
func (b *Backend) smallChunk(c meta.Chunk) ([]byte, error) {
	b.smallMu.Lock()
	data, ok := b.small[c.Key]
	b.smallMu.Unlock()
	if ok {
		return data, nil
	}
	data = make([]byte, c.Len)
	if err := b.fetchRange(c, 0, data); err != nil {
		return nil, err
	}
	b.keepSmall(c.Key, data)
	return data, nil
}

// keepSmall keeps the data of a small chunk read or written here: a
// directory's ID file is then read again without S3.
func (b *Backend) keepSmall(key string, data []byte) {
	b.smallMu.Lock()
	defer b.smallMu.Unlock()
	if len(b.small) >= maxSmallChunks {
		clear(b.small)
	}
	b.small[key] = data
}

// fetchRange reads len(p) stream bytes at offset off within chunk c: the
// zeros its object leaves out at its start (chunkSkip) without S3.
func (b *Backend) fetchRange(c meta.Chunk, off int64, p []byte) error {
	if skip := chunkSkip(c.Key); off < skip {
		n := min(int64(len(p)), skip-off)
		clear(p[:n])
		p, off = p[n:], skip
	}
	if len(p) == 0 {
		return nil
	}
	_, rs, _ := b.chunkGeometry()
	start := int64(chunkFixed+rs) + off - chunkSkip(c.Key)
	out, err := b.client.GetObject(b.ctx, &awss3.GetObjectInput{
		Bucket: aws.String(b.bucket), Key: aws.String(b.chunkKey(c)),
		Range: aws.String(fmt.Sprintf("bytes=%d-%d", start, start+int64(len(p))-1)),
	})
	if err != nil {
		return fmt.Errorf("get chunk %s: %w", c.Key, err)
	}
	defer out.Body.Close()
	if _, err := io.ReadFull(out.Body, p); err != nil {
		return fmt.Errorf("read chunk %s: %w", c.Key, err)
	}
	return nil
}

// readLocked reads stream bytes [off, off+len(p)) (within size) from
// staging, committed chunks, or zeros. mu is held.
func (f *openFile) readLocked(p []byte, off int64) error {
	cs, _, _ := f.b.chunkGeometry()
	for len(p) > 0 {
		idx := off / cs
		in := off - idx*cs
		n := min(int64(len(p)), cs-in)
		part := p[:n]
		switch c, ok := f.chunks[idx]; {
		case f.staged[idx]:
			got, err := f.staging.ReadAt(part, off)
			if err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			clear(part[got:]) // past the staging file's end: zeros
		case ok && in < c.Len && (f.sparseFrom < 0 || off < f.sparseFrom):
			// Committed data, up to a sparse tail made since (whose
			// chunks go at the next commit).
			m := min(n, c.Len-in)
			if f.sparseFrom >= 0 {
				m = min(m, f.sparseFrom-off)
			}
			if err := f.fetch(c, in, part[:m]); err != nil {
				return err
			}
			clear(part[m:])
		default:
			clear(part)
		}
		p, off = p[n:], off+n
	}
	return nil
}

// stage makes chunk idx's content current in the staging file.
func (f *openFile) stage(idx int64) error {
	if f.staged[idx] {
		return nil
	}
	if err := f.openStaging(); err != nil {
		return err
	}
	cs, _, _ := f.b.chunkGeometry()
	if c, ok := f.chunks[idx]; ok && c.Len > 0 {
		dataEnd, _ := f.extent(cs)
		n := min(c.Len, max(dataEnd-idx*cs, 0))
		// The zeros the object leaves out at its start stay a hole here,
		// so that the next commit leaves them out again.
		if skip := chunkSkip(c.Key); n > skip {
			buf := make([]byte, n-skip)
			if err := f.fetch(c, skip, buf); err != nil {
				return err
			}
			if _, err := f.staging.WriteAt(buf, idx*cs+skip); err != nil {
				return err
			}
		}
	}
	f.staged[idx] = true
	return nil
}

func (f *openFile) openStaging() error {
	if f.staging != nil {
		return nil
	}
	s, err := os.CreateTemp(f.b.stagingDir, "chunk-")
	if err != nil {
		return err
	}
	os.Remove(s.Name()) // nothing is left on disk if the process dies
	f.staging = s
	return nil
}

// grow marks the chunks between the old size and the new as changed: the
// bytes between read as zeros. The staging file is only extended, so they
// are holes in it, and a commit stores none of them (storedPart): growing
// by gigabytes costs a map entry per chunk.
func (f *openFile) grow(to int64) error {
	cs, _, _ := f.b.chunkGeometry()
	if to <= f.size {
		return nil
	}
	for idx := f.size / cs; idx*cs < to; idx++ {
		if err := f.stage(idx); err != nil {
			return err
		}
		f.dirty[idx] = true
	}
	if err := f.staging.Truncate(to); err != nil {
		return err
	}
	f.size, f.resized = to, true
	return nil
}

func (f *openFile) changed() {
	f.touched, f.mtime = true, time.Now()
}

// writeAt writes p at off; quiet leaves the modification time alone.
func (f *openFile) writeAt(p []byte, off int64, quiet bool) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(p) == 0 {
		return 0, nil
	}
	cs, _, _ := f.b.chunkGeometry()
	end := off + int64(len(p))
	for idx := off / cs; idx*cs < end; idx++ {
		// A chunk the write covers whole needs no fetch.
		cStart, cEnd := idx*cs, min((idx+1)*cs, max(f.size, end))
		if f.staged[idx] {
			continue
		}
		if off <= cStart && end >= cEnd {
			if err := f.openStaging(); err != nil {
				return 0, err
			}
			f.staged[idx] = true
		} else if err := f.stage(idx); err != nil {
			return 0, err
		}
	}
	if f.sparseFrom >= 0 && end > f.sparseFrom {
		// The tail's whole chunks before the write are stored from now
		// on, as the zeros they read as (holes, which a commit drops):
		// rows committed there before the tail was made must not show.
		cut := min(off, f.size)
		for idx := (f.sparseFrom + cs - 1) / cs; idx*cs < cut; idx++ {
			if err := f.stage(idx); err != nil {
				return 0, err
			}
			f.dirty[idx] = true
		}
	}
	if err := f.grow(off); err != nil {
		return 0, err
	}
	if _, err := f.staging.WriteAt(p, off); err != nil {
		return 0, err
	}
	for idx := off / cs; idx*cs < end; idx++ {
		f.dirty[idx] = true
	}
	if end > f.size {
		f.size, f.resized = end, true
	}
	if f.sparseFrom >= 0 && end > f.sparseFrom {
		// Data in the tail: the zeros before it are stored from now on.
		f.sparseFrom = end
	}
	f.wver++ // quiet or not: no early upload of the old data is current
	if !quiet {
		f.changed()
	}
	return len(p), nil
}

func (f *openFile) truncate(n int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n == f.size {
		return nil
	}
	f.wver++ // no early upload of the old data is current
	cs, _, _ := f.b.chunkGeometry()
	if n > f.size {
		if err := f.grow(n); err != nil {
			return err
		}
		f.changed()
		return nil
	}
	if n%cs != 0 {
		if err := f.stage(n / cs); err != nil {
			return err
		}
		f.dirty[n/cs] = true
	}
	if f.staging != nil {
		if err := f.staging.Truncate(n); err != nil {
			return err
		}
	}
	keep := (n + cs - 1) / cs
	for idx := range f.staged {
		if idx >= keep {
			delete(f.staged, idx)
			delete(f.dirty, idx)
		}
	}
	f.size, f.resized = n, true
	if f.sparseFrom > n {
		f.sparseFrom = n
	}
	f.changed()
	return nil
}

// setSparseTail makes the file n bytes long, its stream bytes from dataEnd
// on a sparse tail: no chunk holds them. It does not move the modification
// time (it is how the content is stored; backend.SparseTail).
func (f *openFile) setSparseTail(dataEnd, n int64) error {
	if dataEnd < 0 || dataEnd > n {
		return syscall.EINVAL
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	cs, _, _ := f.b.chunkGeometry()
	f.sparseFrom = -1
	if dataEnd < n {
		f.sparseFrom = dataEnd
	}
	if idx := dataEnd / cs; dataEnd%cs != 0 && !f.staged[idx] {
		// The chunk the data ends in is stored again, cut there (stage
		// reads its committed bytes up to the tail only).
		if err := f.stage(idx); err != nil {
			return err
		}
	}
	if dataEnd%cs != 0 {
		f.dirty[dataEnd/cs] = true
	}
	if f.staging != nil {
		for _, size := range []int64{dataEnd, n} {
			if err := f.staging.Truncate(size); err != nil {
				return err
			}
		}
	}
	f.wver++
	f.size, f.resized = n, true
	return nil
}

// extent is where the stored data of the file ends (its size, or the start
// of its sparse tail) and how many chunks hold it. mu is held.
func (f *openFile) extent(cs int64) (dataEnd, keep int64) {
	dataEnd = f.size
	if f.sparseFrom >= 0 && f.sparseFrom < f.size {
		dataEnd = f.sparseFrom
	}
	return dataEnd, (dataEnd + cs - 1) / cs
}

// commit uploads the dirty chunks and switches the chunk list. A file
// removed meanwhile (its last name unlinked) has nothing to commit to.
func (f *openFile) commit() error {
	f.commitMu.Lock()
	defer f.commitMu.Unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.dirty) == 0 && !f.resized {
		return nil
	}
	if err := f.b.guard("commit", ""); err != nil {
		return err
	}
	cs, rs, vid := f.b.chunkGeometry()
	dataEnd, keep := f.extent(cs)
	region := make([]byte, min(int64(rs), f.size))
	if err := f.readLocked(region, 0); err != nil {
		return err
	}
	// A dirty chunk with no data staged (truncated up, written past, or
	// punched) is a hole: its row goes, and nothing is uploaded.
	var idxs, drop []int64
	parts := map[int64]storedPart{}
	for idx := range f.dirty {
		if idx >= keep {
			continue
		}
		sp, ok, err := f.storedPartOf(idx, cs, dataEnd)
		if err != nil {
			return err
		}
		if !ok {
			drop = append(drop, idx)
			continue
		}
		idxs = append(idxs, idx)
		parts[idx] = sp
	}
	slices.Sort(idxs)
	slices.Sort(drop)
	set := make([]meta.Chunk, len(idxs))
	var uploaded atomic.Int64
	var err error
	if e := f.takeEarly(idxs); e != nil {
		// The chunks went up while the application changed attributes.
		for i, idx := range idxs {
			set[i] = e.chunks[idx]
		}
		uploaded.Store(int64(len(set)))
	} else {
		g, ctx := errgroup.WithContext(f.b.ctx)
		g.SetLimit(uploadConcurrency)
		for i, idx := range idxs {
			sp := parts[idx]
			set[i] = sp.chunk
			g.Go(func() error {
				data, err := f.readStored(sp, cs)
				if err != nil {
					return err
				}
				if err := f.b.putChunk(ctx, sp.header(vid, f.ino, f.gen+1, cs), region, rs, sp.chunk.Key, data); err != nil {
					return err
				}
				uploaded.Add(1)
				return nil
			})
		}
		err = g.Wait()
	}
	var gen int64
	for _, sp := range parts {
		if err == nil && sp.leavesOut() {
			err = f.b.raiseSchema()
		}
	}
	if err == nil {
		f.b.echoes.drop() // the size and times change
		gen, err = f.b.store.CommitChunks(f.b.ctx, meta.Commit{Ino: f.ino, BaseGen: f.gen, Size: f.size, Set: set, Drop: drop, Keep: keep, Touch: f.touched, Attrs: f.pend})
	}
	if errors.Is(err, syscall.ENOENT) {
		f.dirty, f.resized, f.pend = map[int64]bool{}, false, nil // removed: its data goes with it
		err = nil
	}
	if err != nil {
		if uploaded.Load() > 0 {
			// Never committed, so nobody points to them: safe to delete
			// now (what this misses, gc --sweep finds).
			for _, c := range set {
				f.b.client.DeleteObject(f.b.ctx, &awss3.DeleteObjectInput{Bucket: aws.String(f.b.bucket), Key: aws.String(f.b.chunkKey(c))})
			}
		}
		return err
	}
	if gen == 0 {
		return nil
	}
	for _, c := range set {
		f.chunks[c.Index] = c
	}
	for _, idx := range drop {
		delete(f.chunks, idx)
	}
	for idx := range f.chunks {
		if idx >= keep {
			delete(f.chunks, idx)
		}
	}
	f.gen, f.attr.Gen, f.attr.Size = gen, gen, f.size
	if f.touched {
		f.attr.Mtime, f.attr.Ctime = f.mtime, f.mtime
	}
	f.dirty, f.resized, f.touched, f.pend = map[int64]bool{}, false, false, nil
	return nil
}

// newChunkKey is a chunk object's key under the volume prefix: random, so
// a write never replaces an object anyone may be reading; it names the
// zeros the object leaves out at the chunk's start, if any (chunkSkip).
func newChunkKey(skip int64) string {
	var rnd [16]byte
	rand.Read(rnd[:]) // never fails (crypto/rand, Go 1.24+)
	key := ChunkDir + hex.EncodeToString(rnd[:])
	if skip > 0 {
		key += "-" + strconv.FormatInt(skip, 10)
	}
	return key
}

// putChunk uploads one chunk object: data is the chunk's stream bytes
// from its start, of which the object holds the last h.Length. A small
// chunk is kept in memory too.
func (b *Backend) putChunk(ctx context.Context, h ChunkHeader, region []byte, rs int, key string, data []byte) error {
	obj := encodeChunk(h, region, rs, data[int64(len(data))-h.Length:])
	_, err := b.client.PutObject(ctx, &awss3.PutObjectInput{
		Bucket: aws.String(b.bucket), Key: aws.String(b.prefix + key),
		Body: bytes.NewReader(obj), ContentLength: aws.Int64(int64(len(obj))),
	})
	if err != nil {
		return fmt.Errorf("put chunk: %w", err)
	}
	if len(data) <= smallChunk {
		b.keepSmall(key, data)
	}
	return nil
}

// handle is one open of a file.
type handle struct {
	f      *openFile
	name   string
	writer bool // opened for writing: listed in Backend.writing
	closed atomic.Bool
}

var _ backend.Flusher = (*handle)(nil)

func (h *handle) err(op string, err error) error {
	return h.f.b.fail(op, h.name, err)
}

func (h *handle) ReadAt(p []byte, off int64) (int, error) {
	if h.closed.Load() {
		return 0, os.ErrClosed
	}
	f := h.f
	f.mu.RLock()
	defer f.mu.RUnlock()
	if off >= f.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), f.size-off))
	if err := f.readLocked(p[:n], off); err != nil {
		return 0, h.err("read", err)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (h *handle) WriteAt(p []byte, off int64) (int, error) {
	if h.closed.Load() {
		return 0, os.ErrClosed
	}
	n, err := h.f.writeAt(p, off, false)
	return n, h.err("write", err)
}

// WriteAtQuiet is WriteAt keeping the modification time (backend.QuietWriter).
func (h *handle) WriteAtQuiet(p []byte, off int64) (int, error) {
	if h.closed.Load() {
		return 0, os.ErrClosed
	}
	n, err := h.f.writeAt(p, off, true)
	return n, h.err("write", err)
}

// SetSparseTail makes the file size bytes long with a sparse tail from
// dataEnd (backend.SparseTail).
func (h *handle) SetSparseTail(dataEnd, size int64) error {
	if h.closed.Load() {
		return os.ErrClosed
	}
	return h.err("truncate", h.f.setSparseTail(dataEnd, size))
}

func (h *handle) Truncate(size int64) error {
	if h.closed.Load() {
		return os.ErrClosed
	}
	return h.err("truncate", h.f.truncate(size))
}

// Sync uploads what changed and commits it (fsync: chunks durable in S3,
// chunk list committed).
func (h *handle) Sync() error {
	if h.closed.Load() {
		return os.ErrClosed
	}
	return h.err("fsync", h.f.commit())
}

// Flush runs on every close(2): a commit, so that an open on another
// machine afterwards reads this content, and a lost race is reported to
// the closing application.
func (h *handle) Flush() error { return h.Sync() }

func (h *handle) Stat(st *syscall.Stat_t) error {
	h.f.stat(st)
	return nil
}

// Close commits what is still staged (writes after the last flush) and
// releases the handle.
func (h *handle) Close() error {
	if h.closed.Swap(true) {
		return os.ErrClosed
	}
	err := h.f.commit()
	if h.writer {
		b := h.f.b
		b.mu.Lock()
		if b.writing[h.name] == h.f {
			delete(b.writing, h.name)
		}
		b.mu.Unlock()
	}
	h.f.b.release(h.f)
	return h.err("close", err)
}
