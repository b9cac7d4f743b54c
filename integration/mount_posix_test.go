package integration

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// mountWriteFile writes data to p (created 0644) and fails the test on error.
func mountWriteFile(t *testing.T, p string, data []byte) {
	t.Helper()
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// mountExpectContent fails unless p holds exactly want.
func mountExpectContent(t *testing.T, p string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: got %d bytes, want %d; first difference at %d", p, len(got), len(want), mountFirstDiff(got, want))
	}
}

// mountFirstDiff is the first offset where a and b differ (or the shorter length).
func mountFirstDiff(a, b []byte) int {
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// mountPattern is n bytes of a pattern that differs at every offset within
// a block and between blocks, so misplaced bytes show.
func mountPattern(n int, salt byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7+i/4096) ^ salt
	}
	return b
}

func mountStat(t *testing.T, p string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// TestMountPOSIX checks, on one mount, the file operations cp, rsync and
// editors rely on; what each subtest leaves behind is read again after a
// remount at the end.
func TestMountPOSIX(t *testing.T) {
	v := mountNewVolume(t)
	v.mount()
	// persisted: what must still be there, byte for byte, after remount.
	persisted := map[string][]byte{}

	t.Run("HardLinks", func(t *testing.T) {
		a, b := v.path("hl-a"), v.path("hl-b")
		data := mountPattern(10000, 1)
		mountWriteFile(t, a, data)
		if err := os.Link(a, b); err != nil {
			t.Fatal(err)
		}
		sa, sb := mountStat(t, a), mountStat(t, b)
		if sa.Ino != sb.Ino || sa.Nlink != 2 || sb.Nlink != 2 {
			t.Fatalf("after link: ino %d/%d nlink %d/%d; want one inode, nlink 2", sa.Ino, sb.Ino, sa.Nlink, sb.Nlink)
		}
		// Write through one name (straddling the block boundary), read via the other.
		f, err := os.OpenFile(a, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		patch := []byte("written via hl-a")
		if _, err := f.WriteAt(patch, 4090); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		copy(data[4090:], patch)
		mountExpectContent(t, b, data)
		// The second name outlives the first.
		if err := os.Remove(a); err != nil {
			t.Fatal(err)
		}
		if st := mountStat(t, b); st.Nlink != 1 {
			t.Errorf("after unlink of one name: nlink %d, want 1", st.Nlink)
		}
		mountExpectContent(t, b, data)
		persisted["hl-b"] = data

		// A pair that stays linked across the remount.
		mountWriteFile(t, v.path("hl-c"), []byte("linked"))
		if err := os.Link(v.path("hl-c"), v.path("hl-d")); err != nil {
			t.Fatal(err)
		}
		persisted["hl-c"], persisted["hl-d"] = []byte("linked"), []byte("linked")
	})

	t.Run("Symlinks", func(t *testing.T) {
		if err := os.Mkdir(v.path("sl"), 0o755); err != nil {
			t.Fatal(err)
		}
		mountWriteFile(t, v.path("sl/target"), []byte("through the link"))
		for link, target := range map[string]string{"sl/rel": "target", "sl/abs": "/nonexistent/abs/path", "sl/dots": "../sl/./target"} {
			if err := os.Symlink(target, v.path(link)); err != nil {
				t.Fatal(err)
			}
			got, err := os.Readlink(v.path(link))
			if err != nil || got != target {
				t.Errorf("readlink %s = %q, %v; want %q", link, got, err, target)
			}
			if st := mountStat(t, v.path(link)); st.Mode&unix.S_IFMT != unix.S_IFLNK || st.Size != int64(len(target)) {
				t.Errorf("lstat %s: mode %o size %d; want a symlink of size %d", link, st.Mode, st.Size, len(target))
			}
		}
		mountExpectContent(t, v.path("sl/rel"), []byte("through the link"))
		mountExpectContent(t, v.path("sl/dots"), []byte("through the link"))
		if _, err := os.ReadFile(v.path("sl/abs")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("read through a dangling symlink: %v, want ENOENT", err)
		}
	})

	t.Run("RenameOverExisting", func(t *testing.T) {
		oldData, newData := mountPattern(9000, 2), mountPattern(5000, 3)
		mountWriteFile(t, v.path("ren-dst"), oldData)
		mountWriteFile(t, v.path("ren-src"), newData)
		// Keep the old file open: POSIX says it stays readable after
		// being replaced (its blocks are those of the unlinked inode).
		f, err := os.Open(v.path("ren-dst"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := os.Rename(v.path("ren-src"), v.path("ren-dst")); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(v.path("ren-src")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("source still there after rename: %v", err)
		}
		mountExpectContent(t, v.path("ren-dst"), newData)
		got := make([]byte, len(oldData)+10)
		n, err := f.ReadAt(got, 0)
		if n != len(oldData) || !bytes.Equal(got[:n], oldData) {
			t.Errorf("replaced file still open: read %d bytes (%v), want its old %d bytes", n, err, len(oldData))
		}
		// Rename of a directory over an empty directory, and into a subdirectory.
		for _, d := range []string{"ren-d1", "ren-d2"} {
			if err := os.Mkdir(v.path(d), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		mountWriteFile(t, v.path("ren-d1/inner"), []byte("inner"))
		// unix.Rename: os.Rename refuses an existing directory as target itself.
		if err := unix.Rename(v.path("ren-d1"), v.path("ren-d2")); err != nil {
			t.Fatalf("rename dir over empty dir: %v", err)
		}
		if err := os.Rename(v.path("ren-dst"), v.path("ren-d2/moved")); err != nil {
			t.Fatal(err)
		}
		mountExpectContent(t, v.path("ren-d2/moved"), newData)
		persisted["ren-d2/moved"], persisted["ren-d2/inner"] = newData, []byte("inner")
	})

	t.Run("Renameat2", func(t *testing.T) {
		x, y, z := v.path("r2-x"), v.path("r2-y"), v.path("r2-z")
		xd, yd := mountPattern(6000, 4), mountPattern(100, 5)
		mountWriteFile(t, x, xd)
		mountWriteFile(t, y, yd)
		err := unix.Renameat2(unix.AT_FDCWD, x, unix.AT_FDCWD, y, unix.RENAME_NOREPLACE)
		if !errors.Is(err, unix.EEXIST) {
			t.Errorf("RENAME_NOREPLACE onto an existing name: %v, want EEXIST", err)
		}
		mountExpectContent(t, x, xd)
		mountExpectContent(t, y, yd)
		if err := unix.Renameat2(unix.AT_FDCWD, x, unix.AT_FDCWD, z, unix.RENAME_NOREPLACE); err != nil {
			t.Errorf("RENAME_NOREPLACE onto a free name: %v", err)
		} else {
			mountExpectContent(t, z, xd)
			x = z
		}
		if err := unix.Renameat2(unix.AT_FDCWD, x, unix.AT_FDCWD, y, unix.RENAME_EXCHANGE); err != nil {
			t.Errorf("RENAME_EXCHANGE: %v", err)
			return
		}
		mountExpectContent(t, x, yd)
		mountExpectContent(t, y, xd)
		persisted[filepath.Base(x)], persisted["r2-y"] = yd, xd
	})

	t.Run("Truncate", func(t *testing.T) {
		p := v.path("trunc")
		data := mountPattern(3*4096+500, 6)
		mountWriteFile(t, p, data)
		// Down into a block, down onto a boundary, up past the end (the
		// gap reads as zeros), down to zero and up again, through both
		// truncate(2) and ftruncate(2).
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		want := data
		for i, size := range []int{10000, 8192, 8193, 4095, 20000, 12289, 0, 5000, 4096} {
			if i%2 == 0 {
				err = os.Truncate(p, int64(size))
			} else {
				err = f.Truncate(int64(size))
			}
			if err != nil {
				t.Fatalf("truncate to %d: %v", size, err)
			}
			if size <= len(want) {
				want = want[:size:size]
			} else {
				want = append(want, make([]byte, size-len(want))...)
			}
			if st := mountStat(t, p); st.Size != int64(size) {
				t.Fatalf("after truncate to %d: size %d", size, st.Size)
			}
			mountExpectContent(t, p, want)
			// Write after the new end: what was cut off must not come back.
			if size == 4095 {
				if _, err := f.WriteAt([]byte{0xAB}, 4096); err != nil {
					t.Fatal(err)
				}
				want = append(want, 0, 0xAB)
				mountExpectContent(t, p, want)
			}
		}
		persisted["trunc"] = want

		// O_TRUNC on open.
		mountWriteFile(t, v.path("otrunc"), mountPattern(9000, 7))
		mountWriteFile(t, v.path("otrunc"), []byte("short"))
		mountExpectContent(t, v.path("otrunc"), []byte("short"))
		persisted["otrunc"] = []byte("short")
	})

	t.Run("Append", func(t *testing.T) {
		p := v.path("append")
		mountWriteFile(t, p, []byte("abc"))
		f1, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f1.Close()
		f2, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f2.Close()
		want := []byte("abc")
		for i := 0; i < 50; i++ {
			chunk := mountPattern(97+i*13, byte(i))
			f := f1
			if i%2 == 1 {
				f = f2
			}
			if _, err := f.Write(chunk); err != nil {
				t.Fatal(err)
			}
			want = append(want, chunk...)
		}
		mountExpectContent(t, p, want)
		persisted["append"] = want
	})

	t.Run("SparseHoles", func(t *testing.T) {
		p := v.path("sparse")
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt([]byte("start"), 0); err != nil {
			t.Fatal(err)
		}
		const far = 3<<20 + 5
		if _, err := f.WriteAt([]byte("end"), far); err != nil {
			t.Fatal(err)
		}
		want := make([]byte, far+3)
		copy(want, "start")
		copy(want[far:], "end")
		hole := make([]byte, 100000)
		n, err := f.ReadAt(hole, 1<<20+77)
		if err != nil || n != len(hole) || !bytes.Equal(hole, make([]byte, len(hole))) {
			t.Errorf("read in the hole: %d bytes, %v, zero: %v", n, err, bytes.Equal(hole, make([]byte, len(hole))))
		}
		mountExpectContent(t, p, want)
		persisted["sparse"] = want

		// fallocate extends the file with zeros.
		g, err := os.Create(v.path("falloc"))
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		if _, err := g.Write([]byte("xyz")); err != nil {
			t.Fatal(err)
		}
		if err := unix.Fallocate(int(g.Fd()), 0, 0, 10000); err != nil {
			t.Errorf("fallocate: %v", err)
		} else {
			want := append([]byte("xyz"), make([]byte, 10000-3)...)
			mountExpectContent(t, v.path("falloc"), want)
			persisted["falloc"] = want
		}
	})

	t.Run("Attributes", func(t *testing.T) {
		p := v.path("attrs")
		mountWriteFile(t, p, []byte("attrs"))
		if err := os.Mkdir(v.path("attrs-dir"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("attrs", v.path("attrs-link")); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"attrs", "attrs-dir"} {
			for _, mode := range []uint32{0o640, 0o751, 0o4755, 0o1777, 0o000} {
				if err := unix.Chmod(v.path(name), mode); err != nil {
					t.Fatal(err)
				}
				if st := mountStat(t, v.path(name)); st.Mode&0o7777 != mode {
					t.Errorf("chmod %s %o: mode %o", name, mode, st.Mode&0o7777)
				}
			}
			if err := unix.Chmod(v.path(name), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		for _, name := range []string{"attrs", "attrs-dir", "attrs-link"} {
			if err := unix.Lchown(v.path(name), 1234, 5678); err != nil {
				t.Fatalf("lchown %s: %v", name, err)
			}
			if st := mountStat(t, v.path(name)); st.Uid != 1234 || st.Gid != 5678 {
				t.Errorf("chown %s 1234:5678: got %d:%d", name, st.Uid, st.Gid)
			}
			at := unix.NsecToTimespec(time.Date(2003, 4, 5, 6, 7, 8, 123456789, time.UTC).UnixNano())
			mt := unix.NsecToTimespec(time.Date(2009, 10, 11, 12, 13, 14, 987654321, time.UTC).UnixNano())
			if err := unix.UtimesNanoAt(unix.AT_FDCWD, v.path(name), []unix.Timespec{at, mt}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				t.Fatalf("utimensat %s: %v", name, err)
			}
			if st := mountStat(t, v.path(name)); st.Mtim != mt || st.Atim != at {
				t.Errorf("utimensat %s: mtime %v atime %v, want %v %v", name, st.Mtim, st.Atim, mt, at)
			}
		}
		// UTIME_OMIT leaves mtime alone; UTIME_NOW sets the current time.
		before := mountStat(t, p)
		omit := unix.Timespec{Sec: 0, Nsec: unix.UTIME_OMIT}
		now := unix.Timespec{Sec: 0, Nsec: unix.UTIME_NOW}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{now, omit}, 0); err != nil {
			t.Fatal(err)
		}
		after := mountStat(t, p)
		if after.Mtim != before.Mtim || time.Since(time.Unix(after.Atim.Unix())) > time.Minute {
			t.Errorf("UTIME_NOW/UTIME_OMIT: mtime %v -> %v, atime now %v", before.Mtim, after.Mtim, after.Atim)
		}
		persisted["attrs"] = []byte("attrs")
	})

	t.Run("Statfs", func(t *testing.T) {
		var st unix.Statfs_t
		if err := unix.Statfs(v.mnt, &st); err != nil {
			t.Fatal(err)
		}
		if st.Type != mountFuseSuperMagic || st.Bsize <= 0 || st.Blocks == 0 || st.Bfree > st.Blocks || st.Bavail > st.Blocks || st.Namelen == 0 {
			t.Errorf("statfs: %+v", st)
		}
		if out := mountExec(t, "df", "-P", v.mnt); !strings.Contains(out, v.mnt) {
			t.Errorf("df: %s", out)
		}
	})

	t.Run("Xattrs", func(t *testing.T) {
		p := v.path("xattr")
		mountWriteFile(t, p, []byte("x"))
		if err := os.Mkdir(v.path("xattr-dir"), 0o755); err != nil {
			t.Fatal(err)
		}
		secret := "xattr secret " + mountMarker
		for _, name := range []string{"xattr", "xattr-dir"} {
			q := v.path(name)
			if err := unix.Setxattr(q, "user.secret", []byte(secret), 0); err != nil {
				t.Fatalf("setxattr %s: %v", name, err)
			}
			if err := unix.Setxattr(q, "user.empty", nil, 0); err != nil {
				t.Fatalf("setxattr empty value: %v", err)
			}
			if err := unix.Setxattr(q, "user.secret", []byte("x"), unix.XATTR_CREATE); !errors.Is(err, unix.EEXIST) {
				t.Errorf("XATTR_CREATE over an existing attribute: %v, want EEXIST", err)
			}
			if err := unix.Setxattr(q, "user.none", []byte("x"), unix.XATTR_REPLACE); !errors.Is(err, unix.ENODATA) {
				t.Errorf("XATTR_REPLACE of a missing attribute: %v, want ENODATA", err)
			}
			buf := make([]byte, 4096)
			n, err := unix.Getxattr(q, "user.secret", buf)
			if err != nil || string(buf[:n]) != secret {
				t.Errorf("getxattr %s = %q, %v", name, buf[:n], err)
			}
			if n, err := unix.Getxattr(q, "user.secret", nil); err != nil || n != len(secret) {
				t.Errorf("getxattr size query = %d, %v; want %d", n, err, len(secret))
			}
			if _, err := unix.Getxattr(q, "user.secret", make([]byte, 3)); !errors.Is(err, unix.ERANGE) {
				t.Errorf("getxattr into a short buffer: %v, want ERANGE", err)
			}
			n, err = unix.Listxattr(q, buf)
			if err != nil || !strings.Contains(string(buf[:n]), "user.secret\x00") || !strings.Contains(string(buf[:n]), "user.empty\x00") {
				t.Errorf("listxattr %s = %q, %v", name, buf[:n], err)
			}
			// The backing attribute is sealed: not the value, not containing it.
			n, err = unix.Lgetxattr(v.backing(name), "user.secret", buf)
			if err != nil {
				t.Errorf("backing getxattr: %v", err)
			} else if bytes.Contains(buf[:n], []byte(mountMarker)) || string(buf[:n]) == secret {
				t.Errorf("backing xattr of %s holds the plaintext: %q", name, buf[:n])
			}
			if err := unix.Removexattr(q, "user.empty"); err != nil {
				t.Errorf("removexattr: %v", err)
			}
			if _, err := unix.Getxattr(q, "user.empty", buf); !errors.Is(err, unix.ENODATA) {
				t.Errorf("getxattr after remove: %v, want ENODATA", err)
			}
			n, _ = unix.Listxattr(q, buf)
			if strings.Contains(string(buf[:n]), "user.empty") {
				t.Errorf("listxattr after remove still lists it: %q", buf[:n])
			}
		}
	})

	v.remount()
	for name, want := range persisted {
		got, err := os.ReadFile(v.path(name))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("after remount: %s: %d bytes (%v), want %d bytes, first difference at %d", name, len(got), err, len(want), mountFirstDiff(got, want))
		}
	}
	if _, ok := persisted["hl-c"]; ok {
		a, b := mountStat(t, v.path("hl-c")), mountStat(t, v.path("hl-d"))
		if a.Ino != b.Ino || a.Nlink != 2 {
			t.Errorf("after remount: hard links hl-c/hl-d: ino %d/%d nlink %d", a.Ino, b.Ino, a.Nlink)
		}
	}
	buf := make([]byte, 256)
	if n, err := unix.Getxattr(v.path("xattr"), "user.secret", buf); err != nil || !strings.Contains(string(buf[:n]), mountMarker) {
		t.Errorf("after remount: getxattr = %q, %v", buf[:n], err)
	}
	if st := mountStat(t, v.path("attrs")); st.Uid != 1234 || st.Mode&0o7777 != 0o755 {
		t.Errorf("after remount: attrs owner %d mode %o", st.Uid, st.Mode&0o7777)
	}
	mountRequireNoPlaintext(t, v.vault)
}

// TestMountLargeFile writes a few bytes past 4 GiB: offsets and sizes must
// not be truncated to 32 bits anywhere. kmsfs fills the gap with encrypted
// zero blocks, so this writes about 4 GiB to the backing directory.
func TestMountLargeFile(t *testing.T) {
	if testing.Short() {
		t.Skip("writes ~4 GiB; skipped with -short")
	}
	v := mountNewVolume(t)
	mountRequireFreeBytes(t, filepath.Dir(v.vault), 10<<30)
	v.mount()
	p := v.path("big")
	const off = 4<<30 + 100
	tail := []byte("beyond four GiB")
	start := time.Now()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("head")); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(tail, off); err != nil {
		t.Fatalf("write at 4 GiB + 100: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("write at 4 GiB + 100 took %v", time.Since(start))
	check := func(stage string) {
		t.Helper()
		if st := mountStat(t, p); st.Size != off+int64(len(tail)) {
			t.Errorf("%s: size %d, want %d", stage, st.Size, off+int64(len(tail)))
		}
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		buf := make([]byte, 64)
		n, _ := f.ReadAt(buf, off-20)
		want := append(make([]byte, 20), tail...)
		if !bytes.Equal(buf[:n], want) {
			t.Errorf("%s: read at 4 GiB + 80: %q, want %q", stage, buf[:n], want)
		}
		n, _ = f.ReadAt(buf[:4], 0)
		if string(buf[:n]) != "head" {
			t.Errorf("%s: head %q", stage, buf[:n])
		}
		// A block in the middle of the gap is zeros (decrypted, not a hole).
		n, err = f.ReadAt(buf, 2<<30+4000)
		if err != nil || n != len(buf) || !bytes.Equal(buf, make([]byte, len(buf))) {
			t.Errorf("%s: gap at 2 GiB: %d bytes, %v, %x", stage, n, err, buf[:n])
		}
	}
	check("mounted")
	v.remount()
	start = time.Now()
	check("after remount")
	t.Logf("reads after remount took %v", time.Since(start))
	// The backing file: header + ceil(size/4096) blocks of 4124 bytes.
	size := int64(off + len(tail))
	blocks := (size + mountBlockSize - 1) / mountBlockSize
	last := size - (blocks-1)*mountBlockSize
	wantCipher := int64(mountHeaderSize) + (blocks-1)*mountCipherBlockSize + last + 28
	var st unix.Stat_t
	if err := unix.Stat(v.backing("big"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != wantCipher {
		t.Errorf("backing size %d, want %d", st.Size, wantCipher)
	}
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(v.backing("big")); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("backing file after rm: %v", err)
	}
}

// TestMountInodeReuse replaces and closes files in a tight loop while new
// files are created: the backing fs hands a freed inode number to the next
// new file at once, and the new file must not inherit anything (keys,
// header state) of the file that had the number before.
func TestMountInodeReuse(t *testing.T) {
	v := mountNewVolume(t)
	v.mount()
	for i := 0; i < 1000; i++ {
		old := v.path("reuse-old")
		mountWriteFile(t, old, mountPattern(5000, byte(i)))
		f, err := os.Open(old)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Read(make([]byte, 10)); err != nil { // the mount now holds its key
			t.Fatal(err)
		}
		if err := os.Remove(old); err != nil {
			t.Fatal(err)
		}
		f.Close() // the release reaches kmsfs asynchronously
		p := v.path("reuse-new")
		data := mountPattern(100+i, byte(i+1))
		mountWriteFile(t, p, data)
		got, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("iteration %d: new file reads %d bytes, %v; want %d bytes", i, len(got), err, len(data))
		}
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
}

// fstat of a directory descriptor after the directory was removed, or
// renamed over, answers with no links, as on ext4 (xfstests generic/035),
// not ENOENT.
func TestMountFstatRemovedDir(t *testing.T) {
	v := mountNewVolume(t)
	v.mount()
	for _, how := range []string{"rmdir", "renamed over"} {
		d := v.path("victim")
		if err := os.Mkdir(d, 0o750); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(d)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if how == "rmdir" {
			err = os.Remove(d)
		} else {
			// rename(2) itself: os.Rename refuses a directory target.
			if err = os.Mkdir(v.path("other"), 0o755); err == nil {
				err = syscall.Rename(v.path("other"), d)
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		var st syscall.Stat_t
		if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
			t.Errorf("%s: fstat: %v", how, err)
		} else if st.Mode != syscall.S_IFDIR|0o750 || st.Nlink != 0 {
			t.Errorf("%s: fstat: mode %o nlink %d, want %o and 0", how, st.Mode, st.Nlink, syscall.S_IFDIR|0o750)
		}
		f.Close()
		os.Remove(d)
	}
}
