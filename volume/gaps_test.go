package volume

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/kmsfs/kmsfs/backend"
	"github.com/kmsfs/kmsfs/envelope"
)

// countingFile counts the stored bytes written through it.
type countingFile struct {
	backend.File
	written atomic.Int64
}

func (c *countingFile) WriteAt(p []byte, off int64) (int, error) {
	c.written.Add(int64(len(p)))
	return c.File.WriteAt(p, off)
}

func counted(h *Handle) *countingFile {
	cf := &countingFile{File: h.f}
	h.f = cf
	return cf
}

func pattern(n int, salt byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) ^ salt
	}
	return b
}

// TestOutOfOrderWritesWrittenOnce: a stream whose writes arrive out of
// order (as the writeback cache sends them) is stored once: the write past
// the end leaves a gap instead of zero-filling it, and the writes that
// arrive later fill the gap as fresh writes, with no intent.
func TestOutOfOrderWritesWrittenOnce(t *testing.T) {
	tv := newTestVolume(t, envelope.ModePerObject)
	ctx := context.Background()
	h := tv.open(t, "f", syscall.O_RDWR|syscall.O_CREAT)
	defer h.Close()
	cf := counted(h)
	const mib = 1 << 20
	var want []byte
	for i := 0; i < 6; i++ {
		want = append(want, pattern(mib, byte(i))...)
	}
	for _, i := range []int{0, 3, 2, 5, 1, 4} {
		if _, err := h.WriteAt(ctx, want[i*mib:(i+1)*mib], int64(i*mib)); err != nil {
			t.Fatal(err)
		}
	}
	if n, w := cf.written.Load(), tv.layout.CipherSize(6*mib, true); n != w {
		t.Fatalf("%d stored bytes written for a %d-byte file: gaps were zero-filled and rewritten", n, w)
	}
	if len(h.st.gaps) != 0 {
		t.Fatalf("gaps left: %v", h.st.gaps)
	}
	if got := readAll(t, h); !bytes.Equal(got, want) {
		t.Fatal("wrong content")
	}
	if _, err := tv.be.(backend.Intents).ReadIntent(ctx, "x"); err == nil {
		t.Fatal("intent store not empty")
	}
}

// TestGapReadsAsZeros: a gap left by a write past the end reads as zeros
// (it is filled first), and unaligned writes into a gap keep zeros around
// them.
func TestGapReadsAsZeros(t *testing.T) {
	tv := newTestVolume(t, envelope.ModePerObject)
	ctx := context.Background()
	h := tv.open(t, "f", syscall.O_RDWR|syscall.O_CREAT)
	defer h.Close()
	model := make([]byte, 100)
	copy(model, pattern(100, 1))
	if _, err := h.WriteAt(ctx, model, 0); err != nil {
		t.Fatal(err)
	}
	tail := pattern(5000, 2)
	const at = 3<<20 + 123
	if _, err := h.WriteAt(ctx, tail, at); err != nil {
		t.Fatal(err)
	}
	model = append(model, make([]byte, at-100)...)
	model = append(model, tail...)
	if len(h.st.gaps) != 1 {
		t.Fatalf("gaps = %v, want one", h.st.gaps)
	}
	// An unaligned write inside the gap.
	mid := pattern(10, 3)
	if _, err := h.WriteAt(ctx, mid, 1<<20+4000); err != nil {
		t.Fatal(err)
	}
	copy(model[1<<20+4000:], mid)
	// A read across the rest of the gap fills it.
	buf := make([]byte, 8192)
	if _, err := h.ReadAt(ctx, buf, 2<<20); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, model[2<<20:2<<20+8192]) {
		t.Fatal("gap did not read as zeros")
	}
	for _, g := range h.st.gaps {
		if g.lo < 2<<20+8192 && 2<<20 < g.hi {
			t.Fatalf("gap %v overlapping the read is left", g)
		}
	}
	if got := readAll(t, h); !bytes.Equal(got, model) {
		t.Fatal("wrong content")
	}
	if len(h.st.gaps) != 0 {
		t.Fatalf("gaps left after reading everything: %v", h.st.gaps)
	}
}

