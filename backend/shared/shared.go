// Package shared is the backend of shared volumes: many kmsfs processes,
// on as many machines, mounting one volume at once. The tree (inodes,
// directory entries, symlink targets, xattrs, chunk lists) lives in a
// metadata store (meta.Store; PostgreSQL in pgmeta), every change of it one
// transaction; file data lives in S3 as immutable chunk objects under
// random keys (chunk.go). A write never modifies an object: the changed
// chunks of a file are uploaded as new objects, then its chunk list is
// switched in one transaction guarded by the file's generation, so two
// writers of one file never mix their chunks and the later one learns that
// its data was not committed. Chunks no file points to any more are
// recorded as garbage and deleted by GC after a grace period.
//
// Like every backend it stores what the volume hands it: a shared volume
// always encrypts names, symlink targets and xattr values, so the database
// holds no plaintext, and file content is ciphertext.
//
// Nothing is cached across operations but the state of files open in this
// process, the data of small chunks (immutable, so never stale) and, for
// the stat that follows it, what this process's own latest change returned
// (echo.go): every other lookup, stat and listing reads the store, so
// another mount's committed change is seen as soon as the kernel asks
// again (its entry and attribute timeouts, at most SharedAttrTimeout).
package shared

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/kmsfs/kmsfs/backend"
	"github.com/kmsfs/kmsfs/backend/posixacl"
	"github.com/kmsfs/kmsfs/backend/s3"
	"github.com/kmsfs/kmsfs/backend/shared/meta"
)

// ConfigName is the volume config object (volume.ConfigName); the backend
// reads the volume ID and header size from it and records the volume in
// the store when it is first written.
const ConfigName = "volume.json"

// Feature is the volume feature of shared volumes (volume.FeatureShared).
const Feature = "shared-metadata"

// ChunkDir is the folder under the volume prefix holding chunk objects.
const ChunkDir = "chunks/"

// Config says where a shared volume lives.
type Config struct {
	Store meta.Store
	// S3 is the bucket and prefix of the chunks and of the volume config
	// (PREFIX/.kmsfs/volume.json); only its client, bucket, prefix and
	// metadata objects are used.
	S3 *s3.Backend
	// URL names the volume in error messages (s3://bucket/prefix).
	URL string
	// ChunkSize is the chunk size of a volume created through this
	// backend (default DefaultChunkSize); an existing volume's is read.
	ChunkSize int64
	// StagingDir holds staged ciphertext of files being written.
	StagingDir string
	Logger     *slog.Logger
	// GCEvery, if set, runs GC of the recorded garbage (no sweep) in the
	// background at this interval, with grace GCGrace (default
	// DefaultGCGrace); mounts do, so that overwritten data does not pile up.
	GCEvery time.Duration
	GCGrace time.Duration
}

// Backend is a shared volume.
type Backend struct {
	store      meta.Store
	s3b        *s3.Backend
	client     *awss3.Client
	bucket     string
	prefix     string
	url        string
	log        *slog.Logger
	stagingDir string
	ownStaging bool
	uid, gid   uint32
	newChunk   int64
	// schemaRaised: the store is at meta.SchemaVersion, so chunks that
	// leave out stream bytes may be committed (raiseSchema).
	schemaRaised atomic.Bool

	ctx    context.Context
	cancel context.CancelFunc

	// Set once the volume exists (at Open, or when init writes its config).
	volMu      sync.RWMutex
	volID      [16]byte
	chunkSize  int64
	regionSize int
	ready      bool

	mu      sync.Mutex
	open    map[uint64]*openFile
	writing map[string]*openFile // by the name a handle opened it for writing

	smallMu sync.Mutex
	small   map[string][]byte // small chunks' data by key (immutable)

	echoes echoes // attributes of this process's latest changes, by path
	lock   volumeLock
}

var (
	_ backend.Backend  = (*Backend)(nil)
	_ backend.Accesser = (*Backend)(nil)
)

// volumeDoc is the part of volume.json the backend reads.
type volumeDoc struct {
	VolumeID   string   `json:"volume_id"`
	HeaderSize int      `json:"header_size"`
	BlockSize  int      `json:"block_size"`
	Features   []string `json:"features"`
}

func parseVolumeDoc(data []byte) (volumeDoc, [16]byte, error) {
	var d volumeDoc
	var id [16]byte
	if err := json.Unmarshal(data, &d); err != nil {
		return d, id, fmt.Errorf("volume config: %w", err)
	}
	b, err := hex.DecodeString(d.VolumeID)
	if err != nil || len(b) != len(id) {
		return d, id, fmt.Errorf("volume config: bad volume_id %q", d.VolumeID)
	}
	copy(id[:], b)
	return d, id, nil
}

