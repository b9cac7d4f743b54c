package fs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/volume"
)

// VFSFlags collects the generic mount options: the ones the kernel applies
// to every mount whatever the filesystem (atime policy, nosuid, nodev,
// noexec, sync, dirsync, lazytime, ro/rw). /etc/fstab lines carry them
// routinely. They are mount(2) flags, not filesystem options: FUSE refuses
// them in the option string ("fuse: Unknown parameter 'noatime'"), so they
// are passed as flag bits, or to fusermount3, which does the same.
//
// Later options override earlier ones, as with mount(8). nosuid and nodev
// apply unless suid and dev are given, and the backend may impose them
// anyway (backendLimits).
type VFSFlags struct {
	set, clear uintptr  // MS_* bits named, last word wins
	words      []string // the options as given, for fusermount3
	readOnly   int      // 0: neither ro nor rw given; 1: ro; -1: rw
}

// vfsOption is what one generic option does to the mount flags.
type vfsOption struct {
	set, clear uintptr
}

const atimeMask = unix.MS_NOATIME | unix.MS_RELATIME | unix.MS_STRICTATIME

// vfsOptionOf is what the generic option opt of mount(8) does to the
// mount flags (util-linux's libmount table, fusermount3's mount_flags);
// ok is false for any other option.
func vfsOptionOf(opt string) (o vfsOption, ok bool) {
	switch opt {
	case "ro":
		return vfsOption{set: unix.MS_RDONLY}, true
	case "rw":
		return vfsOption{clear: unix.MS_RDONLY}, true
	case "nosuid":
		return vfsOption{set: unix.MS_NOSUID}, true
	case "suid":
		return vfsOption{clear: unix.MS_NOSUID}, true
	case "nodev":
		return vfsOption{set: unix.MS_NODEV}, true
	case "dev":
		return vfsOption{clear: unix.MS_NODEV}, true
	case "noexec":
		return vfsOption{set: unix.MS_NOEXEC}, true
	case "exec":
		return vfsOption{clear: unix.MS_NOEXEC}, true
	case "sync":
		return vfsOption{set: unix.MS_SYNCHRONOUS}, true
	case "async":
		return vfsOption{clear: unix.MS_SYNCHRONOUS}, true
	case "dirsync":
		return vfsOption{set: unix.MS_DIRSYNC}, true
	case "lazytime":
		return vfsOption{set: unix.MS_LAZYTIME}, true
	case "nolazytime":
		return vfsOption{clear: unix.MS_LAZYTIME}, true
	case "noatime":
		return vfsOption{set: unix.MS_NOATIME, clear: atimeMask &^ unix.MS_NOATIME}, true
	case "atime":
		return vfsOption{clear: unix.MS_NOATIME}, true
	case "relatime":
		return vfsOption{set: unix.MS_RELATIME, clear: atimeMask &^ unix.MS_RELATIME}, true
	case "norelatime":
		return vfsOption{clear: unix.MS_RELATIME}, true
	case "strictatime":
		return vfsOption{set: unix.MS_STRICTATIME, clear: atimeMask &^ unix.MS_STRICTATIME}, true
	case "nostrictatime":
		return vfsOption{clear: unix.MS_STRICTATIME}, true
	case "nodiratime":
		return vfsOption{set: unix.MS_NODIRATIME}, true
	case "diratime":
		return vfsOption{clear: unix.MS_NODIRATIME}, true
	case "silent":
		return vfsOption{set: unix.MS_SILENT}, true
	case "loud":
		return vfsOption{clear: unix.MS_SILENT}, true
	}
	return vfsOption{}, false
}

// Parse folds one -o option into f and reports whether it is a generic
// mount option. Others are left to the caller.
func (f *VFSFlags) Parse(opt string) bool {
	o, ok := vfsOptionOf(opt)
	if !ok {
		return false
	}
	f.set = f.set&^o.clear | o.set
	f.clear = f.clear&^o.set | o.clear
	f.words = append(f.words, opt)
	switch opt {
	case "ro":
		f.readOnly = 1
	case "rw":
		f.readOnly = -1
	}
	return true
}

