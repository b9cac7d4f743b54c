// Package backend defines where ciphertext lives. The FUSE layer and the
// volume logic talk to a Backend and never know whether it is a local
// directory (backend/local) or an S3 bucket (backend/s3). A backend stores
// bytes it is given; it never sees plaintext content or keys.
//
// Names are slash-separated paths relative to the volume root; "" is the root.
// Errors carry a syscall.Errno (wrapped, e.g. in *os.PathError) so that the FUSE
// boundary can map them; a backend that cannot do an operation returns ENOTSUP.
package backend

import (
	"context"
	"errors"
	"syscall"
	"time"
)

// Owner is the uid/gid a new entry gets when the mount runs as root and
// creates on behalf of another user.
type Owner struct {
	Uid, Gid uint32
}

// DirEntry is one name in a directory listing.
type DirEntry struct {
	Name string
	Mode uint32 // file type bits (syscall.S_IFMT part)
	Ino  uint64
}

// Caps says what a backend can do, for the operations POSIX has and object
// stores do not.
type Caps struct {
	HardLinks bool // Link works
	Xattrs    bool // extended attributes
	Rename2   bool // RENAME_NOREPLACE and RENAME_EXCHANGE
	Mknod     bool // FIFOs, sockets, device nodes
}

// Backend is a tree of ciphertext files, directories and symlinks.
type Backend interface {
	Caps() Caps
	Lstat(ctx context.Context, name string, st *syscall.Stat_t) error
	ReadDir(ctx context.Context, name string) ([]DirEntry, error)
	Mkdir(ctx context.Context, name string, mode uint32, owner *Owner) error
	Mknod(ctx context.Context, name string, mode uint32, dev uint64, owner *Owner) error
	Rmdir(ctx context.Context, name string) error
	Unlink(ctx context.Context, name string) error
	// Rename with flags 0, RENAME_NOREPLACE or RENAME_EXCHANGE (renameat2).
	Rename(ctx context.Context, from, to string, flags uint32) error
	Symlink(ctx context.Context, target, name string, owner *Owner) error
	Readlink(ctx context.Context, name string) (string, error)
	Link(ctx context.Context, from, to string) error
	Chmod(ctx context.Context, name string, mode uint32) error
	// Lchown changes owner and/or group; -1 leaves one unchanged.
	Lchown(ctx context.Context, name string, uid, gid int) error
	// Utimens sets access and modification times; nil leaves one unchanged.
	Utimens(ctx context.Context, name string, atime, mtime *time.Time) error
	Getxattr(ctx context.Context, name, attr string) ([]byte, error)
	Setxattr(ctx context.Context, name, attr string, value []byte, flags int) error
	Listxattr(ctx context.Context, name string) ([]string, error)
	Removexattr(ctx context.Context, name, attr string) error
	Statfs(ctx context.Context, st *syscall.Statfs_t) error
	// Open opens or creates (flags carry O_CREAT, O_EXCL, O_TRUNC) a regular file.
	Open(ctx context.Context, name string, flags int, mode uint32, owner *Owner) (File, error)
	// ReadMeta and WriteMeta read and atomically replace a small volume
	// metadata object (the volume config), outside the file tree.
	ReadMeta(ctx context.Context, name string) ([]byte, error)
	WriteMeta(ctx context.Context, name string, data []byte) error
	Close() error
}

// File is an open ciphertext file. Offsets are ciphertext offsets.
type File interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	Truncate(size int64) error
	// Sync makes every write so far durable (fsync; for S3, uploaded).
	Sync() error
	Stat(st *syscall.Stat_t) error
	Close() error
}

// QuietWriter is implemented by files that can rewrite stored bytes without
// moving the file's modification time: for a change in how the content is
// stored, not in the content. The volume seals a file's last block as the
// last one at close (docs/FORMAT.md section 4), which may come after the
// application set the file's times (cp -p and rsync -t set them on the open
// file, then close it).
type QuietWriter interface {
	WriteAtQuiet(p []byte, off int64) (int, error)
}

// TimeSetter is implemented by files whose times can be set through the
// open file (futimens): a compressed file is stored after the application
// closed it (volume/compress.go), and keeps the times it had then.
type TimeSetter interface {
	SetTimes(atime, mtime time.Time) error
}

// Accesser is implemented by backends that can record a read of an entry
// the way the kernel does for read(2) and getdents(2) (touch_atime in
// fs/inode.c): the access time moves to now and the change time stays.
// The mount decides when an access counts (its noatime, nodiratime,
// relatime or strictatime option, fs/atime.go) and the backend only
// records it; a backend without it never moves atime on a read, as if
// every mount were noatime (utimensat still sets it). ino is the entry's
// inode number as the caller knows it: a backend that finds another entry
// under name (renamed over since) records nothing.
type Accesser interface {
	Access(ctx context.Context, name string, ino uint64) error
}

// OpenAccesser is implemented by open files that can record an access
// (as Accesser does) through their own descriptor: a few cheap system
// calls where Accesser resolves the name and opens the entry again. st
// holds the entry's times the caller decided on. recorded is false when
// the file cannot record it that way (the backing store's own rules for
// the descriptor would not move atime now): the caller then uses Accesser.
type OpenAccesser interface {
	AccessOpen(st *syscall.Stat_t) (recorded bool, err error)
}

