// Package local is the backend that keeps ciphertext in a local directory,
// one backing file per plaintext file, mirroring the tree.
//
// Every operation is a *at system call relative to a descriptor of the
// backing root, with the volume path as given. The kernel refuses any path
// argument of PATH_MAX (4096) bytes or more, counting its NUL; joining the
// root and the volume path would make a name that is legal on the mount
// (up to 4095 bytes relative to the mount root) fail with ENAMETOOLONG as
// soon as root + "/" + name reaches that limit. Relative to the root
// descriptor the backend sees the same length the mount's caller did, so
// the same names work and the same names fail.
package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/backend"
)

// MetaDir is the directory under the backend root that holds volume metadata.
// It is hidden from the file tree: it cannot be looked up, listed or created
// through the mount.
const MetaDir = ".kmsfs"

// Backend is a local directory backend.
type Backend struct {
	root   string    // absolute path of the backing directory, for Root and messages
	rootFd int       // O_PATH descriptor of root: the dirfd of every *at call
	asRoot bool      // new entries get their creator's owner (we run as uid 0)
	dirs   *dirCache // descriptors of backing directories (dircache.go)

	// accessFd is the strictatime clone Access reads through, or -1
	// (atime.go); made at the first Access.
	accessMu   sync.Mutex
	accessInit bool
	accessFd   int

	closeOnce sync.Once
	closeErr  error
}

var (
	_ backend.Backend  = (*Backend)(nil)
	_ backend.Accesser = (*Backend)(nil)
)

// New opens the backend rooted at dir, which must exist. The directory is
// held open until Close, so the backend keeps using the same directory if
// dir is renamed or replaced while mounted.
func New(dir string) (*Backend, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	// O_PATH: the descriptor only names the directory (it needs no read
	// permission and cannot be read through); O_PATH descriptors are valid
	// dirfds for every *at call and for fstatfs.
	fd, err := openRetry(unix.AT_FDCWD, abs, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err == syscall.ENOTDIR {
		return nil, fmt.Errorf("%s: not a directory", abs)
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: abs, Err: err}
	}
	b := &Backend{root: abs, rootFd: fd, asRoot: os.Getuid() == 0}
	b.dirs = newDirCache(defaultDirCacheSize, func(p string) (int, error) { return openDirBeneath(fd, p) })
	return b, nil
}

// Root is the backing directory.
func (b *Backend) Root() string { return b.root }

func (b *Backend) Caps() backend.Caps {
	return backend.Caps{HardLinks: true, Xattrs: true, Rename2: true, Mknod: true}
}

// rel maps a volume path to the path handed to the *at calls (relative to
// rootFd). It refuses the metadata directory, so that nothing in the mount
// can touch it, and anything that would resolve outside the root: an
// absolute path would make the kernel ignore the dirfd, and ".." would
// climb out of it.
func (b *Backend) rel(op, name string) (string, error) {
	switch {
	case name == "":
		return ".", nil
	case name == MetaDir || strings.HasPrefix(name, MetaDir+"/"):
		return "", &os.PathError{Op: op, Path: name, Err: syscall.EPERM}
	case name[0] == '/' || hasDotDot(name):
		return "", &os.PathError{Op: op, Path: name, Err: syscall.EINVAL}
	}
	return name, nil
}

// hasDotDot reports whether a slash-separated path has a ".." component.
func hasDotDot(p string) bool {
	if !strings.Contains(p, "..") {
		return false
	}
	for c := range strings.SplitSeq(p, "/") {
		if c == ".." {
			return true
		}
	}
	return false
}

func (b *Backend) Lstat(_ context.Context, name string, st *syscall.Stat_t) error {
	// The metadata directory and paths leaving the root do not exist as
	// far as the mount can tell.
	if _, err := b.rel("lstat", name); err != nil {
		return &os.PathError{Op: "lstat", Path: name, Err: syscall.ENOENT}
	}
	a, err := b.at("lstat", name)
	if err != nil {
		return err
	}
	defer a.done()
	return wrap("lstat", name, fstatat(a.dirfd, a.leaf, st, unix.AT_SYMLINK_NOFOLLOW))
}

