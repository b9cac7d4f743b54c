package integration

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// mountCrashByte is the content every crash-test file has at offset off:
// position-dependent, so a block landing in the wrong place, a stale block
// or a block of another file all show as wrong bytes.
func mountCrashByte(file int, version int, off int64) byte {
	x := uint64(off)*0x9e3779b97f4a7c15 ^ uint64(file)<<40 ^ uint64(version)<<56
	x ^= x >> 29
	return byte(x)
}

func mountCrashContent(file, version int, off int64, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = mountCrashByte(file, version, off+int64(i))
	}
	return b
}

// mountCrashWriter keeps writing to one file without fsync until its
// writes fail (the mount died) or stop is closed.
type mountCrashWriter struct {
	path    string
	file    int
	overlay bool  // overwrite a synced file (version 0) with version 1 in place
	big     bool  // write 256 KiB..1 MiB per request
	size    int64 // for overlay: the synced size
	// direct writes with O_DIRECT through buf (page-aligned, from
	// mountDirectBuf), in multiples of 512 bytes at multiples of 512.
	direct bool
	buf    []byte
	maxEnd int64 // highest offset a write was attempted up to
	writes atomic.Int64
}

func (w *mountCrashWriter) run(rng *rand.Rand, stop <-chan struct{}) {
	flags := os.O_WRONLY | os.O_CREATE
	unit := int64(1)
	if w.direct {
		flags |= syscall.O_DIRECT
		unit = 512
	}
	f, err := os.OpenFile(w.path, flags, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	version := 0
	if w.overlay {
		version = 1
	}
	var off int64
	for {
		select {
		case <-stop:
			return
		default:
		}
		var n int
		switch {
		case w.direct:
			n = 512 * (1 + rng.IntN(len(w.buf)/512))
		case w.big:
			n = 256<<10 + rng.IntN(768<<10)
		default:
			n = 1 + rng.IntN(20000)
		}
		if w.overlay {
			off = unit * rng.Int64N(w.size/unit)
			n = min(n, int(w.size-off))
		}
		w.maxEnd = max(w.maxEnd, off+int64(n))
		data := mountCrashContent(w.file, version, off, n)
		if w.direct {
			data = w.buf[:copy(w.buf, data)]
		}
		if _, err := f.WriteAt(data, off); err != nil {
			return
		}
		w.writes.Add(1)
		if !w.overlay {
			off += int64(n)
		}
	}
}

// mountCrashWhileWriting returns when the kill may come: every writer has
// written at least once, and then the seeded random delay has passed, so
// that the crash falls at a replayable point in the middle of the writes.
func mountCrashWhileWriting(t *testing.T, writers []*mountCrashWriter, delay time.Duration) {
	t.Helper()
	mountWaitFor(t, 30*time.Second, "every writer's first write", func() bool {
		for _, w := range writers {
			if w.writes.Load() == 0 {
				return false
			}
		}
		return true
	})
	time.Sleep(delay) // part of the test: the seeded crash point
}

// TestMountCrash kills a foreground kmsfs with SIGKILL while writers are
// busy, three times over: every file that was fsynced before the crash
// reads back intact after a remount, and the files being written without
// fsync read back as correct bytes (possibly fewer of them) or EIO, never
// as wrong bytes.
func TestMountCrash(t *testing.T) { mountCrash(t) }

// TestMountCrashCompressed is TestMountCrash on a volume that compresses:
// the fsynced files are written out compressed at fsync, and the overlay
// writer rewrites a compressed file (docs/FORMAT.md section 4a).
func TestMountCrashCompressed(t *testing.T) { mountCrash(t, "--compress", "zstd") }

func mountCrash(t *testing.T, initArgs ...string) {
	v := mountNewVolume(t, initArgs...)
	seed := mountSeed(t)
	rng := rand.New(rand.NewPCG(seed, 7))
	synced := map[string][]byte{}
	fileNo := 0
	for round := 0; round < 3; round++ {
		proc := v.mountForeground()

		// Synced: a few MiB in uneven writes, fsync, close.
		for i := 0; i < 6; i++ {
			fileNo++
			name := fmt.Sprintf("synced-%d-%d", round, i)
			size := 64<<10 + rng.IntN(1<<20)
			data := mountCrashContent(fileNo, 0, 0, size)
			f, err := os.Create(v.path(name))
			if err != nil {
				t.Fatal(err)
			}
			for off := 0; off < size; {
				n := min(1+rng.IntN(100000), size-off)
				if _, err := f.Write(data[off : off+n]); err != nil {
					f.Close()
					t.Fatal(err)
				}
				off += n
			}
			if err := f.Sync(); err != nil {
				t.Fatalf("fsync %s: %v", name, err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			synced[name] = data
		}
		// A synced file to be overwritten in place without fsync.
		fileNo++
		overlayNo := fileNo
		overlayName := fmt.Sprintf("overlay-%d", round)
		overlaySize := int64(300000)
		f, err := os.Create(v.path(overlayName))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(mountCrashContent(overlayNo, 0, 0, int(overlaySize))); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}

		// Unsynced writers, running when kmsfs dies.
		var writers []*mountCrashWriter
		for i := 0; i < 3; i++ {
			fileNo++
			writers = append(writers, &mountCrashWriter{path: v.path(fmt.Sprintf("unsynced-%d-%d", round, i)), file: fileNo})
		}
		writers = append(writers, &mountCrashWriter{path: v.path(overlayName), file: overlayNo, overlay: true, size: overlaySize})
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for i, w := range writers {
			wg.Add(1)
			go func(w *mountCrashWriter, wrng *rand.Rand) {
				defer wg.Done()
				w.run(wrng, stop)
			}(w, rand.New(rand.NewPCG(seed, uint64(100*round+i))))
		}
		mountCrashWhileWriting(t, writers, time.Duration(200+rng.IntN(300))*time.Millisecond)
		if err := proc.kill(t); err == nil {
			t.Errorf("kmsfs exited cleanly after SIGKILL?")
		}
		// The writers' next write fails (ENOTCONN/ECONNABORTED) and they stop.
		close(stop)
		wg.Wait()
		for _, w := range writers {
			t.Logf("round %d: %s: %d writes up to offset %d when killed", round, w.path[len(v.mnt):], w.writes.Load(), w.maxEnd)
		}
		v.dropDeadMount()

		v.mount()
		for name, want := range synced {
			got, err := os.ReadFile(v.path(name))
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("round %d: fsynced %s: %d bytes, %v; want %d bytes (first difference at %d)", round, name, len(got), err, len(want), mountFirstDiff(got, want))
			}
		}
		for _, w := range writers {
			mountCheckUnsynced(t, w)
		}
		if t.Failed() {
			return
		}
		v.unmount()
	}
}

// mountCheckUnsynced accepts a missing file, EIO, or content every byte of
// which is what some write put (or, for an overlay, the synced version 0
// or the new version 1 of that byte), with no bytes beyond the writes.
func mountCheckUnsynced(t *testing.T, w *mountCrashWriter) {
	t.Helper()
	got, err := os.ReadFile(w.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return
	case mountErrno(err) == syscall.EIO:
		t.Logf("%s: EIO (allowed for unsynced data)", w.path)
		return
	case err != nil:
		t.Errorf("%s: %v; want content, EIO or ENOENT", w.path, err)
		return
	}
	limit := w.maxEnd
	if w.overlay {
		limit = w.size
	}
	if w.overlay && int64(len(got)) != w.size {
		t.Errorf("%s: %d bytes; in-place overwrites must keep the synced size %d", w.path, len(got), w.size)
	}
	if int64(len(got)) > limit {
		t.Errorf("%s: %d bytes, but writes went only up to %d", w.path, len(got), limit)
	}
	for off, b := range got {
		ok := b == mountCrashByte(w.file, 0, int64(off))
		if w.overlay {
			ok = ok || b == mountCrashByte(w.file, 1, int64(off))
		}
		if !ok {
			t.Errorf("%s: wrong byte at offset %d of %d: %#x", w.path, off, len(got), b)
			return
		}
	}
}

// TestMountCrashTornBlocks holds kmsfs to its promise that a kill -9
// "never leaves a block half written": files are written and fsynced, then
// overwritten in place with large writes (many blocks per request) while
// kmsfs is killed. Every block must afterwards read as its fsynced or its
// new content; EIO would mean a block torn between the two, which loses
// fsynced data the application never asked to replace successfully.
func TestMountCrashTornBlocks(t *testing.T) {
	v := mountNewVolume(t)
	seed := mountSeed(t)
	rng := rand.New(rand.NewPCG(seed, 11))
	const size = 8 << 20
	rounds := 6
	for round := 0; round < rounds; round++ {
		proc := v.mountForeground()
		var writers []*mountCrashWriter
		for i := 0; i < 2; i++ {
			fileNo := 1000*round + i
			name := fmt.Sprintf("torn-%d-%d", round, i)
			f, err := os.Create(v.path(name))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Write(mountCrashContent(fileNo, 0, 0, size)); err != nil {
				f.Close()
				t.Fatal(err)
			}
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			writers = append(writers, &mountCrashWriter{path: v.path(name), file: fileNo, overlay: true, size: size, big: true})
		}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for i, w := range writers {
			wg.Add(1)
			go func(w *mountCrashWriter, wrng *rand.Rand) {
				defer wg.Done()
				w.run(wrng, stop)
			}(w, rand.New(rand.NewPCG(seed, uint64(10*round+i))))
		}
		mountCrashWhileWriting(t, writers, time.Duration(100+rng.IntN(400))*time.Millisecond)
		proc.kill(t)
		close(stop)
		wg.Wait()
		v.dropDeadMount()
		v.mount()
		for _, w := range writers {
			if _, err := os.ReadFile(w.path); err != nil {
				t.Errorf("round %d: %s (fsynced, then overwritten in place when kmsfs was killed after %d writes): %v; want every block old or new",
					round, w.path[len(v.mnt):], w.writes.Load(), err)
				continue
			}
			mountCheckUnsynced(t, w)
		}
		v.unmount()
	}
	if t.Failed() {
		t.Logf("log:\n%s", mountTail(v.log(), 20))
	}
}
