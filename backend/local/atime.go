package local

// Access times.
//
// The backing filesystem moves a backing file's atime by the rules of its
// own mount (relatime on a default ext4) whenever the daemon reads it: the
// header at every open, blocks at every read that misses the kmsfs mount's
// page cache, a directory at every listing. Those are the volume's reads,
// not the application's, and they follow the wrong mount's options. So the
// backend opens what it reads O_NOATIME (openNoAtime), and the
// application's reads are recorded by Access, when the kmsfs mount's
// policy says so (fs/atime.go).
//
// Access must move atime without moving ctime, which kmsfs reports as the
// file's own: utimensat(2) cannot (it stamps ctime, as every attribute
// change does), nor can anything else that writes the inode from user
// space. Only the kernel's touch_atime can, on a read through a descriptor
// without O_NOATIME, and it applies the rules of the mount that descriptor
// was opened on: through a relatime backing mount a strictatime kmsfs
// mount would get one update per change of the file, not one per read.
// Access therefore reads through a private clone of the backing mount made
// strictatime (open_tree(2) OPEN_TREE_CLONE, then mount_setattr(2)), as
// overlayfs does for its upper layer (ovl_get_upper clears the atime flags
// of its private mount): a detached mount, in no mount table, that leaves
// the backing mount as it is and goes away with its descriptor. Making it
// takes CAP_SYS_ADMIN and Linux 5.12. Without them Access reads through the
// backing mount itself, whose rules then apply on top: exact for a relatime
// kmsfs mount over a relatime or strictatime backing mount (both update
// when relatime does), one update per change of the file for a strictatime
// one over a relatime backing mount, none over a noatime one.
//
// Most accesses need no second open. Where the backing mount's own rules
// move atime for the read at hand (a relatime kmsfs mount over a relatime
// or strictatime backing mount, the default on both sides, agree on every
// access), the descriptor the volume already holds records it: O_NOATIME
// is cleared with F_SETFL for one read (AccessOpen), or for the listing's
// own getdents64 (ReadDirAccess). Only the other accesses go through the
// clone.

import (
	"context"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/backend"
)

// accessRoot returns the descriptor Access resolves names from: the
// strictatime clone of the backing root, made at the first call, or the
// root itself when it cannot be made (strict false).
func (b *Backend) accessRoot() (fd int, strict bool) {
	b.accessMu.Lock()
	defer b.accessMu.Unlock()
	if !b.accessInit {
		b.accessInit = true
		b.accessFd = -1
		if clone, err := strictClone(b.rootFd); err == nil {
			b.accessFd = clone
		}
	}
	if b.accessFd >= 0 {
		return b.accessFd, true
	}
	return b.rootFd, false
}

// strictClone returns an O_PATH descriptor of a detached, recursive clone
// of the mount tree at dirfd (a bind mount of that directory with the
// mounts below it), with every mount in it made strictatime.
func strictClone(dirfd int) (int, error) {
	fd, err := unix.OpenTree(dirfd, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH|unix.AT_RECURSIVE)
	if err != nil {
		return -1, err
	}
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_STRICTATIME, Attr_clr: unix.MOUNT_ATTR__ATIME}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &attr); err != nil {
		syscall.Close(fd)
		return -1, err
	}
	return fd, nil
}

// StrictAccess reports whether Access moves atime at every call (through
// the strictatime clone) rather than by the backing mount's own rules.
func (b *Backend) StrictAccess() bool {
	_, strict := b.accessRoot()
	return strict
}

