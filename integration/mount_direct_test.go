package integration

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// O_DIRECT through a real mount: dd and fio with direct I/O of every size
// the kernel allows, data that survives a remount, a tampered block that
// reads as EIO, and a kill -9 in the middle of direct writes.

// mountDirectBuf is n bytes of page-aligned memory (an anonymous mapping),
// as programs doing direct I/O use: the test does not lean on FUSE
// accepting unaligned user buffers.
func mountDirectBuf(t *testing.T, n int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, (n+4095)&^4095, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return b[:n]
}

// mountDirectOpen opens p with O_DIRECT.
func mountDirectOpen(t *testing.T, p string, flags int) int {
	t.Helper()
	fd, err := unix.Open(p, flags|unix.O_DIRECT|unix.O_CLOEXEC, 0o644)
	if err != nil {
		t.Fatalf("open %s O_DIRECT: %v", p, err)
	}
	return fd
}

// mountDirectRead reads all of p with O_DIRECT in 64 KiB requests.
func mountDirectRead(t *testing.T, p string) ([]byte, error) {
	t.Helper()
	fd := mountDirectOpen(t, p, unix.O_RDONLY)
	defer unix.Close(fd)
	buf := mountDirectBuf(t, 64<<10)
	var out []byte
	for off := int64(0); ; {
		n, err := unix.Pread(fd, buf, off)
		if err != nil {
			return out, err
		}
		if n == 0 {
			return out, nil
		}
		out = append(out, buf[:n]...)
		off += int64(n)
	}
}

// mountExpectDirect fails unless both an O_DIRECT read and a buffered read
// of p give want.
func mountExpectDirect(t *testing.T, p string, want []byte) {
	t.Helper()
	got, err := mountDirectRead(t, p)
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("%s, O_DIRECT read: %d bytes, %v; want %d bytes (first difference at %d)", p, len(got), err, len(want), mountFirstDiff(got, want))
		return
	}
	mountExpectContent(t, p, want)
}

// mountFioDirect: fio's direct=1 jobs, verified with crc32c: random writes
// of any multiple of 512 bytes at 512-byte aligned offsets (most of them
// partial blocks, read-modify-write), random reads and writes, and the
// same with libaio and 16 requests in flight (the kernel's asynchronous
// direct I/O).
const mountFioDirect = `
[global]
directory=%DIR%
direct=1
size=16m
verify=crc32c
do_verify=1
verify_fatal=1
randrepeat=1

[randwrite-512]
ioengine=psync
rw=randwrite
bsrange=512-64k
blockalign=512
verify_backlog=128

[randrw]
ioengine=psync
rw=randrw
bsrange=4k-64k

[libaio]
ioengine=libaio
iodepth=16
rw=randwrite
bsrange=512-32k
blockalign=512
`

// TestMountDirectIO writes with dd oflag=direct at 512 B, 4 KiB, 20 KiB and
// 1 MiB, patches files in place with O_DIRECT writes of 512 B and up inside
// blocks, runs fio --direct=1 --verify=crc32c, and checks everything again
// after a remount, with the kernel's writeback cache off (the default) and
// on. Then one sealed block of a file is flipped: an O_DIRECT read of that
// block is EIO, logged with the file's path; its other blocks still read.
func TestMountDirectIO(t *testing.T) {
	mountRequireTool(t, "dd")
	mountRequireTool(t, "fio")
	for _, mode := range []string{"default", "writeback-cache"} {
		t.Run(mode, func(t *testing.T) {
			var extra []string
			if mode == "writeback-cache" {
				extra = []string{"--writeback-cache"}
			}
			mountDirectIO(t, extra)
		})
	}
}

