package integration

import (
	"errors"
	"io/fs"
	"os"
	"syscall"
	"testing"
	"time"
)

// TestMountLongCacheSeesOwnChanges: a read-write mount holds the volume
// lock and lets the kernel cache names, attributes and "no such file" for
// 30 s. Every change made through the mount is still visible at once
// through it: a name looked up and found missing, then created (create,
// mkdir, symlink, hard link, rename onto it); a file's size after a write,
// its link count after link and unlink, its mode after chmod; a name gone
// after unlink and rename; a symlink replaced by another with the same name.
func TestMountLongCacheSeesOwnChanges(t *testing.T) {
	v := mountNewVolume(t)
	v.mount()
	missing := func(name string) {
		t.Helper()
		if _, err := os.Lstat(v.path(name)); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("lstat %s before creating it: %v, want ENOENT", name, err)
		}
	}
	exists := func(name string) os.FileInfo {
		t.Helper()
		fi, err := os.Lstat(v.path(name))
		if err != nil {
			t.Fatalf("lstat %s right after making it through the mount: %v", name, err)
		}
		return fi
	}
	nlink := func(name string) uint64 {
		t.Helper()
		return uint64(exists(name).Sys().(*syscall.Stat_t).Nlink)
	}

	// Names looked up while missing (negative entries), then made.
	missing("f")
	mountWriteFile(t, v.path("f"), []byte("first"))
	if fi := exists("f"); fi.Size() != 5 {
		t.Fatalf("size of f: %d, want 5", fi.Size())
	}
	missing("d")
	if err := os.Mkdir(v.path("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	exists("d")
	missing("l")
	if err := os.Symlink("f", v.path("l")); err != nil {
		t.Fatal(err)
	}
	if target, err := os.Readlink(v.path("l")); err != nil || target != "f" {
		t.Fatalf("readlink l: %q, %v", target, err)
	}
	missing("h")
	if err := os.Link(v.path("f"), v.path("h")); err != nil {
		t.Fatal(err)
	}
	if n := nlink("f"); n != 2 {
		t.Fatalf("f has %d links after ln f h, want 2", n)
	}
	missing("d/r")
	if err := os.Rename(v.path("h"), v.path("d/r")); err != nil {
		t.Fatal(err)
	}
	exists("d/r")
	missing("h")

	// Attributes: size after writes, links after unlink, mode after chmod.
	if err := os.WriteFile(v.path("f"), []byte("a longer content"), 0o644); err != nil {
		t.Fatal(err)
	}
	if fi := exists("d/r"); fi.Size() != int64(len("a longer content")) {
		t.Fatalf("size of d/r (a link to f) after rewriting f: %d", fi.Size())
	}
	if err := os.Remove(v.path("d/r")); err != nil {
		t.Fatal(err)
	}
	missing("d/r")
	if n := nlink("f"); n != 1 {
		t.Fatalf("f has %d links after rm d/r, want 1", n)
	}
	if err := os.Chmod(v.path("f"), 0o600); err != nil {
		t.Fatal(err)
	}
	if m := exists("f").Mode().Perm(); m != 0o600 {
		t.Fatalf("mode of f after chmod 600: %v", m)
	}

	// A symlink replaced under the same name: its cached target goes with
	// the old inode.
	if err := os.Remove(v.path("l")); err != nil {
		t.Fatal(err)
	}
	missing("l")
	if err := os.Symlink("d", v.path("l")); err != nil {
		t.Fatal(err)
	}
	if target, err := os.Readlink(v.path("l")); err != nil || target != "d" {
		t.Fatalf("readlink l after replacing it: %q, %v", target, err)
	}
}

// TestMountReadOnlySeesWriterWithinSeconds: a read-only mount holds no lock,
// so a read-write mount of the same volume may change the tree under it;
// it keeps the short timeouts (1 s, no negative caching), and sees a file
// appear and grow within seconds, not after the 30 s a writer's own mount
// caches for.
func TestMountReadOnlySeesWriterWithinSeconds(t *testing.T) {
	v := mountNewVolume(t)
	v.mount()
	mountWriteFile(t, v.path("grows"), []byte("1"))
	ro := v.second(t)
	ro.mount("--read-only")
	if _, err := os.Lstat(ro.path("later")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("lstat later on the read-only mount: %v", err)
	}
	if fi, err := os.Lstat(ro.path("grows")); err != nil || fi.Size() != 1 {
		t.Fatalf("lstat grows on the read-only mount: %v, %v", fi, err)
	}
	mountWriteFile(t, v.path("later"), []byte("new"))
	mountWriteFile(t, v.path("grows"), []byte("12345"))
	mountWaitFor(t, 10*time.Second, "the read-only mount to see a file the writer made", func() bool {
		_, err := os.Lstat(ro.path("later"))
		return err == nil
	})
	mountWaitFor(t, 10*time.Second, "the read-only mount to see a file the writer grew", func() bool {
		fi, err := os.Lstat(ro.path("grows"))
		return err == nil && fi.Size() == 5
	})
}