// Access records a read of the regular file or directory name, whose inode
// number is ino, as the kernel does on read(2) or getdents(2): a one-byte
// read or one getdents64 through a descriptor without O_NOATIME
// (backend.Accesser). Its atime moves, its ctime does not. Any other type
// of entry (a symlink, a FIFO, a device) is left alone.
func (b *Backend) Access(_ context.Context, name string, ino uint64) error {
	p, err := b.rel("access", name)
	if err != nil {
		return err
	}
	root, _ := b.accessRoot()
	// O_NONBLOCK: a FIFO put in the file's place must not block the open.
	fd, err := openBeneath(root, p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		return wrap("access", name, err)
	}
	defer syscall.Close(fd)
	var st syscall.Stat_t
	if err := retry(func() error { return syscall.Fstat(fd, &st) }); err != nil {
		return wrap("access", name, err)
	}
	if st.Ino != ino {
		return &os.PathError{Op: "access", Path: name, Err: syscall.ESTALE}
	}
	switch st.Mode & syscall.S_IFMT {
	case syscall.S_IFREG:
		// filemap_read calls file_accessed also when it reads nothing
		// (at the end of the file), so an empty file is no exception.
		var one [1]byte
		err = retry(func() error { _, err := syscall.Pread(fd, one[:], 0); return err })
	case syscall.S_IFDIR:
		// iterate_dir calls file_accessed whatever it returns.
		var buf [512]byte
		err = retry(func() error { _, err := unix.Getdents(fd, buf[:]); return err })
	}
	return wrap("access", name, err)
}

// backingRecords reports whether a read through fd, of an entry with the
// times in st, moves the entry's atime by the rules of the backing mount fd
// was opened on (atime_needs_update in fs/inode.c). When it does, an
// access the kmsfs mount's policy calls for is recorded by reading through
// fd itself with O_NOATIME cleared: the same update the strictatime clone
// would make, without resolving the name again. That is the common case: a
// relatime kmsfs mount over a relatime or strictatime backing mount, whose
// rules agree.
func backingRecords(fd int, st *syscall.Stat_t, dir bool) bool {
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		return false
	}
	switch {
	case sfs.Flags&(unix.ST_NOATIME|unix.ST_RDONLY) != 0, dir && sfs.Flags&unix.ST_NODIRATIME != 0:
		return false
	case sfs.Flags&unix.ST_RELATIME != 0:
		return backend.RelatimeNeedsUpdate(time.Unix(st.Atim.Unix()), time.Unix(st.Mtim.Unix()), time.Unix(st.Ctim.Unix()), time.Now())
	}
	return true
}

// readRecorded runs read with O_NOATIME cleared from fd, whose file
// status flags (those F_SETFL sets) are setfl, so that the backing
// filesystem records it as an access; ok is false if the flag cannot be
// cleared. A read of the same file through fd by another request meanwhile
// is recorded too: it is an access to the same file at the same moment.
func readRecorded(fd, setfl int, read func() error) (ok bool, err error) {
	if setfl&unix.O_NOATIME != 0 {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, setfl&^unix.O_NOATIME); err != nil {
			return false, nil
		}
		defer unix.FcntlInt(uintptr(fd), unix.F_SETFL, setfl)
	}
	return true, read()
}

// setflFlags are the file status flags F_SETFL changes (fcntl(2)).
const setflFlags = unix.O_APPEND | unix.O_ASYNC | unix.O_DIRECT | unix.O_NOATIME | unix.O_NONBLOCK

// AccessOpen records a read of the open regular file as an access through
// its own descriptor (backend.OpenAccesser), where the backing mount's
// rules move atime for it now.
func (f *file) AccessOpen(st *syscall.Stat_t) (bool, error) {
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG || !backingRecords(f.fd, st, false) {
		return false, nil
	}
	// filemap_read calls file_accessed also when it reads nothing.
	return readRecorded(f.fd, f.setfl, func() error {
		var one [1]byte
		return retry(func() error { _, err := syscall.Pread(f.fd, one[:], 0); return err })
	})
}

// openNoAtime is openPath with O_NOATIME, so that the backing filesystem
// does not move the entry's atime when the volume reads it. open(2)
// refuses O_NOATIME with EPERM to a caller that neither owns the file nor
// has CAP_FOWNER: such a file is opened without it, and its atime then also
// moves by the backing mount's rules. setfl is the descriptor's file
// status flags that F_SETFL sets, as opened.
func (b *Backend) openNoAtime(p string, flags int, mode uint32) (fd, setfl int, err error) {
	fd, err = b.openPath(p, flags|unix.O_NOATIME, mode)
	if err == nil {
		return fd, (flags | unix.O_NOATIME) & setflFlags, nil
	}
	if err == syscall.EPERM {
		fd, err = b.openPath(p, flags, mode)
	}
	return fd, flags & setflFlags, err
}
