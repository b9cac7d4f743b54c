package volume

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/backend"
	"github.com/kmsfs/kmsfs/envelope"
)

// recordingFile records the ranges whose writeback the volume starts.
type recordingFile struct {
	backend.File
	ranges [][2]int64
}

func (r *recordingFile) WriteBehind(off, n int64) error {
	r.ranges = append(r.ranges, [2]int64{off, n})
	return nil
}

// TestWriteBehindSequentialOnly writes a file front to back in 1 MiB
// requests (as FUSE sends them) and checks that writeback is started in
// contiguous runs of at least writeBehindBytes that cover the stored bytes
// written so far, and that overwrites inside the file start none.
func TestWriteBehindSequentialOnly(t *testing.T) {
	tv := newTestVolume(t, envelope.ModePerObject)
	h := tv.open(t, "seq", syscall.O_RDWR|syscall.O_CREAT)
	defer h.Close()
	rec := &recordingFile{File: h.f}
	h.f = rec
	ctx := context.Background()
	chunk := bytes.Repeat([]byte{7}, 1<<20)
	const mib = 40
	for i := 0; i < mib; i++ {
		if _, err := h.WriteAt(ctx, chunk, int64(i)<<20); err != nil {
			t.Fatal(err)
		}
	}
	if len(rec.ranges) == 0 {
		t.Fatal("no writeback started for a 40 MiB sequential write")
	}
	next := int64(0)
	for _, r := range rec.ranges {
		if r[0] != next || r[1] < writeBehindBytes {
			t.Fatalf("ranges %v: want contiguous runs of >= %d bytes from 0", rec.ranges, writeBehindBytes)
		}
		next = r[0] + r[1]
	}
	stored := tv.layout.CipherSize(mib<<20, true)
	if stored-next >= writeBehindBytes {
		t.Fatalf("writeback started up to %d of %d stored bytes", next, stored)
	}
	// Overwrites inside the file and a small append start nothing new.
	n := len(rec.ranges)
	for i := 0; i < 20; i++ {
		if _, err := h.WriteAt(ctx, chunk, int64(i%10)<<20); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := h.WriteAt(ctx, chunk[:100], mib<<20); err != nil {
		t.Fatal(err)
	}
	if len(rec.ranges) != n {
		t.Fatalf("overwrites started writeback: %v", rec.ranges[n:])
	}
	// After a truncation, a new sequential run starts from the cut.
	if err := h.Truncate(ctx, 1<<20); err != nil {
		t.Fatal(err)
	}
	for i := 1; i < 12; i++ {
		if _, err := h.WriteAt(ctx, chunk, int64(i)<<20); err != nil {
			t.Fatal(err)
		}
	}
	if len(rec.ranges) == n {
		t.Fatal("no writeback for the run after truncation")
	}
	if r := rec.ranges[n]; r[0] > tv.layout.CipherSize(1<<20, true) {
		t.Fatalf("run after truncation starts at %d, past the cut", r[0])
	}
	got := readAll(t, h)
	if len(got) != 12<<20 {
		t.Fatalf("size %d after the writes", len(got))
	}
}

// countingFile counts the stored bytes written through it.
type countingFile struct {
	backend.File
	written atomic.Int64
}

func (c *countingFile) WriteAt(p []byte, off int64) (int, error) {
	c.written.Add(int64(len(p)))
	return c.File.WriteAt(p, off)
}

// TestOutOfOrderAppendsNotZeroFilled sends two 1 MiB writes of a fresh
// file at once, as the kernel's writeback does, in whichever order the
// scheduler picks: the one past the end must wait for the other instead of
// filling the gap with encrypted zeros that are then overwritten, so the
// file is written once.
func TestOutOfOrderAppendsNotZeroFilled(t *testing.T) {
	tv := newTestVolume(t, envelope.ModePerObject)
	ctx := context.Background()
	a := bytes.Repeat([]byte{1}, 1<<20)
	b := bytes.Repeat([]byte{2}, 1<<20)
	for i := 0; i < 20; i++ {
		h := tv.open(t, fmt.Sprintf("f%d", i), syscall.O_RDWR|syscall.O_CREAT)
		cf := &countingFile{File: h.f}
		h.f = cf
		st := h.st
		// Hold the content lock until both writes are queued on it.
		st.content.Lock()
		var wg sync.WaitGroup
		errs := make(chan error, 2)
		for _, w := range []struct {
			p   []byte
			off int64
		}{{b, 1 << 20}, {a, 0}} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := h.WriteAt(ctx, w.p, w.off)
				errs <- err
			}()
			for want := int32(1); st.writers.Load() < want; {
				time.Sleep(time.Millisecond)
			}
		}
		for st.writers.Load() < 2 {
			time.Sleep(time.Millisecond)
		}
		st.content.Unlock()
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		got := readAll(t, h)
		if !bytes.Equal(got[:1<<20], a) || !bytes.Equal(got[1<<20:], b) {
			t.Fatalf("file %d: wrong content", i)
		}
		want := tv.layout.CipherSize(2<<20, true)
		if n := cf.written.Load(); n != want {
			t.Fatalf("file %d: %d stored bytes written for a %d-byte file: the gap was filled", i, n, want)
		}
		h.Close()
	}
}
