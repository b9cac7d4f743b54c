package integration

import (
	"errors"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A file unlinked while open has no name any more: metadata calls on its
// descriptor must not land on the mount root (the empty path), and its data
// stays usable through the descriptor.
func TestMountOrphanedFileLeavesRootAlone(t *testing.T) {
	v := mountNewVolume(t)
	v.mount()
	f, err := os.Create(v.path("doomed"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write([]byte("still here")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(v.path("doomed")); err != nil {
		t.Fatal(err)
	}
	var before syscall.Stat_t // after the unlink, which itself changes the root's mtime
	if err := syscall.Stat(v.mnt, &before); err != nil {
		t.Fatal(err)
	}
	fd := int(f.Fd())
	for name, call := range map[string]func() error{
		"fchmod": func() error { return unix.Fchmod(fd, 0o600) },
		"fchown": func() error { return unix.Fchown(fd, 65534, 65534) },
		"futimens": func() error {
			return unix.UtimesNanoAt(fd, "", []unix.Timespec{{Sec: 2}, {Sec: 2}}, unix.AT_EMPTY_PATH)
		},
		"fsetxattr": func() error { return unix.Fsetxattr(fd, "user.x", []byte("v"), 0) },
	} {
		if err := call(); err != nil && !errors.Is(err, syscall.ENOENT) {
			t.Errorf("%s on an unlinked file: %v, want success or ENOENT", name, err)
		}
	}
	var after syscall.Stat_t
	if err := syscall.Stat(v.mnt, &after); err != nil {
		t.Fatal(err)
	}
	if after.Mode != before.Mode || after.Uid != before.Uid || after.Mtim != before.Mtim {
		t.Fatalf("metadata calls on an unlinked file changed the mount root: mode %o->%o uid %d->%d mtime %v->%v",
			before.Mode, after.Mode, before.Uid, after.Uid, time.Unix(before.Mtim.Unix()), time.Unix(after.Mtim.Unix()))
	}
	if _, err := unix.Getxattr(v.mnt, "user.x", make([]byte, 8)); err == nil {
		t.Fatal("an xattr set on an unlinked file landed on the mount root")
	}
	// The kernel asks for attributes without a handle (fstat, lseek
	// SEEK_HOLE/SEEK_DATA); they come from the open file.
	if st, err := f.Stat(); err != nil || st.Size() != int64(len("still here")) {
		t.Fatalf("fstat of the unlinked file: %v, %v", st, err)
	}
	if _, err := unix.Seek(fd, 0, unix.SEEK_DATA); err != nil {
		t.Fatalf("lseek SEEK_DATA on the unlinked file: %v", err)
	}
	buf := make([]byte, 32)
	n, err := f.ReadAt(buf, 0)
	if string(buf[:n]) != "still here" {
		t.Fatalf("reading the unlinked file: %q, %v", buf[:n], err)
	}
	if err := f.Truncate(5); err != nil {
		t.Fatalf("ftruncate of the unlinked file: %v", err)
	}
}
