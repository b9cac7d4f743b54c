package integration

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
	"testing"
)

// TestMountKillSetid: a write, a truncate or an O_TRUNC open by a user
// without CAP_FSETID drops S_ISUID, and S_ISGID when the file is group
// executable, as on ext4. kmsfs does it itself (FUSE_HANDLE_KILLPRIV_V2,
// fs/killpriv.go); root keeps the bits; a chmod that sets them again is seen
// by the next write; a file written in many requests loses them at the
// first. (File capabilities: TestMountFileCapabilities.)
func TestMountKillSetid(t *testing.T) {
	mountRequireRoot(t, "act as another user")
	v := mountNewVolume(t)
	v.letOthersReach()
	v.mount("--allow-other")
	if err := os.Chmod(v.mnt, 0o777); err != nil {
		t.Fatal(err)
	}
	const nobody = 65534
	asNobody := func(script string) {
		t.Helper()
		cmd := exec.Command("sh", "-c", script)
		cmd.Dir = v.mnt
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("as uid %d: %s: %v: %s", nobody, script, err, out)
		}
	}
	// setid makes name a nobody-owned file with mode (chmod after chown:
	// chown clears the bits).
	setid := func(name string, mode os.FileMode) {
		t.Helper()
		p := v.path(name)
		if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
			mountWriteFile(t, p, []byte("original\n"))
		}
		if err := os.Chown(p, nobody, nobody); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
	// wantMode checks the mode the kernel shows right away (a write makes
	// it ask again: mtime changed) and the one stored, after a remount.
	wantMode := func(name string, want os.FileMode) {
		t.Helper()
		for _, when := range []string{"after the change", "after a remount"} {
			if when == "after a remount" {
				v.remount("--allow-other")
			}
			fi, err := os.Stat(v.path(name))
			if err != nil {
				t.Fatal(err)
			}
			if got := fi.Mode() & (os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky); got != want {
				t.Errorf("%s: mode %v %s, want %v", name, got, when, want)
			}
		}
	}

	setid("append", 0o755|os.ModeSetuid|os.ModeSetgid)
	asNobody("echo more >> append")
	wantMode("append", 0o755)
	if b, err := os.ReadFile(v.path("append")); err != nil || string(b) != "original\nmore\n" {
		t.Errorf("append: %q, %v", b, err)
	}

	// S_ISGID without group execute is not a set-group-ID program: kept.
	setid("nogx", 0o644|os.ModeSetuid|os.ModeSetgid)
	asNobody("echo more >> nogx")
	wantMode("nogx", 0o644|os.ModeSetgid)

	setid("truncate", 0o755|os.ModeSetuid)
	asNobody("truncate -s 3 truncate")
	wantMode("truncate", 0o755)

	setid("otrunc", 0o755|os.ModeSetuid)
	asNobody(": > otrunc")
	wantMode("otrunc", 0o755)

	// Root has CAP_FSETID.
	setid("root", 0o755|os.ModeSetuid)
	f, err := os.OpenFile(v.path("root"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("by root\n"); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	wantMode("root", 0o755|os.ModeSetuid)

	// Within one mount: the bit comes back with a chmod after a write that
	// dropped it, and the next write drops it again.
	setid("again", 0o755|os.ModeSetuid)
	asNobody("echo 1 >> again")
	if err := os.Chmod(v.path("again"), 0o755|os.ModeSetuid); err != nil {
		t.Fatal(err)
	}
	asNobody("echo 2 >> again")
	wantMode("again", 0o755)

	// A writer outside the file's group drops S_ISGID even without group
	// execute (setattr_should_drop_sgid, Linux 6.2).
	setid("othergroup", 0o666|os.ModeSetgid)
	if err := os.Chown(v.path("othergroup"), nobody, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(v.path("othergroup"), 0o666|os.ModeSetgid); err != nil {
		t.Fatal(err)
	}
	asNobody("echo more >> othergroup")
	wantMode("othergroup", 0o666)

	// fallocate drops the bits as a write does (FUSE_FALLOCATE carries no
	// kill flag: kmsfs drops them itself).
	setid("falloc", 0o755|os.ModeSetuid|os.ModeSetgid)
	asNobody("fallocate -l 8192 falloc")
	wantMode("falloc", 0o755)

	// Many writes in one open file: the bits go at the first.
	setid("many", 0o755|os.ModeSetuid|os.ModeSetgid)
	asNobody("dd if=/dev/zero of=many bs=64k count=64 conv=notrunc status=none")
	wantMode("many", 0o755)
}
