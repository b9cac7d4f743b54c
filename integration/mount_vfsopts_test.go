package integration

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// mountInstallForMount8 puts the kmsfs under test where mount(8) finds it:
// mount.fuse3 runs the command named by the type (fuse.kmsfs) with a fixed
// PATH, so /usr/local/bin/kmsfs, as `make install` does. Whatever was there
// is put back when the test ends.
func mountInstallForMount8(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mount(8) of a FUSE type needs root")
	}
	mountRequireTool(t, "mount")
	if _, err := os.Stat("/sbin/mount.fuse3"); err != nil {
		if _, err2 := os.Stat("/usr/sbin/mount.fuse3"); err2 != nil {
			t.Skip("no mount.fuse3 (fuse3 package)")
		}
	}
	// A mount.fuse.kmsfs helper (the xfstests recipe installs one) is
	// what mount(8) runs instead of mount.fuse3 for the type, with other
	// options and keystore: the test would not test kmsfs's own handling.
	for _, h := range []string{"/sbin/mount.fuse.kmsfs", "/usr/sbin/mount.fuse.kmsfs"} {
		if _, err := os.Stat(h); err == nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is installed: mount(8) would run it instead of mount.fuse3", h)
			}
			t.Skipf("%s is installed: mount(8) would run it instead of mount.fuse3", h)
		}
	}
	const dst = "/usr/local/bin/kmsfs"
	saved := ""
	if _, err := os.Stat(dst); err == nil {
		saved = filepath.Join(t.TempDir(), "kmsfs.saved")
		if err := os.Rename(dst, saved); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		os.Remove(dst)
		if saved != "" {
			if err := os.Rename(saved, dst); err != nil {
				t.Errorf("restore %s: %v", dst, err)
			}
		}
	})
	data, err := os.ReadFile(kmsfsBinary())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, 0o755); err != nil {
		t.Fatal(err)
	}
}

// mountMountinfo returns the per-mount and the superblock options of the
// mount at dir, from /proc/self/mountinfo.
func mountMountinfo(t *testing.T, dir string) (mountOpts, superOpts []string) {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 10 || mountUnescape(f[4]) != dir {
			continue
		}
		mountOpts = strings.Split(f[5], ",")
		for i := 6; i < len(f); i++ {
			if f[i] == "-" && i+3 < len(f) {
				superOpts = strings.Split(f[i+3], ",")
			}
		}
	}
	if mountOpts == nil {
		t.Fatalf("%s not in /proc/self/mountinfo", dir)
	}
	return mountOpts, superOpts
}

// mountHasOptions fails unless every one of want is in have.
func mountHasOptions(t *testing.T, what string, have []string, want ...string) {
	t.Helper()
	for _, w := range want {
		found := false
		for _, h := range have {
			found = found || h == w
		}
		if !found {
			t.Errorf("%s options %v lack %s", what, have, w)
		}
	}
}

// mountLacksOptions fails if any of unwanted is in have.
func mountLacksOptions(t *testing.T, what string, have []string, unwanted ...string) {
	t.Helper()
	for _, u := range unwanted {
		for _, h := range have {
			if h == u {
				t.Errorf("%s options %v have %s", what, have, u)
			}
		}
	}
}

// mount8 runs mount(8) and fails the test if it fails.
func (v *mountVolume) mount8(args ...string) {
	v.t.Helper()
	out, err := exec.Command("mount", args...).CombinedOutput()
	if err != nil {
		v.t.Fatalf("mount %s: %v\n%s\nlog:\n%s", strings.Join(args, " "), err, out, mountTail(v.log(), 20))
	}
}

// mountOwnOptions are the kmsfs options every mount(8) here carries: the
// test's keystore and log (mount(8) gives helpers no HOME for a default).
func (v *mountVolume) mountOwnOptions() string {
	return "keystore=" + v.keystore + ",log=" + v.logPath
}

