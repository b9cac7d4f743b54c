package volume

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"syscall"
	"time"

	"github.com/kmsfs/kmsfs/backend"
	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/kms"
)

// Options configure an opened volume.
type Options struct {
	// Keys is where data keys come from: normally a *keycache.Cache in front
	// of the KMS, so that re-opening a file costs no KMS call.
	Keys     kms.Crypto
	Logger   *slog.Logger
	ReadOnly bool
	// BucketKeyMaxAge and BucketKeyMaxFiles bound how long and for how many
	// new files one bucket key is used (bucket-key mode).
	BucketKeyMaxAge   time.Duration
	BucketKeyMaxFiles int
	// Mode, if set, overrides the config's mode for new files. Every mount
	// reads files of both modes, so a volume may hold a mix.
	Mode envelope.Mode
	// PrefetchMax bounds the per-object data key pool (0: DefaultPrefetchMax;
	// negative: no prefetching).
	PrefetchMax int
}

// Volume is an open kmsfs volume.
type Volume struct {
	cfg      *Config
	id       [envelope.IDLen]byte
	mode     envelope.Mode
	layout   envelope.Layout
	be       backend.Backend
	keys     kms.Crypto
	log      *slog.Logger
	readOnly bool

	mu    sync.Mutex
	files map[uint64]*fileState // open files by backend inode

	bucket bucketKeySource
	meta   metaKey
	pool   *keyPool // per-object mode: data keys fetched ahead
	stats  counters

	unlock func() error // releases the backend's volume lock (read-write only)
}

// Open opens the volume stored in be.
func Open(ctx context.Context, be backend.Backend, opt Options) (*Volume, error) {
	cfg, err := ReadConfig(ctx, be)
	if err != nil {
		return nil, err
	}
	var unlock func() error
	if !opt.ReadOnly {
		if unlock, err = lockVolume(ctx, be); err != nil {
			return nil, err
		}
	}
	id, _ := cfg.ID()
	mode, _ := cfg.mode()
	if opt.Mode != 0 {
		mode = opt.Mode
	}
	log := opt.Logger
	if log == nil {
		log = slog.Default()
	}
	v := &Volume{
		cfg: cfg, id: id, mode: mode, be: be, keys: opt.Keys, log: log, readOnly: opt.ReadOnly,
		layout: envelope.Layout{HeaderSize: int64(cfg.HeaderSize), BlockSize: int64(cfg.BlockSize)},
		files:  map[uint64]*fileState{}, unlock: unlock,
	}
	v.bucket = bucketKeySource{maxAge: opt.BucketKeyMaxAge, maxFiles: opt.BucketKeyMaxFiles}
	if v.bucket.maxAge <= 0 {
		v.bucket.maxAge = DefaultBucketKeyMaxAge
	}
	if v.bucket.maxFiles <= 0 {
		v.bucket.maxFiles = DefaultBucketKeyMaxFiles
	}
	v.warnUnfinishedRewrap(ctx)
	if cfg.HasFeature(FeatureNameEncrypt) {
		// Every path operation needs the name keys: unwrap them now.
		names, err := v.meta.nameCipher(ctx, v)
		if err != nil {
			if unlock != nil {
				unlock()
			}
			return nil, err
		}
		v.be = newNameBackend(be, names, log)
	}
	if mode == envelope.ModePerObject && !opt.ReadOnly && opt.PrefetchMax >= 0 {
		n := opt.PrefetchMax
		if n == 0 {
			n = DefaultPrefetchMax
		}
		v.pool = newKeyPool(v, n)
	}
	return v, nil
}

// Config returns the volume config.
func (v *Volume) Config() *Config { return v.cfg }

// Backend returns the backend the volume lives on.
func (v *Volume) Backend() backend.Backend { return v.be }

// Layout returns the volume's block geometry.
func (v *Volume) Layout() envelope.Layout { return v.layout }

// ReadOnly reports whether the volume was opened read-only.
func (v *Volume) ReadOnly() bool { return v.readOnly }

