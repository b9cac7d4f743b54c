package fs

// Access times: the mount's noatime, nodiratime, relatime and strictatime.
//
// The kernel applies these options to every other filesystem itself
// (touch_atime, atime_needs_update in fs/inode.c), but not to FUSE: it sets
// S_NOATIME on every FUSE inode (fuse_iget), so the options reach the
// kernel and show in mountinfo, and decide nothing. What a FUSE filesystem
// reports as atime is its own business, and kmsfs reported the backing
// file's, which moved by the backing mount's rules instead.
//
// So the daemon applies the mount's policy itself: the local backend opens
// what it reads O_NOATIME, and an access the policy counts is recorded
// through backend.Accesser, which moves atime and leaves ctime (a read
// through a strictatime clone of the backing mount, backend/local/atime.go;
// an atime-only update in a shared volume's database). A backend without it
// (object-per-file S3) moves no atime on a read. What counts as an access,
// given what the daemon sees:
//
//   - The first READ through an open for reading only (O_RDONLY, as
//     exec(2) opens a program, and as a file is opened to be mapped). The
//     kernel keeps file pages across opens (FOPEN_KEEP_CACHE) and serves
//     reads from them unseen; so an open whose reads would move atime, of
//     a file whose pages the kernel may hold (Node.kernelPages), is
//     answered without FOPEN_KEEP_CACHE: the kernel drops the pages and
//     the read reaches the daemon. Under relatime that is only the first
//     read after a change. An empty file has nothing to read and the
//     kernel sends no READ: its open counts. Any other open that reads
//     nothing does not, as on Linux.
//   - The first READ the daemon gets through an open for reading and
//     writing (O_RDWR), which is mostly opened to write.
//   - Every listing of a directory (the kernel caches none).
//
// Opens for writing only never count, and neither do symlinks (the kernel
// keeps their targets, FUSE_CACHE_SYMLINKS; a READLINK moves the backing
// symlink's atime by the backing mount's rules).
//
// The decision costs nothing in the common case: a file's times come with
// the stat every open makes (volume.Handle.OpenStat), a directory's with
// the stat of the descriptor that lists it (backend.AccessLister; on a
// shared volume, a metadata lookup), and the policy is an atomic load.
// Only an access that moves atime costs the access itself: on a local
// volume a read through the descriptor already open (backend.OpenAccesser)
// where the backing mount's rules agree. The kernel is told to drop the
// attributes it keeps only where it would not drop its atime by itself:
// it does after every READ and READDIR it sends (fuse_invalidate_atime in
// fs/fuse/file.c and readdir.c), so only the open of an empty file is
// followed by a notification; a dropped attribute cache would cost a
// GETATTR at the next read.
//
// The policy is the mount's as /proc/self/mountinfo shows it, and follows a
// remount (mount -o remount,noatime; remount,ro stops all updates): a
// goroutine waits on mountinfo, which the kernel marks with POLLPRI at every
// change of the mount table (proc(5)), and an access that would move atime
// checks once more without waiting, so that a read right after a remount
// never uses the options from before. Bind mounts of the mount elsewhere
// share its daemon, which cannot tell them apart: they get its policy.

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/backend"
)

// atimeMode is the mount's atime option.
type atimeMode uint8

const (
	atimeRelative atimeMode = iota // relatime, the kernel's default
	atimeStrict                    // strictatime
	atimeNever                     // noatime
)

func (m atimeMode) String() string {
	switch m {
	case atimeStrict:
		return "strictatime"
	case atimeNever:
		return "noatime"
	}
	return "relatime"
}

// atimePolicy is what decides whether an access moves atime.
type atimePolicy struct {
	mode     atimeMode
	noDirs   bool // nodiratime
	readOnly bool // a read-only mount (or volume) changes no time
}

// needsUpdate reports whether an access at now to an entry (a directory
// if dir) with these times moves its atime: atime_needs_update and
// relatime_need_update of fs/inode.c, for a mount with this policy.
func (p atimePolicy) needsUpdate(dir bool, atime, mtime, ctime, now time.Time) bool {
	switch {
	case p.readOnly, p.mode == atimeNever, dir && p.noDirs:
		return false
	case p.mode == atimeRelative && !backend.RelatimeNeedsUpdate(atime, mtime, ctime, now):
		return false
	}
	return !atime.Equal(now)
}

