// Package meta defines the metadata store of a shared volume: the tree
// (inodes, directory entries, symlink targets, xattrs) and every file's
// chunk list, kept where many kmsfs processes can change it at once
// (backend/shared/pgmeta: PostgreSQL). The shared backend speaks only this
// interface, so its logic is testable and the store swappable.
//
// Paths are lists of stored name components (the root is the empty list),
// exactly the names the volume hands the backend: with name-encryption they
// are ciphertext. Every method is one transaction: a tree change is all
// there or not there for every process reading the store.
//
// POSIX conditions come back as syscall.Errno (ENOENT, EEXIST, ENOTDIR,
// EISDIR, ENOTEMPTY, EINVAL, ENODATA); a chunk list switch from a stale
// base generation is ErrConflict; anything else is the store failing.
package meta

import (
	"context"
	"errors"
	"time"
)

// SchemaVersion is the version of the store layout this kmsfs writes and
// reads; a store of a newer version is refused. Version 2 adds chunks that
// leave out stream bytes (docs/FORMAT.md section 12: the trimmed flag, keys
// ending in "-S"), which a version 1 reader would misplace; a version 1
// store is raised to 2 (RaiseSchema) before the first such chunk is
// committed to it, and reads as before until then.
const SchemaVersion = 2

// ErrConflict says a chunk list was switched by someone else since the
// writer read it: the writer's data is not committed.
var ErrConflict = errors.New("the file was changed by another writer since it was opened; this writer's data was not committed")

// ErrLockBusy says another process holds the volume lock in a mode that
// excludes the one asked for.
var ErrLockBusy = errors.New("the volume lock is held by another kmsfs process")

// Lock is a held volume lock. Lost is closed if the store lets go of it
// without Release (the connection holding it broke).
type Lock interface {
	Lost() <-chan struct{}
	Release() error
}

// ErrNoVolume says the store holds no volume yet.
var ErrNoVolume = errors.New("the metadata database holds no kmsfs volume")

// Attr is an inode's attributes.
type Attr struct {
	Ino   uint64
	Mode  uint32 // type and permission bits
	Uid   uint32
	Gid   uint32
	Rdev  uint64
	Size  int64 // ciphertext stream size of a regular file; target length of a symlink
	Nlink uint32
	// Gen counts the switches of the file's chunk list.
	Gen                 int64
	Atime, Mtime, Ctime time.Time
}

// Entry is one name in a directory.
type Entry struct {
	Name string
	Ino  uint64
	Mode uint32
}

// New describes an inode to create.
type New struct {
	Mode   uint32
	Uid    uint32
	Gid    uint32
	Rdev   uint64
	Target []byte // symlink target
}

// SetAttr names the attributes to change; nil leaves one as it is.
type SetAttr struct {
	Mode *uint32 // permission bits only
	// Perm replaces the rwx bits (0o777) only, keeping the set-ID and
	// sticky bits: what a mode-equivalent access ACL sets. Ignored with
	// Mode.
	Perm         *uint32
	Uid, Gid     *uint32
	Atime, Mtime *time.Time
}

// Chunk is one chunk object of a file's ciphertext stream.
type Chunk struct {
	Index int64
	Key   string // object key under the volume prefix
	Len   int64
}

// Commit switches a file's chunk list.
type Commit struct {
	Ino     uint64
	BaseGen int64 // the generation the writer read
	Size    int64
	// Set replaces or adds these chunks; every chunk at or past Keep is
	// dropped (Keep = the number of chunks of the new size).
	Set []Chunk
	// Drop lists chunk indexes that become holes: their rows go (a row
	// there or not, the range reads as zeros). None of them is in Set.
	Drop []int64
	Keep int64
	// Touch sets the file's mtime and ctime to the commit's time: data was
	// written since the last explicit utimens.
	Touch bool
	// Attrs, if not nil, are attribute changes made while the data was
	// staged, applied with the switch (as SetAttr would, ctime included);
	// an explicit Mtime yields to Touch.
	Attrs *SetAttr
}

