package integration

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// mountTimes are an entry's atime, mtime and ctime.
type mountTimes struct{ a, m, c time.Time }

func (tm mountTimes) String() string {
	const f = "15:04:05.000000000"
	return "atime " + tm.a.UTC().Format(f) + " mtime " + tm.m.UTC().Format(f) + " ctime " + tm.c.UTC().Format(f)
}

// mountStatTimes stats p (through the mount, or a backing file).
func mountStatTimes(t *testing.T, p string) mountTimes {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return mountTimes{a: time.Unix(st.Atim.Unix()), m: time.Unix(st.Mtim.Unix()), c: time.Unix(st.Ctim.Unix())}
}

// mountClockPast waits until the clock is past ts by more than the
// kernel's timestamp granularity (the coarse clock ticks every jiffy), so
// that an update made now gets a later timestamp than ts.
func mountClockPast(t *testing.T, ts time.Time) {
	t.Helper()
	mountWaitFor(t, 5*time.Second, "the clock to pass "+ts.String(), func() bool {
		return time.Now().After(ts.Add(25 * time.Millisecond))
	})
}

// mountTool runs a command (cat, ls, touch, mount, a script) and fails the
// test if it fails; its output is dropped.
func mountTool(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// mountAtimePast sets the atime of each path to a fixed day in 2020 with
// touch -a -d (utimensat), leaving mtime.
func mountAtimePast(t *testing.T, paths ...string) {
	t.Helper()
	mountTool(t, "touch", append([]string{"-a", "-d", "2020-01-02T03:04:05Z"}, paths...)...)
}

var mountPast = time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)

// mountExpectTimes fails the test if p's atime or ctime is not as given,
// after what (an access).
func mountExpectTimes(t *testing.T, what, p string, atime, ctime time.Time) mountTimes {
	t.Helper()
	got := mountStatTimes(t, p)
	if !got.a.Equal(atime) {
		t.Errorf("%s: atime %s, want %s (%s)", what, got.a.UTC().Format(time.RFC3339Nano), atime.UTC().Format(time.RFC3339Nano), got)
	}
	if !got.c.Equal(ctime) {
		t.Errorf("%s: ctime %s, want it unchanged at %s", what, got.c.UTC().Format(time.RFC3339Nano), ctime.UTC().Format(time.RFC3339Nano))
	}
	return got
}

// mountExpectAtimeMoved fails the test unless p's atime moved past before's
// and its ctime did not move, after what (an access).
func mountExpectAtimeMoved(t *testing.T, what, p string, before mountTimes) mountTimes {
	t.Helper()
	got := mountStatTimes(t, p)
	if !got.a.After(before.a) {
		t.Errorf("%s: atime did not move: %s, was %s", what, got, before)
	}
	if !got.c.Equal(before.c) {
		t.Errorf("%s: ctime moved: %s, was %s", what, got, before)
	}
	return got
}