// Close drops every key the volume holds.
func (v *Volume) Close() error {
	v.bucket.zero()
	v.meta.zero()
	v.pool.close()
	if unlock := v.unlock; unlock != nil {
		v.unlock = nil // a second Close must not close a reused descriptor
		return unlock()
	}
	return nil
}

// lockWait is how long opening a volume read-write waits for another
// process's lock: long enough for a mount being unmounted to finish closing.
const lockWait = 5 * time.Second

// lockVolume takes the backend's volume lock, if it has one (the local
// backend; S3 has no lock to take). Without a Locker it returns nil.
func lockVolume(ctx context.Context, be backend.Backend) (func() error, error) {
	l, ok := be.(backend.Locker)
	if !ok {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, lockWait)
	defer cancel()
	return l.LockVolume(ctx)
}

// PlainSize converts a backend stat of a regular file to its plaintext
// size. A stored size no sequence of blocks can produce is logged and
// reported as the size of its whole blocks plus one byte, so that the file
// does not look empty: the kernel then sends a read, which fails with EIO.
func (v *Volume) PlainSize(name string, cipherSize int64) int64 {
	n, err := v.layout.PlainSize(cipherSize)
	if err != nil {
		v.log.Warn("corrupt file size", "path", name, "err", err)
		full := max(cipherSize-v.layout.HeaderSize, 0) / v.layout.SealedBlockSize()
		return full*v.layout.BlockSize + 1
	}
	return n
}

// fileState is shared by every open handle of one backend file (hard links
// and repeated opens included): one content lock, one set of keys.
type fileState struct {
	ino  uint64
	refs int

	// content serialises writers against readers and each other: a write
	// is a read-modify-write of whole blocks.
	content sync.RWMutex

	keyMu sync.Mutex
	keys  *envelope.FileKeys // nil until the header is read or created

	// behindTo is the stored offset up to which writeback of a sequential
	// write has been started (see writeBehind); guarded by content.
	behindTo int64

	// gaps are runs of blocks inside the file never written (see gaps.go);
	// guarded by content.
	gaps []gapRange
	// gapWriter is the handle that last left a gap: writable, and open
	// while any gap is (a writable handle fills them all when it closes),
	// so a reader on a read-only handle can fill gaps through it.
	gapWriter *Handle
}

// writeBehindBytes is how much sequentially written ciphertext accumulates
// before its writeback is started: large enough that the disk gets long
// runs, small enough that the final fsync of a large file waits for little.
const writeBehindBytes = 8 << 20

func (v *Volume) acquire(ino uint64) *fileState {
	v.mu.Lock()
	defer v.mu.Unlock()
	st := v.files[ino]
	if st == nil {
		st = &fileState{ino: ino}
		v.files[ino] = st
	}
	st.refs++
	return st
}

func (v *Volume) release(st *fileState) {
	v.mu.Lock()
	defer v.mu.Unlock()
	st.refs--
	if st.refs == 0 {
		delete(v.files, st.ino)
		st.keyMu.Lock()
		if st.keys != nil {
			st.keys.Zero()
			st.keys = nil
		}
		st.keyMu.Unlock()
	}
}

// Handle is one open plaintext file.
type Handle struct {
	v      *Volume
	name   string
	f      backend.File
	st     *fileState
	append bool
	// writable: opened for writing (the backend file accepts writes).
	writable bool
}