// setOwner gives a new entry its creator's ownership when we run as root
// (the loopback convention: otherwise every file would belong to root).
func (b *Backend) setOwner(op, name string, a atName, owner *backend.Owner) error {
	if owner == nil || !b.asRoot {
		return nil
	}
	return wrap(op, name, unix.Fchownat(a.dirfd, a.leaf, int(owner.Uid), int(owner.Gid), unix.AT_SYMLINK_NOFOLLOW))
}

func (b *Backend) Mkdir(_ context.Context, name string, mode uint32, owner *backend.Owner) error {
	a, err := b.at("mkdir", name)
	if err != nil {
		return err
	}
	defer a.done()
	if err := unix.Mkdirat(a.dirfd, a.leaf, mode); err != nil {
		return wrap("mkdir", name, err)
	}
	return b.setOwner("mkdir", name, a, owner)
}

func (b *Backend) Mknod(_ context.Context, name string, mode uint32, dev uint64, owner *backend.Owner) error {
	a, err := b.at("mknod", name)
	if err != nil {
		return err
	}
	defer a.done()
	if err := unix.Mknodat(a.dirfd, a.leaf, mode, int(dev)); err != nil {
		return wrap("mknod", name, err)
	}
	return b.setOwner("mknod", name, a, owner)
}

func (b *Backend) Rmdir(_ context.Context, name string) error {
	a, err := b.at("rmdir", name)
	if err != nil {
		return err
	}
	defer a.done()
	err = unix.Unlinkat(a.dirfd, a.leaf, unix.AT_REMOVEDIR)
	b.dirs.invalidate(name)
	return wrap("rmdir", name, err)
}

func (b *Backend) Unlink(_ context.Context, name string) error {
	a, err := b.at("unlink", name)
	if err != nil {
		return err
	}
	defer a.done()
	return wrap("unlink", name, unix.Unlinkat(a.dirfd, a.leaf, 0))
}

func (b *Backend) Rename(_ context.Context, from, to string, flags uint32) error {
	a1, err := b.at("rename", from)
	if err != nil {
		return err
	}
	defer a1.done()
	a2, err := b.at("rename", to)
	if err != nil {
		return err
	}
	defer a2.done()
	err = unix.Renameat2(a1.dirfd, a1.leaf, a2.dirfd, a2.leaf, uint(flags))
	// from may have been a directory with descriptors cached at and below
	// it, to an empty directory it replaced or, with RENAME_EXCHANGE, a
	// directory swapped away: both are dropped before returning
	// (dircache.go). Also after a failure, which changed nothing: it costs
	// a scan of the cache, and a stat to tell would cost a system call.
	b.dirs.invalidate(from)
	b.dirs.invalidate(to)
	return wrap("rename", from, err)
}

func (b *Backend) Symlink(_ context.Context, target, name string, owner *backend.Owner) error {
	a, err := b.at("symlink", name)
	if err != nil {
		return err
	}
	defer a.done()
	if err := unix.Symlinkat(target, a.dirfd, a.leaf); err != nil {
		return wrap("symlink", name, err)
	}
	return b.setOwner("symlink", name, a, owner)
}

