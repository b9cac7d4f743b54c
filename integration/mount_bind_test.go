package integration

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A second `kmsfs mount` of a local volume mounted read-write already
// shows the same mount (a bind mount; xfstests generic/732): renames on
// one mountpoint are seen at once on the other, a read-only second
// mountpoint refuses writes with EROFS, unmounting the first leaves the
// second working, and unmounting the last releases the volume.
func TestMountSecondMountpointIsTheSameMount(t *testing.T) {
	v := mountNewVolume(t)
	v.mount()
	root := t.TempDir()
	mnt2, mnt3 := filepath.Join(root, "two"), filepath.Join(root, "three")
	for _, d := range []string{mnt2, mnt3} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	v.run("mount", v.vault, mnt2)
	t.Cleanup(func() { syscall.Unmount(mnt2, syscall.MNT_DETACH) })
	v.run("mount", "--read-only", v.vault, mnt3)
	t.Cleanup(func() { syscall.Unmount(mnt3, syscall.MNT_DETACH) })
	for _, m := range []string{mnt2, mnt3} {
		if !mountIsMounted(m) {
			t.Fatalf("%s is not mounted", m)
		}
	}
	// generic/732's steps.
	one := v.mnt
	for _, d := range []string{"A", "B"} {
		if err := os.Mkdir(filepath.Join(one, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(one, "A/f"), []byte("content"), 0o644); err != nil {
		t.Fatal(err)
	}
	steps := []struct{ mnt, from, to string }{{one, "A/f", "B/f"}, {mnt2, "B/f", "A/f"}, {one, "A/f", "B/f"}}
	for i, s := range steps {
		if err := os.Rename(filepath.Join(s.mnt, s.from), filepath.Join(s.mnt, s.to)); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		for _, m := range []string{one, mnt2, mnt3} {
			if b, err := os.ReadFile(filepath.Join(m, s.to)); err != nil || string(b) != "content" {
				t.Fatalf("step %d: %s/%s: %q, %v", i, m, s.to, b, err)
			}
			if _, err := os.Stat(filepath.Join(m, s.from)); !os.IsNotExist(err) {
				t.Fatalf("step %d: %s/%s still there: %v", i, m, s.from, err)
			}
		}
	}
	if err := os.WriteFile(filepath.Join(mnt3, "x"), nil, 0o644); mountErrno(err) != syscall.EROFS {
		t.Errorf("write on the read-only mountpoint: %v, want EROFS", err)
	}
	// One process serves them all.
	if n := strings.Count(mountExec(t, "pgrep", "-f", "-a", "kmsfs mount"), v.vault+" "); n != 1 {
		t.Errorf("%d mount processes for %s, want 1", n, v.vault)
	}
	// Unmounting the first mountpoint does not wait for the process,
	// which goes on serving the others.
	start := time.Now()
	v.run("umount", one)
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("umount of one of three mountpoints took %v", d)
	}
	if b, err := os.ReadFile(filepath.Join(mnt2, "B/f")); err != nil || string(b) != "content" {
		t.Fatalf("after unmounting the first: %q, %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(mnt2, "after"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	v.run("umount", mnt3)
	v.run("umount", mnt2)
	// The volume is free again: a new mount is its own process.
	v.mount()
	if b, err := os.ReadFile(v.path("after")); err != nil || string(b) != "x" {
		t.Fatalf("after remount: %q, %v", b, err)
	}
}
