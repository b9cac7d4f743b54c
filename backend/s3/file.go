package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"golang.org/x/sync/errgroup"

	"github.com/kmsfs/kmsfs/backend"
)

// openFile is the state of one open path, shared by every handle on it so
// that two opens of one file see one content. It lives in Backend.open while
// any handle is open.
//
// Locking: mu guards everything below it. Reads of staged data and uploads
// take it shared; writes, truncation and attribute changes take it
// exclusively. syncMu serialises uploads. upMu guards the streamed upload
// (stream_upload.go), whose background goroutines take only upMu. Lock
// order: syncMu, mu, upMu, Backend.mu.
type openFile struct {
	b      *Backend
	syncMu sync.Mutex
	mu     sync.RWMutex

	refs     int         // guarded by Backend.mu
	name     string      // volume path; changed by rename under mu and Backend.mu
	initErr  error       // opening failed; the handles waiting on it give up
	ready    atomic.Bool // loaded: listed by ReadDir
	detached atomic.Bool

	attrs      attrs
	remote     bool  // the object exists in S3
	remoteSize int64 // the file's size as stored
	remoteLen  int64 // the bytes its object holds: less with a sparse tail
	// sparseFrom is where the file's sparse tail starts (ExtendSparse):
	// bytes [sparseFrom, size) are zeros that the upload leaves out of the
	// object, recording the size in its metadata. -1: no sparse tail.
	sparseFrom int64
	etag       string // its ETag: ranged reads ask for this version only
	size       int64  // current size (staged or remote)
	staging    *os.File
	dirty      bool   // staged content or attrs not yet uploaded
	exclusive  bool   // created with O_EXCL: the first upload must not replace an object
	gen        uint64 // bumped by every change, to tell whether an upload is current
	ra         readahead

	upMu             sync.Mutex
	up               *streamUpload // multipart upload being filled, or nil
	runStart, runEnd int64         // the current sequential run of writes
	staged           int64         // size as of the last write or truncation
}

var _ backend.Flusher = (*handle)(nil)

// handle is one open of a file.
type handle struct {
	f      *openFile
	closed atomic.Bool
}

func (b *Backend) owner(o *backend.Owner) *ownerIDs {
	// As in backend/local: a new entry belongs to its creator only when the
	// mount runs as root; otherwise to the mount's user.
	if o == nil || os.Getuid() != 0 {
		return nil
	}
	return &ownerIDs{uid: o.Uid, gid: o.Gid}
}

// Open opens or creates a regular file. A file created without O_EXCL
// appears in S3 at its first Sync or Close (in this process at once); with
// O_EXCL an empty object is created at once with a conditional PutObject
// (If-None-Match: *) so that exactly one creator wins.
func (b *Backend) Open(ctx context.Context, name string, flags int, mode uint32, owner *backend.Owner) (backend.File, error) {
	ctx = opContext(ctx)
	if name == "" {
		return nil, pathErr("open", name, syscall.EISDIR)
	}
	key, err := b.key("open", name)
	if err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		b.mu.Lock()
		if f := b.open[name]; f != nil {
			f.refs++
			b.mu.Unlock()
			f.mu.Lock()
			err := f.initErr
			if err == nil {
				err = f.reopen(flags)
			}
			f.mu.Unlock()
			if err != nil {
				b.release(f)
				if f.initErr != nil && attempt < 3 {
					continue // its opener failed; try on our own
				}
				return nil, err
			}
			return &handle{f: f}, nil
		}
		f := &openFile{b: b, name: name, refs: 1, sparseFrom: -1}
		// Nobody else can see f yet, so taking its lock under b.mu is safe;
		// handles that find it in the map wait for init.
		f.mu.Lock()
		b.open[name] = f
		b.mu.Unlock()
		err := f.init(ctx, key, flags, mode, b.owner(owner))
		if flags&syscall.O_CREAT != 0 {
			// Only now: init's O_EXCL check trusts a miss cached by the
			// kernel's lookup just before (cp: stat, then open O_CREAT|
			// O_EXCL); forgetting it first cost a HEAD and a LIST per
			// created file. The name exists from here on.
			b.invalidate(name, false)
		}
		if err == nil {
			f.ready.Store(true)
		} else {
			f.initErr = err
			b.mu.Lock()
			if b.open[name] == f {
				delete(b.open, name)
			}
			b.mu.Unlock()
		}
		f.mu.Unlock()
		if err != nil {
			b.release(f)
			return nil, err
		}
		return &handle{f: f}, nil
	}
}