// TestMountVFSOptions mounts through mount(8) as /etc/fstab does (type
// fuse.kmsfs, via mount.fuse3) with generic VFS options, which reach the
// kernel as mount flags, and has mount -o remount,ro make every change
// fail with EROFS and remount,rw allow them again.
func TestMountVFSOptions(t *testing.T) {
	mountInstallForMount8(t)
	v := mountNewVolume(t)

	// An fstab line, mounted with mount --fstab.
	fstab := filepath.Join(t.TempDir(), "fstab")
	line := v.vault + " " + v.mnt + " fuse.kmsfs noatime,nodiratime,nosuid,nodev,noexec,sync,dirsync,lazytime,allow_other," + v.mountOwnOptions() + " 0 0\n"
	if err := os.WriteFile(fstab, []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	v.mount8("--fstab", fstab, v.mnt)
	mnt, super := mountMountinfo(t, v.mnt)
	mountHasOptions(t, "mount", mnt, "rw", "noatime", "nodiratime", "nosuid", "nodev", "noexec")
	mountLacksOptions(t, "mount", mnt, "relatime")
	mountHasOptions(t, "superblock", super, "rw", "sync", "dirsync", "lazytime", "allow_other")
	content := mountPattern(100000, 3)
	mountWriteFile(t, v.path("file"), content)
	mountExpectContent(t, v.path("file"), content)
	// noexec is enforced by the kernel.
	if err := os.WriteFile(v.path("script"), []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := exec.Command(v.path("script")).Run(); !errors.Is(err, syscall.EACCES) {
		t.Errorf("running a script on a noexec mount: %v, want EACCES", err)
	}

	// remount,ro: the kernel refuses every change; reads go on.
	v.mount8("-o", "remount,ro", v.mnt)
	mnt, super = mountMountinfo(t, v.mnt)
	mountHasOptions(t, "mount after remount,ro", mnt, "ro", "noatime", "noexec")
	mountHasOptions(t, "superblock after remount,ro", super, "ro")
	var st unix.Statfs_t
	if err := unix.Statfs(v.mnt, &st); err != nil || st.Flags&unix.ST_RDONLY == 0 {
		t.Errorf("statfs after remount,ro: flags %#x, %v; want ST_RDONLY", st.Flags, err)
	}
	changes := map[string]func() error{
		"create":   func() error { return os.WriteFile(v.path("new"), []byte("x"), 0o644) },
		"write":    func() error { return os.WriteFile(v.path("file"), []byte("x"), 0o644) },
		"truncate": func() error { return os.Truncate(v.path("file"), 1) },
		"mkdir":    func() error { return os.Mkdir(v.path("dir"), 0o755) },
		"unlink":   func() error { return os.Remove(v.path("script")) },
		"rename":   func() error { return os.Rename(v.path("file"), v.path("moved")) },
		"chmod":    func() error { return os.Chmod(v.path("file"), 0o600) },
		"setxattr": func() error { return unix.Setxattr(v.path("file"), "user.x", []byte("v"), 0) },
	}
	for what, change := range changes {
		if err := change(); !errors.Is(err, syscall.EROFS) {
			t.Errorf("%s after remount,ro: %v, want EROFS", what, err)
		}
	}
	mountExpectContent(t, v.path("file"), content)

	// remount,rw: changes work again, with the other options kept.
	v.mount8("-o", "remount,rw", v.mnt)
	mnt, _ = mountMountinfo(t, v.mnt)
	mountHasOptions(t, "mount after remount,rw", mnt, "rw", "noatime", "nodiratime", "noexec")
	content2 := mountPattern(5000, 4)
	mountWriteFile(t, v.path("file"), content2)
	if err := os.Mkdir(v.path("dir"), 0o755); err != nil {
		t.Errorf("mkdir after remount,rw: %v", err)
	}
	// And the options can change on a remount: atime policy, noexec.
	v.mount8("-o", "remount,strictatime,exec", v.mnt)
	mnt, _ = mountMountinfo(t, v.mnt)
	mountLacksOptions(t, "mount after remount,strictatime,exec", mnt, "noatime", "relatime", "noexec")
	if err := exec.Command(v.path("script")).Run(); err != nil {
		t.Errorf("running a script after remount,exec: %v", err)
	}

	// Unmounted with umount(8); the data is on the backend.
	if out, err := exec.Command("umount", v.mnt).CombinedOutput(); err != nil {
		t.Fatalf("umount: %v %s", err, out)
	}
	if !mountWaitUnmounted(v.mnt, 10*time.Second) {
		t.Fatal("still mounted after umount")
	}

	// Each atime policy and the other generic options alone, and ro.
	for _, c := range []struct {
		opt        string
		mnt, super []string
		lacks      []string
	}{
		{opt: "relatime", mnt: []string{"relatime"}},
		{opt: "strictatime", lacks: []string{"relatime", "noatime"}},
		{opt: "noatime", mnt: []string{"noatime"}, lacks: []string{"relatime"}},
		{opt: "nodiratime", mnt: []string{"nodiratime"}},
		{opt: "sync", super: []string{"sync"}},
		{opt: "dirsync", super: []string{"dirsync"}},
		{opt: "lazytime", super: []string{"lazytime"}},
		{opt: "ro", mnt: []string{"ro"}, super: []string{"ro"}},
	} {
		v.mount8("-t", "fuse.kmsfs", "-o", c.opt+","+v.mountOwnOptions(), v.vault, v.mnt)
		mnt, super := mountMountinfo(t, v.mnt)
		// mount.fuse3 adds suid,dev unless told nosuid,nodev, as mount(8)
		// does for a local filesystem; the backing directory's filesystem
		// allows both, so the mount gets them.
		mountHasOptions(t, c.opt+": mount", mnt, c.mnt...)
		mountLacksOptions(t, c.opt+": mount", mnt, "nosuid", "nodev")
		mountHasOptions(t, c.opt+": superblock", super, c.super...)
		mountLacksOptions(t, c.opt+": mount", mnt, c.lacks...)
		mountExpectContent(t, v.path("file"), content2)
		err := os.WriteFile(v.path("w-"+c.opt), []byte("x"), 0o644)
		if c.opt == "ro" {
			if !errors.Is(err, syscall.EROFS) {
				t.Errorf("write on a ro mount: %v, want EROFS", err)
			}
			// The daemon opened the volume read-only: remount,rw lets
			// changes past the kernel, and kmsfs still refuses them.
			v.mount8("-o", "remount,rw", v.mnt)
			if err := os.WriteFile(v.path("w-ro"), []byte("x"), 0o644); !errors.Is(err, syscall.EROFS) {
				t.Errorf("write after remount,rw of a mount made ro: %v, want EROFS", err)
			}
		} else if err != nil {
			t.Errorf("write on a %s mount: %v", c.opt, err)
		}
		v.unmount()
	}

	// kmsfs mount takes them too, with -o.
	v.mount("-o", "noatime,nodiratime,nosuid,nodev,relatime")
	mnt, _ = mountMountinfo(t, v.mnt)
	mountHasOptions(t, "kmsfs mount -o", mnt, "relatime", "nodiratime", "nosuid", "nodev")
	mountLacksOptions(t, "kmsfs mount -o", mnt, "noatime")
}

// TestMountSuidDevFollowTheBackend: suid and dev (which mount.fuse3 adds to
// every mount by root) are honoured only as far as the backing directory's
// filesystem honours them. On a backing tmpfs mounted nosuid,nodev, a
// kmsfs mount asked for suid,dev is nosuid,nodev, a remount cannot lift
// that, and a device node made through it cannot be opened; on one that
// allows them, the device node works, also after remount,ro (generic/306).
func TestMountSuidDevFollowTheBackend(t *testing.T) {
	mountInstallForMount8(t)
	for _, backing := range []string{"nosuid,nodev", "suid,dev"} {
		t.Run(strings.ReplaceAll(backing, ",", "-"), func(t *testing.T) {
			v := mountSmallVolume(t, "16m,"+backing)
			v.mount8("-t", "fuse.kmsfs", "-o", "suid,dev,"+v.mountOwnOptions(), v.vault, v.mnt)
			defer v.unmount()
			if err := unix.Mknod(v.path("null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
				t.Fatalf("mknod through the mount: %v", err)
			}
			v.mount8("-o", "remount,ro,suid,dev", v.mnt)
			mnt, _ := mountMountinfo(t, v.mnt)
			err := os.WriteFile(v.path("null"), []byte("discarded"), 0)
			if backing == "nosuid,nodev" {
				mountHasOptions(t, "mount over a nosuid,nodev backing", mnt, "nosuid", "nodev", "ro")
				if !errors.Is(err, syscall.EACCES) {
					t.Errorf("writing to a device node on a nodev mount: %v, want EACCES", err)
				}
				return
			}
			mountLacksOptions(t, "mount over a suid,dev backing", mnt, "nosuid", "nodev")
			mountHasOptions(t, "mount over a suid,dev backing", mnt, "ro")
			if err != nil {
				t.Errorf("writing to /dev/null's device node on a ro mount: %v", err)
			}
		})
	}
}