// OpenFile opens (or with O_CREAT creates) the regular file name. flags are
// open(2) flags; O_TRUNC and O_APPEND are applied to the plaintext.
func (v *Volume) OpenFile(ctx context.Context, name string, flags int, mode uint32, owner *backend.Owner) (*Handle, error) {
	if v.readOnly && (flags&syscall.O_ACCMODE != syscall.O_RDONLY || flags&(syscall.O_CREAT|syscall.O_TRUNC) != 0) {
		return nil, syscall.EROFS
	}
	// O_TRUNC is applied below under the file's content lock, not by the
	// backend: a backend truncate would cut the header out from under a
	// writer that holds the lock on another handle.
	f, err := v.be.Open(ctx, name, flags&^(syscall.O_APPEND|syscall.O_TRUNC), mode, owner)
	if err != nil {
		return nil, err
	}
	var sst syscall.Stat_t
	if err := f.Stat(&sst); err != nil {
		f.Close()
		return nil, err
	}
	h := &Handle{v: v, name: name, f: f, st: v.acquire(sst.Ino), append: flags&syscall.O_APPEND != 0,
		writable: flags&syscall.O_ACCMODE != syscall.O_RDONLY}
	v.stats.filesOpened.Add(1)
	if flags&syscall.O_TRUNC != 0 && sst.Size != 0 {
		// Truncating to 0 drops the header too: the next write makes a new
		// header with a new data key, as an S3 PUT over an object gets one.
		if err := h.Truncate(ctx, 0); err != nil {
			h.Close()
			return nil, err
		}
	}
	return h, nil
}

// Name is the path the handle was opened with, for log lines.
func (h *Handle) Name() string { return h.name }

func (h *Handle) cipherSize() (int64, error) {
	var st syscall.Stat_t
	if err := h.f.Stat(&st); err != nil {
		return 0, err
	}
	return st.Size, nil
}

// Size returns the plaintext size.
func (h *Handle) Size() (int64, error) {
	cs, err := h.cipherSize()
	if err != nil {
		return 0, err
	}
	return h.v.layout.PlainSize(cs)
}

// Stat returns the backend stat with the plaintext size filled in.
func (h *Handle) Stat(st *syscall.Stat_t) error {
	if err := h.f.Stat(st); err != nil {
		return err
	}
	st.Size = h.v.PlainSize(h.name, st.Size)
	return nil
}

// fileKeys returns the file's keys, reading and authenticating the header on
// first use. With create, an empty file gets a new header and key; without,
// an empty file returns nil keys.
func (h *Handle) fileKeys(ctx context.Context, create bool) (*envelope.FileKeys, error) {
	st := h.st
	st.keyMu.Lock()
	defer st.keyMu.Unlock()
	if st.keys != nil {
		return st.keys, nil
	}
	ctx, cancel := detachKeyWork(ctx)
	defer cancel()
	cs, err := h.cipherSize()
	if err != nil {
		return nil, err
	}
	if cs == 0 {
		if !create {
			return nil, nil
		}
		keys, err := h.v.newHeader(ctx, h.f, h.name)
		if err != nil {
			return nil, err
		}
		st.keys = keys
		return keys, nil
	}
	region := make([]byte, h.v.layout.HeaderSize)
	if _, err := h.f.ReadAt(region, 0); err != nil {
		return nil, fmt.Errorf("read header: %w", err)
	}
	keys, err := h.v.openHeader(ctx, region)
	if err != nil {
		// A header rewrite (kmsfs rewrap) that a crash tore leaves a
		// header that does not parse or unwrap; its intent completes it.
		id, ok := envelope.HeaderFileID(region)
		if !ok {
			return nil, err
		}
		if replayed, rerr := h.replayIntent(ctx, id); rerr != nil || !replayed {
			return nil, err
		}
		if _, err := h.f.ReadAt(region, 0); err != nil {
			return nil, fmt.Errorf("read header: %w", err)
		}
		if keys, err = h.v.openHeader(ctx, region); err != nil {
			return nil, err
		}
	}
	if _, err := h.replayIntent(ctx, keys.FileID()); err != nil {
		keys.Zero()
		return nil, err
	}
	st.keys = keys
	return keys, nil
}