// Open opens a shared volume, or a place for one: with no volume config in
// the bucket, the store must hold no volume either, and the volume comes
// to be when `kmsfs init` writes its config. A store of another volume, or
// of a newer schema, is refused before anything is changed.
func Open(ctx context.Context, cfg Config) (*Backend, error) {
	b := &Backend{
		store: cfg.Store, s3b: cfg.S3, client: cfg.S3.Client(), bucket: cfg.S3.Bucket(), prefix: cfg.S3.Prefix(),
		url: cfg.URL, log: cfg.Logger, newChunk: cfg.ChunkSize, open: map[uint64]*openFile{}, writing: map[string]*openFile{}, small: map[string][]byte{},
		uid: uint32(os.Getuid()), gid: uint32(os.Getgid()),
	}
	if b.log == nil {
		b.log = slog.Default()
	}
	if b.newChunk <= 0 {
		b.newChunk = DefaultChunkSize
	}
	mv, err := b.store.Volume(ctx)
	if err != nil && !errors.Is(err, meta.ErrNoVolume) {
		return nil, err
	}
	if err == nil && mv.SchemaVersion > meta.SchemaVersion {
		return nil, fmt.Errorf("the metadata database has schema version %d, newer than this kmsfs reads (%d); upgrade kmsfs", mv.SchemaVersion, meta.SchemaVersion)
	}
	b.schemaRaised.Store(err == nil && mv.SchemaVersion >= meta.SchemaVersion)
	data, rerr := b.s3b.ReadMeta(ctx, ConfigName)
	switch {
	case errors.Is(rerr, fs.ErrNotExist):
		if err == nil {
			return nil, fmt.Errorf("the metadata database already holds volume %s, but %s has no volume config", mv.ID, b.url)
		}
	case rerr != nil:
		return nil, fmt.Errorf("read volume config: %w", rerr)
	default:
		doc, id, perr := parseVolumeDoc(data)
		if perr != nil {
			return nil, perr
		}
		if !slices.Contains(doc.Features, Feature) {
			return nil, fmt.Errorf("%s is not a shared volume (its metadata is in the bucket; mount it without --meta)", b.url)
		}
		if errors.Is(err, meta.ErrNoVolume) {
			return nil, fmt.Errorf("the metadata database holds no kmsfs volume; volume %s's metadata is elsewhere", doc.VolumeID)
		}
		if mv.ID != doc.VolumeID {
			return nil, fmt.Errorf("the metadata database belongs to volume %s, not to volume %s at %s", mv.ID, doc.VolumeID, b.url)
		}
		b.volID, b.chunkSize, b.regionSize, b.ready = id, mv.ChunkSize, doc.HeaderSize, true
	}
	b.stagingDir = cfg.StagingDir
	if b.stagingDir == "" {
		b.stagingDir = filepath.Join(os.TempDir(), fmt.Sprintf("kmsfs-shared-%d", os.Getpid()))
		b.ownStaging = true
	}
	if err := os.MkdirAll(b.stagingDir, 0o700); err != nil {
		return nil, fmt.Errorf("shared backend: staging dir: %w", err)
	}
	b.ctx, b.cancel = context.WithCancel(context.WithoutCancel(ctx))
	if cfg.GCEvery > 0 {
		grace := cfg.GCGrace
		if grace <= 0 {
			grace = DefaultGCGrace
		}
		go b.backgroundGC(cfg.GCEvery, grace)
	}
	return b, nil
}

// backgroundGC collects recorded garbage until the backend is closed. Two
// mounts doing so at once is harmless: a chunk is deleted only when no
// file references it, and deleting it twice is no error.
func (b *Backend) backgroundGC(every, grace time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-b.ctx.Done():
			return
		case <-t.C:
		}
		if !b.isReady() {
			continue
		}
		if r, err := b.GC(b.ctx, GCOptions{Grace: grace}); err != nil && b.ctx.Err() == nil {
			b.log.Warn("shared volume: background gc failed", "err", err)
		} else if r.Deleted > 0 {
			b.log.Info("shared volume: background gc", "deleted", r.Deleted)
		}
	}
}

// Store returns the metadata store.
func (b *Backend) Store() meta.Store { return b.store }

