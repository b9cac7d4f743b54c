package volume

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
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
	// NoKeyReadAhead turns off the read-ahead of keys (prefetch.go), which
	// is on whenever Keys implements KeyPrefetcher.
	NoKeyReadAhead bool
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

	mu       sync.Mutex
	files    map[uint64]*fileState // open files by backend inode
	requests RequestObserver       // set by ObserveRequests; guarded by mu

	bucket bucketKeySource
	meta   metaKey
	pool   *keyPool // per-object mode: data keys fetched ahead
	ra     *keyReadAhead
	stats  counters

	// compressLevel is the zstd level new files are compressed at; 0: the
	// volume does not compress (compress.go). The codec is made on first
	// use, which on any volume may be a read of a compressed file.
	compressLevel int
	codecOnce     sync.Once
	codec         *envelope.Codec
	codecErr      error
	outq          *writeOutQueue // background write-out of compressed files
	// writeOuts counts the stages stored (compress.go): a stat taken
	// before one finished may show the stored file's old size.
	writeOuts atomic.Uint64

	unlock func() error // releases the backend's volume lock (read-write only)
	// exclusive: nothing but this Volume changes the tree (see Exclusive).
	exclusive bool
}

// Open opens the volume stored in be.
func Open(ctx context.Context, be backend.Backend, opt Options) (*Volume, error) {
	cfg, err := ReadConfig(ctx, be)
	if err != nil {
		return nil, err
	}
	var unlock func() error
	if !opt.ReadOnly {
		if unlock, err = lockVolumeShared(ctx, be); err != nil {
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
	if cfg.HasFeature(FeatureCompression) {
		if v.compressLevel, err = ParseCompress(cfg.Compress); err != nil {
			if unlock != nil {
				unlock()
			}
			return nil, err
		}
		if !opt.ReadOnly {
			v.outq = newWriteOutQueue(v)
		}
	}
	if unlock != nil {
		sh, ok := be.(sharedNamespace)
		v.exclusive = !ok || !sh.SharedNamespace()
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
	if kp, ok := opt.Keys.(KeyPrefetcher); ok && !opt.NoKeyReadAhead {
		v.ra = newKeyReadAhead(v, kp)
		v.keys = readAheadKeys{Crypto: opt.Keys, ra: v.ra}
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

// Exclusive reports whether nothing but this open volume changes its tree:
// it holds the backend's volume lock (a read-write open of a local
// directory, or the writer lease of an S3 volume) and the backend is not a
// namespace other mounts change at the same time (a shared volume). A
// read-only open holds no lock, so a writer elsewhere may change the tree
// under it. The mount caches names and attributes in the kernel far longer
// when this is true.
func (v *Volume) Exclusive() bool { return v.exclusive }

// ReadOnly reports whether the volume was opened read-only.
func (v *Volume) ReadOnly() bool { return v.readOnly }

// Close drops every key the volume holds.
func (v *Volume) Close() error {
	// Files closed but not yet written out are written first: they need
	// the keys dropped below.
	v.outq.close()
	if v.outq != nil {
		v.writeOutOpen()
	}
	v.bucket.zero()
	v.meta.zero()
	v.pool.close()
	v.ra.close()
	v.codecOnce.Do(func() {}) // no codec is made after Close
	if v.codec != nil {
		v.codec.Close()
	}
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

// lockVolumeShared takes the lock as a read-write mount: shared where the
// backend lets many mounts write at once, else as lockVolume.
func lockVolumeShared(ctx context.Context, be backend.Backend) (func() error, error) {
	l, ok := be.(backend.SharedLocker)
	if !ok {
		return lockVolume(ctx, be)
	}
	ctx, cancel := context.WithTimeout(ctx, lockWait)
	defer cancel()
	return l.LockVolumeShared(ctx)
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