// detachKeyWork gives the KMS work for a shared key (a file's data key, the
// volume's metadata key) a context of its own. A FUSE request is interrupted
// (its context cancelled) whenever the calling thread gets any signal, Go's
// own preemption signals and SIGCHLD included, and applications do not
// expect EINTR from read(2), write(2) or getxattr(2) on a regular file: the
// kernel passes the daemon's EINTR straight back, SA_RESTART or not, which is
// why libfuse leaves interrupts off unless mounted with -o intr. So the work
// runs detached from the request, bounded by keyTimeout: throttling is waited
// out, not surfaced, and the key it yields is cached for the retry. The key
// is shared by every handle of the file (or every file, for the metadata
// key), so one caller's interrupt must not fail the others either.
func detachKeyWork(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), keyTimeout)
}

// keyTimeout bounds the KMS work for a shared key once it is detached from
// the request.
const keyTimeout = 2 * time.Minute

// newHeader creates a file's key and writes its header.
func (v *Volume) newHeader(ctx context.Context, f backend.File, name string) (*envelope.FileKeys, error) {
	var fileID [envelope.IDLen]byte
	var dk kms.DataKey
	if v.mode == envelope.ModePerObject {
		// The data key's context names the file ID, so both come together,
		// from the prefetch pool when there is one.
		var err error
		if v.pool != nil {
			fileID, dk, err = v.pool.take(ctx)
		} else {
			fileID, dk, err = (&keyPool{v: v}).fetch(ctx)
		}
		if err != nil {
			return nil, fmt.Errorf("generate data key: %w", err)
		}
	} else if _, err := rand.Read(fileID[:]); err != nil {
		return nil, err
	}
	h := envelope.Header{
		RegionSize: int(v.layout.HeaderSize), Mode: v.mode, Suite: envelope.SuiteAES256GCM,
		BlockSize: int(v.layout.BlockSize), FileID: fileID, VolumeID: v.id,
	}
	var fileKey []byte
	switch v.mode {
	case envelope.ModeBucketKey:
		var bk bucketKey
		var err error
		fileKey, bk, err = v.bucket.newFileKey(ctx, v, fileID)
		if err != nil {
			return nil, fmt.Errorf("bucket key: %w", err)
		}
		h.BucketKeyID, h.KeyID, h.WrappedKey = bk.id, bk.keyARN, bk.wrapped
	default:
		h.KeyID, h.WrappedKey, fileKey = dk.KeyID, dk.CiphertextBlob, dk.Plaintext
	}
	defer kms.Zero(fileKey)
	keys, err := envelope.DeriveFileKeys(fileKey, fileID)
	if err != nil {
		return nil, err
	}
	region, err := h.Marshal(keys.MACKey())
	if err != nil {
		keys.Zero()
		return nil, err
	}
	if _, err := f.WriteAt(region, 0); err != nil {
		keys.Zero()
		return nil, fmt.Errorf("write header: %w", err)
	}
	v.stats.filesCreated.Add(1)
	return keys, nil
}

// openHeader parses a header region, unwraps its key through the key cache
// and authenticates the header.
func (v *Volume) openHeader(ctx context.Context, region []byte) (*envelope.FileKeys, error) {
	p, err := envelope.ParseHeader(region)
	if err != nil {
		return nil, fmt.Errorf("header: %w", err)
	}
	if p.VolumeID != v.id {
		return nil, fmt.Errorf("header: %w: file belongs to volume %x, not this volume", envelope.ErrAuth, p.VolumeID)
	}
	if int64(p.RegionSize) != v.layout.HeaderSize || int64(p.BlockSize) != v.layout.BlockSize {
		return nil, fmt.Errorf("header: %w: geometry %d/%d differs from the volume's", envelope.ErrCorrupt, p.RegionSize, p.BlockSize)
	}
	var fileKey []byte
	switch p.Mode {
	case envelope.ModeBucketKey:
		bucketKey, _, err := v.keys.Decrypt(ctx, p.KeyID, p.WrappedKey, bucketContext(v.cfg.VolumeID))
		if err != nil {
			return nil, fmt.Errorf("unwrap bucket key: %w", err)
		}
		fileKey, err = envelope.BucketFileKey(bucketKey, p.FileID)
		kms.Zero(bucketKey)
		if err != nil {
			return nil, err
		}
	default:
		fileKey, _, err = v.keys.Decrypt(ctx, p.KeyID, p.WrappedKey, fileContext(v.cfg.VolumeID, p.FileID))
		if err != nil {
			return nil, fmt.Errorf("unwrap data key: %w", err)
		}
	}
	defer kms.Zero(fileKey)
	keys, err := envelope.DeriveFileKeys(fileKey, p.FileID)
	if err != nil {
		return nil, err
	}
	if err := p.Verify(keys); err != nil {
		keys.Zero()
		return nil, err
	}
	return keys, nil
}

