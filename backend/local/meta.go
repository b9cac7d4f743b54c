package local

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/backend"
)

// Volume metadata (the config) and crash-safety intents live under MetaDir,
// reached like the file tree through the root descriptor: a backing root
// close to PATH_MAX still has room for them.

// intentsDir holds one intent file per file with an overwrite in flight.
const intentsDir = MetaDir + "/intents"

// metaRel is the root-relative path of the object name in the metadata
// directory dir. Names are the volume's own (a config name, a hex file ID);
// one that is not a single path component is refused rather than resolved.
func metaRel(op, dir, name string) (string, error) {
	if name == "" || name == "." || name == ".." || strings.ContainsRune(name, '/') {
		return "", &os.PathError{Op: op, Path: name, Err: syscall.EINVAL}
	}
	return dir + "/" + name, nil
}

// show is a root-relative path as an absolute one, for error messages only.
func (b *Backend) show(p string) string { return b.root + "/" + p }

func (b *Backend) ReadMeta(_ context.Context, name string) ([]byte, error) {
	p, err := metaRel("read", MetaDir, name)
	if err != nil {
		return nil, err
	}
	return b.readFile(p)
}

// readFile reads a whole metadata file. O_NOFOLLOW: metadata is never a
// symlink, and one planted in the backing directory is not followed.
func (b *Backend) readFile(p string) ([]byte, error) {
	fd, err := openRetry(b.rootFd, p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: b.show(p), Err: err}
	}
	f := os.NewFile(uintptr(fd), b.show(p))
	defer f.Close()
	return io.ReadAll(f)
}

// mkdirMeta creates a metadata directory (owner only: it holds the wrapped
// volume config) unless it exists.
func (b *Backend) mkdirMeta(p string) error {
	if err := unix.Mkdirat(b.rootFd, p, 0o700); err != nil && err != syscall.EEXIST {
		return &os.PathError{Op: "mkdir", Path: b.show(p), Err: err}
	}
	return nil
}

// WriteMeta replaces a metadata file atomically and durably: write a temp
// file, fsync it, rename over the old one, fsync the directory. A crash
// leaves either the old or the new content, never a torn file.
func (b *Backend) WriteMeta(_ context.Context, name string, data []byte) error {
	p, err := metaRel("write", MetaDir, name)
	if err != nil {
		return err
	}
	if err := b.mkdirMeta(MetaDir); err != nil {
		return err
	}
	tmp, f, err := b.createTemp(MetaDir, "."+name+".tmp")
	if err != nil {
		return err
	}
	// Removes the temp file on every failure; after the rename the name is
	// gone and this is a harmless ENOENT.
	defer unix.Unlinkat(b.rootFd, tmp, 0)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := unix.Renameat(b.rootFd, tmp, b.rootFd, p); err != nil {
		return &os.LinkError{Op: "rename", Old: b.show(tmp), New: b.show(p), Err: err}
	}
	return b.syncDir(MetaDir)
}

// createTemp creates a new file dir/prefix<random> (O_EXCL), as
// os.CreateTemp does, relative to the root.
func (b *Backend) createTemp(dir, prefix string) (string, *os.File, error) {
	for range 10000 {
		p := dir + "/" + prefix + strconv.FormatUint(uint64(rand.Uint32()), 10)
		fd, err := openRetry(b.rootFd, p, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err == syscall.EEXIST {
			continue
		}
		if err != nil {
			return "", nil, &os.PathError{Op: "create", Path: b.show(p), Err: err}
		}
		return p, os.NewFile(uintptr(fd), b.show(p)), nil
	}
	return "", nil, &os.PathError{Op: "create", Path: b.show(dir + "/" + prefix + "*"), Err: syscall.EEXIST}
}

// syncDir makes the entries of dir durable (a rename is in the directory).
func (b *Backend) syncDir(dir string) error {
	fd, err := openRetry(b.rootFd, dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: b.show(dir), Err: err}
	}
	d := os.NewFile(uintptr(fd), b.show(dir))
	defer d.Close()
	return d.Sync()
}

var _ backend.Intents = (*Backend)(nil)

// WriteIntent records an overwrite about to happen (see backend.Intents).
// No fsync, on purpose: an intent guards against the death of kmsfs, which
// the page cache outlives.
func (b *Backend) WriteIntent(_ context.Context, id string, rec []byte) error {
	p, err := metaRel("write intent", intentsDir, id)
	if err != nil {
		return err
	}
	err = b.writeFile(p, rec)
	if os.IsNotExist(err) {
		if err = b.mkdirMeta(MetaDir); err == nil {
			if err = b.mkdirMeta(intentsDir); err == nil {
				err = b.writeFile(p, rec)
			}
		}
	}
	return err
}

// writeFile creates or truncates p and writes data, as os.WriteFile does.
func (b *Backend) writeFile(p string, data []byte) error {
	fd, err := openRetry(b.rootFd, p, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return &os.PathError{Op: "open", Path: b.show(p), Err: err}
	}
	f := os.NewFile(uintptr(fd), b.show(p))
	_, err = f.Write(data)
	if err2 := f.Close(); err == nil {
		err = err2
	}
	return err
}

// ReadIntent returns an error that is fs.ErrNotExist when there is none.
func (b *Backend) ReadIntent(_ context.Context, id string) ([]byte, error) {
	p, err := metaRel("read intent", intentsDir, id)
	if err != nil {
		return nil, err
	}
	return b.readFile(p)
}

func (b *Backend) ClearIntent(_ context.Context, id string) error {
	p, err := metaRel("clear intent", intentsDir, id)
	if err != nil {
		return err
	}
	err = unix.Unlinkat(b.rootFd, p, 0)
	if err == nil || err == syscall.ENOENT {
		return nil
	}
	return &os.PathError{Op: "remove", Path: b.show(p), Err: err}
}

// lockName is the file a read-write mount and a rewrap flock (see
// backend.Locker). flock, not a PID file: the kernel drops it when the
// holder dies, so a crashed mount never leaves the volume locked.
const lockName = MetaDir + "/lock"

var _ backend.Locker = (*Backend)(nil)

// LockVolume takes an exclusive flock on the volume's lock file, polling
// while ctx allows (a mount that was just unmounted may still be closing).
func (b *Backend) LockVolume(ctx context.Context) (func() error, error) {
	if err := b.mkdirMeta(MetaDir); err != nil {
		return nil, err
	}
	fd, err := openRetry(b.rootFd, lockName, unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: b.show(lockName), Err: err}
	}
	for {
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() error { return unix.Close(fd) }, nil
		}
		if err != unix.EWOULDBLOCK && err != unix.EINTR {
			unix.Close(fd)
			return nil, &os.PathError{Op: "flock", Path: b.show(lockName), Err: err}
		}
		select {
		case <-ctx.Done():
			unix.Close(fd)
			return nil, fmt.Errorf("%s: %w", b.root, backend.ErrVolumeBusy)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
