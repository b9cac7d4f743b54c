package local

import (
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Paths inside the backing directory are resolved without following
// symlinks in any directory on the way.
//
// The mount names entries by the paths go-fuse keeps for its inodes, and the
// daemon (often root) acts on them later. A user of the mount can rename a
// directory away and put a symlink in its place between the two, e.g. "d" ->
// /etc: a plain openat(root, "d/passwd", O_RDWR) would then open /etc/passwd,
// and a chmod, chown or unlink would act there too (the symlink-race class
// of bugs gocryptfs fixed in 2.0). The kernel resolves every symlink of the
// mount itself, so a path the daemon gets never legitimately crosses one:
// directories are opened with openat2(2) RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS
// (fails with ELOOP at a symlink, EXDEV on the way out), and the operation
// then acts on the last component relative to that directory, with its own
// no-follow flag. Opened directories are kept for the next operation in the
// same one (dircache.go): a kept descriptor names the directory it reached,
// never a symlink put in its place later, and every rename and rmdir drops
// those at and below the names it changed.

// resolveBeneath is the openat2 resolution for every path below the root.
const resolveBeneath = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS

// openBeneath is openat2(dirfd, p, flags, resolveBeneath). EAGAIN means a
// rename elsewhere raced with the lookup (openat2(2)), EINTR a signal: both
// are retried, a bounded number of times. Without openat2 (Linux before
// 5.6) it falls back to openat with O_NOFOLLOW, which guards the last
// component only.
func openBeneath(dirfd int, p string, flags int, mode uint32) (int, error) {
	how := unix.OpenHow{Flags: uint64(flags&validOpenFlags) | unix.O_CLOEXEC, Resolve: resolveBeneath}
	// openat2 refuses what openat ignores: a mode without O_CREAT, and
	// file-type bits in it (the mode of a FUSE CREATE has S_IFREG).
	if flags&(unix.O_CREAT|unix.O_TMPFILE) != 0 {
		how.Mode = uint64(mode & 07777)
	}
	var err error
	for range 64 {
		var fd int
		fd, err = unix.Openat2(dirfd, p, &how)
		switch err {
		case nil:
			return fd, nil
		case syscall.EINTR, syscall.EAGAIN:
			continue
		case syscall.ENOSYS:
			return openRetry(dirfd, p, flags|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
		}
		return -1, err
	}
	return -1, err
}

// validOpenFlags are the flags open(2) knows (the kernel's
// VALID_OPEN_FLAGS). openat drops any other bit silently; openat2 refuses
// the call. FUSE hands on the opener's f_flags, which can carry the
// kernel's internal bits (__FMODE_EXEC for an exec, __FMODE_NONOTIFY for a
// fanotify listener's open).
const validOpenFlags = unix.O_ACCMODE | unix.O_CREAT | unix.O_EXCL | unix.O_NOCTTY |
	unix.O_TRUNC | unix.O_APPEND | unix.O_NONBLOCK | unix.O_SYNC | unix.O_DSYNC |
	unix.O_ASYNC | unix.O_DIRECT | unix.O_LARGEFILE | unix.O_DIRECTORY | unix.O_NOFOLLOW |
	unix.O_NOATIME | unix.O_CLOEXEC | unix.O_PATH | unix.O_TMPFILE

// atName is an entry as the *at calls take it: a directory descriptor and
// the entry's name in it (no slash).
type atName struct {
	dirfd int
	leaf  string
	dir   *dirEntry // the parent's descriptor, held from b.dirs until done
	dirs  *dirCache
}

// at resolves the directory part of a volume path (see above) and returns
// where the *at call acts. Entries directly in the root use the root's
// descriptor, with no extra system call; others their parent's descriptor
// from the cache of directories (dircache.go), opened on a miss. Call done
// when finished.
func (b *Backend) at(op, name string) (atName, error) {
	p, err := b.rel(op, name)
	if err != nil {
		return atName{}, err
	}
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return atName{dirfd: b.rootFd, leaf: p}, nil
	}
	e, err := b.dirs.get(p[:i])
	if err != nil {
		return atName{}, wrap(op, name, err)
	}
	return atName{dirfd: e.fd, leaf: p[i+1:], dir: e, dirs: b.dirs}, nil
}

// openDirBeneath opens directory p below dirfd O_PATH (p relative, without
// ".." components: rel checked). A path the kernel would refuse in one
// call, PATH_MAX bytes or more, is resolved in pieces, each from the
// directory the previous one reached and under the same no-symlink rule:
// a process whose working directory is deep inside the mount can name
// entries more than PATH_MAX bytes below its root, as on ext4.
func openDirBeneath(dirfd int, p string) (int, error) {
	fd, own := dirfd, false
	defer func() {
		if own {
			syscall.Close(fd)
		}
	}()
	for len(p) >= unix.PathMax {
		// Components are at most NAME_MAX (255) bytes, so a piece of
		// PATH_MAX-1 bytes always ends at a slash.
		i := strings.LastIndexByte(p[:unix.PathMax-1], '/')
		if i <= 0 {
			return -1, syscall.ENAMETOOLONG
		}
		next, err := openBeneath(fd, p[:i], unix.O_PATH|unix.O_DIRECTORY, 0)
		if err != nil {
			return -1, err
		}
		if own {
			syscall.Close(fd)
		}
		fd, own = next, true
		p = p[i+1:]
	}
	return openBeneath(fd, p, unix.O_PATH|unix.O_DIRECTORY, 0)
}

// openPath opens the entry at volume path p (from rel) with flags: below
// its parent's cached descriptor if there is one, else in one openat2
// call from the root, or below its resolved parent when p is too long for
// one.
func (b *Backend) openPath(p string, flags int, mode uint32) (int, error) {
	i := strings.LastIndexByte(p, '/')
	if i > 0 {
		if e := b.dirs.peek(p[:i]); e != nil {
			defer b.dirs.put(e)
			return openBeneath(e.fd, p[i+1:], flags, mode)
		}
	}
	if len(p) < unix.PathMax {
		return openBeneath(b.rootFd, p, flags, mode)
	}
	if i < 0 {
		return -1, syscall.ENAMETOOLONG // one component longer than NAME_MAX
	}
	dir, err := b.dirs.get(p[:i])
	if err != nil {
		return -1, err
	}
	defer b.dirs.put(dir)
	return openBeneath(dir.fd, p[i+1:], flags, mode)
}

func (a atName) done() {
	if a.dir != nil {
		a.dirs.put(a.dir)
	}
}

// chmodNoFollow changes the mode of leaf in dirfd without following it if
// it is a symlink (EOPNOTSUPP then: Linux symlinks have no mode of their
// own). fchmodat2 (Linux 6.6) does it in one call; x/sys reports its absence
// as EOPNOTSUPP too, so on that answer the entry is opened
// O_PATH|O_NOFOLLOW, and a non-symlink is changed through its /proc
// descriptor link.
func chmodNoFollow(dirfd int, leaf string, mode uint32) error {
	err := retry(func() error { return unix.Fchmodat(dirfd, leaf, mode, unix.AT_SYMLINK_NOFOLLOW) })
	if err != syscall.EOPNOTSUPP {
		return err
	}
	fd, err := openRetry(dirfd, leaf, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	var st syscall.Stat_t
	if err := retry(func() error { return syscall.Fstat(fd, &st) }); err != nil {
		return err
	}
	if st.Mode&syscall.S_IFMT == syscall.S_IFLNK {
		return syscall.EOPNOTSUPP
	}
	return retry(func() error { return syscall.Chmod(procFd(fd), mode) })
}
