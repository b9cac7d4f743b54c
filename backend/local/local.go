// Package local is the backend that keeps ciphertext in a local directory,
// one backing file per plaintext file, mirroring the tree.
package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
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
	root string
}

var _ backend.Backend = (*Backend)(nil)

// New opens the backend rooted at dir, which must exist.
func New(dir string) (*Backend, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	st, err := os.Stat(abs)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("%s: not a directory", abs)
	}
	return &Backend{root: abs}, nil
}

// Root is the backing directory.
func (b *Backend) Root() string { return b.root }

func (b *Backend) Caps() backend.Caps {
	return backend.Caps{HardLinks: true, Xattrs: true, Rename2: true, Mknod: true}
}

// path maps a volume path to the backing path, refusing the metadata
// directory so that nothing in the mount can touch it.
func (b *Backend) path(name string) (string, error) {
	if name == MetaDir || strings.HasPrefix(name, MetaDir+"/") {
		return "", &os.PathError{Op: "access", Path: name, Err: syscall.EPERM}
	}
	return filepath.Join(b.root, name), nil
}

func (b *Backend) Lstat(_ context.Context, name string, st *syscall.Stat_t) error {
	p, err := b.path(name)
	if err != nil {
		return &os.PathError{Op: "lstat", Path: name, Err: syscall.ENOENT}
	}
	return wrap("lstat", name, syscall.Lstat(p, st))
}

func (b *Backend) ReadDir(_ context.Context, name string) ([]backend.DirEntry, error) {
	p, err := b.path(name)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []backend.DirEntry
	for {
		ents, err := f.ReadDir(1024)
		for _, e := range ents {
			if name == "" && e.Name() == MetaDir {
				continue
			}
			de := backend.DirEntry{Name: e.Name(), Mode: fileModeToType(e.Type())}
			if info, err := e.Info(); err == nil {
				if st, ok := info.Sys().(*syscall.Stat_t); ok {
					de.Ino = st.Ino
				}
			}
			out = append(out, de)
		}
		if err == io.EOF || len(ents) == 0 {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

func fileModeToType(m os.FileMode) uint32 {
	switch {
	case m&os.ModeDir != 0:
		return syscall.S_IFDIR
	case m&os.ModeSymlink != 0:
		return syscall.S_IFLNK
	case m&os.ModeNamedPipe != 0:
		return syscall.S_IFIFO
	case m&os.ModeSocket != 0:
		return syscall.S_IFSOCK
	case m&os.ModeCharDevice != 0:
		return syscall.S_IFCHR
	case m&os.ModeDevice != 0:
		return syscall.S_IFBLK
	}
	return syscall.S_IFREG
}

// chown gives a new entry its creator's ownership when we run as root
// (the loopback convention: otherwise every file would belong to root).
func chown(p string, owner *backend.Owner) error {
	if owner == nil || os.Getuid() != 0 {
		return nil
	}
	return os.Lchown(p, int(owner.Uid), int(owner.Gid))
}

func (b *Backend) Mkdir(_ context.Context, name string, mode uint32, owner *backend.Owner) error {
	p, err := b.path(name)
	if err != nil {
		return err
	}
	if err := syscall.Mkdir(p, mode); err != nil {
		return wrap("mkdir", name, err)
	}
	return chown(p, owner)
}

func (b *Backend) Mknod(_ context.Context, name string, mode uint32, dev uint64, owner *backend.Owner) error {
	p, err := b.path(name)
	if err != nil {
		return err
	}
	if err := syscall.Mknod(p, mode, int(dev)); err != nil {
		return wrap("mknod", name, err)
	}
	return chown(p, owner)
}

func (b *Backend) Rmdir(_ context.Context, name string) error {
	p, err := b.path(name)
	if err != nil {
		return err
	}
	return wrap("rmdir", name, syscall.Rmdir(p))
}

func (b *Backend) Unlink(_ context.Context, name string) error {
	p, err := b.path(name)
	if err != nil {
		return err
	}
	return wrap("unlink", name, syscall.Unlink(p))
}

func (b *Backend) Rename(_ context.Context, from, to string, flags uint32) error {
	p1, err := b.path(from)
	if err != nil {
		return err
	}
	p2, err := b.path(to)
	if err != nil {
		return err
	}
	return wrap("rename", from, unix.Renameat2(unix.AT_FDCWD, p1, unix.AT_FDCWD, p2, uint(flags)))
}

func (b *Backend) Symlink(_ context.Context, target, name string, owner *backend.Owner) error {
	p, err := b.path(name)
	if err != nil {
		return err
	}
	if err := syscall.Symlink(target, p); err != nil {
		return wrap("symlink", name, err)
	}
	return chown(p, owner)
}

func (b *Backend) Readlink(_ context.Context, name string) (string, error) {
	p, err := b.path(name)
	if err != nil {
		return "", err
	}
	return os.Readlink(p)
}

func (b *Backend) Link(_ context.Context, from, to string) error {
	p1, err := b.path(from)
	if err != nil {
		return err
	}
	p2, err := b.path(to)
	if err != nil {
		return err
	}
	return wrap("link", to, syscall.Link(p1, p2))
}

func (b *Backend) Chmod(_ context.Context, name string, mode uint32) error {
	p, err := b.path(name)
	if err != nil {
		return err
	}
	return wrap("chmod", name, syscall.Chmod(p, mode))
}

func (b *Backend) Lchown(_ context.Context, name string, uid, gid int) error {
	p, err := b.path(name)
	if err != nil {
		return err
	}
	return wrap("chown", name, unix.Fchownat(unix.AT_FDCWD, p, uid, gid, unix.AT_SYMLINK_NOFOLLOW))
}

func (b *Backend) Utimens(_ context.Context, name string, atime, mtime *time.Time) error {
	p, err := b.path(name)
	if err != nil {
		return err
	}
	ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
	if atime != nil {
		ts[0] = unix.NsecToTimespec(atime.UnixNano())
	}
	if mtime != nil {
		ts[1] = unix.NsecToTimespec(mtime.UnixNano())
	}
	return wrap("utimens", name, unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW))
}

func (b *Backend) Getxattr(_ context.Context, name, attr string) ([]byte, error) {
	p, err := b.path(name)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, 256)
	for {
		n, err := unix.Lgetxattr(p, attr, buf)
		if err == unix.ERANGE {
			sz, err2 := unix.Lgetxattr(p, attr, nil)
			if err2 != nil {
				return nil, wrap("getxattr", name, err2)
			}
			buf = make([]byte, sz)
			continue
		}
		if err != nil {
			return nil, wrap("getxattr", name, err)
		}
		return buf[:n], nil
	}
}

func (b *Backend) Setxattr(_ context.Context, name, attr string, value []byte, flags int) error {
	p, err := b.path(name)
	if err != nil {
		return err
	}
	return wrap("setxattr", name, unix.Lsetxattr(p, attr, value, flags))
}

func (b *Backend) Listxattr(_ context.Context, name string) ([]string, error) {
	p, err := b.path(name)
	if err != nil {
		return nil, err
	}
	sz, err := unix.Llistxattr(p, nil)
	if err != nil {
		return nil, wrap("listxattr", name, err)
	}
	buf := make([]byte, sz)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		return nil, wrap("listxattr", name, err)
	}
	var out []string
	for _, s := range strings.Split(string(buf[:n]), "\x00") {
		if s != "" {
			out = append(out, s)
		}
	}
	return out, nil
}