func mountDirectIO(t *testing.T, mountFlags []string) {
	v := mountNewVolume(t)
	v.mount(mountFlags...)
	rng := rand.New(rand.NewPCG(mountSeed(t), 3))
	want := map[string][]byte{}
	src := filepath.Join(t.TempDir(), "src")

	// dd with direct output, then direct input, at the sizes xfstests and
	// databases use.
	for i, bs := range []string{"512", "4k", "20k", "1M"} {
		data := mountPattern(3<<20+(i+1)*512*7, byte(i+1))
		// dd's last short record (of a size that is a multiple of 512) is
		// written with O_DIRECT as well.
		mountWriteFile(t, src, data)
		name := "dd-" + bs
		mountExec(t, "dd", "if="+src, "of="+v.path(name), "bs="+bs, "oflag=direct", "status=none")
		back := filepath.Join(t.TempDir(), "back")
		mountExec(t, "dd", "if="+v.path(name), "of="+back, "bs="+bs, "iflag=direct", "status=none")
		got, err := os.ReadFile(back)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("dd bs=%s: read back %d bytes, %v; want %d (first difference at %d)", bs, len(got), err, len(data), mountFirstDiff(got, data))
		}
		want[name] = data
	}
	// dd conv=notrunc into the middle of an existing file: 512-byte
	// records at an odd 512-byte offset, across a block boundary.
	patch := mountPattern(5*512, 0x5a)
	mountWriteFile(t, src, patch)
	mountExec(t, "dd", "if="+src, "of="+v.path("dd-4k"), "bs=512", "seek=13", "conv=notrunc", "oflag=direct", "status=none")
	copy(want["dd-4k"][13*512:], patch)
	mountExpectDirect(t, v.path("dd-4k"), want["dd-4k"])

	// O_DIRECT writes of multiples of 512 at 512-aligned offsets, growing
	// and patching one file, against a model.
	fd := mountDirectOpen(t, v.path("patched"), unix.O_RDWR|unix.O_CREAT)
	model := []byte{}
	buf := mountDirectBuf(t, 64<<10)
	for i := 0; i < 300; i++ {
		n := 512 * (1 + rng.IntN(40))
		off := int64(512 * rng.IntN(len(model)/512+8))
		for j := range buf[:n] {
			buf[j] = byte(rng.Uint32())
		}
		if w, err := unix.Pwrite(fd, buf[:n], off); err != nil || w != n {
			unix.Close(fd)
			t.Fatalf("O_DIRECT pwrite of %d bytes at %d: %d, %v", n, off, w, err)
		}
		if end := int(off) + n; end > len(model) {
			model = append(model, make([]byte, end-len(model))...)
		}
		copy(model[off:], buf[:n])
	}
	unix.Close(fd)
	want["patched"] = model
	mountExpectDirect(t, v.path("patched"), model)

	fioDir := v.path("fio")
	if err := os.Mkdir(fioDir, 0o755); err != nil {
		t.Fatal(err)
	}
	mountRunFio(t, mountFioDirect, fioDir)

	// From the backing files now, not the kernel's cache.
	v.remount(mountFlags...)
	for name, data := range want {
		mountExpectDirect(t, v.path(name), data)
	}
	out := mountRunFio(t, mountFioDirect, fioDir, "--verify_only")
	if !strings.Contains(out, "READ:") {
		t.Errorf("fio --verify_only read nothing:\n%s", mountTail(out, 30))
	}
	if hits := mountGrepBacking(t, v.vault, want["dd-1M"][100000:100064]); len(hits) > 0 {
		t.Errorf("plaintext of dd-1M in backing files: %v", hits)
	}

	// One bit of block 1 of "patched": an O_DIRECT read of that block is
	// EIO; block 0 still reads.
	v.unmount()
	b := mountReadBacking(t, v.backing("patched"), mountBlockOffset(1)+12+100, 1)
	mountPatchBacking(t, v.backing("patched"), mountBlockOffset(1)+12+100, []byte{b[0] ^ 0x10})
	v.mount(mountFlags...)
	fd = mountDirectOpen(t, v.path("patched"), unix.O_RDONLY)
	defer unix.Close(fd)
	blk := mountDirectBuf(t, mountBlockSize)
	if n, err := unix.Pread(fd, blk, mountBlockSize); err != syscall.EIO {
		t.Errorf("O_DIRECT read of the tampered block: %d bytes, %v; want EIO", n, err)
	}
	if n, err := unix.Pread(fd, blk, 0); err != nil || !bytes.Equal(blk[:n], model[:mountBlockSize]) {
		t.Errorf("O_DIRECT read of the intact block 0: %d bytes, %v", n, err)
	}
	if _, err := mountDirectRead(t, v.path("patched")); err != syscall.EIO {
		t.Errorf("O_DIRECT read of the whole tampered file: %v; want EIO", err)
	}
	if !strings.Contains(v.log(), "path=/patched ") && !strings.Contains(v.log(), "path=patched ") {
		t.Errorf("log has no line naming /patched:\n%s", mountTail(v.log(), 20))
	}
	// Writing the block whole again with O_DIRECT replaces it.
	wfd := mountDirectOpen(t, v.path("patched"), unix.O_WRONLY)
	copy(blk, model[mountBlockSize:2*mountBlockSize])
	if _, err := unix.Pwrite(wfd, blk, mountBlockSize); err != nil {
		t.Errorf("O_DIRECT rewrite of the tampered block: %v", err)
	}
	unix.Close(wfd)
	mountExpectDirect(t, v.path("patched"), model)
}

