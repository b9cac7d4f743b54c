package fs

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"time"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/kmsfs/kmsfs/volume"
)

// MountOptions are the user-facing mount options.
type MountOptions struct {
	AllowOther bool
	ReadOnly   bool
	Debug      bool
	// AttrTimeout, EntryTimeout and NegativeTimeout are how long the kernel
	// caches attributes, names and "no such file" answers. AutoTimeout (the
	// default) picks them from the volume: see cacheTimeouts.
	AttrTimeout     time.Duration
	EntryTimeout    time.Duration
	NegativeTimeout time.Duration
	// MaxWrite is the largest WRITE/READ request (bytes); 1 MiB lets the
	// kernel batch sequential I/O (Linux >= 4.20 honours max_pages up to 256).
	MaxWrite int
	// ReadAheadKB raises the kernel readahead of the mount (bdi
	// read_ahead_kb, root only) above FUSE's 128 KiB default: sequential
	// reads then arrive as large requests, one pread and many blocks each.
	// 0 leaves the kernel default.
	ReadAheadKB int
	// WritebackCache lets the kernel keep written pages in its page cache
	// and send them to us in the background (FUSE_WRITEBACK_CACHE): write(2)
	// returns after a memory copy, and encryption and the backing write run
	// beside the writer instead of in series with it. The kernel then owns
	// the file size, mtime and O_APPEND of files written through this mount,
	// which is safe because nothing else writes the backend while it is
	// mounted. Ignored on read-only mounts. Off by default: in
	// docs/BENCHMARKS.md ("The FUSE writeback cache") it doubles
	// small write(2)s but costs rsync -a 15% and gains nothing on large
	// sequential writes.
	WritebackCache bool
	FsName         string
	// VFS are the generic mount options (noatime, nosuid, sync, ...) that
	// the kernel applies itself (vfsopts.go).
	VFS VFSFlags
}

// DefaultMountOptions: kernel cache timeouts picked from the volume
// (cacheTimeouts), 1 MiB requests, 4 MiB readahead.
func DefaultMountOptions() MountOptions {
	return MountOptions{AttrTimeout: AutoTimeout, EntryTimeout: AutoTimeout, NegativeTimeout: AutoTimeout,
		MaxWrite: 1 << 20, ReadAheadKB: 4096, FsName: "kmsfs"}
}

// AutoTimeout, as a timeout of MountOptions, lets the mount pick it.
const AutoTimeout time.Duration = -1

// Kernel cache timeouts (cacheTimeouts).
const (
	// exclusiveTimeout: what securefs uses for all three, and what a mount
	// that alone changes its tree can afford (longer would only matter for
	// trees walked less often than every 30 s).
	exclusiveTimeout = 30 * time.Second
	// sharedTimeout: go-fuse's default and gocryptfs's, for a tree others
	// may change: their changes show within a second.
	sharedTimeout = time.Second
)

// cacheTimeouts are the kernel's attribute, entry and negative entry
// timeouts for a mount of vol: those given, and for AutoTimeout 30 s when
// the mount is the only one that changes the tree (volume.Exclusive: a
// read-write mount holds the volume lock or the S3 writer lease), else 1 s
// and no negative caching (a read-only mount, a shared volume: other mounts
// change the tree, and show their changes within a second).
//
// Long timeouts cost no consistency through this mount: the kernel updates
// or drops what it caches for every change it sends us (the entry and
// attributes in the reply to CREATE, MKDIR, LINK, SETATTR; fuse_dir_changed
// and fuse_invalidate_attr for the parent and the inode on unlink, rename,
// write). What kmsfs changes on its own, the kernel is told (NotifyContent):
// the mode an ACL rewrites (acl.go) and the set-id bits a write drops
// (killpriv.go). Negative entries are replaced by the kernel on create.
func (o MountOptions) cacheTimeouts(vol *volume.Volume) (attr, entry, neg time.Duration) {
	pick := func(d, shared time.Duration) time.Duration {
		switch {
		case d >= 0:
			return d
		case vol.Exclusive():
			return exclusiveTimeout
		}
		return shared
	}
	return pick(o.AttrTimeout, sharedTimeout), pick(o.EntryTimeout, sharedTimeout), pick(o.NegativeTimeout, 0)
}