// atimePolicyOfFlags is the policy mount(2) flags give: noatime or
// strictatime if named, relatime otherwise (do_new_mount's default).
func atimePolicyOfFlags(flags uintptr) atimePolicy {
	p := atimePolicy{noDirs: flags&unix.MS_NODIRATIME != 0, readOnly: flags&unix.MS_RDONLY != 0}
	switch {
	case flags&unix.MS_NOATIME != 0:
		p.mode = atimeNever
	case flags&unix.MS_STRICTATIME != 0:
		p.mode = atimeStrict
	}
	return p
}

// atimePolicyOfMountinfo is the policy a mountinfo line shows: its
// per-mount options name noatime or relatime, and neither for strictatime
// (show_mnt_opts); ro is per mount or for the whole superblock.
func atimePolicyOfMountinfo(mountOpts, superOpts []string) atimePolicy {
	p := atimePolicy{mode: atimeStrict,
		noDirs:   slices.Contains(mountOpts, "nodiratime"),
		readOnly: slices.Contains(mountOpts, "ro") || slices.Contains(superOpts, "ro")}
	switch {
	case slices.Contains(mountOpts, "noatime"):
		p.mode = atimeNever
	case slices.Contains(mountOpts, "relatime"):
		p.mode = atimeRelative
	}
	return p
}

// mountinfoOptions returns the per-mount and superblock options of the
// mount at mountpoint whose device is dev ("major:minor"), the last one if
// several are stacked there, from the text of /proc/self/mountinfo.
func mountinfoOptions(data, mountpoint, dev string) (mountOpts, superOpts []string, ok bool) {
	m, ok := topMount(parseMountinfo(data), mountpoint, dev)
	return m.mountOpts, m.superOpts, ok
}

// atimeWatch holds a mount's atime policy and follows its remounts.
type atimeWatch struct {
	policy atomic.Pointer[atimePolicy]

	// Unset (nil watch) or without a mountinfo to follow, the policy
	// stays what it was made with.
	mountpoint, dev string
	readOnly        bool // the volume is read-only: no remount changes that
	log             *slog.Logger

	mu      sync.Mutex // orders re-reads of mountinfo
	checkFd int        // mountinfo, polled without waiting by recheck
	watchFd int        // mountinfo, waited on by the watching goroutine
	stopFd  int        // eventfd that ends the wait
	done    chan struct{}
}

// newAtimeWatch returns a watch with the fixed policy p.
func newAtimeWatch(p atimePolicy) *atimeWatch {
	w := &atimeWatch{checkFd: -1, watchFd: -1, stopFd: -1}
	w.policy.Store(&p)
	return w
}

// current is the policy now (relatime for a nil watch: a tree not mounted
// through Mount).
func (w *atimeWatch) current() atimePolicy {
	if w == nil {
		return atimePolicy{}
	}
	return *w.policy.Load()
}

// follow makes w follow the mount at mountpoint with device dev: it reads
// the mount's options now, and again at every change of the mount table
// until stop. On any failure w keeps its policy.
func (w *atimeWatch) follow(mountpoint, dev string, volReadOnly bool, log *slog.Logger) error {
	w.mountpoint, w.dev, w.readOnly, w.log = mountpoint, dev, volReadOnly, log
	var err error
	if w.checkFd, err = unix.Open("/proc/self/mountinfo", unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
		return err
	}
	if w.watchFd, err = unix.Open("/proc/self/mountinfo", unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
		w.closeFds()
		return err
	}
	if w.stopFd, err = unix.Eventfd(0, unix.EFD_CLOEXEC); err != nil {
		w.closeFds()
		return err
	}
	w.mu.Lock()
	w.refreshLocked()
	w.mu.Unlock()
	w.done = make(chan struct{})
	go w.watch()
	return nil
}