// TestMountDirectIOCrash holds O_DIRECT writes to the crash test's
// promises: files written with O_DIRECT and fsynced survive a kill -9 of
// kmsfs intact, and files being written with O_DIRECT when it dies read as
// correct bytes (possibly fewer) or EIO, never as wrong bytes; a file
// fsynced and then overwritten in place keeps every byte old or new.
func TestMountDirectIOCrash(t *testing.T) {
	v := mountNewVolume(t)
	seed := mountSeed(t)
	rng := rand.New(rand.NewPCG(seed, 5))
	synced := map[string][]byte{}
	fileNo := 0
	for round := 0; round < 2; round++ {
		proc := v.mountForeground()
		for i := 0; i < 4; i++ {
			fileNo++
			name := fmt.Sprintf("synced-%d-%d", round, i)
			size := 512 * (128 + rng.IntN(2048))
			data := mountCrashContent(fileNo, 0, 0, size)
			fd := mountDirectOpen(t, v.path(name), unix.O_WRONLY|unix.O_CREAT)
			buf := mountDirectBuf(t, 64<<10)
			for off := 0; off < size; {
				n := min(512*(1+rng.IntN(128)), size-off)
				copy(buf, data[off:off+n])
				if _, err := unix.Pwrite(fd, buf[:n], int64(off)); err != nil {
					unix.Close(fd)
					t.Fatalf("O_DIRECT pwrite %s: %v", name, err)
				}
				off += n
			}
			if err := unix.Fsync(fd); err != nil {
				unix.Close(fd)
				t.Fatalf("fsync %s: %v", name, err)
			}
			unix.Close(fd)
			synced[name] = data
		}
		fileNo++
		overlayNo := fileNo
		overlayName := fmt.Sprintf("overlay-%d", round)
		const overlaySize = 512 * 600
		mountWriteFile(t, v.path(overlayName), mountCrashContent(overlayNo, 0, 0, overlaySize))
		f, err := os.OpenFile(v.path(overlayName), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		f.Close()

		var writers []*mountCrashWriter
		for i := 0; i < 2; i++ {
			fileNo++
			writers = append(writers, &mountCrashWriter{path: v.path(fmt.Sprintf("unsynced-%d-%d", round, i)), file: fileNo})
		}
		writers = append(writers, &mountCrashWriter{path: v.path(overlayName), file: overlayNo, overlay: true, size: overlaySize})
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for i, w := range writers {
			w.direct, w.buf = true, mountDirectBuf(t, 64<<10)
			wg.Add(1)
			go func(w *mountCrashWriter, wrng *rand.Rand) {
				defer wg.Done()
				w.run(wrng, stop)
			}(w, rand.New(rand.NewPCG(seed, uint64(100*round+i))))
		}
		mountCrashWhileWriting(t, writers, time.Duration(200+rng.IntN(300))*time.Millisecond)
		proc.kill(t)
		close(stop)
		wg.Wait()
		for _, w := range writers {
			t.Logf("round %d: %s: %d O_DIRECT writes up to offset %d when killed", round, w.path[len(v.mnt):], w.writes.Load(), w.maxEnd)
			if w.writes.Load() == 0 {
				t.Errorf("%s: no O_DIRECT write succeeded before the kill", w.path)
			}
		}
		v.dropDeadMount()
		v.mount()
		for name, data := range synced {
			mountExpectDirect(t, v.path(name), data)
		}
		for _, w := range writers {
			if w.overlay {
				// Fsynced, then overwritten in place: never EIO.
				if _, err := mountDirectRead(t, w.path); err != nil {
					t.Errorf("%s: %v; want every block old or new", w.path, err)
				}
			}
			mountCheckUnsynced(t, w)
		}
		if t.Failed() {
			return
		}
		v.unmount()
	}
}