// FuseReaders is how many goroutines wait in read(2) on /dev/fuse for the
// next request (fuse.MountOptions.MaxReaders, an option of the in-tree
// go-fuse fork, third_party/go-fuse) in a process with procs Ps: half as
// many as Ps, at least one. go-fuse's default lets GOMAXPROCS+1 of them
// wait (2..16 plus one), each holding an OS thread and its P in a system
// call; while no P is idle, the runtime's sysmon takes Ps back from threads
// in system calls after 20 µs (retake in runtime/proc.go). With fewer
// readers than Ps a P stays idle between requests, and requests are still
// handled concurrently: a goroutine that reads a request starts the next
// reader before handling it. Measured on 2 CPUs, one reader against
// go-fuse's three: rsync --checksum and diff -r 9-23% faster, cp -a and
// rsync -a 2-8%, rm -rf and sequential and 4-job random I/O unchanged
// (docs/BENCHMARKS.md). The go-fuse maintainer finds the default "rather
// too high than too low" (https://github.com/hanwen/go-fuse/issues/565);
// JuiceFS's fork lowered it too (https://github.com/juicedata/juicefs/pull/3069),
// and many-CPU machines need several for bandwidth
// (https://github.com/juicedata/juicefs/issues/6071), hence half the Ps.
func FuseReaders(procs int) int {
	return max(procs/2, 1)
}

// Mount mounts vol at mountpoint and returns the running server; call
// Wait on it, and Unmount to stop.
func Mount(vol *volume.Volume, mountpoint string, opt MountOptions, log *slog.Logger) (*fuse.Server, error) {
	root := NewRoot(vol, log)
	root.t.writeback = opt.WritebackCache && !opt.ReadOnly
	attr, entry, neg := opt.cacheTimeouts(vol)
	root.t.attrTimeout = attr
	// The atime policy the flags ask for, until the mount's own options
	// are read from mountinfo below (atime.go).
	policy := atimePolicyOfFlags(opt.VFS.MountFlags())
	policy.readOnly = policy.readOnly || opt.ReadOnly || vol.ReadOnly()
	root.t.atime = newAtimeWatch(policy)
	mopts := fuse.MountOptions{
		AllowOther: opt.AllowOther,
		Debug:      opt.Debug,
		FsName:     opt.FsName,
		Name:       "kmsfs",
		MaxWrite:   opt.MaxWrite,
		// Permission checks: see below.
		Options:     nil,
		DirectMount: true,
		// Readahead as large as a write, so sequential reads reach us in
		// big requests (one pread, many blocks).
		MaxReadAhead: opt.MaxWrite,
		// Our read replies are decrypted bytes in memory, not a file
		// descriptor: splicing them only adds a pipe, and a 1 MiB reply plus
		// its header does not fit the default 1 MiB pipe-max-size (go-fuse
		// then logs and falls back for every read).
		DisableSplice: true,
		// A symlink's target never changes (a new target is a new inode),
		// so the kernel may keep what READLINK said for the inode's life
		// (FUSE_CACHE_SYMLINKS): diff -r and rsync read every link once
		// per pass otherwise.
		EnableSymlinkCaching: true,
		MaxReaders:           FuseReaders(runtime.GOMAXPROCS(0)),
	}
	// With --allow-other, let the kernel check permissions from the
	// attributes we report: the daemon often runs as root and the backend
	// would allow anything. Without it only the mounting user gets in, and
	// the backing filesystem checks that user's own calls, so the kernel's
	// check would only cost a GETATTR of the parent on every create and
	// rename (the create invalidates the attributes it needs).
	if root.t.writeback {
		mopts.ExtraCapabilities |= fuse.CAP_WRITEBACK_CACHE
	}
	if opt.AllowOther {
		mopts.Options = append(mopts.Options, "default_permissions")
	}
	if opt.ReadOnly {
		mopts.Options = append(mopts.Options, "ro")
	}
	// Generic options are flag bits of mount(2), which FUSE's option
	// string refuses; fusermount3 (used when we cannot call mount(2)
	// ourselves, without root) takes them as words.
	limits := backendLimits(context.Background(), vol)
	mopts.DirectMountFlags = opt.VFS.MountFlags() | limits
	if mopts.DirectMountFlags == 0 {
		// go-fuse reads 0 as "nosuid,nodev"; MS_MGC_VAL is the kernel's
		// ignored "no flags".
		mopts.DirectMountFlags = syscall.MS_MGC_VAL
	}
	if os.Geteuid() != 0 {
		mopts.Options = append(mopts.Options, opt.VFS.fusermountOptions()...)
	}
	if limits&syscall.MS_NOSUID != 0 {
		mopts.Options = append(mopts.Options, "nosuid")
	}
	if limits&syscall.MS_NODEV != 0 {
		mopts.Options = append(mopts.Options, "nodev")
	}
	// The kernel leaves dropping suid/sgid on write to us, and stops asking
	// for security.capability before every write (killpriv.go).
	mopts.ExtraCapabilities |= fuse.CAP_HANDLE_KILLPRIV_V2
	rawFS := fusefs.NewNodeFS(root, &fusefs.Options{
		MountOptions:    mopts,
		AttrTimeout:     &attr,
		EntryTimeout:    &entry,
		NegativeTimeout: &neg,
		NullPermissions: true,
	})
	srv, err := fuse.NewServer(killPrivFS{rawFS}, mountpoint, &mopts)
	if err != nil {
		return nil, err
	}
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		// Serve ends by itself when the mount did not happen.
		return nil, err
	}
	// Follow the mount's atime options, remounts included; stop with the
	// server. Without mountinfo the policy stays the one the flags gave.
	if abs, err := filepath.Abs(mountpoint); err == nil {
		if dev, _, err := mountEntry(abs); err == nil {
			if err := root.t.atime.follow(abs, dev, opt.ReadOnly || vol.ReadOnly(), root.t.log); err != nil {
				root.t.log.Warn("atime: remounts not followed", "err", err)
			}
		}
	}
	go func() {
		srv.Wait()
		root.t.atime.stop()
	}()
	if opt.ReadAheadKB > 0 {
		if err := setReadAhead(mountpoint, opt.ReadAheadKB); err != nil && log != nil {
			log.Debug("kernel readahead left at its default", "err", err)
		}
	}
	return srv, nil
}