// bufPool holds block buffers for reads and writes (up to FUSE's MaxWrite
// plus one block of slack on each side), to keep the hot path free of
// large allocations.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 1<<20+64<<10); return &b }}

// readBlocks decrypts blocks [first, end) into dst (appending). A block
// short of the file's end stops the read (EOF); a block that fails
// authentication is an error.
func (h *Handle) readBlocks(keys *envelope.FileKeys, dst []byte, first, end uint64, cipherSize int64) ([]byte, error) {
	l := h.v.layout
	off := l.BlockOffset(first)
	stop := min(l.BlockOffset(end), cipherSize)
	if stop <= off {
		return dst, nil
	}
	cbp := bufPool.Get().(*[]byte)
	defer bufPool.Put(cbp)
	cbuf := (*cbp)[:0]
	if int64(cap(cbuf)) < stop-off {
		cbuf = make([]byte, 0, stop-off)
	}
	cbuf = cbuf[:stop-off]
	n, err := h.f.ReadAt(cbuf, off)
	if err != nil && !(errors.Is(err, io.EOF) && int64(n) == stop-off) {
		if !errors.Is(err, io.EOF) {
			return nil, err
		}
		cbuf = cbuf[:n]
	}
	return keys.OpenBlocks(dst, cbuf, first, int(l.SealedBlockSize()))
}

// ReadAt reads plaintext at off. It returns io.EOF at the end of the file.
func (h *Handle) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	h.st.content.RLock()
	defer h.st.content.RUnlock()
	bs := h.v.layout.BlockSize
	for h.st.gapsOverlap(off-off%bs, off+int64(len(p))) {
		if err := h.fillGapsShared(ctx, off-off%bs, off+int64(len(p))); err != nil {
			return 0, err
		}
	}
	cs, err := h.cipherSize()
	if err != nil {
		return 0, err
	}
	size, err := h.v.layout.PlainSize(cs)
	if err != nil {
		return 0, err
	}
	if off >= size {
		return 0, io.EOF
	}
	n := min(int64(len(p)), size-off)
	keys, err := h.fileKeys(ctx, false)
	if err != nil {
		return 0, err
	}
	if keys == nil {
		return 0, io.EOF
	}
	first, end := h.v.layout.Blocks(off, n)
	if off%bs == 0 && (n%bs == 0 || off+n == size) {
		// The blocks decrypt to exactly p[:n] (the kernel's page-aligned
		// reads): decrypt straight into the reply, no bounce buffer.
		plain, err := h.readBlocks(keys, p[:0], first, end, cs)
		if err != nil {
			return 0, err
		}
		if int64(len(plain)) != n {
			return 0, fmt.Errorf("%w: file shorter than its size", envelope.ErrCorrupt)
		}
	} else {
		pbp := bufPool.Get().(*[]byte)
		defer bufPool.Put(pbp)
		plain, err := h.readBlocks(keys, (*pbp)[:0], first, end, cs)
		if err != nil {
			return 0, err
		}
		*pbp = plain[:0]
		skip := off - int64(first)*bs
		if int64(len(plain)) < skip+n {
			return 0, fmt.Errorf("%w: file shorter than its size", envelope.ErrCorrupt)
		}
		copy(p, plain[skip:skip+n])
	}
	h.v.stats.bytesRead.Add(uint64(n))
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// WriteAt writes plaintext at off (at the end with O_APPEND). Writing past
// the end fills the gap with encrypted zero blocks: holes are stored, so a
// zeroed-out block is still detected as tampering. A gap of up to
// maxDeferredGap is filled later, or by the writes it is waiting for (see
// gaps.go).
func (h *Handle) WriteAt(ctx context.Context, p []byte, off int64) (int, error) {
	if h.v.readOnly {
		return 0, syscall.EROFS
	}
	h.st.content.Lock()
	defer h.st.content.Unlock()
	size, err := h.Size()
	if err != nil {
		return 0, err
	}
	if h.append {
		off = size
	}
	end := off + int64(len(p))
	if end > MaxFileSize {
		return 0, syscall.EFBIG
	}
	keys, err := h.fileKeys(ctx, true)
	if err != nil {
		return 0, err
	}
	if len(h.st.gaps) > 0 && len(p) > 0 {
		bs := h.v.layout.BlockSize
		lo, hi := off-off%bs, (end+bs-1)/bs*bs
		if h.st.gapsOverlap(lo, hi) {
			done, err := h.writeIntoGap(ctx, keys, p, off)
			if err != nil {
				return 0, err
			}
			if done {
				h.v.stats.bytesWritten.Add(uint64(len(p)))
				return len(p), nil
			}
			if err := h.fillGaps(ctx, lo, hi); err != nil {
				return 0, err
			}
		}
	}
	switch {
	case off > size && off-size <= maxDeferredGap && len(p) > 0:
		if err := h.writePastEnd(ctx, keys, p, off, size); err != nil {
			return 0, err
		}
	case off > size:
		if err := h.extendLocked(ctx, keys, size, off); err != nil {
			return 0, err
		}
		size = off
		fallthrough
	default:
		if err := h.writeLocked(ctx, keys, p, off, size); err != nil {
			return 0, err
		}
	}
	if end >= size {
		h.writeBehind(h.v.layout.CipherSize(end, true))
	}
	h.v.stats.bytesWritten.Add(uint64(len(p)))
	return len(p), nil
}