// Caps: the store has hard links, xattrs, renameat2 and device nodes.
func (b *Backend) Caps() backend.Caps {
	return backend.Caps{HardLinks: true, Xattrs: true, Rename2: true, Mknod: true}
}

// SharedNamespace says that other processes change the tree at the same
// time: the volume then trusts what it caches by path only briefly.
func (b *Backend) SharedNamespace() bool { return true }

// Close removes the staging directory; files must be closed before.
func (b *Backend) Close() error {
	b.cancel()
	if b.ownStaging {
		os.Remove(b.stagingDir)
	}
	return nil
}

func (b *Backend) isReady() bool {
	b.volMu.RLock()
	defer b.volMu.RUnlock()
	return b.ready
}

func split(name string) []string {
	if name == "" {
		return nil
	}
	return strings.Split(name, "/")
}

// fail turns a store error into *os.PathError with an errno; a failure of
// the store itself is logged and is EIO.
func (b *Backend) fail(op, name string, err error) error {
	if err == nil {
		return nil
	}
	var pe *os.PathError
	if errors.As(err, &pe) {
		return err
	}
	// Only the store's own answers are errnos to pass on; an errno inside
	// a network error (ECONNRESET from S3 or the database) is EIO.
	en, ok := err.(syscall.Errno)
	switch {
	case ok:
	case errors.Is(err, meta.ErrConflict):
		b.log.Error("shared volume: write lost to a concurrent writer", "op", op, "path", "/"+name, "err", err)
		en = syscall.EIO
	default:
		b.log.Error("shared volume: operation failed", "op", op, "path", "/"+name, "err", err)
		en = syscall.EIO
	}
	return &os.PathError{Op: op, Path: "/" + name, Err: en}
}

// opCtx detaches a request's context from its cancellation: FUSE
// interrupts requests for any signal the caller gets, and a transaction
// abandoned halfway would answer EINTR for a change that did happen.
func opCtx(ctx context.Context) context.Context { return context.WithoutCancel(ctx) }

func (b *Backend) owner(o *backend.Owner) (uint32, uint32) {
	if o == nil || os.Getuid() != 0 {
		return b.uid, b.gid
	}
	return o.Uid, o.Gid
}

func fillStat(a meta.Attr, st *syscall.Stat_t) {
	*st = syscall.Stat_t{
		Ino: a.Ino, Mode: a.Mode, Nlink: uint64(a.Nlink), Uid: a.Uid, Gid: a.Gid, Rdev: a.Rdev,
		Size: a.Size, Blksize: 4096, Blocks: (a.Size + 511) / 512,
		Atim: syscall.NsecToTimespec(a.Atime.UnixNano()),
		Mtim: syscall.NsecToTimespec(a.Mtime.UnixNano()),
		Ctim: syscall.NsecToTimespec(a.Ctime.UnixNano()),
	}
}

func (b *Backend) Lstat(ctx context.Context, name string, st *syscall.Stat_t) error {
	if !b.isReady() {
		return b.fail("stat", name, syscall.ENOENT)
	}
	a, ok := b.echoes.take(name)
	if !ok {
		var err error
		if a, err = b.store.Lookup(opCtx(ctx), split(name)); err != nil {
			return b.fail("stat", name, err)
		}
		b.named(name, a.Ino)
	}
	b.overlay(&a)
	fillStat(a, st)
	return nil
}

// Access records a read of name, inode ino (backend.Accesser): its atime
// moves to the store's clock now and its ctime stays, in one statement.
// Another mount sees it as any other change, within its attribute timeout.
func (b *Backend) Access(ctx context.Context, name string, ino uint64) error {
	if !b.isReady() {
		return b.fail("access", name, syscall.ENOENT)
	}
	rec, ok := b.store.(meta.AccessRecorder)
	if !ok {
		return &os.PathError{Op: "access", Path: "/" + name, Err: syscall.ENOTSUP}
	}
	if err := b.guard("access", name); err != nil {
		return err
	}
	b.echoes.drop() // they may carry the old atime
	at, err := rec.RecordAccess(opCtx(ctx), ino)
	if err != nil {
		return b.fail("access", name, err)
	}
	b.mu.Lock()
	f := b.open[ino]
	b.mu.Unlock()
	if f != nil {
		f.mu.Lock()
		f.attr.Atime = at
		f.mu.Unlock()
	}
	return nil
}

// overlay replaces the size and times of a file open here with uncommitted
// changes by this process's view of them.
func (b *Backend) overlay(a *meta.Attr) {
	b.mu.Lock()
	f := b.open[a.Ino]
	b.mu.Unlock()
	if f != nil {
		f.overlay(a)
	}
}

