package integration

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestMountFallocateZeroRange runs fallocate(1) on a mount: --zero-range
// zeroes a range inside the file, grows it past the end, and with
// --keep-size leaves the size alone; --punch-hole zeroes a range (the
// file's holes: docs/FORMAT.md section 4); every result reads back after a
// remount.
func TestMountFallocateZeroRange(t *testing.T) {
	bin := mountRequireTool(t, "fallocate")
	v := mountNewVolume(t)
	v.mount()
	p := v.path("f")
	want := mountPattern(3*mountBlockSize+100, 7)
	mountWriteFile(t, p, want)
	zero := func(off, n int, extra ...string) {
		t.Helper()
		args := append([]string{"--zero-range", "--offset", strconv.Itoa(off), "--length", strconv.Itoa(n)}, extra...)
		if out, err := exec.Command(bin, append(args, p)...).CombinedOutput(); err != nil {
			t.Fatalf("fallocate %s: %v %s", strings.Join(args, " "), err, out)
		}
		if len(extra) == 0 && off+n > len(want) {
			want = append(want, make([]byte, off+n-len(want))...)
		}
		clear(want[min(off, len(want)):min(off+n, len(want))])
		mountExpectContent(t, p, want)
	}
	zero(100, 5000)
	zero(len(want)-10, 5000, "--keep-size")
	zero(len(want)+100, 3*mountBlockSize)
	zero(0, mountBlockSize)

	if out, err := exec.Command(bin, "--punch-hole", "--offset", "10", "--length", "9000", p).CombinedOutput(); err != nil {
		t.Fatalf("fallocate --punch-hole: %v %s", err, out)
	}
	clear(want[10:9010])
	mountExpectContent(t, p, want)
	v.unmount()
	v.mount()
	if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, want) {
		t.Errorf("after a remount: %d bytes, %v; want %d", len(got), err, len(want))
	}
}

// mountBackingUse is the space a backing file takes on its filesystem, by
// du(1) (in bytes: --block-size=1).
func mountBackingUse(t *testing.T, p string) int64 {
	t.Helper()
	out := mountExec(t, "du", "--block-size=1", p)
	n, err := strconv.ParseInt(strings.Fields(out)[0], 10, 64)
	if err != nil {
		t.Fatalf("du %s: %q", p, out)
	}
	return n
}

// mountCmpZero checks with cmp(1) that n bytes of p at off are zeros.
func mountCmpZero(t *testing.T, p string, off, n int64) {
	t.Helper()
	cmp := mountRequireTool(t, "cmp")
	args := []string{"-i", strconv.FormatInt(off, 10) + ":0", "-n", strconv.FormatInt(n, 10), p, "/dev/zero"}
	if out, err := exec.Command(cmp, args...).CombinedOutput(); err != nil {
		t.Fatalf("cmp %s: %v %s", strings.Join(args, " "), err, out)
	}
}

// mountReadAt reads n bytes of p at off.
func mountReadAt(p string, off int64, n int) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, n)
	got, err := f.ReadAt(b, off)
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return b[:got], err
}

// TestMountSparse10GiB: a 10 GiB file made by truncate(1), and one made by
// dd(1) writing its last block, take under 1 MiB of backing store (du of
// the backing file) and read zeros in their holes, before and after a
// remount.
func TestMountSparse10GiB(t *testing.T) {
	const size = 10 << 30
	mountRequireTool(t, "truncate")
	mountRequireTool(t, "dd")
	v := mountNewVolume(t)
	v.mount()
	mountExec(t, "truncate", "-s", "10G", v.path("by-truncate"))
	// The last 4 KiB of 10 GiB, written by dd at its block offset.
	tail := mountPattern(4096, 9)
	mountWriteFile(t, v.path("tail"), tail)
	mountExec(t, "dd", "if="+v.path("tail"), "of="+v.path("by-write"), "bs=4096", "seek="+strconv.Itoa(size/4096-1), "conv=notrunc,fsync", "status=none")
	check := func() {
		t.Helper()
		for name, last := range map[string][]byte{"by-truncate": make([]byte, 4096), "by-write": tail} {
			st, err := os.Stat(v.path(name))
			if err != nil || st.Size() != size {
				t.Fatalf("%s: %v, size %d; want %d", name, err, st.Size(), size)
			}
			if use := mountBackingUse(t, v.backing(name)); use >= 1<<20 {
				t.Errorf("%s: the backing file takes %d bytes of a %d-byte sparse file, want < 1 MiB", name, use, int64(size))
			}
			for _, off := range []int64{0, 4095, 1 << 20, 3<<30 + 12345, size - 8192 - 1} {
				got, err := mountReadAt(v.path(name), off, 4096)
				if err != nil || !bytes.Equal(got, make([]byte, 4096)) {
					t.Fatalf("%s at %d: %d bytes, %v; want zeros", name, off, len(got), err)
				}
			}
			if got, err := mountReadAt(v.path(name), size-4096, 4096); err != nil || !bytes.Equal(got, last) {
				t.Fatalf("%s: last block: %v", name, err)
			}
			mountCmpZero(t, v.path(name), 5<<30, 64<<20)
		}
	}
	check()
	v.remount()
	check()
}