// maxDeferredGap is the largest gap a write past the end leaves to be
// filled later: ample for the writeback cache's reordering (about 12 MiB),
// small enough that filling it at close is quick. A larger hole is filled
// at once, after a free-space check (extendLocked).
const maxDeferredGap = 64 << 20

// writeBehind starts writeback of what a write that ended at the end of the
// file (stored size cipherEnd) added, once that is writeBehindBytes: a file
// written front to back is then on its way to the disk while it is being
// written, as with a plain file written by cp or dd, instead of all at the
// fsync or close. Random writes inside a file are left to the page cache.
// The content lock is held.
func (h *Handle) writeBehind(cipherEnd int64) {
	wb, ok := h.f.(backend.WriteBehinder)
	if !ok {
		return
	}
	st := h.st
	if st.behindTo > cipherEnd {
		st.behindTo = cipherEnd // truncated since
	}
	if cipherEnd-st.behindTo < writeBehindBytes {
		return
	}
	// Failure only means the data waits for the kernel's own writeback.
	if err := wb.WriteBehind(st.behindTo, cipherEnd-st.behindTo); err != nil {
		h.v.log.Debug("write-behind failed", "path", h.name, "err", err)
	}
	st.behindTo = cipherEnd
}

// writeLocked writes p at off <= size as whole sealed blocks: the first and
// last blocks are read, modified and resealed when p covers them partly.
func (h *Handle) writeLocked(ctx context.Context, keys *envelope.FileKeys, p []byte, off, size int64) error {
	if len(p) == 0 {
		return nil
	}
	l := h.v.layout
	bs := l.BlockSize
	end := off + int64(len(p))
	first, last := l.Blocks(off, int64(len(p)))
	regionStart := int64(first) * bs
	regionEnd := min(int64(last)*bs, max(end, size))
	pbp := bufPool.Get().(*[]byte)
	defer bufPool.Put(pbp)
	buf := (*pbp)[:0]
	cs := l.CipherSize(size, true)
	var err error
	// Existing plaintext of the first block, when p starts inside it.
	readFirst := off > regionStart && regionStart < size
	if readFirst {
		if buf, err = h.readBlocks(keys, buf, first, first+1, cs); err != nil {
			return err
		}
	}
	need := int(regionEnd - regionStart)
	// When p is exactly the blocks (page-aligned writes, appends of whole
	// blocks), it is sealed as it is, without a copy.
	whole := off == regionStart && end == regionEnd
	if whole {
		buf = p
	} else if cap(buf) < need {
		nb := make([]byte, len(buf), need)
		copy(nb, buf)
		buf = nb
	}
	if !whole {
		buf = buf[:need]
		copy(buf[off-regionStart:], p)
	}
	// Existing plaintext after p in the last block, unless that block is the
	// first one and was read above (p overwrote only its middle then). Every
	// other byte of buf comes from p: off <= size, so nothing stale from the
	// pool reaches a sealed block.
	if end < regionEnd && !(last-1 == first && readFirst) {
		lastStart := int64(last-1) * bs
		tail, err := h.readBlocks(keys, nil, last-1, last, cs)
		if err != nil {
			return err
		}
		if int64(len(tail)) < regionEnd-lastStart {
			return fmt.Errorf("%w: block %d shorter than the file size says", envelope.ErrCorrupt, last-1)
		}
		copy(buf[end-regionStart:], tail[end-lastStart:regionEnd-lastStart])
	}
	sbp := bufPool.Get().(*[]byte)
	defer bufPool.Put(sbp)
	sealed, err := keys.SealBlocks((*sbp)[:0], buf, first, int(bs))
	if err != nil {
		return err
	}
	*sbp = sealed[:0]
	if !whole {
		*pbp = buf[:0]
	}
	oldBytes := cs - l.BlockOffset(first) // stored bytes this write replaces
	return h.changeInPlace(ctx, keys, l.BlockOffset(first), sealed, oldBytes, -1)
}