// TestMountAtime: the mount's atime options decide what a read does to
// atime (FUSE leaves that to the daemon), and an access never moves ctime:
// noatime (reads, exec and mmap leave atime, utimensat sets it), nodiratime
// (listings leave a directory's atime), relatime (the first read after a
// change moves atime, the next does not), strictatime (every read and
// listing moves it), and a remount changes the policy, remount,ro stopping
// every update.
func TestMountAtime(t *testing.T) {
	mountRequireRoot(t, "record reads through a strictatime clone of the backing mount and remount with mount(8)")
	for _, tool := range []string{"cat", "ls", "touch", "mount"} {
		mountRequireTool(t, tool)
	}
	// The remounts below go through mount(8), which runs the kmsfs it
	// finds in its fixed PATH.
	mountInstallForMount8(t)
	v := mountNewVolume(t)
	v.mount()
	f, script, d := v.path("f"), v.path("run.sh"), v.path("d")
	mountWriteFile(t, f, []byte("some content\n"))
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(d, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(v.path("d/entry"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	empty := v.path("empty")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	v.unmount()

	t.Run("noatime", func(t *testing.T) {
		v.mount("-o", "noatime")
		defer v.unmount()
		mountAtimePast(t, f, script, d)
		ft, st, dt := mountStatTimes(t, f), mountStatTimes(t, script), mountStatTimes(t, d)
		mountTool(t, "cat", f)
		mountTool(t, "cat", f)
		mountExpectTimes(t, "cat on a noatime mount", f, mountPast, ft.c)
		mountTool(t, script)
		mountExpectTimes(t, "exec on a noatime mount", script, mountPast, st.c)
		mountReadMapped(t, f)
		mountExpectTimes(t, "mmap read on a noatime mount", f, mountPast, ft.c)
		mountTool(t, "ls", d)
		mountExpectTimes(t, "ls on a noatime mount", d, mountPast, dt.c)
		// The backing file was not read with atime updates either.
		if bt := mountStatTimes(t, v.backing("f")); !bt.a.Equal(mountPast) {
			t.Errorf("backing file's atime moved on a noatime mount: %s", bt)
		}
		// utimensat still sets atime, and moves ctime.
		mountClockPast(t, ft.c)
		mountTool(t, "touch", "-a", "-d", "2021-06-07T08:09:10Z", f)
		got := mountStatTimes(t, f)
		if want := time.Date(2021, 6, 7, 8, 9, 10, 0, time.UTC); !got.a.Equal(want) || !got.c.After(ft.c) {
			t.Errorf("touch -a on a noatime mount: %s, want atime %s and a later ctime than %s", got, want, ft.c)
		}
	})

	t.Run("nodiratime", func(t *testing.T) {
		v.mount("-o", "nodiratime")
		defer v.unmount()
		mountAtimePast(t, f, d)
		ft, dt := mountStatTimes(t, f), mountStatTimes(t, d)
		mountTool(t, "ls", d)
		mountTool(t, "ls", "-l", d)
		mountExpectTimes(t, "ls on a nodiratime mount", d, mountPast, dt.c)
		// Files keep relatime: atime (2020) is older than ctime.
		mountTool(t, "cat", f)
		mountExpectAtimeMoved(t, "cat on a nodiratime mount", f, ft)
	})

	t.Run("relatime", func(t *testing.T) {
		v.mount() // the default
		defer v.unmount()
		if mnt, _ := mountMountinfo(t, v.mnt); !strings.Contains(","+strings.Join(mnt, ",")+",", ",relatime,") {
			t.Fatalf("default mount options %v lack relatime", mnt)
		}
		mountAtimePast(t, f, d)
		before := mountStatTimes(t, f)
		mountTool(t, "cat", f)
		first := mountExpectAtimeMoved(t, "first cat after a change", f, before)
		if first.a.Before(first.m) || first.a.Before(first.c) {
			t.Errorf("first cat after a change: atime not at or after mtime and ctime: %s", first)
		}
		mountClockPast(t, first.a)
		mountTool(t, "cat", f)
		mountExpectTimes(t, "second cat", f, first.a, first.c)
		// An empty file: the kernel sends no READ for it (nothing to
		// read), and the read still counts.
		mountAtimePast(t, empty)
		et := mountStatTimes(t, empty)
		mountTool(t, "cat", empty)
		mountExpectAtimeMoved(t, "cat of an empty file", empty, et)
		// A write changes the file: the next read moves atime again.
		af, err := os.OpenFile(f, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := af.WriteString("more\n"); err != nil {
			t.Fatal(err)
		}
		af.Close()
		written := mountStatTimes(t, f)
		if !written.m.After(first.a) {
			t.Fatalf("write did not move mtime past atime: %s", written)
		}
		// An open that reads nothing (rsync opens what it wrote to set
		// its attributes) is no access, as on Linux.
		mountClockPast(t, written.c)
		if of, err := os.Open(f); err != nil {
			t.Fatal(err)
		} else {
			of.Close()
		}
		mountExpectTimes(t, "open and close without a read", f, written.a, written.c)
		mountTool(t, "cat", f)
		again := mountExpectAtimeMoved(t, "first cat after a write", f, written)
		mountClockPast(t, again.a)
		mountTool(t, "cat", f)
		mountExpectTimes(t, "second cat after a write", f, again.a, again.c)
		// Directories alike.
		dt := mountStatTimes(t, d)
		mountTool(t, "ls", d)
		dfirst := mountExpectAtimeMoved(t, "first ls after a change", d, dt)
		mountClockPast(t, dfirst.a)
		mountTool(t, "ls", d)
		mountExpectTimes(t, "second ls", d, dfirst.a, dfirst.c)
	})

	t.Run("strictatime", func(t *testing.T) {
		v.mount("-o", "strictatime")
		defer v.unmount()
		// Read once first, so that relatime would have nothing left to
		// update: every move below is strictatime's.
		mountTool(t, "cat", f)
		mountTool(t, "ls", d)
		prev, dprev, sprev := mountStatTimes(t, f), mountStatTimes(t, d), mountStatTimes(t, script)
		for i := range 3 {
			for _, ts := range []time.Time{prev.a, dprev.a, sprev.a} {
				mountClockPast(t, ts)
			}
			mountTool(t, "cat", f)
			prev = mountExpectAtimeMoved(t, fmt.Sprintf("cat #%d on a strictatime mount", i+1), f, prev)
			mountTool(t, "ls", d)
			dprev = mountExpectAtimeMoved(t, fmt.Sprintf("ls #%d on a strictatime mount", i+1), d, dprev)
			mountTool(t, script)
			sprev = mountExpectAtimeMoved(t, fmt.Sprintf("exec #%d on a strictatime mount", i+1), script, sprev)
		}

		// A remount changes the policy: noatime at once.
		mountTool(t, "mount", "-o", "remount,noatime", v.mnt)
		mountClockPast(t, prev.a)
		mountTool(t, "cat", f)
		mountExpectTimes(t, "cat right after remount,noatime", f, prev.a, prev.c)
		// remount,ro: no access changes anything, strictatime or not.
		mountTool(t, "mount", "-o", "remount,ro,strictatime", v.mnt)
		mountTool(t, "cat", f)
		mountTool(t, "ls", d)
		mountExpectTimes(t, "cat right after remount,ro,strictatime", f, prev.a, prev.c)
		mountExpectTimes(t, "ls right after remount,ro,strictatime", d, dprev.a, dprev.c)
		// Back to rw: the daemon follows the remount as soon as the
		// kernel reports it, which a read right after mount(8) returns
		// may precede.
		mountTool(t, "mount", "-o", "remount,rw,strictatime", v.mnt)
		mountWaitFor(t, 5*time.Second, "a cat after remount,rw,strictatime to move atime", func() bool {
			mountTool(t, "cat", f)
			return mountStatTimes(t, f).a.After(prev.a)
		})
		mountExpectAtimeMoved(t, "cat after remount,rw,strictatime", f, prev)
	})
}

// mountReadMapped reads the first byte of p through mmap(2).
func mountReadMapped(t *testing.T, p string) {
	t.Helper()
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	m, err := unix.Mmap(fd, 0, 4096, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	_ = m[0]
	if err := unix.Munmap(m); err != nil {
		t.Fatal(err)
	}
}

// TestMountAtimeEncryptedNames: with encrypted names, accesses reach the
// backing file under its stored name: strictatime moves atime at every read
// and listing, noatime at none.
func TestMountAtimeEncryptedNames(t *testing.T) {
	mountRequireRoot(t, "record reads through a strictatime clone of the backing mount")
	for _, tool := range []string{"cat", "ls", "touch"} {
		mountRequireTool(t, tool)
	}
	v := mountNewVolume(t, "--encrypt-names")
	v.mount("-o", "strictatime")
	f, d := v.path("f"), v.path("d")
	mountWriteFile(t, f, []byte("some content\n"))
	if err := os.Mkdir(d, 0o755); err != nil {
		t.Fatal(err)
	}
	mountTool(t, "cat", f)
	mountTool(t, "ls", d)
	prev, dprev := mountStatTimes(t, f), mountStatTimes(t, d)
	for i := range 2 {
		mountClockPast(t, prev.a)
		mountClockPast(t, dprev.a)
		mountTool(t, "cat", f)
		prev = mountExpectAtimeMoved(t, fmt.Sprintf("cat #%d", i+1), f, prev)
		mountTool(t, "ls", d)
		dprev = mountExpectAtimeMoved(t, fmt.Sprintf("ls #%d", i+1), d, dprev)
	}
	v.unmount()
	v.mount("-o", "noatime")
	mountAtimePast(t, f, d)
	ft, dt := mountStatTimes(t, f), mountStatTimes(t, d)
	mountTool(t, "cat", f)
	mountTool(t, "ls", d)
	mountExpectTimes(t, "cat on a noatime mount", f, mountPast, ft.c)
	mountExpectTimes(t, "ls on a noatime mount", d, mountPast, dt.c)
}

// TestSharedAtime: on a shared volume an access moves atime in the
// metadata database, and not ctime: every read on a strictatime mount, none
// on a noatime one; another mount sees the new atime.
func TestSharedAtime(t *testing.T) {
	mountRequireTool(t, "cat")
	sv := sharedNew(t, "atime")
	v := sv.first
	v.mount(append(sv.g.flags(), "-o", "strictatime")...)
	f := v.path("f")
	mountWriteFile(t, f, []byte("some content\n"))
	mountTool(t, "cat", f)
	prev := mountStatTimes(t, f)
	for i := range 2 {
		mountClockPast(t, prev.a)
		mountTool(t, "cat", f)
		prev = mountExpectAtimeMoved(t, fmt.Sprintf("cat #%d on a strictatime mount", i+1), f, prev)
	}
	other := sv.first.second(t)
	other.mount(sv.g.flags()...)
	mountWaitFor(t, 5*time.Second, "the other mount to see the atime", func() bool {
		return mountStatTimes(t, other.path("f")).a.Equal(prev.a)
	})
	other.unmount()
	v.unmount()

	v.mount(append(sv.g.flags(), "-o", "noatime")...)
	mountClockPast(t, prev.a)
	mountTool(t, "cat", f)
	mountExpectTimes(t, "cat on a noatime mount", f, prev.a, prev.c)
}
