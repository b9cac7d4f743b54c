package integration

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// mountOptionsOf returns dir's line of /proc/self/mountinfo from the mount
// options on (per-mount options, optional fields, type, source, superblock
// options), for messages.
func mountOptionsOf(t *testing.T, dir string) string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 5 && mountUnescape(fields[4]) == dir {
			return strings.Join(fields[5:], " ")
		}
	}
	t.Fatalf("%s not mounted", dir)
	return ""
}

// TestMountReadOnly mounts with --read-only (and with -o ro, as from
// /etc/fstab): reads work, every kind of change fails with EROFS, and the
// backing files stay untouched.
func TestMountReadOnly(t *testing.T) {
	v := mountNewVolume(t)
	v.mount()
	content := mountPattern(9000, 9)
	mountWriteFile(t, v.path("file"), content)
	if err := os.Mkdir(v.path("dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(v.path("file"), "user.x", []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	v.unmount()
	backing := mountStat(t, v.backing("file"))

	for _, flags := range [][]string{{"--read-only"}, {"-o", "ro"}} {
		t.Run(strings.Join(flags, " "), func(t *testing.T) {
			v.mount(flags...)
			defer v.unmount()
			// The kernel knows the mount is read-only (statvfs ST_RDONLY),
			// so access(2) and tools asking it say so too.
			var st unix.Statfs_t
			if err := unix.Statfs(v.mnt, &st); err != nil {
				t.Fatal(err)
			}
			if st.Flags&unix.ST_RDONLY == 0 {
				t.Errorf("statfs flags %#x: no ST_RDONLY (mountinfo: %s)", st.Flags, mountOptionsOf(t, v.mnt))
			}
			if err := unix.Access(v.path("file"), unix.W_OK); !errors.Is(err, syscall.EROFS) {
				t.Errorf("access(W_OK) on a read-only mount: %v, want EROFS", err)
			}
			mountExpectContent(t, v.path("file"), content)
			buf := make([]byte, 8)
			if n, err := unix.Getxattr(v.path("file"), "user.x", buf); err != nil || string(buf[:n]) != "v" {
				t.Errorf("getxattr on a read-only mount: %q, %v", buf[:n], err)
			}
			changes := map[string]func() error{
				"open for writing": func() error {
					f, err := os.OpenFile(v.path("file"), os.O_WRONLY, 0)
					if err == nil {
						f.Close()
					}
					return err
				},
				"create":   func() error { return os.WriteFile(v.path("new"), []byte("x"), 0o644) },
				"truncate": func() error { return os.Truncate(v.path("file"), 10) },
				"mkdir":    func() error { return os.Mkdir(v.path("newdir"), 0o755) },
				"rmdir":    func() error { return os.Remove(v.path("dir")) },
				"unlink":   func() error { return os.Remove(v.path("file")) },
				"rename":   func() error { return os.Rename(v.path("file"), v.path("moved")) },
				"symlink":  func() error { return os.Symlink("file", v.path("link")) },
				"link":     func() error { return os.Link(v.path("file"), v.path("hard")) },
				"chmod":    func() error { return os.Chmod(v.path("file"), 0o600) },
				"chown":    func() error { return os.Chown(v.path("file"), 1, 1) },
				"utimes":   func() error { return os.Chtimes(v.path("file"), time.Now(), time.Now()) },
				"setxattr": func() error { return unix.Setxattr(v.path("file"), "user.y", []byte("v"), 0) },
				"removexattr": func() error {
					return unix.Removexattr(v.path("file"), "user.x")
				},
			}
			for what, change := range changes {
				if err := change(); !errors.Is(err, syscall.EROFS) {
					t.Errorf("%s on a read-only mount: %v, want EROFS", what, err)
				}
			}
		})
	}
	after := mountStat(t, v.backing("file"))
	if after.Size != backing.Size || after.Mtim != backing.Mtim || after.Mode != backing.Mode {
		t.Errorf("backing file changed under read-only mounts: %+v -> %+v", backing, after)
	}
}

// TestMountSignals: SIGTERM and SIGINT to `kmsfs mount --foreground`
// unmount cleanly; the process exits 0 and the mount point is gone from
// the mount table. Data written before the signal is there after it.
func TestMountSignals(t *testing.T) {
	v := mountNewVolume(t)
	for i, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		proc := v.mountForeground()
		data := mountPattern(50000+i, byte(i))
		mountWriteFile(t, v.path(sig.String()), data)
		if err := proc.cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		done, err := proc.wait(15 * time.Second)
		if !done {
			t.Fatalf("kmsfs mount --foreground still running 15s after %v", sig)
		}
		if err != nil {
			t.Errorf("kmsfs mount --foreground after %v: %v, want exit status 0", sig, err)
		}
		if mountIsMounted(v.mnt) {
			t.Fatalf("%s still mounted after %v", v.mnt, sig)
		}
		v.mount()
		mountExpectContent(t, v.path(sig.String()), data)
		v.unmount()
	}
	if log := v.log(); strings.Count(log, "msg=unmounted") < 2 {
		t.Errorf("log has no clean unmount for each signal:\n%s", mountTail(log, 20))
	}
}

// TestMountReturnsOutput runs `kmsfs mount` (the daemonising form) the way
// scripts and CI do, with its stdout and stderr captured through a pipe:
// it must return once mounted, so the daemon it leaves behind must not
// keep the caller's pipe open.
func TestMountReturnsOutput(t *testing.T) {
	v := mountNewVolume(t)
	cmd := v.command("mount", "--log", v.logPath, v.vault, v.mnt)
	type result struct {
		out []byte
		err error
	}
	res := make(chan result, 1)
	go func() {
		out, err := cmd.CombinedOutput()
		res <- result{out, err}
	}()
	select {
	case r := <-res:
		if r.err != nil {
			t.Fatalf("kmsfs mount: %v\n%s", r.err, r.out)
		}
		if !mountIsMounted(v.mnt) {
			t.Fatal("kmsfs mount returned but nothing is mounted")
		}
	case <-time.After(20 * time.Second):
		mounted := mountIsMounted(v.mnt)
		// Unmounting ends the daemon, which closes the pipe.
		v.cleanup()
		<-res
		t.Fatalf("kmsfs mount with its output on a pipe did not return within 20s (mounted: %v): "+
			"the background mount process keeps the caller's stdout/stderr open, so "+
			"`out=$(kmsfs mount ...)` or a captured subprocess blocks until unmount", mounted)
	}
}

// TestMountAllowOther: without --allow-other only the mounting user gets
// in (FUSE's rule); with it other users do, and the kernel still checks
// the file modes (default_permissions).
func TestMountAllowOther(t *testing.T) {
	mountRequireRoot(t, "act as another user")
	v := mountNewVolume(t)
	v.letOthersReach()
	asNobody := func(args ...string) error {
		cmd := exec.Command(args[0], args[1:]...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			return errors.New(strings.TrimSpace(string(out)))
		}
		return nil
	}
	v.mount()
	// The mount's root has the backing directory's mode, 0700 from init.
	if err := os.Chmod(v.mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	mountWriteFile(t, v.path("public"), []byte("public"))
	mountWriteFile(t, v.path("private"), []byte("private"))
	if err := os.Chmod(v.path("private"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := asNobody("cat", v.path("public")); err == nil {
		t.Error("another user read the mount without --allow-other")
	}
	v.remount("--allow-other")
	if err := asNobody("cat", v.path("public")); err != nil {
		t.Errorf("another user cannot read a 0644 file with --allow-other: %v", err)
	}
	if err := asNobody("cat", v.path("private")); err == nil || !strings.Contains(err.Error(), "Permission denied") {
		t.Errorf("another user reading a 0600 root file with --allow-other: %v, want Permission denied", err)
	}
	if err := asNobody("touch", v.path("public")); err == nil {
		t.Error("another user wrote a root 0644 file")
	}
}