// watch re-reads the mount's options whenever the kernel marks mountinfo
// changed (POLLPRI; the poll itself takes the mark), until stop.
func (w *atimeWatch) watch() {
	defer close(w.done)
	for {
		fds := []unix.PollFd{{Fd: int32(w.watchFd), Events: unix.POLLPRI}, {Fd: int32(w.stopFd), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, -1); err != nil {
			if err == unix.EINTR {
				continue
			}
			w.log.Warn("atime: no longer following remounts", "err", err)
			return
		}
		if fds[1].Revents != 0 {
			return
		}
		if fds[0].Revents&(unix.POLLPRI|unix.POLLERR) != 0 {
			w.mu.Lock()
			w.refreshLocked()
			w.mu.Unlock()
		}
	}
}

// recheck returns the policy after taking any change of the mount table
// not yet seen into account, without waiting: one poll(2).
func (w *atimeWatch) recheck() atimePolicy {
	if w == nil || w.checkFd < 0 {
		return w.current()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	fds := []unix.PollFd{{Fd: int32(w.checkFd), Events: unix.POLLPRI}}
	if n, err := unix.Poll(fds, 0); err == nil && n > 0 && fds[0].Revents&(unix.POLLPRI|unix.POLLERR) != 0 {
		w.refreshLocked()
	}
	return w.current()
}

// refreshLocked reads the mount's options from mountinfo. A mount no
// longer listed (being unmounted) keeps its last policy.
func (w *atimeWatch) refreshLocked() {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	mnt, super, ok := mountinfoOptions(string(data), w.mountpoint, w.dev)
	if !ok {
		return
	}
	p := atimePolicyOfMountinfo(mnt, super)
	p.readOnly = p.readOnly || w.readOnly
	if old := w.policy.Load(); *old != p {
		w.log.Debug("atime policy", "mode", p.mode, "nodiratime", p.noDirs, "ro", p.readOnly)
	}
	w.policy.Store(&p)
}

// stop ends the watching goroutine and closes the descriptors.
func (w *atimeWatch) stop() {
	if w == nil || w.done == nil {
		return
	}
	one := []byte{1, 0, 0, 0, 0, 0, 0, 0}
	unix.Write(w.stopFd, one)
	<-w.done
	w.mu.Lock()
	w.closeFds()
	w.mu.Unlock()
}

func (w *atimeWatch) closeFds() {
	for _, fd := range []*int{&w.checkFd, &w.watchFd, &w.stopFd} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
}

// accessDue reports whether an access now to an entry whose backing stat
// is st moves its atime under the mount's policy (see the top of this
// file).
func (t *tree) accessDue(st *syscall.Stat_t) bool {
	if t.accesser == nil || t.noAccess.Load() {
		return false
	}
	dir := st.Mode&syscall.S_IFMT == syscall.S_IFDIR
	atime, mtime, ctime := time.Unix(st.Atim.Unix()), time.Unix(st.Mtim.Unix()), time.Unix(st.Ctim.Unix())
	now := time.Now()
	if !t.atime.current().needsUpdate(dir, atime, mtime, ctime, now) {
		return false
	}
	// The goroutine that follows remounts may not have run yet.
	return t.atime.recheck().needsUpdate(dir, atime, mtime, ctime, now)
}

// access records an access to the entry name of node n (see the top of
// this file), whose backing stat st was taken at or before the access, if
// the mount's policy says it moves atime: through open, the entry's open
// file, where it can (a few system calls), else by name. With notify the
// kernel is then told to drop the attributes it keeps (they carry the old
// atime); the caller leaves that out where the kernel drops its atime
// itself. A failure is logged and otherwise ignored: a read does not fail
// because its atime did not move, as with touch_atime.
func (t *tree) access(ctx context.Context, n *Node, name string, st *syscall.Stat_t, open backend.OpenAccesser, notify bool) {
	if t.accessDue(st) {
		t.record(ctx, n, name, st, open, notify)
	}
}

// record records an access that moves atime (access, after the decision).
func (t *tree) record(ctx context.Context, n *Node, name string, st *syscall.Stat_t, open backend.OpenAccesser, notify bool) {
	recorded := false
	if open != nil {
		var err error
		if recorded, err = open.AccessOpen(st); recorded && err != nil {
			t.log.Debug("atime not updated", "path", "/"+name, "err", err)
			return
		}
	}
	if !recorded {
		if err := t.accesser.Access(ctx, name, st.Ino); err != nil {
			if errors.Is(err, syscall.ENOTSUP) {
				// A backend behind one that passes accesses on
				// (encrypted names) records none: stop asking.
				t.noAccess.Store(true)
			}
			t.log.Debug("atime not updated", "path", "/"+name, "err", err)
			return
		}
	}
	if notify {
		n.NotifyContent(-1, 0) // attributes only, not the page cache
	}
}

// atimeMayMove reports whether an access to a directory (dir) or file may
// move its atime under the policy now: when not, a caller that would stat
// the entry only for access skips the stat.
func (t *tree) atimeMayMove(dir bool) bool {
	if t.accesser == nil || t.noAccess.Load() {
		return false
	}
	p := t.atime.current()
	return !p.readOnly && p.mode != atimeNever && !(dir && p.noDirs)
}
