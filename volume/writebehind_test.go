package volume

import (
	"bytes"
	"context"
	"syscall"
	"testing"

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