// init loads the state of a path not open yet. Called with f.mu held.
func (f *openFile) init(ctx context.Context, key string, flags int, mode uint32, owner *ownerIDs) error {
	b := f.b
	creat := flags&syscall.O_CREAT != 0
	if creat && flags&syscall.O_EXCL != 0 {
		// Exclusive here and now against this mount (the lookup, usually
		// answered by the miss the kernel's own lookup just cached), and
		// against other clients atomically at the first upload, which is
		// conditional (If-None-Match: *): the loser's Flush/Close fails with
		// EEXIST and writes nothing. This saves an empty PutObject per
		// created file, a third of the requests of a cp -a.
		if _, err := b.lookup(ctx, "create", f.name); err == nil {
			return pathErr("open", f.name, syscall.EEXIST)
		} else if !errors.Is(err, syscall.ENOENT) {
			return err
		}
		f.attrs = b.newAttrs(syscall.S_IFREG|mode&07777, owner)
		f.dirty, f.exclusive = true, true
		return nil
	}
	if flags&syscall.O_TRUNC != 0 {
		// The old content is not needed, only whether the file exists and
		// its attributes.
		h, err := b.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(b.bucket), Key: aws.String(key)})
		switch {
		case err == nil:
			f.attrs = b.decodeAttrs(h.Metadata, syscall.S_IFREG|0o644, aws.ToTime(h.LastModified))
			f.setRemote(aws.ToInt64(h.ContentLength), aws.ToString(h.ETag))
			if err := f.checkRegular(); err != nil {
				return err
			}
		case isNotFound(err) && creat:
			f.attrs = b.newAttrs(syscall.S_IFREG|mode&07777, owner)
			f.dirty = true
		default:
			return b.fail("open", f.name, key, err)
		}
		if f.remoteSize > 0 {
			f.dirty = true // the truncation itself must be uploaded
			f.attrs.mtime = time.Now()
			f.attrs.ctime = f.attrs.mtime
		}
		return f.stage(0)
	}
	// Read the first window with the metadata: one request serves both the
	// open and the first reads (the header) of most files.
	out, err := b.client.GetObject(ctx, &s3.GetObjectInput{
		Bucket: aws.String(b.bucket), Key: aws.String(key),
		Range: aws.String(fmt.Sprintf("bytes=0-%d", firstRange-1)),
	})
	if err != nil && (isCode(err, "InvalidRange") || httpStatus(err) == 416) {
		// An empty object has no byte 0.
		h, herr := b.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(b.bucket), Key: aws.String(key)})
		if herr != nil {
			return b.fail("open", f.name, key, herr)
		}
		f.attrs = b.decodeAttrs(h.Metadata, syscall.S_IFREG|0o644, aws.ToTime(h.LastModified))
		f.setRemote(aws.ToInt64(h.ContentLength), aws.ToString(h.ETag))
		f.size = f.remoteSize
		return f.checkRegular()
	}
	if err != nil {
		if isNotFound(err) && creat {
			f.attrs = b.newAttrs(syscall.S_IFREG|mode&07777, owner)
			f.dirty = true
			return nil
		}
		return b.fail("open", f.name, key, err)
	}
	defer out.Body.Close()
	f.attrs = b.decodeAttrs(out.Metadata, syscall.S_IFREG|0o644, aws.ToTime(out.LastModified))
	objLen := aws.ToInt64(out.ContentLength)
	if total, ok := rangeTotal(aws.ToString(out.ContentRange)); ok {
		objLen = total
	}
	f.setRemote(objLen, aws.ToString(out.ETag))
	f.size = f.remoteSize
	if err := f.checkRegular(); err != nil {
		return err
	}
	n := min(f.remoteLen, firstRange)
	buf := make([]byte, n)
	if _, err := io.ReadFull(out.Body, buf); err != nil {
		return b.fail("open", f.name, key, err)
	}
	f.ra.seedWith(0, buf)
	return nil
}