// AccessLister is implemented by backends that list a directory and
// record the listing as an access in one go, through the descriptor that
// lists it. due is given the directory's stat, taken through that
// descriptor, and says whether the listing counts as an access (the
// mount's policy); accessed reports whether one was recorded. A failure to
// record it is not an error of the listing.
type AccessLister interface {
	ReadDirAccess(ctx context.Context, name string, due func(st *syscall.Stat_t) bool) (ents []DirEntry, accessed bool, err error)
}

// RelatimeNeedsUpdate is relatime's rule (relatime_need_update in
// fs/inode.c): an access moves atime when atime is not later than mtime or
// ctime (the entry changed since it was last read), or is at least a day
// old.
func RelatimeNeedsUpdate(atime, mtime, ctime, now time.Time) bool {
	return !mtime.Before(atime) || !ctime.Before(atime) || now.Unix()-atime.Unix() >= 24*60*60
}

// Flusher is implemented by files whose backend makes writes visible only
// when told to (S3 uploads the staged object). Flush runs on every close(2);
// local files do not need it.
type Flusher interface {
	Flush() error
}

// Intents is implemented by backends whose in-place writes a crash of kmsfs
// can tear: a local file, where the kernel stops a write(2) of a killed
// process at a page boundary, which falls inside a 4 KiB + 28-byte sealed
// block. The volume records the bytes of an overwrite as an intent first and
// replays it when the file is next opened, so a block reads as its old or
// its new content, never a mix. An intent needs no fsync: it guards against
// the death of the process, and the page cache outlives that.
type Intents interface {
	WriteIntent(ctx context.Context, id string, rec []byte) error
	// ReadIntent returns fs.ErrNotExist when there is none.
	ReadIntent(ctx context.Context, id string) ([]byte, error)
	ClearIntent(ctx context.Context, id string) error
}

// WriteBehinder is implemented by files whose written data sits in a cache
// until it is written out (a local file in the page cache). WriteBehind
// starts writing out the stored range [off, off+n) without waiting for it,
// so that a long sequential write keeps the disk busy while it runs and
// a final fsync finds little left to do.
type WriteBehinder interface {
	WriteBehind(off, n int64) error
}

// Locker is implemented by backends that can keep two kmsfs processes from
// changing one volume at once. A read-write mount and `kmsfs rewrap` each
// hold the lock while they run: a rewrap rewrites headers in place, and a
// mount that truncated a file to 0 and gave it a new header in between would
// have that header overwritten with the old file's key slot.
type Locker interface {
	// LockVolume takes the lock, waiting while ctx allows; if another
	// process still holds it then, the error wraps ErrVolumeBusy. The lock
	// is released by the returned func, or when the process dies.
	LockVolume(ctx context.Context) (release func() error, err error)
}

// SharedLocker is implemented by backends that many read-write mounts use
// at once (shared volumes): a mount takes the lock shared, so mounts
// exclude only an exclusive holder (`kmsfs rewrap`), and LockVolume takes
// it exclusively. A holder that loses the lock (its database went away)
// stops changing the volume until it holds it again.
type SharedLocker interface {
	Locker
	LockVolumeShared(ctx context.Context) (release func() error, err error)
}

// SparseTail is implemented by files that can end in zeros that are not
// stored: SetSparseTail makes the file size bytes long, its bytes from
// dataEnd on zeros that take no space until something is written there (a
// local file's hole; an S3 object shorter than its file, the size in its
// metadata; a shared volume's chunks ending before the size). It says how
// the content is stored, so it leaves the modification time alone where the
// backend can. A compressed file (docs/FORMAT.md section 4a) keeps the
// block layout's stored size this way, with only its packed units stored.
type SparseTail interface {
	SetSparseTail(dataEnd, size int64) error
}

// ErrVolumeBusy says another kmsfs process holds the volume's lock.
var ErrVolumeBusy = errors.New("volume is in use by another kmsfs process (a read-write mount or a rewrap)")

// SparseFile is implemented by files whose backing store keeps holes (a
// local file on a filesystem with sparse files): a hole costs no space, and
// the volume finds and makes holes with lseek(2) SEEK_DATA/SEEK_HOLE and
// fallocate(2) FALLOC_FL_PUNCH_HOLE.
type SparseFile interface {
	// SeekData returns the first offset at or after off that may hold
	// data, or io.EOF when there is none before the end of the file.
	SeekData(off int64) (int64, error)
	// SeekHole returns the first offset at or after off in a hole (the
	// end of the file counts as one).
	SeekHole(off int64) (int64, error)
	// PunchHole frees [off, off+n) keeping the file's size; the range then
	// reads as zeros.
	PunchHole(off, n int64) error
}

// ListAccess lists the directory name of be and records the listing as an
// access if due, given the directory's stat, says it is one: in one go
// where be is an AccessLister, else by an Lstat before the listing and
// Accesser.Access after it. A backend that records no accesses lists
// without asking due.
func ListAccess(ctx context.Context, be Backend, name string, due func(st *syscall.Stat_t) bool) (ents []DirEntry, accessed bool, err error) {
	if al, ok := be.(AccessLister); ok {
		return al.ReadDirAccess(ctx, name, due)
	}
	acc, ok := be.(Accesser)
	var st syscall.Stat_t
	isDue := ok && due != nil && be.Lstat(ctx, name, &st) == nil && due(&st)
	if ents, err = be.ReadDir(ctx, name); err != nil || !isDue {
		return ents, false, err
	}
	return ents, acc.Access(ctx, name, st.Ino) == nil, nil
}