// ReadOnly reports whether the last of ro and rw given was ro.
func (f VFSFlags) ReadOnly() bool { return f.readOnly > 0 }

// MountFlags are the mount(2) flags: nosuid,nodev unless suid or dev was
// given, and the options given.
func (f VFSFlags) MountFlags() uintptr {
	const base = unix.MS_NOSUID | unix.MS_NODEV
	return (base | f.set) &^ f.clear
}

// fusermountOptions are the options as fusermount3 takes them (for a
// mount that is not made with mount(2) directly).
func (f VFSFlags) fusermountOptions() []string { return f.words }

// backendLimits are the flags a mount of vol gets whatever the options
// say. Set-ID bits and device numbers are backend metadata, outside the
// encryption and its authentication, so they are honoured only where the
// backend is a local filesystem's own inodes, made under its kernel's
// rules (only root makes a device node or a set-user-ID root file there),
// and only as far as that filesystem honours them itself: a backing
// directory on a nosuid or nodev mount gives a nosuid or nodev kmsfs
// mount. A backend without device nodes (S3: object metadata anyone with
// write access to the bucket can set) always gives nosuid,nodev.
func backendLimits(ctx context.Context, vol *volume.Volume) uintptr {
	const both = unix.MS_NOSUID | unix.MS_NODEV
	be := vol.Backend()
	if !be.Caps().Mknod {
		return both
	}
	var st syscall.Statfs_t
	if err := be.Statfs(ctx, &st); err != nil {
		return both
	}
	var f uintptr
	if st.Flags&unix.ST_NOSUID != 0 {
		f |= unix.MS_NOSUID
	}
	if st.Flags&unix.ST_NODEV != 0 {
		f |= unix.MS_NODEV
	}
	return f
}

// IsRemount reports whether a -o option list asks to remount: mount(8)
// hands `mount -o remount,ro MOUNTPOINT` to the helper of the mount's type,
// with the mount's current options merged in.
func IsRemount(options string) bool {
	for _, o := range strings.Split(options, ",") {
		if strings.TrimSpace(o) == "remount" {
			return true
		}
	}
	return false
}

// remountFlags are the mount(2) flags for a remount with the -o options
// given: the generic ones, and MS_REMOUNT. The rest are FUSE's or kmsfs's
// own (user_id=, max_read=, allow_other, keystore=, ...), which mount(8)
// copies from the mount table; FUSE ignores filesystem options on a
// remount, and kmsfs's cannot change without a new mount, so they are
// dropped. current are the mount's options now: a remount keeps nosuid
// and nodev where the mount has them, since they may be the backend's
// limits (backendLimits), which a remount cannot check.
func remountFlags(options string, current []string) uintptr {
	var f VFSFlags
	for _, o := range strings.Split(options, ",") {
		f.Parse(strings.TrimSpace(o))
	}
	flags := unix.MS_REMOUNT | f.MountFlags()
	for _, o := range current {
		switch o {
		case "nosuid":
			flags |= unix.MS_NOSUID
		case "nodev":
			flags |= unix.MS_NODEV
		}
	}
	return flags
}

// Remount changes the generic options of the kmsfs mount at mountpoint in
// the kernel: remount,ro makes every change fail with EROFS before it
// reaches the daemon, remount,rw lets changes through again. The daemon
// is not involved: it keeps the volume open as it was mounted, so a mount
// made read-only (-o ro, --read-only) still refuses changes after
// remount,rw; it must be mounted again read-write.
func Remount(mountpoint, options string) error {
	abs, err := filepath.Abs(mountpoint)
	if err != nil {
		return err
	}
	_, current, err := mountEntry(abs)
	if err != nil {
		return fmt.Errorf("remount %s: not mounted: %w", abs, err)
	}
	if err := unix.Mount("", abs, "", remountFlags(options, current), ""); err != nil {
		return &os.PathError{Op: "remount", Path: abs, Err: err}
	}
	return nil
}