func (b *Backend) ReadDir(ctx context.Context, name string) ([]backend.DirEntry, error) {
	if !b.isReady() {
		if name == "" {
			return nil, nil // init asks whether the new volume is empty
		}
		return nil, b.fail("readdir", name, syscall.ENOENT)
	}
	ents, err := b.store.ReadDir(opCtx(ctx), split(name))
	if err != nil {
		return nil, b.fail("readdir", name, err)
	}
	out := make([]backend.DirEntry, len(ents))
	for i, e := range ents {
		out[i] = backend.DirEntry{Name: e.Name, Mode: e.Mode, Ino: e.Ino}
	}
	return out, nil
}

func (b *Backend) create(ctx context.Context, op, name string, n meta.New, o *backend.Owner, excl bool) (meta.Attr, error) {
	if !b.isReady() {
		return meta.Attr{}, b.fail(op, name, syscall.EIO)
	}
	if err := b.guard(op, name); err != nil {
		return meta.Attr{}, err
	}
	n.Uid, n.Gid = b.owner(o)
	epoch := b.echoes.drop() // the parent's times and link count change
	a, err := b.store.Create(opCtx(ctx), split(name), n, excl)
	if err != nil {
		return a, b.fail(op, name, err)
	}
	b.echoes.put(name, a, epoch)
	return a, nil
}

func (b *Backend) Mkdir(ctx context.Context, name string, mode uint32, o *backend.Owner) error {
	_, err := b.create(ctx, "mkdir", name, meta.New{Mode: syscall.S_IFDIR | mode&0o7777}, o, true)
	return err
}

func (b *Backend) Mknod(ctx context.Context, name string, mode uint32, dev uint64, o *backend.Owner) error {
	switch mode & syscall.S_IFMT {
	case syscall.S_IFIFO, syscall.S_IFSOCK, syscall.S_IFCHR, syscall.S_IFBLK:
	case syscall.S_IFREG, 0:
		mode = syscall.S_IFREG | mode&0o7777
	default:
		return b.fail("mknod", name, syscall.EINVAL)
	}
	_, err := b.create(ctx, "mknod", name, meta.New{Mode: mode, Rdev: dev}, o, true)
	return err
}

func (b *Backend) Symlink(ctx context.Context, target, name string, o *backend.Owner) error {
	_, err := b.create(ctx, "symlink", name, meta.New{Mode: syscall.S_IFLNK | 0o777, Target: []byte(target)}, o, true)
	return err
}

func (b *Backend) Readlink(ctx context.Context, name string) (string, error) {
	t, err := b.store.Readlink(opCtx(ctx), split(name))
	if err != nil {
		return "", b.fail("readlink", name, err)
	}
	return string(t), nil
}

func (b *Backend) Rmdir(ctx context.Context, name string) error {
	if err := b.guard("rmdir", name); err != nil {
		return err
	}
	b.echoes.drop()
	return b.fail("rmdir", name, b.store.Remove(opCtx(ctx), split(name), true))
}

func (b *Backend) Unlink(ctx context.Context, name string) error {
	if err := b.guard("unlink", name); err != nil {
		return err
	}
	b.echoes.drop()
	if err := b.store.Remove(opCtx(ctx), split(name), false); err != nil {
		return b.fail("unlink", name, err)
	}
	b.mu.Lock()
	delete(b.writing, name) // a change by this name is no longer this file's
	b.mu.Unlock()
	return nil
}

func (b *Backend) Rename(ctx context.Context, from, to string, flags uint32) error {
	if err := b.guard("rename", from); err != nil {
		return err
	}
	b.echoes.drop()
	if err := b.store.Rename(opCtx(ctx), split(from), split(to), flags); err != nil {
		return b.fail("rename", from, err)
	}
	b.renameWriting(from, to, flags)
	return nil
}

func (b *Backend) Link(ctx context.Context, from, to string) error {
	if err := b.guard("link", to); err != nil {
		return err
	}
	b.echoes.drop()
	_, err := b.store.Link(opCtx(ctx), split(from), split(to))
	return b.fail("link", to, err)
}