// Volume is what the store records of the volume it belongs to.
type Volume struct {
	ID            string // the volume ID (32 hex digits), as in volume.json
	SchemaVersion int
	ChunkSize     int64
}

// Garbage is a chunk no file points to any more.
type Garbage struct {
	Key   string
	Since time.Time
}

// AccessRecorder is implemented by stores that can move an inode's atime
// alone, as the kernel's touch_atime does for a read: ctime stays
// (backend.Accesser).
type AccessRecorder interface {
	// RecordAccess sets inode ino's atime to the store's clock now and
	// returns it; ENOENT if there is no such inode.
	RecordAccess(ctx context.Context, ino uint64) (time.Time, error)
}

// Store is a shared volume's metadata.
type Store interface {
	// Volume returns the store's volume record; ErrNoVolume if none.
	Volume(ctx context.Context) (Volume, error)
	// CreateVolume lays out an empty store for volume v, with its root
	// directory; it fails if the store holds a volume already.
	CreateVolume(ctx context.Context, v Volume, root New) error

	Lookup(ctx context.Context, path []string) (Attr, error)
	ReadDir(ctx context.Context, path []string) ([]Entry, error)
	Readlink(ctx context.Context, path []string) ([]byte, error)
	// Create makes a new entry. With excl false an existing regular file
	// is returned as it is (open O_CREAT without O_EXCL).
	Create(ctx context.Context, path []string, n New, excl bool) (Attr, error)
	// Remove unlinks a non-directory (dir false) or removes an empty
	// directory (dir true). An inode whose last name goes is deleted, its
	// chunks recorded as garbage.
	Remove(ctx context.Context, path []string, dir bool) error
	// Rename with flags 0, RENAME_NOREPLACE or RENAME_EXCHANGE.
	Rename(ctx context.Context, from, to []string, flags uint32) error
	Link(ctx context.Context, from, to []string) (Attr, error)
	// SetAttr changes attributes and returns them as changed.
	SetAttr(ctx context.Context, path []string, s SetAttr) (Attr, error)

	GetXattr(ctx context.Context, path []string, name string) ([]byte, error)
	// SetXattr with flags 0, XATTR_CREATE or XATTR_REPLACE.
	SetXattr(ctx context.Context, path []string, name string, value []byte, flags int) error
	ListXattr(ctx context.Context, path []string) ([]string, error)
	RemoveXattr(ctx context.Context, path []string, name string) error

	// File returns an inode's attributes and chunk list as of one moment.
	File(ctx context.Context, ino uint64) (Attr, []Chunk, error)
	// CommitChunks switches a chunk list if the inode is still at
	// c.BaseGen (else ErrConflict; ENOENT if it is gone), records the
	// replaced and dropped chunks as garbage, and returns the new
	// generation.
	CommitChunks(ctx context.Context, c Commit) (int64, error)
	// RaiseSchema records that the store holds what only readers of
	// schema version v understand, so that older kmsfs refuse it; it
	// never lowers the version.
	RaiseSchema(ctx context.Context, v int) error

	// LockVolume takes the volume lock, shared (a mount) or exclusive (a
	// rewrap), polling while ctx allows; ErrLockBusy if it stays held in
	// the other mode. The store releases it when the process dies.
	LockVolume(ctx context.Context, exclusive bool) (Lock, error)

	// Garbage lists chunks recorded as unreferenced before cutoff.
	Garbage(ctx context.Context, before time.Time, limit int) ([]Garbage, error)
	// ForgetGarbage drops garbage records whose objects were deleted.
	ForgetGarbage(ctx context.Context, keys []string) error
	// Referenced reports which of keys a file points to.
	Referenced(ctx context.Context, keys []string) (map[string]bool, error)

	Close()
}