// setReadAhead writes the mount's backing-device readahead in sysfs. The
// device number comes from /proc/self/mountinfo, not from stat(2) of the
// mount point: a stat is a FUSE request to this very process, and a daemon
// killed while one of its threads waits for its own answer never exits (the
// thread sleeps uninterruptibly in request_wait_answer, and the /dev/fuse
// descriptor that would abort the request is only closed once every thread
// has exited).
func setReadAhead(mountpoint string, kb int) error {
	dev, err := mountDevice(mountpoint)
	if err != nil {
		return err
	}
	p := fmt.Sprintf("/sys/class/bdi/%s/read_ahead_kb", dev)
	return os.WriteFile(p, []byte(strconv.Itoa(kb)), 0)
}

// mountDevice returns "major:minor" of the filesystem mounted at mountpoint
// (the last one, if mounts are stacked there), from /proc/self/mountinfo.
func mountDevice(mountpoint string) (string, error) {
	dev, _, err := mountEntry(mountpoint)
	return dev, err
}

// mountEntry returns the device ("major:minor") and the per-mount options
// (rw, nosuid, relatime, ...) of the filesystem mounted at mountpoint (the
// last one, if mounts are stacked there), from /proc/self/mountinfo.
func mountEntry(mountpoint string) (dev string, opts []string, err error) {
	abs, err := filepath.Abs(mountpoint)
	if err != nil {
		return "", nil, err
	}
	ms, err := readMountinfo()
	if err != nil {
		return "", nil, err
	}
	m, ok := topMount(ms, abs, "")
	if !ok {
		return "", nil, fmt.Errorf("%s: not in /proc/self/mountinfo", abs)
	}
	return m.dev, m.mountOpts, nil
}

// MountSource returns the filesystem type, the source (for kmsfs, the
// backend) and whether it is mounted read-only, for the filesystem mounted
// at mountpoint, from /proc/self/mountinfo; ok is false when nothing is
// mounted there.
func MountSource(mountpoint string) (fstype, source string, readOnly, ok bool) {
	abs, err := filepath.Abs(mountpoint)
	if err != nil {
		return "", "", false, false
	}
	ms, err := readMountinfo()
	if err != nil {
		return "", "", false, false
	}
	m, ok := topMount(ms, abs, "")
	return m.fstype, m.source, m.readOnly(), ok
}