// setattr changes attributes in the store and in the state of the file if
// it is open here, so that fstat agrees with stat.
func (b *Backend) setattr(ctx context.Context, op, name string, s meta.SetAttr) error {
	if err := b.guard(op, name); err != nil {
		return err
	}
	b.earlyFor(name) // its round trip overlaps the upload
	epoch := b.echoes.drop()
	if a, ok := b.deferAttr(name, s); ok {
		b.echoes.put(name, a, epoch)
		return nil
	}
	a, err := b.store.SetAttr(opCtx(ctx), split(name), s)
	if err != nil {
		return b.fail(op, name, err)
	}
	b.echoes.put(name, a, epoch)
	b.mu.Lock()
	f := b.open[a.Ino]
	b.mu.Unlock()
	if f != nil {
		f.setAttrs(a, s)
	}
	return nil
}

func (b *Backend) Chmod(ctx context.Context, name string, mode uint32) error {
	return b.setattr(ctx, "chmod", name, meta.SetAttr{Mode: &mode})
}

func (b *Backend) Lchown(ctx context.Context, name string, uid, gid int) error {
	var s meta.SetAttr
	if uid >= 0 {
		u := uint32(uid)
		s.Uid = &u
	}
	if gid >= 0 {
		g := uint32(gid)
		s.Gid = &g
	}
	return b.setattr(ctx, "chown", name, s)
}

func (b *Backend) Utimens(ctx context.Context, name string, atime, mtime *time.Time) error {
	return b.setattr(ctx, "utimens", name, meta.SetAttr{Atime: atime, Mtime: mtime})
}

func (b *Backend) Getxattr(ctx context.Context, name, attr string) ([]byte, error) {
	if posixacl.IsACL(attr) {
		return nil, b.fail("getxattr", name, syscall.ENODATA)
	}
	v, err := b.store.GetXattr(opCtx(ctx), split(name), attr)
	return v, b.fail("getxattr", name, err)
}

func (b *Backend) Setxattr(ctx context.Context, name, attr string, value []byte, flags int) error {
	if posixacl.IsACL(attr) {
		return b.setACL(ctx, name, attr, value)
	}
	if err := b.guard("setxattr", name); err != nil {
		return err
	}
	b.earlyFor(name)
	b.echoes.drop()
	return b.fail("setxattr", name, b.store.SetXattr(opCtx(ctx), split(name), attr, value, flags))
}

func (b *Backend) Listxattr(ctx context.Context, name string) ([]string, error) {
	v, err := b.store.ListXattr(opCtx(ctx), split(name))
	return v, b.fail("listxattr", name, err)
}

func (b *Backend) Removexattr(ctx context.Context, name, attr string) error {
	if posixacl.IsACL(attr) {
		return b.fail("removexattr", name, syscall.ENODATA)
	}
	if err := b.guard("removexattr", name); err != nil {
		return err
	}
	b.echoes.drop()
	return b.fail("removexattr", name, b.store.RemoveXattr(opCtx(ctx), split(name), attr))
}

// Statfs: neither a bucket nor the database has a capacity to report.
func (b *Backend) Statfs(_ context.Context, st *syscall.Statfs_t) error {
	*st = syscall.Statfs_t{Bsize: 4096, Frsize: 4096, Blocks: 1 << 40, Bfree: 1 << 40, Bavail: 1 << 40,
		Files: 1 << 40, Ffree: 1 << 40, Namelen: 255}
	return nil
}

// ReadMeta reads a volume metadata object from the bucket.
func (b *Backend) ReadMeta(ctx context.Context, name string) ([]byte, error) {
	return b.s3b.ReadMeta(ctx, name)
}

// WriteMeta writes a volume metadata object to the bucket. The first write
// of the volume config (kmsfs init) first records the volume in the store,
// which must hold none: the database then belongs to this volume.
func (b *Backend) WriteMeta(ctx context.Context, name string, data []byte) error {
	if name == ConfigName && !b.isReady() {
		doc, id, err := parseVolumeDoc(data)
		if err != nil {
			return err
		}
		if !slices.Contains(doc.Features, Feature) {
			return fmt.Errorf("volume config of a shared volume without the %s feature", Feature)
		}
		if err := b.store.CreateVolume(ctx, meta.Volume{ID: doc.VolumeID, ChunkSize: b.newChunk},
			meta.New{Mode: 0o755, Uid: b.uid, Gid: b.gid}); err != nil {
			return fmt.Errorf("metadata database: %w", err)
		}
		b.volMu.Lock()
		b.volID, b.chunkSize, b.regionSize, b.ready = id, b.newChunk, doc.HeaderSize, true
		b.volMu.Unlock()
	}
	return b.s3b.WriteMeta(ctx, name, data)
}
