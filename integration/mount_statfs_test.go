package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// mountSmallVolume makes a volume whose backing directory lies on a tmpfs
// of size bytes mounted for the test (root only), so that the volume can
// be filled without filling the machine's disk.
func mountSmallVolume(t *testing.T, size string) *mountVolume {
	t.Helper()
	mountRequireFuse(t)
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs for the backing directory needs root")
	}
	root := t.TempDir()
	back := filepath.Join(root, "back")
	if err := os.Mkdir(back, 0o755); err != nil {
		t.Fatal(err)
	}
	mountExec(t, "mount", "-t", "tmpfs", "-o", "size="+size+",mode=0755", "kmsfs-test-back", back)
	// Registered before the volume's cleanup, so it runs after the unmount
	// of the kmsfs mount.
	t.Cleanup(func() {
		if out, err := exec.Command("umount", back).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", back, err, out)
		}
	})
	v := &mountVolume{
		t:        t,
		vault:    filepath.Join(back, "vault"),
		mnt:      filepath.Join(root, "mnt"),
		keystore: filepath.Join(root, "keystore"),
		logPath:  filepath.Join(root, "kmsfs.log"),
	}
	if err := os.Mkdir(v.mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.cleanup)
	v.run("init", v.vault)
	return v
}

// mountStatfs is statfs(2) of dir.
func mountStatfs(t *testing.T, dir string) unix.Statfs_t {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// mountFallocate creates p and fallocates n bytes in it (mode 0: the size
// grows to n).
func mountFallocate(p string, n int64) error {
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Fallocate(int(f.Fd()), 0, 0, n); err != nil {
		return fmt.Errorf("fallocate %d bytes: %w", n, err)
	}
	return f.Sync()
}

// mountExpectZeros fails unless p is n bytes of zeros.
func mountExpectZeros(t *testing.T, p string, n int64) {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	zero := make([]byte, len(buf))
	var total int64
	for {
		k, err := f.Read(buf)
		if k > 0 && !bytes.Equal(buf[:k], zero[:k]) {
			t.Fatalf("%s: non-zero byte in [%d, %d)", p, total, total+int64(k))
		}
		total += int64(k)
		if err != nil {
			break
		}
	}
	if total != n {
		t.Fatalf("%s: %d bytes, want %d", p, total, n)
	}
}

// TestMountStatfsIsStorable: statfs on the mount reports the backing
// store's space less the encryption overhead (blocks scaled by
// BlockSize/SealedBlockSize, a header region set aside), and a program
// that fallocates all the space statfs reports free gets it, not ENOSPC,
// and reads zeros back, before and after a remount. Then with the space
// shared by many small files, the reported free space is again
// allocatable.
func TestMountStatfsIsStorable(t *testing.T) {
	v := mountSmallVolume(t, "64m")
	v.mount()
	back := mountStatfs(t, v.vault)
	st := mountStatfs(t, v.mnt)
	backFree := back.Bavail * uint64(back.Frsize)
	free := st.Bavail * uint64(st.Frsize)
	ratio := float64(mountBlockSize) / float64(mountCipherBlockSize)
	t.Logf("backing: %d bytes free of %d; mount: %d bytes free of %d", backFree, back.Blocks*uint64(back.Frsize), free, st.Blocks*uint64(st.Frsize))
	if st.Type != mountFuseSuperMagic {
		t.Fatalf("statfs type %#x: not the FUSE mount", st.Type)
	}
	if free >= backFree || float64(free) < float64(backFree)*ratio-64<<10 {
		t.Errorf("mount reports %d bytes free; backing %d bytes free, times %.4f is %.0f", free, backFree, ratio, float64(backFree)*ratio)
	}
	if total, backTotal := st.Blocks*uint64(st.Frsize), back.Blocks*uint64(back.Frsize); total >= backTotal || float64(total) < float64(backTotal)*ratio-float64(back.Frsize) {
		t.Errorf("mount reports %d bytes in total; backing %d", total, backTotal)
	}

	n := int64(free)
	if err := mountFallocate(v.path("fill"), n); err != nil {
		t.Fatalf("fallocate of the %d bytes statfs reports free: %v", n, err)
	}
	mountExpectZeros(t, v.path("fill"), n)
	if after := mountStatfs(t, v.mnt); after.Bavail*uint64(after.Frsize) > 64<<10 {
		t.Errorf("after filling, statfs still reports %d bytes free", after.Bavail*uint64(after.Frsize))
	}
	v.remount()
	mountExpectZeros(t, v.path("fill"), n)
	if err := os.Remove(v.path("fill")); err != nil {
		t.Fatal(err)
	}
	// The backing file's space comes back when kmsfs closes it, at the
	// RELEASE the kernel sends after the last close(2), in the background.
	mountWaitFor(t, 20*time.Second, "the removed file's space to be free", func() bool {
		return mountStatfs(t, v.mnt).Bavail*uint64(st.Frsize) >= free-(1<<20)
	})

	// Many small files (each with its own header region) take part of
	// the space; what is reported free afterwards is still allocatable.
	for i := 0; i < 200; i++ {
		mountWriteFile(t, v.path(fmt.Sprintf("small-%03d", i)), mountPattern(1+i*97, byte(i)))
	}
	st = mountStatfs(t, v.mnt)
	n = int64(st.Bavail * uint64(st.Frsize))
	if err := mountFallocate(v.path("fill2"), n); err != nil {
		t.Fatalf("fallocate of the %d bytes statfs reports free beside 200 small files: %v", n, err)
	}
	mountExpectZeros(t, v.path("fill2"), n)
	for i := 0; i < 200; i += 37 {
		mountExpectContent(t, v.path(fmt.Sprintf("small-%03d", i)), mountPattern(1+i*97, byte(i)))
	}
	// And beyond it, the backing store is full: the statfs figure was not
	// simply low.
	err := mountFallocate(v.path("more"), 1<<20)
	if mountErrno(err) != syscall.ENOSPC {
		t.Errorf("fallocate of 1 MiB more on a full volume: %v; want ENOSPC", err)
	}
}