// MaxFileSize is the largest plaintext file kmsfs makes: ext4's limit with
// 4 KiB blocks (16 TiB). Beyond it writes and truncates fail with EFBIG, as
// on ext4, instead of starting to fill an impossible hole.
const MaxFileSize = 1 << 44

// extendLocked grows the file from size to newSize with zeros, in chunks so
// that a large hole does not need a large buffer. Holes are stored as
// encrypted zeros, so a large one is checked against the free space first
// (ENOSPC before writing, not after filling the disk) and the filling stops
// when the request is cancelled.
func (h *Handle) extendLocked(ctx context.Context, keys *envelope.FileKeys, size, newSize int64) error {
	if newSize > MaxFileSize {
		return syscall.EFBIG
	}
	l := h.v.layout
	if need := l.CipherSize(newSize, true) - l.CipherSize(size, true); need > 64<<20 {
		var st syscall.Statfs_t
		if err := h.v.be.Statfs(ctx, &st); err == nil && uint64(need) > st.Bavail*uint64(st.Bsize) {
			return syscall.ENOSPC
		}
	}
	const chunk = 1 << 20
	zeros := make([]byte, chunk)
	for size < newSize {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(newSize-size, chunk-size%l.BlockSize)
		if err := h.writeLocked(ctx, keys, zeros[:n], size, size); err != nil {
			return err
		}
		size += n
	}
	return nil
}