// TestMountZeroedBlockIsEIO zeroes one sealed block of a backing file with
// dd(1) conv=notrunc, the way gocryptfs would take for a hole: the mount
// reads it as EIO, and so the holes and blocks it would otherwise let
// through, whether the block is in the middle of the data, just before a
// hole, or the last one; the rest of the file reads.
func TestMountZeroedBlockIsEIO(t *testing.T) {
	mountRequireTool(t, "dd")
	const bs = mountBlockSize
	v := mountNewVolume(t)
	v.mount()
	// Blocks 0..7 data, 8..62 holes (truncate, which stores the new last
	// block 63, zeros), 64..67 data.
	data := mountPattern(8*bs, 3)
	more := mountPattern(4*bs, 4)
	for _, name := range []string{"middle", "before-hole", "last", "intact"} {
		p := v.path(name)
		mountWriteFile(t, p, data)
		if err := os.Truncate(p, 64*bs); err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(more, 64*bs); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	v.unmount()
	zero := func(name string, block int) {
		t.Helper()
		mountExec(t, "dd", "if=/dev/zero", "of="+v.backing(name), "bs=1", "count="+strconv.Itoa(mountCipherBlockSize),
			"seek="+strconv.FormatInt(mountBlockOffset(block), 10), "conv=notrunc", "status=none")
	}
	zero("middle", 3)
	zero("before-hole", 7)
	zero("last", 67)
	v.mount()
	want := append(append(bytes.Clone(data), make([]byte, 56*bs)...), more...)
	mountExpectContent(t, v.path("intact"), want)
	for _, tc := range []struct {
		name      string
		bad, good []int
	}{
		{"middle", []int{3, 4}, []int{2, 5, 20, 65}},
		{"before-hole", []int{7, 8, 40, 62, 63}, []int{6, 64}},
		{"last", []int{67}, []int{0, 66}},
	} {
		for _, b := range tc.bad {
			if _, err := mountReadAt(v.path(tc.name), int64(b)*bs, bs); mountErrno(err) != syscall.EIO {
				t.Errorf("%s: block %d: %v, want EIO", tc.name, b, err)
			}
		}
		for _, b := range tc.good {
			if got, err := mountReadAt(v.path(tc.name), int64(b)*bs, bs); err != nil || !bytes.Equal(got, want[b*bs:(b+1)*bs]) {
				t.Errorf("%s: block %d: %v", tc.name, b, err)
			}
		}
	}
	if log := v.log(); !strings.Contains(log, "/middle") || !strings.Contains(log, "/before-hole") {
		t.Errorf("the log does not name the tampered files:\n%s", mountTail(log, 20))
	}
}

// TestMountSeekDataHole asks lseek(2) SEEK_DATA and SEEK_HOLE on a mount
// about a file with data, a hole left by a write past the end, data, a hole
// left by truncate, and the always-stored last block; then punches a hole
// with fallocate(1) and sees it reported, its range read as zeros, and the
// backing file's space freed.
func TestMountSeekDataHole(t *testing.T) {
	fallocate := mountRequireTool(t, "fallocate")
	const bs = mountBlockSize
	v := mountNewVolume(t)
	v.mount()
	p := v.path("f")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	first := make([]byte, 256*bs) // 1 MiB of data: blocks 0..255
	rand.Read(first)
	second := mountPattern(16*bs, 5) // blocks 1024..1039, after a 3 MiB hole
	if _, err := f.Write(first); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(second, 1024*bs); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(4096*bs + 100); err != nil { // holes 1040..4095, last block 4096
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	seek := func(off int64, whence int) (int64, error) {
		g, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		return unix.Seek(int(g.Fd()), off, whence)
	}
	expect := func(what string, cases [][3]int64) {
		t.Helper()
		for _, c := range cases {
			got, err := seek(c[0], int(c[1]))
			if err != nil || got != c[2] {
				t.Errorf("%s: lseek(%d, %d) = %d, %v; want %d", what, c[0], c[1], got, err, c[2])
			}
		}
	}
	const data, hole = unix.SEEK_DATA, unix.SEEK_HOLE
	expect("written", [][3]int64{
		{0, data, 0}, {0, hole, 256 * bs}, {256 * bs, data, 1024 * bs}, {300*bs + 1, hole, 300*bs + 1},
		{1024 * bs, hole, 1040 * bs}, {1040 * bs, data, 4096 * bs}, {4096 * bs, hole, 4096*bs + 100},
	})
	if _, err := seek(4096*bs+100, data); !errors.Is(err, syscall.ENXIO) {
		t.Errorf("SEEK_DATA at the end: %v, want ENXIO", err)
	}
	// The same map as xfs_io (xfsprogs) prints it, walking the file with
	// SEEK_DATA and SEEK_HOLE in turn.
	xfsIO := mountRequireTool(t, "xfs_io")
	out, err := exec.Command(xfsIO, "-r", "-c", "seek -a -r 0", p).CombinedOutput()
	wantMap := "Whence\tResult\nDATA\t0\nHOLE\t1048576\nDATA\t4194304\nHOLE\t4259840\nDATA\t16777216\nHOLE\t16777316\n"
	if err != nil || string(out) != wantMap {
		t.Errorf("xfs_io seek -a -r 0: %v\n%s\nwant\n%s", err, out, wantMap)
	}
	before := mountBackingUse(t, v.backing("f"))
	// Punch blocks 64..191 (512 KiB) and parts of blocks 10 and 200.
	off, n := int64(10*bs+100), int64(190*bs+50)
	if out, err := exec.Command(fallocate, "--punch-hole", "--offset", strconv.FormatInt(off, 10), "--length", strconv.FormatInt(n, 10), p).CombinedOutput(); err != nil {
		t.Fatalf("fallocate --punch-hole: %v %s", err, out)
	}
	clear(first[off : off+n])
	if freed := before - mountBackingUse(t, v.backing("f")); freed < 180*bs*mountCipherBlockSize/bs {
		t.Errorf("punching 190 blocks freed %d bytes of the backing file", freed)
	}
	expect("punched", [][3]int64{{0, hole, 11 * bs}, {11 * bs, data, 200 * bs}, {200 * bs, hole, 256 * bs}})
	for _, remount := range []bool{false, true} {
		if remount {
			v.remount()
		}
		got, err := mountReadAt(p, 0, 256*bs)
		if err != nil || !bytes.Equal(got, first) {
			t.Fatalf("after the punch (remount %v): %v, first difference at %d", remount, err, mountFirstDiff(got, first))
		}
		mountCmpZero(t, p, 1040*bs, (4096-1040)*bs)
	}
}

// TestMountSeekWritebackOpen: with the writeback cache, SEEK_DATA and
// SEEK_HOLE on a file still open for writing, whose pages the kernel has
// not written back, see those pages: data written just before, a hole
// between two writes, and the end where the kernel has it.
func TestMountSeekWritebackOpen(t *testing.T) {
	const bs = mountBlockSize
	v := mountNewVolume(t)
	v.mount("--writeback-cache")
	f, err := os.Create(v.path("f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(mountPattern(8*bs, 1)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(mountPattern(2*bs, 2), 100*bs); err != nil {
		t.Fatal(err)
	}
	fd := int(f.Fd())
	for _, c := range [][3]int64{
		{0, unix.SEEK_DATA, 0}, {0, unix.SEEK_HOLE, 8 * bs}, {8 * bs, unix.SEEK_DATA, 100 * bs},
		{100 * bs, unix.SEEK_HOLE, 102 * bs},
	} {
		if got, err := unix.Seek(fd, c[0], int(c[1])); err != nil || got != c[2] {
			t.Errorf("lseek(%d, %d) before any fsync = %d, %v; want %d", c[0], c[1], got, err, c[2])
		}
	}
	if got, err := mountReadAt(v.path("f"), 50*bs, bs); err != nil || !bytes.Equal(got, make([]byte, bs)) {
		t.Errorf("the hole: %v", err)
	}
}

// TestS3MountHolesAsZeros: on the S3 backend, whose objects cannot be
// sparse, a file grown by truncate(1) is stored as encrypted zeros (a
// version 3 file without holes) and reads zeros after a remount, and
// fallocate --punch-hole is refused as not supported.
func TestS3MountHolesAsZeros(t *testing.T) {
	fallocate := mountRequireTool(t, "fallocate")
	g := s3StartGateway(t)
	v := s3NewVolume(t, g, "vol")
	v.mount(g.flags()...)
	p := v.path("f")
	mountWriteFile(t, p, []byte("head"))
	mountExec(t, "truncate", "-s", "1M", p)
	out, err := exec.Command(fallocate, "--punch-hole", "--offset", "0", "--length", "4096", p).CombinedOutput()
	// util-linux words EOPNOTSUPP for a mode with KEEP_SIZE (which punching
	// implies) as "keep size mode is unsupported".
	if err == nil || !strings.Contains(string(out), "unsupported") && !strings.Contains(string(out), "not supported") {
		t.Errorf("fallocate --punch-hole on S3: %v %s; want it refused as not supported", err, out)
	}
	v.unmount()
	if stored := len(g.get(t, "vol/f")); stored < 1<<20 {
		t.Errorf("the object of a 1 MiB file holds %d bytes; want the zeros stored", stored)
	}
	v.mount(g.flags()...)
	want := make([]byte, 1<<20)
	copy(want, "head")
	mountExpectContent(t, p, want)
}