// setRemote records the stored object: objLen bytes, version etag, and
// the file's size from its metadata (attrs decoded first). A shorter object
// is a sparse tail, kept as one until a write or truncation reaches it.
func (f *openFile) setRemote(objLen int64, etag string) {
	f.remote, f.etag = true, etag
	f.remoteLen, f.remoteSize = objLen, f.attrs.fileSize(objLen)
	f.sparseFrom = -1
	if f.remoteSize > objLen {
		f.sparseFrom = objLen
	}
}

func (f *openFile) checkRegular() error {
	switch f.attrs.mode & syscall.S_IFMT {
	case syscall.S_IFREG:
		return nil
	case syscall.S_IFLNK:
		return pathErr("open", f.name, syscall.ELOOP)
	}
	return pathErr("open", f.name, syscall.EISDIR)
}

// rangeTotal parses the size out of "bytes 0-99/1234".
func rangeTotal(cr string) (int64, bool) {
	_, total, ok := strings.Cut(cr, "/")
	if !ok || total == "*" {
		return 0, false
	}
	n, err := strconv.ParseInt(total, 10, 64)
	return n, err == nil
}

// reopen applies a further open's flags to a shared state. f.mu held.
func (f *openFile) reopen(flags int) error {
	if flags&syscall.O_CREAT != 0 && flags&syscall.O_EXCL != 0 {
		return pathErr("open", f.name, syscall.EEXIST)
	}
	if flags&syscall.O_TRUNC != 0 {
		return f.truncate(0)
	}
	return nil
}

// release drops a reference; the last one forgets the state and its staging
// file.
func (b *Backend) release(f *openFile) {
	b.mu.Lock()
	f.refs--
	last := f.refs == 0
	if last && b.open[f.name] == f {
		delete(b.open, f.name)
	}
	b.mu.Unlock()
	if last {
		f.mu.Lock()
		// An upload still open here was not completed (the file was
		// unlinked, or its last sync failed): nobody will complete it.
		f.dropUpload()
		if f.staging != nil {
			f.staging.Close()
			f.staging = nil
		}
		f.ra.reset()
		f.mu.Unlock()
	}
}

// acquire returns the open state of a path with a reference, once it is
// loaded, or nil (not open, or its open failed).
func (b *Backend) acquire(name string) *openFile {
	b.mu.Lock()
	f := b.open[name]
	if f != nil {
		f.refs++
	}
	b.mu.Unlock()
	if f == nil {
		return nil
	}
	f.mu.RLock() // waits for init
	failed := f.initErr != nil
	f.mu.RUnlock()
	if failed {
		b.release(f)
		return nil
	}
	return f
}

// stage makes sure content lives in the staging file, downloading the first
// upto bytes of the object into it on first use (the rest, if any, is being
// truncated away). f.mu held exclusively.
func (f *openFile) stage(upto int64) error {
	if f.staging != nil {
		return nil
	}
	b := f.b
	sf, err := os.CreateTemp(b.stagingDir, "stage-*")
	if err != nil {
		return fmt.Errorf("s3 staging for %s: %w", f.name, err)
	}
	// Unlinked at once: the open descriptor is all we need, and a crash
	// leaves nothing behind.
	os.Remove(sf.Name())
	n := min(upto, f.remoteLen)
	if f.remote && n > 0 {
		if err := b.download(b.ctx, f.name, b.prefix+f.name, f.etag, sf, n); err != nil {
			sf.Close()
			return err
		}
	}
	if z := min(upto, f.remoteSize); f.remote && z > n {
		// The sparse tail: zeros, not in the object.
		if err := sf.Truncate(z); err != nil {
			sf.Close()
			return fmt.Errorf("s3 staging for %s: %w", f.name, err)
		}
	}
	f.staging = sf
	f.ra.reset()
	return nil
}