// TestGapsFilledAtSyncCloseTruncate: what another opener (or a remount)
// reads is whole after fsync or close; a truncation inside or below a gap
// works; and a far write (beyond maxDeferredGap) is filled at once.
func TestGapsFilledAtSyncCloseTruncate(t *testing.T) {
	tv := newTestVolume(t, envelope.ModePerObject)
	ctx := context.Background()
	reopen := func(name string) []byte {
		t.Helper()
		// A second volume on the same backend sees only what is stored.
		v2, err := Open(ctx, unlocked(tv.be), Options{Keys: tv.kms, PrefetchMax: -1})
		if err != nil {
			t.Fatal(err)
		}
		h2, err := v2.OpenFile(ctx, name, syscall.O_RDONLY, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer h2.Close()
		return readAll(t, h2)
	}
	h := tv.open(t, "sync", syscall.O_RDWR|syscall.O_CREAT)
	if _, err := h.WriteAt(ctx, []byte("end"), 2<<20); err != nil {
		t.Fatal(err)
	}
	if err := h.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	want := append(make([]byte, 2<<20), "end"...)
	if got := reopen("sync"); !bytes.Equal(got, want) {
		t.Fatal("after fsync: gap not filled")
	}
	h.Close()

	h = tv.open(t, "close", syscall.O_RDWR|syscall.O_CREAT)
	if _, err := h.WriteAt(ctx, []byte("end"), 2<<20); err != nil {
		t.Fatal(err)
	}
	h.Close()
	if got := reopen("close"); !bytes.Equal(got, want) {
		t.Fatal("after close: gap not filled")
	}

	h = tv.open(t, "trunc", syscall.O_RDWR|syscall.O_CREAT)
	defer h.Close()
	if _, err := h.WriteAt(ctx, []byte("end"), 2<<20); err != nil {
		t.Fatal(err)
	}
	if err := h.Truncate(ctx, 1<<20+17); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, h); !bytes.Equal(got, make([]byte, 1<<20+17)) {
		t.Fatal("truncate into a gap: wrong content")
	}
	if _, err := h.WriteAt(ctx, []byte("x"), 1<<20+maxDeferredGap+100); err != nil {
		t.Fatal(err)
	}
	if len(h.st.gaps) != 0 {
		t.Fatalf("a %d-byte hole was deferred", maxDeferredGap)
	}
}

// TestUnfilledGapIsEIOAfterCrash: if the process dies with a gap open (no
// fsync, no close), the gap's blocks fail authentication on the next
// mount: an error, never other data. So does the block written after the
// gap (as unsynced as the gap): a version 3 block names the stored block
// before it, which was to be the gap's last. The file before the gap reads.
func TestUnfilledGapIsEIOAfterCrash(t *testing.T) {
	tv := newTestVolume(t, envelope.ModePerObject)
	ctx := context.Background()
	h := tv.open(t, "crash", syscall.O_RDWR|syscall.O_CREAT)
	if _, err := h.WriteAt(ctx, pattern(4096, 1), 0); err != nil {
		t.Fatal(err)
	}
	// A partial last block: sealed as the last at once (tail.go), so the
	// crash leaves only the gap unreadable.
	if _, err := h.WriteAt(ctx, pattern(4000, 2), 1<<20); err != nil {
		t.Fatal(err)
	}
	// "Crash": the handle is never closed; read through a second volume.
	v2, err := Open(ctx, unlocked(tv.be), Options{Keys: tv.kms, PrefetchMax: -1})
	if err != nil {
		t.Fatal(err)
	}
	h2, err := v2.OpenFile(ctx, "crash", syscall.O_RDONLY, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer h2.Close()
	buf := make([]byte, 4096)
	if _, err := h2.ReadAt(ctx, buf, 0); err != nil || !bytes.Equal(buf, pattern(4096, 1)) {
		t.Fatalf("block before the gap: %v", err)
	}
	if _, err := h2.ReadAt(ctx, buf, 1<<20); !errors.Is(err, envelope.ErrBlockAuth) {
		t.Fatalf("block after the gap: err = %v, want ErrBlockAuth", err)
	}
	if _, err := h2.ReadAt(ctx, buf, 8192); !errors.Is(err, envelope.ErrBlockAuth) {
		t.Fatalf("gap block after a crash: err = %v, want ErrBlockAuth", err)
	}
	h.st.gaps = nil // the crashed writer must not fill it at cleanup
	h.Close()
}

// failingWrites fails every write.
type failingWrites struct{ backend.File }

func (failingWrites) WriteAt(p []byte, off int64) (int, error) { return 0, syscall.ENOSPC }

// TestGapWriterClosedWithoutFill: when the handle that left a gap cannot
// fill it at close, a reader on another handle gets an error for the gap,
// and nothing is written through the closed handle's descriptor.
func TestGapWriterClosedWithoutFill(t *testing.T) {
	tv := newTestVolume(t, envelope.ModePerObject)
	ctx := context.Background()
	w := tv.open(t, "f", syscall.O_RDWR|syscall.O_CREAT)
	r := tv.open(t, "f", syscall.O_RDONLY)
	defer r.Close()
	if _, err := w.WriteAt(ctx, []byte("x"), 1<<20); err != nil {
		t.Fatal(err)
	}
	inner := w.f
	w.f = failingWrites{inner}
	w.Close() // the fill fails (logged); the descriptor is closed
	if r.st.gapWriter != nil {
		t.Fatal("a closed handle is still the gap writer")
	}
	buf := make([]byte, 4096)
	if _, err := r.ReadAt(ctx, buf, 8192); !errors.Is(err, envelope.ErrCorrupt) {
		t.Fatalf("read of the unfilled gap: err = %v, want ErrCorrupt", err)
	}
	if n, err := r.ReadAt(ctx, buf[:1], 1<<20); n != 1 || buf[0] != 'x' {
		t.Fatalf("byte after the gap: %q, %v", buf[:n], err)
	}
}