// Truncate sets the plaintext size.
func (h *Handle) Truncate(ctx context.Context, newSize int64) error {
	if h.v.readOnly {
		return syscall.EROFS
	}
	h.st.content.Lock()
	defer h.st.content.Unlock()
	size, err := h.Size()
	if err != nil {
		return err
	}
	// A sequential run written after a cut starts at the cut.
	h.st.behindTo = min(h.st.behindTo, h.v.layout.CipherSize(newSize, true))
	if newSize == 0 {
		h.st.gaps = nil
	} else if err := h.fillGaps(ctx, 0, -1); err != nil {
		return err
	}
	switch {
	case newSize == size:
		return nil
	case newSize == 0:
		// Drop the header too: the next write starts a new key.
		h.st.keyMu.Lock()
		if h.st.keys != nil {
			h.st.keys.Zero()
			h.st.keys = nil
		}
		h.st.keyMu.Unlock()
		return h.f.Truncate(0)
	case newSize > size:
		keys, err := h.fileKeys(ctx, true)
		if err != nil {
			return err
		}
		return h.extendLocked(ctx, keys, size, newSize)
	}
	keys, err := h.fileKeys(ctx, false)
	if err != nil {
		return err
	}
	l := h.v.layout
	if rest := newSize % l.BlockSize; rest != 0 {
		// The new last block is partial: reseal its first rest bytes.
		blockNo := uint64(newSize / l.BlockSize)
		plain, err := h.readBlocks(keys, nil, blockNo, blockNo+1, l.CipherSize(size, true))
		if err != nil {
			return err
		}
		sealed, err := keys.SealBlock(nil, plain[:rest], blockNo)
		if err != nil {
			return err
		}
		// Truncate, then rewrite the new last block: a crash between the
		// two would leave a cut block, so the pair is one intent.
		return h.changeInPlace(ctx, keys, l.BlockOffset(blockNo), sealed, int64(len(sealed)), l.CipherSize(newSize, true))
	}
	return h.f.Truncate(l.CipherSize(newSize, true))
}

// Allocate implements fallocate(2) mode 0 (reserve, growing the size) and
// FALLOC_FL_KEEP_SIZE (a no-op: space is reserved by writing, and blocks
// past the end would be read as a torn file). Other modes are ENOTSUP.
func (h *Handle) Allocate(ctx context.Context, off, n int64, mode uint32) error {
	const fallocKeepSize = 0x01
	switch mode {
	case 0:
		size, err := h.Size()
		if err != nil {
			return err
		}
		if off+n > size {
			return h.Truncate(ctx, off+n)
		}
		return nil
	case fallocKeepSize:
		return nil
	}
	return syscall.EOPNOTSUPP
}

// Sync makes written data durable.
func (h *Handle) Sync(ctx context.Context) error {
	if err := h.fillAllGaps(ctx); err != nil {
		return err
	}
	return h.f.Sync()
}

// fillAllGaps fills the file's gaps (gaps.go) before the backend must hold
// the whole file.
func (h *Handle) fillAllGaps(ctx context.Context) error {
	h.st.content.Lock()
	defer h.st.content.Unlock()
	return h.fillGaps(ctx, 0, -1)
}

// Close releases the handle; the file's keys are zeroed when its last
// handle closes.
//
// The shared state is released before the backing file is closed: once it
// is closed the backend may hand its inode number to a new file, which must
// not find this file's state (and keys) under that number.
func (h *Handle) Close() error {
	if h.writable {
		h.st.content.Lock()
		// Release has no request context; the keys are loaded already.
		err := h.fillGaps(context.Background(), 0, -1)
		// Never fill through this handle once its descriptor is closed:
		// the number may then belong to another file.
		if h.st.gapWriter == h {
			h.st.gapWriter = nil
		}
		h.st.content.Unlock()
		if err != nil {
			h.v.log.Error("close: holes left unfilled read as EIO", "path", "/"+h.name, "err", err)
		}
	}
	h.v.release(h.st)
	return h.f.Close()
}

// NeedsFlush says whether Flush does anything for this file: only for
// backends that stage writes until close.
func (h *Handle) NeedsFlush() bool {
	_, ok := h.f.(backend.Flusher)
	return ok
}

// Flush runs at close(2): backends that stage writes (S3) upload here, so a
// failed upload is reported to the closing application.
func (h *Handle) Flush(ctx context.Context) error {
	if fl, ok := h.f.(backend.Flusher); ok {
		if err := h.fillAllGaps(ctx); err != nil {
			return err
		}
		return fl.Flush()
	}
	return nil
}
