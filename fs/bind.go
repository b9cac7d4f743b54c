package fs

import (
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// A second mount of a volume that is mounted read-write here already is a
// bind mount of the first: one mount process (which holds the volume's
// lock, its intents and caches) serves both mountpoints, as the kernel
// serves one superblock when a block device is mounted twice (xfstests
// generic/732 mounts the scratch device at two mountpoints and renames
// across them). A second process could not share the lock, and a
// read-only one beside a writer would serve from caches the writer does
// not invalidate.

// MountedReadWrite returns a mountpoint at which the kmsfs volume source
// (the backend path given to kmsfs mount) is mounted read-write, or "".
func MountedReadWrite(source string) string {
	for _, m := range kmsfsMounts() {
		if m.source == source && !m.readOnly() {
			return m.mountpoint
		}
	}
	return ""
}

// BindMount makes mountpoint show the mount at existing, with the generic
// flags of vfs (and read-only if readOnly) on the new mountpoint only. It
// needs CAP_SYS_ADMIN.
func BindMount(existing, mountpoint string, vfs VFSFlags, readOnly bool) error {
	if err := unix.Mount(existing, mountpoint, "", unix.MS_BIND, ""); err != nil {
		return &os.PathError{Op: "bind mount", Path: mountpoint, Err: err}
	}
	// A bind mount takes the per-mount flags of its source; a remount of
	// the bind sets this mountpoint's own (mount(8): bind,remount).
	flags := unix.MS_REMOUNT | unix.MS_BIND | vfs.MountFlags()
	if readOnly {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount("", mountpoint, "", flags, ""); err != nil {
		unix.Unmount(mountpoint, unix.MNT_DETACH)
		return &os.PathError{Op: "bind mount", Path: mountpoint, Err: err}
	}
	return nil
}

// kmsfsMounts lists the kmsfs mounts of /proc/self/mountinfo.
func kmsfsMounts() []mountInfo {
	ms, _ := readMountinfo()
	var out []mountInfo
	for _, m := range ms {
		if m.fstype == "fuse.kmsfs" {
			out = append(out, m)
		}
	}
	return out
}

// OtherMountsOf says whether the filesystem mounted at mountpoint is
// mounted elsewhere too (a bind mount): unmounting mountpoint then leaves
// its mount process running. Call it before the unmount.
func OtherMountsOf(mountpoint string) bool {
	abs, err := filepath.Abs(mountpoint)
	if err != nil {
		return false
	}
	ms := kmsfsMounts()
	dev := ""
	for _, m := range ms {
		if m.mountpoint == abs {
			dev = m.dev
		}
	}
	n := 0
	for _, m := range ms {
		if dev != "" && m.dev == dev {
			n++
		}
	}
	return n > 1
}
