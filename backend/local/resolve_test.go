package local

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A directory of the backing tree replaced by a symlink to somewhere else
// (what a rename racing with an operation on the mount can leave for an
// instant) must stop every operation below it, and a file replaced by a
// symlink must not be opened or chmod'ed through it: the daemon often runs
// as root, and the symlink can point anywhere.
func TestSymlinkInPlaceOfADirectoryIsNotFollowed(t *testing.T) {
	ctx := context.Background()
	b := newBackendAt(t, 0)
	outside, victim := outsideVictim(t)
	if err := os.Mkdir(filepath.Join(outside, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	old := time.Unix(1_000_000_000, 0)
	if err := os.Chtimes(victim, old, old); err != nil {
		t.Fatal(err)
	}
	for _, l := range []struct{ name, target string }{{"d", outside}, {"s", victim}, {"top/d", outside}} {
		if err := os.MkdirAll(filepath.Join(b.Root(), filepath.Dir(l.name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(l.target, filepath.Join(b.Root(), l.name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(b.Root(), "mine"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}

	for _, d := range []string{"d", "top/d"} {
		in := func(leaf string) string { return d + "/" + leaf }
		var st syscall.Stat_t
		when := time.Unix(2_000_000_000, 0)
		errs := map[string]error{
			"lstat":     b.Lstat(ctx, in("victim"), &st),
			"chmod":     b.Chmod(ctx, in("victim"), 0o666),
			"chown":     b.Lchown(ctx, in("victim"), 12345, 12345),
			"utimens":   b.Utimens(ctx, in("victim"), &when, &when),
			"unlink":    b.Unlink(ctx, in("victim")),
			"rmdir":     b.Rmdir(ctx, in("sub")),
			"mkdir":     b.Mkdir(ctx, in("made"), 0o755, nil),
			"symlink":   b.Symlink(ctx, "x", in("link"), nil),
			"link":      b.Link(ctx, in("victim"), "hardlink"),
			"link to":   b.Link(ctx, "mine", in("hardlink")),
			"rename":    b.Rename(ctx, in("victim"), "stolen", 0),
			"rename to": b.Rename(ctx, "mine", in("planted"), 0),
			"setxattr":  b.Setxattr(ctx, in("victim"), "user.x", []byte("v"), 0),
		}
		_, errs["readlink"] = b.Readlink(ctx, in("victim"))
		_, errs["getxattr"] = b.Getxattr(ctx, in("victim"), "user.x")
		_, errs["readdir"] = b.ReadDir(ctx, in("sub"))
		_, errs["open"] = b.Open(ctx, in("victim"), os.O_RDWR, 0, nil)
		_, errs["create"] = b.Open(ctx, in("new"), os.O_RDWR|os.O_CREATE, 0o644, nil)
		for op, err := range errs {
			if err == nil {
				t.Errorf("%s below %s (a symlink to %s) succeeded", op, d, outside)
			} else if e := errno(err); e != syscall.ELOOP && e != syscall.EXDEV {
				t.Errorf("%s below %s: %v, want ELOOP or EXDEV", op, d, err)
			}
		}
	}
	// The directory symlink itself lists nothing of the outside.
	if ents, err := b.ReadDir(ctx, "d"); err == nil {
		t.Errorf("readdir of a symlink to a directory listed %d entries", len(ents))
	}
	// A file replaced by a symlink to another file.
	if f, err := b.Open(ctx, "s", os.O_RDWR, 0, nil); err == nil {
		f.Close()
		t.Error("open of a symlink to a file outside succeeded")
	}
	if err := b.Chmod(ctx, "s", 0o666); errno(err) != syscall.EOPNOTSUPP {
		t.Errorf("chmod of a symlink: %v, want EOPNOTSUPP", err)
	}

	// Nothing outside changed.
	fi, err := os.Stat(victim)
	if err != nil {
		t.Fatalf("victim: %v", err)
	}
	if fi.Mode().Perm() != 0o600 || !fi.ModTime().Equal(old) {
		t.Errorf("victim changed: mode %v, mtime %v", fi.Mode(), fi.ModTime())
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid == 12345 {
		t.Error("victim changed owner")
	}
	if b, err := os.ReadFile(victim); err != nil || string(b) != "not yours" {
		t.Errorf("victim content: %q, %v", b, err)
	}
	ents, err := os.ReadDir(outside)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 2 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("outside directory now holds %v, want only victim and sub", names)
	}
	if _, err := os.Lstat(filepath.Join(outside, "sub")); err != nil {
		t.Errorf("outside sub: %v", err)
	}
}

// The same operations below real directories still work (the parent is
// opened with openat2; entries in the root use the root descriptor).
func TestOperationsBelowRealDirectories(t *testing.T) {
	ctx := context.Background()
	b := newBackendAt(t, 0)
	for _, d := range []string{"a", "a/b", "a/b/c"} {
		if err := b.Mkdir(ctx, d, 0o755, nil); err != nil {
			t.Fatal(err)
		}
	}
	// The mode as FUSE's CREATE passes it, with the file type.
	f, err := b.Open(ctx, "a/b/c/f", os.O_RDWR|os.O_CREATE|os.O_EXCL, syscall.S_IFREG|0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	// An exec's open carries __FMODE_EXEC (0x20) in the flags FUSE passes
	// on; openat2 would refuse it.
	if f, err = b.Open(ctx, "a/b/c/f", os.O_RDONLY|0x20, 0, nil); err != nil {
		t.Fatalf("open with an internal kernel flag: %v", err)
	}
	f.Close()
	if err := b.Chmod(ctx, "a/b/c/f", 0o4755); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := b.Lstat(ctx, "a/b/c/f", &st); err != nil || st.Mode&07777 != 0o4755 {
		t.Fatalf("after chmod: mode %o, %v", st.Mode&07777, err)
	}
	if err := b.Symlink(ctx, "f", "a/b/c/l", nil); err != nil {
		t.Fatal(err)
	}
	if target, err := b.Readlink(ctx, "a/b/c/l"); err != nil || target != "f" {
		t.Fatalf("readlink: %q, %v", target, err)
	}
	if err := b.Rename(ctx, "a/b/c/f", "a/g", 0); err != nil {
		t.Fatal(err)
	}
	if err := b.Link(ctx, "a/g", "a/b/h"); err != nil {
		t.Fatal(err)
	}
	if err := b.Unlink(ctx, "a/b/h"); err != nil {
		t.Fatal(err)
	}
	if err := b.Rmdir(ctx, "a/b/c"); err == nil {
		t.Fatal("rmdir of a non-empty directory succeeded")
	}
	if err := b.Unlink(ctx, "a/b/c/l"); err != nil {
		t.Fatal(err)
	}
	if err := b.Rmdir(ctx, "a/b/c"); err != nil {
		t.Fatal(err)
	}
}

// The same below a path longer than PATH_MAX, resolved in pieces: a
// directory in the last piece swapped for a symlink stops every call.
func TestSymlinkDeepInALongPathIsNotFollowed(t *testing.T) {
	ctx := context.Background()
	b := newBackendAt(t, 0)
	outside, victim := outsideVictim(t)
	dir := makeDeepDir(t, b, 2*pathMax, 100)
	if len(dir) < pathMax {
		t.Fatalf("directory path of %d bytes: not the case under test", len(dir))
	}
	moved := dir[:strings.LastIndexByte(dir, '/')] + "/moved"
	if err := b.Rename(ctx, dir, moved, 0); err != nil {
		t.Fatal(err)
	}
	if err := b.Symlink(ctx, outside, dir, nil); err != nil {
		t.Fatal(err)
	}
	name := dir + "/victim"
	var st syscall.Stat_t
	errs := map[string]error{
		"lstat":  b.Lstat(ctx, name, &st),
		"chmod":  b.Chmod(ctx, name, 0o666),
		"unlink": b.Unlink(ctx, name),
	}
	_, errs["open"] = b.Open(ctx, name, os.O_RDWR|os.O_TRUNC, 0, nil)
	_, errs["readdir"] = b.ReadDir(ctx, dir)
	for op, err := range errs {
		if e := errno(err); e != syscall.ELOOP && e != syscall.ENOTDIR {
			t.Errorf("%s below a swapped directory %d bytes down: %v, want ELOOP", op, len(dir), err)
		}
	}
	if b, err := os.ReadFile(victim); err != nil || string(b) != "not yours" {
		t.Errorf("victim: %q, %v", b, err)
	}
	if fi, err := os.Stat(victim); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("victim mode: %v, %v", fi, err)
	}
}

// outsideVictim makes a directory outside any backend root holding one file
// (mode 0600, "not yours") that a symlink in the backing tree may point at.
func outsideVictim(t *testing.T) (dir, victim string) {
	t.Helper()
	dir = t.TempDir()
	victim = filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("not yours"), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir, victim
}