// download copies the first n bytes of an object version into w, in
// parallel ranges for large objects.
func (b *Backend) download(ctx context.Context, name, key, etag string, w io.WriterAt, n int64) error {
	chunk := b.partSize
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(b.concurrency)
	for off := int64(0); off < n; off += chunk {
		l := min(chunk, n-off)
		g.Go(func() error {
			data, err := b.getRange(gctx, name, key, etag, off, l)
			if err != nil {
				return err
			}
			if _, err := w.WriteAt(data, off); err != nil {
				return fmt.Errorf("s3 staging for %s: %w", name, err)
			}
			return nil
		})
	}
	return g.Wait()
}

// getRange reads n bytes at off of the object version etag ("" any).
func (b *Backend) getRange(ctx context.Context, name, key, etag string, off, n int64) ([]byte, error) {
	body, err := b.getBody(ctx, name, key, etag, off, n)
	if err != nil {
		return nil, err
	}
	defer body.Close()
	buf := make([]byte, n)
	if _, err := io.ReadFull(body, buf); err != nil {
		return nil, b.fail("read", name, key, err)
	}
	return buf, nil
}

// getBody starts a GET of n bytes at off of the object version etag (""
// any) and returns its response body.
func (b *Backend) getBody(ctx context.Context, name, key, etag string, off, n int64) (io.ReadCloser, error) {
	in := &s3.GetObjectInput{
		Bucket: aws.String(b.bucket), Key: aws.String(key),
		Range: aws.String(fmt.Sprintf("bytes=%d-%d", off, off+n-1)),
	}
	if etag != "" {
		// A concurrent writer (another client) replaced the object: fail
		// rather than mix blocks of two versions.
		in.IfMatch = aws.String(etag)
	}
	out, err := b.client.GetObject(ctx, in)
	if err != nil {
		if isPreconditionFailed(err) {
			b.log.Warn("s3: object changed while open", "key", key)
			return nil, pathErr("read", name, syscall.EIO)
		}
		return nil, b.fail("read", name, key, err)
	}
	return out.Body, nil
}

func (f *openFile) readAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, pathErr("read", f.name, syscall.EINVAL)
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.staging != nil {
		if off >= f.size {
			return 0, io.EOF
		}
		if int64(len(p)) > f.size-off {
			n, err := f.staging.ReadAt(p[:f.size-off], off)
			if err == nil {
				err = io.EOF
			}
			return n, err
		}
		return f.staging.ReadAt(p, off)
	}
	if !f.remote {
		return 0, io.EOF
	}
	b, name, key, etag := f.b, f.name, f.b.prefix+f.name, f.etag
	get := func(ctx context.Context, off, n int64) (io.ReadCloser, error) {
		return b.getBody(ctx, name, key, etag, off, n)
	}
	if off >= f.remoteSize {
		return 0, io.EOF
	}
	var n int
	var err error
	if off < f.remoteLen {
		n, err = f.ra.readAt(b.ctx, get, p, off, f.remoteLen)
		if err != nil && err != io.EOF {
			return n, b.fail("read", name, key, err)
		}
	}
	if f.remoteSize > f.remoteLen && n < len(p) {
		// The sparse tail reads as zeros.
		z := min(int64(len(p)-n), f.remoteSize-off-int64(n))
		clear(p[n : n+int(z)])
		n += int(z)
		err = nil
		if n < len(p) {
			err = io.EOF
		}
	}
	return n, err
}