func (b *Backend) Readlink(_ context.Context, name string) (string, error) {
	a, err := b.at("readlink", name)
	if err != nil {
		return "", err
	}
	defer a.done()
	// readlink(2) truncates silently: a target that fills the buffer may
	// be longer, so grow until one does not.
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(a.dirfd, a.leaf, buf)
		if err != nil {
			return "", wrap("readlink", name, err)
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}

func (b *Backend) Link(_ context.Context, from, to string) error {
	a1, err := b.at("link", from)
	if err != nil {
		return err
	}
	defer a1.done()
	a2, err := b.at("link", to)
	if err != nil {
		return err
	}
	defer a2.done()
	// Flags 0: like link(2), a symlink source is linked itself, not followed.
	return wrap("link", to, unix.Linkat(a1.dirfd, a1.leaf, a2.dirfd, a2.leaf, 0))
}

func (b *Backend) Chmod(_ context.Context, name string, mode uint32) error {
	a, err := b.at("chmod", name)
	if err != nil {
		return err
	}
	defer a.done()
	// Never through a final symlink either: the entry may have been
	// swapped for one (resolve.go); the kernel never asks to chmod a
	// symlink of the mount itself.
	return wrap("chmod", name, chmodNoFollow(a.dirfd, a.leaf, mode))
}

func (b *Backend) Lchown(_ context.Context, name string, uid, gid int) error {
	a, err := b.at("chown", name)
	if err != nil {
		return err
	}
	defer a.done()
	return wrap("chown", name, unix.Fchownat(a.dirfd, a.leaf, uid, gid, unix.AT_SYMLINK_NOFOLLOW))
}

func (b *Backend) Utimens(_ context.Context, name string, atime, mtime *time.Time) error {
	a, err := b.at("utimens", name)
	if err != nil {
		return err
	}
	defer a.done()
	ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
	if atime != nil {
		ts[0] = unix.NsecToTimespec(atime.UnixNano())
	}
	if mtime != nil {
		ts[1] = unix.NsecToTimespec(mtime.UnixNano())
	}
	return wrap("utimens", name, unix.UtimesNanoAt(a.dirfd, a.leaf, ts, unix.AT_SYMLINK_NOFOLLOW))
}

func (b *Backend) Statfs(_ context.Context, st *syscall.Statfs_t) error {
	return wrap("statfs", "", retry(func() error { return syscall.Fstatfs(b.rootFd, st) }))
}

func (b *Backend) Open(_ context.Context, name string, flags int, mode uint32, owner *backend.Owner) (backend.File, error) {
	p, err := b.rel("open", name)
	if err != nil {
		return nil, err
	}
	// The volume reads headers and does read-modify-write of blocks, so a
	// write-only open is widened to read-write; O_APPEND is the volume's job
	// (plaintext end != ciphertext end).
	if flags&syscall.O_ACCMODE == syscall.O_WRONLY {
		flags = flags&^syscall.O_ACCMODE | syscall.O_RDWR
	}
	flags &^= syscall.O_APPEND
	// A raw descriptor, not an *os.File: os.OpenFile registers every file
	// with the netpoller (fcntl calls and a failing epoll_ctl per open, a
	// real cost when cp -a creates thousands of files), and its FileMode
	// conversion would drop the setuid/setgid/sticky bits of mode.
	// No symlink anywhere on the way, the file itself included
	// (resolve.go): the kernel opens only regular files through us.
	// O_NOATIME: the volume's reads are not the application's (atime.go).
	fd, setfl, err := b.openNoAtime(p, flags, mode)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: name, Err: err}
	}
	if flags&syscall.O_CREAT != 0 && owner != nil && b.asRoot {
		if err := retry(func() error { return syscall.Fchown(fd, int(owner.Uid), int(owner.Gid)) }); err != nil {
			syscall.Close(fd)
			return nil, wrap("chown", name, err)
		}
	}
	return &file{fd: fd, setfl: setfl}, nil
}

// openRetry is openat(2), retried on EINTR (a backing directory on a
// network or FUSE file system can be interrupted by a signal).
func openRetry(dirfd int, p string, flags int, mode uint32) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, p, flags, mode)
		if err != syscall.EINTR {
			return fd, err
		}
	}
}

// Close releases the root descriptor and the cached ones. Call it once no operation is in
// flight: the descriptor's number may be reused by the next open.
func (b *Backend) Close() error {
	b.closeOnce.Do(func() {
		b.dirs.close()
		b.accessMu.Lock()
		if b.accessInit && b.accessFd >= 0 {
			syscall.Close(b.accessFd)
			b.accessFd = -1
		}
		b.accessMu.Unlock()
		b.closeErr = syscall.Close(b.rootFd)
	})
	return b.closeErr
}

func wrap(op, name string, err error) error {
	if err == nil {
		return nil
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return &os.PathError{Op: op, Path: name, Err: errno}
	}
	return err
}

func retry(call func() error) error {
	for {
		if err := call(); err != syscall.EINTR {
			return err
		}
	}
}