func (b *Backend) Removexattr(_ context.Context, name, attr string) error {
	p, err := b.path(name)
	if err != nil {
		return err
	}
	return wrap("removexattr", name, unix.Lremovexattr(p, attr))
}

func (b *Backend) Statfs(_ context.Context, st *syscall.Statfs_t) error {
	return syscall.Statfs(b.root, st)
}

func (b *Backend) Open(_ context.Context, name string, flags int, mode uint32, owner *backend.Owner) (backend.File, error) {
	p, err := b.path(name)
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
	fd, err := openRetry(p, flags|syscall.O_CLOEXEC, mode)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: name, Err: err}
	}
	if flags&syscall.O_CREAT != 0 {
		if err := chown(p, owner); err != nil {
			syscall.Close(fd)
			return nil, err
		}
	}
	return &file{fd: fd}, nil
}

func openRetry(p string, flags int, mode uint32) (int, error) {
	for {
		fd, err := syscall.Open(p, flags, mode)
		if err != syscall.EINTR {
			return fd, err
		}
	}
}

// file is an open backing file on a raw descriptor. Its methods retry
// EINTR and complete short transfers, as *os.File's do.
type file struct{ fd int }

func (f *file) ReadAt(p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) {
		m, err := syscall.Pread(f.fd, p[n:], off+int64(n))
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		if m == 0 {
			return n, io.EOF
		}
		n += m
	}
	return n, nil
}

func (f *file) WriteAt(p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) {
		m, err := syscall.Pwrite(f.fd, p[n:], off+int64(n))
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		n += m
	}
	return n, nil
}

func (f *file) Truncate(size int64) error {
	return retry(func() error { return syscall.Ftruncate(f.fd, size) })
}
func (f *file) Sync() error  { return retry(func() error { return syscall.Fsync(f.fd) }) }
func (f *file) Close() error { return syscall.Close(f.fd) }
func (f *file) Stat(st *syscall.Stat_t) error {
	return retry(func() error { return syscall.Fstat(f.fd, st) })
}

func retry(call func() error) error {
	for {
		if err := call(); err != syscall.EINTR {
			return err
		}
	}
}

func (b *Backend) metaPath(name string) string { return filepath.Join(b.root, MetaDir, name) }

func (b *Backend) ReadMeta(_ context.Context, name string) ([]byte, error) {
	return os.ReadFile(b.metaPath(name))
}

// WriteMeta replaces a metadata file atomically and durably: write a temp
// file, fsync it, rename over the old one, fsync the directory. A crash
// leaves either the old or the new content, never a torn file.
func (b *Backend) WriteMeta(_ context.Context, name string, data []byte) error {
	dir := filepath.Join(b.root, MetaDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+name+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), b.metaPath(name)); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (b *Backend) Close() error { return nil }

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

// intentPath is where the intent of the file with this (hex) ID lives.
func (b *Backend) intentPath(id string) string {
	return filepath.Join(b.root, MetaDir, "intents", id)
}

var _ backend.Intents = (*Backend)(nil)

// WriteIntent records an overwrite about to happen (see backend.Intents).
func (b *Backend) WriteIntent(_ context.Context, id string, rec []byte) error {
	p := b.intentPath(id)
	err := os.WriteFile(p, rec, 0o600)
	if errors.Is(err, fs.ErrNotExist) {
		if err = os.MkdirAll(filepath.Dir(p), 0o700); err == nil {
			err = os.WriteFile(p, rec, 0o600)
		}
	}
	return err
}

func (b *Backend) ReadIntent(_ context.Context, id string) ([]byte, error) {
	return os.ReadFile(b.intentPath(id))
}

func (b *Backend) ClearIntent(_ context.Context, id string) error {
	err := os.Remove(b.intentPath(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}