// writeAt writes p at off; quiet leaves the modification time alone.
func (f *openFile) writeAt(p []byte, off int64, quiet bool) (int, error) {
	if off < 0 {
		return 0, pathErr("write", f.name, syscall.EINVAL)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.stage(f.size); err != nil {
		return 0, err
	}
	n, err := f.staging.WriteAt(p, off)
	end := off + int64(n)
	if end > f.size {
		f.size = end
	}
	if n > 0 && f.sparseFrom >= 0 && end > f.sparseFrom {
		// Data in the tail: the zeros before it are stored from now on.
		f.sparseFrom = end
	}
	if n > 0 {
		mtime, ctime := f.attrs.mtime, f.attrs.ctime
		f.touch()
		if quiet {
			f.attrs.mtime, f.attrs.ctime = mtime, ctime
		}
		f.noteWrite(off, int64(n), f.size)
	}
	return n, err
}

// touch records a content change. f.mu held exclusively.
func (f *openFile) touch() {
	f.dirty = true
	f.gen++
	f.attrs.mtime = time.Now()
	f.attrs.ctime = f.attrs.mtime
}

// truncate resizes; f.mu held exclusively.
func (f *openFile) truncate(size int64) error {
	if size < 0 {
		return pathErr("truncate", f.name, syscall.EINVAL)
	}
	if err := f.stage(size); err != nil {
		return err
	}
	if err := f.staging.Truncate(size); err != nil {
		return fmt.Errorf("s3 staging for %s: %w", f.name, err)
	}
	if size != f.size || !f.remote {
		f.size = size
		f.touch()
	}
	if f.sparseFrom > size {
		f.sparseFrom = size
	}
	f.noteTruncate(size)
	return nil
}

// sync uploads staged content and attributes, if anything changed, and
// returns once S3 has acknowledged the whole object (PutObject or
// CompleteMultipartUpload: durable and atomic).
func (f *openFile) sync() error {
	f.syncMu.Lock()
	defer f.syncMu.Unlock()
	f.mu.RLock()
	if !f.dirty || f.detached.Load() {
		f.mu.RUnlock()
		return nil
	}
	gen, size, name := f.gen, f.size, f.name
	b := f.b
	var src io.ReaderAt = f.staging
	if f.staging == nil {
		src = emptyReader{}
	}
	// Uploading under the shared lock lets reads go on; writes wait, so the
	// object is one consistent snapshot.
	exclusive, meta := f.exclusive, f.attrs.encode()
	objLen := size
	delete(meta, metaFileSize)
	if f.sparseFrom >= 0 && f.sparseFrom < size {
		objLen = f.sparseFrom
		meta[metaFileSize] = strconv.FormatInt(size, 10)
	}
	var etag string
	var err error
	streamed := false
	if objLen < size {
		f.dropUpload() // parts of the tail's zeros are not wanted
	} else if up := f.takeUpload(); up != nil {
		etag, streamed, err = b.finishUpload(b.ctx, up, name, b.prefix+name, size, meta, exclusive)
	}
	if !streamed {
		etag, err = b.upload(b.ctx, "sync", name, b.prefix+name, src, objLen, meta, exclusive)
	}
	f.mu.RUnlock()
	// The object exists now (or changed): drop any remembered miss.
	b.invalidate(name, false)
	if err != nil {
		if exclusive && errors.Is(err, syscall.EEXIST) {
			b.log.Warn("s3: file created with O_EXCL was created meanwhile by another client; not uploaded", "key", b.prefix+name)
		}
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.gen == gen {
		f.dirty = false
	}
	f.exclusive = false
	f.remote, f.remoteSize, f.remoteLen, f.etag = true, size, objLen, etag
	f.attrs.sparseSize = 0
	if objLen < size {
		f.attrs.sparseSize = size
	}
	return nil
}

// setSparseTail makes the file size bytes long with its bytes from dataEnd
// on a sparse tail, keeping the times. f.mu held exclusively.
func (f *openFile) setSparseTail(dataEnd, size int64) error {
	if dataEnd < 0 || dataEnd > size {
		return pathErr("truncate", f.name, syscall.EINVAL)
	}
	if err := f.stage(dataEnd); err != nil {
		return err
	}
	for _, n := range []int64{dataEnd, size} {
		if err := f.staging.Truncate(n); err != nil {
			return fmt.Errorf("s3 staging for %s: %w", f.name, err)
		}
	}
	f.size = size
	f.sparseFrom = -1
	if dataEnd < size {
		f.sparseFrom = dataEnd
	}
	f.dirty = true
	f.gen++
	f.noteTruncate(dataEnd)
	f.noteTruncate(size)
	return nil
}

// setTimes sets the access and modification times, which the next upload
// stores. f.mu held exclusively.
func (f *openFile) setTimes(atime, mtime time.Time) {
	f.attrs.atime, f.attrs.mtime, f.attrs.ctime = atime, mtime, time.Now()
	f.dirty = true
	f.gen++
}

type emptyReader struct{}

func (emptyReader) ReadAt([]byte, int64) (int, error) { return 0, io.EOF }

func (f *openFile) stat(st *syscall.Stat_t) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	f.attrs.fill(f.name, f.size, st)
}

func (h *handle) ReadAt(p []byte, off int64) (int, error) {
	if h.closed.Load() {
		return 0, os.ErrClosed
	}
	return h.f.readAt(p, off)
}

func (h *handle) WriteAt(p []byte, off int64) (int, error) {
	if h.closed.Load() {
		return 0, os.ErrClosed
	}
	return h.f.writeAt(p, off, false)
}

// WriteAtQuiet is WriteAt keeping the modification time (backend.QuietWriter).
func (h *handle) WriteAtQuiet(p []byte, off int64) (int, error) {
	if h.closed.Load() {
		return 0, os.ErrClosed
	}
	return h.f.writeAt(p, off, true)
}

func (h *handle) Truncate(size int64) error {
	if h.closed.Load() {
		return os.ErrClosed
	}
	h.f.mu.Lock()
	defer h.f.mu.Unlock()
	return h.f.truncate(size)
}

// SetSparseTail makes the file size bytes long, the bytes from dataEnd on
// zeros left out of the object, whose metadata records the size
// (backend.SparseTail).
func (h *handle) SetSparseTail(dataEnd, size int64) error {
	if h.closed.Load() {
		return os.ErrClosed
	}
	h.f.mu.Lock()
	defer h.f.mu.Unlock()
	return h.f.setSparseTail(dataEnd, size)
}

// SetTimes sets the file's access and modification times through the open
// file (backend.TimeSetter); they are stored with its next upload.
func (h *handle) SetTimes(atime, mtime time.Time) error {
	if h.closed.Load() {
		return os.ErrClosed
	}
	h.f.mu.Lock()
	defer h.f.mu.Unlock()
	h.f.setTimes(atime, mtime)
	return nil
}

func (h *handle) Sync() error {
	if h.closed.Load() {
		return os.ErrClosed
	}
	return h.f.sync()
}

// Flush runs on every close(2) (backend.Flusher): it uploads what changed,
// so that close reports an upload failure and other clients see the data.
func (h *handle) Flush() error {
	if h.closed.Load() {
		return os.ErrClosed
	}
	return h.f.sync()
}

func (h *handle) Stat(st *syscall.Stat_t) error {
	if h.closed.Load() {
		return os.ErrClosed
	}
	h.f.stat(st)
	return nil
}

// Close uploads what changed (close(2) is where S3 clients expect the data
// to land) and drops the handle.
func (h *handle) Close() error {
	if h.closed.Swap(true) {
		return os.ErrClosed
	}
	err := h.f.sync()
	h.f.b.release(h.f)
	if err != nil && !errors.Is(err, os.ErrClosed) {
		return err
	}
	return nil
}
