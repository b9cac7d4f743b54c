package local

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// statTimes returns the atime and ctime of a backing path.
func statTimes(t *testing.T, p string) (atime, ctime time.Time, ino uint64) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return time.Unix(st.Atim.Unix()), time.Unix(st.Ctim.Unix()), st.Ino
}

// setAtime puts p's atime in the past (its ctime moves, as with utimensat).
func setAtime(t *testing.T, p string, at time.Time) {
	t.Helper()
	ts := []unix.Timespec{unix.NsecToTimespec(at.UnixNano()), {Nsec: unix.UTIME_OMIT}}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, 0); err != nil {
		t.Fatal(err)
	}
}

// waitClockPast waits until the clock is past ts by more than the coarse
// clock's tick, so that a timestamp taken now is later than ts.
func waitClockPast(t *testing.T, ts time.Time) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !time.Now().After(ts.Add(25 * time.Millisecond)) {
		if time.Now().After(deadline) {
			t.Fatal("clock stuck")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestReadsLeaveAtime: the backend's own reads (an open file's, a
// listing's) do not move atime, whatever the backing mount's rules: they
// open O_NOATIME.
func TestReadsLeaveAtime(t *testing.T) {
	b := newBackendAt(t, 0)
	ctx := context.Background()
	if err := os.WriteFile(filepath.Join(b.Root(), "f"), []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(b.Root(), "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	past := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, n := range []string{"f", "d"} {
		setAtime(t, filepath.Join(b.Root(), n), past)
	}
	f, err := b.Open(ctx, "f", os.O_RDONLY, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := f.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := b.ReadDir(ctx, "d"); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"f", "d"} {
		if at, _, _ := statTimes(t, filepath.Join(b.Root(), n)); !at.Equal(past) {
			t.Errorf("%s: atime %v after the backend read it, want %v", n, at, past)
		}
	}
}

// TestAccess: Access moves atime and not ctime, at every call when the
// backend could make its strictatime clone (root), and refuses an entry
// that is not the inode asked for.
func TestAccess(t *testing.T) {
	b := newBackendAt(t, 0)
	ctx := context.Background()
	for _, n := range []string{"f", "empty"} {
		data := []byte("data")
		if n == "empty" {
			data = nil
		}
		if err := os.WriteFile(filepath.Join(b.Root(), n), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(b.Root(), "d", "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	strict := b.StrictAccess()
	switch {
	case os.Geteuid() == 0 && !strict:
		t.Error("running as root, but no strictatime clone of the backing mount")
	case !strict && os.Getenv("CI") == "true":
		t.Error("missing prerequisite (CI=true): root, to clone the backing mount strictatime; only relatime accesses tested")
	case !strict:
		t.Log("not root: only relatime accesses tested (no strictatime clone of the backing mount)")
	}
	past := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, n := range []string{"f", "empty", "d", "d/sub", ""} {
		p := filepath.Join(b.Root(), n)
		setAtime(t, p, past)
		_, ctime, ino := statTimes(t, p)
		if err := b.Access(ctx, n, ino); err != nil {
			t.Fatalf("access %q: %v", n, err)
		}
		at, ct, _ := statTimes(t, p)
		if !at.After(past) || !ct.Equal(ctime) {
			t.Errorf("%q after access: atime %v, ctime %v; want atime moved from %v, ctime %v", n, at, ct, past, ctime)
		}
		if !strict {
			continue // the backing mount's relatime: nothing more to update
		}
		// Read since the last change: relatime would update nothing, the
		// clone still does.
		waitClockPast(t, at)
		if err := b.Access(ctx, n, ino); err != nil {
			t.Fatalf("access %q again: %v", n, err)
		}
		at2, ct2, _ := statTimes(t, p)
		if !at2.After(at) || !ct2.Equal(ctime) {
			t.Errorf("%q after a second access: atime %v, ctime %v; want atime past %v, ctime %v", n, at2, ct2, at, ctime)
		}
	}
	// Another inode under the name: nothing recorded.
	p := filepath.Join(b.Root(), "f")
	setAtime(t, p, past)
	_, _, ino := statTimes(t, p)
	if err := b.Access(ctx, "f", ino+1); !errors.Is(err, syscall.ESTALE) {
		t.Errorf("access with another inode number: %v, want ESTALE", err)
	}
	if at, _, _ := statTimes(t, p); !at.Equal(past) {
		t.Errorf("atime moved by a refused access: %v", at)
	}
	// Not through the metadata directory, nor a symlink.
	if err := b.Access(ctx, MetaDir, 1); err == nil {
		t.Error("access of the metadata directory succeeded")
	}
	if err := os.Symlink("f", filepath.Join(b.Root(), "link")); err != nil {
		t.Fatal(err)
	}
	if err := b.Access(ctx, "link", ino); err == nil {
		t.Error("access through a symlink succeeded")
	}
}

// backendOnTmpfs returns a backend whose root is a tmpfs mounted with
// the atime option opt (root only).
func backendOnTmpfs(t *testing.T, opt string) *Backend {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("missing prerequisite (CI=true): root, to mount a tmpfs with an atime option")
		}
		t.Skip("mounting a tmpfs needs root")
	}
	var flags uintptr
	switch opt {
	case "noatime":
		flags = unix.MS_NOATIME
	case "strictatime":
		flags = unix.MS_STRICTATIME
	default:
		flags = unix.MS_RELATIME
	}
	root := t.TempDir()
	if err := unix.Mount("kmsfs-test", root, "tmpfs", flags, "size=16m"); err != nil {
		t.Fatalf("mount tmpfs -o %s: %v", opt, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(root, unix.MNT_DETACH); err != nil {
			t.Errorf("umount %s: %v", root, err)
		}
	})
	b, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// TestAccessThroughOpenDescriptors: AccessOpen and ReadDirAccess record an
// access through the descriptor at hand exactly when the backing mount's
// rules move atime for it (ctime staying), and otherwise AccessOpen says
// so (the caller then uses Access) while ReadDirAccess goes through the
// clone itself. Each backing mount atime option, with an entry changed
// since it was last read (due under relatime) and one read since.
func TestAccessThroughOpenDescriptors(t *testing.T) {
	ctx := context.Background()
	for _, opt := range []string{"relatime", "strictatime", "noatime"} {
		t.Run(opt, func(t *testing.T) {
			b := backendOnTmpfs(t, opt)
			if err := os.WriteFile(filepath.Join(b.Root(), "f"), []byte("data"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(filepath.Join(b.Root(), "d"), 0o755); err != nil {
				t.Fatal(err)
			}
			for _, changed := range []bool{true, false} {
				// Changed since read: atime long before mtime and
				// ctime. Read since: atime after both, and recent.
				at := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
				if !changed {
					at = time.Now().Add(time.Minute)
				}
				p := filepath.Join(b.Root(), "f")
				setAtime(t, p, at)
				_, ctime, _ := statTimes(t, p)
				f, err := b.Open(ctx, "f", os.O_RDONLY, 0, nil)
				if err != nil {
					t.Fatal(err)
				}
				var st syscall.Stat_t
				if err := f.Stat(&st); err != nil {
					t.Fatal(err)
				}
				recorded, err := f.(*file).AccessOpen(&st)
				f.Close()
				if err != nil {
					t.Fatal(err)
				}
				want := opt == "strictatime" || opt == "relatime" && changed
				atime, ct, _ := statTimes(t, p)
				if recorded != want || recorded != !atime.Equal(at) || !ct.Equal(ctime) {
					t.Errorf("file, changed %v: AccessOpen recorded %v (want %v); atime %v from %v, ctime %v from %v", changed, recorded, want, atime, at, ct, ctime)
				}

				// A listing: recorded by its own getdents where the
				// backing rules move atime, else through the clone.
				d := filepath.Join(b.Root(), "d")
				setAtime(t, d, at)
				_, dctime, _ := statTimes(t, d)
				for _, due := range []bool{false, true} {
					asked := false
					_, accessed, err := b.ReadDirAccess(ctx, "d", func(st *syscall.Stat_t) bool {
						asked = true
						if time.Unix(st.Atim.Unix()).Compare(at) != 0 {
							t.Errorf("due given atime %v, want %v", time.Unix(st.Atim.Unix()), at)
						}
						return due
					})
					if err != nil {
						t.Fatal(err)
					}
					atime, ct, _ := statTimes(t, d)
					if !asked || accessed != due || accessed != !atime.Equal(at) || !ct.Equal(dctime) {
						t.Errorf("dir, changed %v, due %v: asked %v, accessed %v; atime %v from %v, ctime %v from %v", changed, due, asked, accessed, atime, at, ct, dctime)
					}
				}
			}
		})
	}
}
