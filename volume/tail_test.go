package volume

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/envelope"
)

// readErr reads the whole file through a fresh handle and returns the error
// of the read (nil or io.EOF: the file read).
func readErr(t *testing.T, tv *testVol, name string) ([]byte, error) {
	t.Helper()
	h := tv.open(t, name, syscall.O_RDONLY)
	defer h.Close()
	size, err := h.Size()
	if err != nil {
		return nil, err
	}
	buf := make([]byte, size)
	n, err := h.ReadAt(context.Background(), buf, 0)
	if errors.Is(err, io.EOF) && int64(n) == size {
		err = nil
	}
	return buf[:n], err
}

// TestEndOfFileAuthenticated: a stored file cut at a block boundary, or
// given back a block it had before a truncation (a genuine block of the
// same file and key), reads as an authentication failure, not as another
// length (docs/FORMAT.md section 4).
func TestEndOfFileAuthenticated(t *testing.T) {
	const bs = 4096
	for _, size := range []int{3 * bs, 3*bs + 100} {
		tv := newTestVolume(t, envelope.ModePerObject)
		ctx := context.Background()
		l := tv.Layout()
		path := filepath.Join(tv.dir, "f")

		h := tv.open(t, "f", syscall.O_RDWR|syscall.O_CREAT)
		if _, err := h.WriteAt(ctx, pattern(size+bs, 1), 0); err != nil {
			t.Fatal(err)
		}
		h.Close()
		stored, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		h = tv.open(t, "f", syscall.O_RDWR)
		if err := h.Truncate(ctx, int64(size)); err != nil {
			t.Fatal(err)
		}
		h.Close()
		if got, err := readErr(t, tv, "f"); err != nil || !bytes.Equal(got, pattern(size+bs, 1)[:size]) {
			t.Fatalf("size %d: the file itself: %d bytes, %v", size, len(got), err)
		}
		cs := l.CipherSize(int64(size), true)

		// A block of the longer version appended.
		full := int64(size/bs) * l.SealedBlockSize()
		old := stored[l.HeaderSize+full : l.HeaderSize+full+l.SealedBlockSize()]
		if size%bs == 0 {
			f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
			f.Write(old)
			f.Close()
			if _, err := readErr(t, tv, "f"); !errors.Is(err, envelope.ErrBlockAuth) {
				t.Errorf("size %d: a block appended: %v, want ErrBlockAuth", size, err)
			}
			os.Truncate(path, cs)
		}

		// Cut at a block boundary: one block, then all but the first.
		for _, cut := range []int64{l.BlockOffset(uint64((size - 1) / bs)), l.BlockOffset(1)} {
			keep, _ := os.ReadFile(path)
			os.Truncate(path, cut)
			if _, err := readErr(t, tv, "f"); !errors.Is(err, envelope.ErrBlockAuth) {
				t.Errorf("size %d: cut to %d stored bytes: %v, want ErrBlockAuth", size, cut, err)
			}
			os.WriteFile(path, keep, 0o644)
		}
		if _, err := readErr(t, tv, "f"); err != nil {
			t.Fatalf("size %d: restored file: %v", size, err)
		}
	}
}

// TestAppendsKeepTheEndSealed: appends of whole and partial blocks, with
// closes, fsyncs, truncations up and down and overwrites of the last block
// between them, always leave a file that reads back through a fresh volume
// (which knows nothing of open tails), and re-encrypt no block while a
// sequential run of whole-block appends goes on.
func TestAppendsKeepTheEndSealed(t *testing.T) {
	const bs = 4096
	tv := newTestVolume(t, envelope.ModeBucketKey)
	ctx := context.Background()
	var model []byte
	check := func(step string) {
		t.Helper()
		got, err := readErr(t, tv, "f")
		if err != nil || !bytes.Equal(got, model) {
			t.Fatalf("after %s: %d bytes, %v; want %d", step, len(got), err, len(model))
		}
	}
	write := func(h *Handle, p []byte, off int64) {
		t.Helper()
		if _, err := h.WriteAt(ctx, p, off); err != nil {
			t.Fatal(err)
		}
		if end := off + int64(len(p)); end > int64(len(model)) {
			model = append(model, make([]byte, end-int64(len(model)))...)
		}
		copy(model[off:], p)
	}
	h := tv.open(t, "f", syscall.O_RDWR|syscall.O_CREAT)
	cf := counted(h)
	for i := 0; i < 8; i++ {
		write(h, pattern(2*bs, byte(i)), int64(len(model)))
	}
	l := tv.Layout()
	if got, want := cf.written.Load(), l.CipherSize(16*bs, true); got != want {
		t.Errorf("8 whole-block appends wrote %d stored bytes, want %d: a sequential run must not rewrite its last block each time", got, want)
	}
	if !h.st.openTail {
		t.Error("whole-block appends left the tail closed")
	}
	h.Close()
	check("whole-block appends and close")

	h = tv.open(t, "f", syscall.O_RDWR)
	write(h, pattern(bs, 9), int64(len(model)))
	if err := h.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	check("an append and fsync (handle still open)")
	write(h, pattern(100, 10), int64(len(model)))
	check("a partial append")
	write(h, pattern(bs-100, 11), int64(len(model)))
	check("completing the last block")
	write(h, pattern(50, 12), int64(len(model))-20)
	check("an overwrite across the end")
	write(h, pattern(bs, 13), int64(len(model))+3*bs)
	check("a write past the end")
	for _, size := range []int64{int64(len(model)) - bs, int64(len(model)) - bs - 7, 5 * bs, 20*bs + 1, 30 * bs} {
		if err := h.Truncate(ctx, size); err != nil {
			t.Fatal(err)
		}
		if size > int64(len(model)) {
			model = append(model, make([]byte, size-int64(len(model)))...)
		}
		model = model[:size]
		h.Close()
		check("a truncation")
		h = tv.open(t, "f", syscall.O_RDWR)
	}
	h.Close()
}

// TestCrashDuringExtensionRestoresTheOldEnd: a crash after an append
// resealed the old last block but before the appended blocks were written
// leaves an intent that puts the old block back, so the fsynced file reads
// as it was, not as EIO.
func TestCrashDuringExtensionRestoresTheOldEnd(t *testing.T) {
	const bs = 4096
	tv := newTestVolume(t, envelope.ModePerObject)
	ctx := context.Background()
	h := tv.open(t, "f", syscall.O_RDWR|syscall.O_CREAT)
	if _, err := h.WriteAt(ctx, pattern(2*bs, 1), 0); err != nil {
		t.Fatal(err)
	}
	if err := h.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	keys, err := h.fileKeys(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	h.st.content.Lock()
	if _, err := h.beginExtend(ctx, keys, 2*bs); err != nil {
		t.Fatal(err)
	}
	// "Crash": the extension never comes; read through a second volume.
	h.st.content.Unlock()
	v2, err := Open(ctx, unlocked(tv.be), Options{Keys: tv.kms, PrefetchMax: -1})
	if err != nil {
		t.Fatal(err)
	}
	h2, err := v2.OpenFile(ctx, "f", syscall.O_RDONLY, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 3*bs)
	n, err := h2.ReadAt(ctx, buf, 0)
	if !errors.Is(err, io.EOF) || !bytes.Equal(buf[:n], pattern(2*bs, 1)) {
		t.Fatalf("after a crash in an extension: %d bytes, %v; want the fsynced %d", n, err, 2*bs)
	}
	h2.Close()
	h.st.openTail = false // the crashed writer must not touch the file at cleanup
	h.Close()
}

// TestSealingTheEndKeepsTheMtime: a file written to a block boundary, whose
// times are then set on the open file (cp -p, rsync -t), keeps them when
// its end is sealed at close.
func TestSealingTheEndKeepsTheMtime(t *testing.T) {
	tv := newTestVolume(t, envelope.ModePerObject)
	ctx := context.Background()
	h := tv.open(t, "f", syscall.O_RDWR|syscall.O_CREAT)
	if _, err := h.WriteAt(ctx, pattern(2*4096, 1), 0); err != nil {
		t.Fatal(err)
	}
	if !h.st.openTail {
		t.Fatal("a write to a block boundary left the tail closed; the test needs it open")
	}
	when := time.Date(2001, 2, 3, 4, 5, 6, 7, time.UTC)
	if err := tv.Backend().Utimens(ctx, "f", nil, &when); err != nil {
		t.Fatal(err)
	}
	h.Close()
	fi, err := os.Stat(filepath.Join(tv.dir, "f"))
	if err != nil {
		t.Fatal(err)
	}
	if !fi.ModTime().Equal(when) {
		t.Fatalf("mtime %v after close, want the %v set before it", fi.ModTime(), when)
	}
	if got, err := readErr(t, tv, "f"); err != nil || !bytes.Equal(got, pattern(2*4096, 1)) {
		t.Fatalf("read back: %d bytes, %v", len(got), err)
	}
}

// TestAllocateZeroRange: fallocate FALLOC_FL_ZERO_RANGE zeroes the range,
// growing the file unless KEEP_SIZE is given, and the file's end stays
// sealed; PUNCH_HOLE is refused.
func TestAllocateZeroRange(t *testing.T) {
	const zero, keep, punch = 0x10, 0x01, 0x02
	tv := newTestVolume(t, envelope.ModePerObject)
	ctx := context.Background()
	h := tv.open(t, "f", syscall.O_RDWR|syscall.O_CREAT)
	model := pattern(3*4096+100, 5)
	if _, err := h.WriteAt(ctx, model, 0); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		off, n int64
		mode   uint32
	}{
		{100, 5000, zero},
		{int64(len(model)) - 10, 5000, zero | keep},
		{int64(len(model)) + 100, 9000, zero},
		{0, 4096, zero},
		{int64(len(model)), 4096 - int64(len(model))%4096, zero},
	} {
		if err := h.Allocate(ctx, tc.off, tc.n, tc.mode); err != nil {
			t.Fatalf("zero range %d+%d mode %#x: %v", tc.off, tc.n, tc.mode, err)
		}
		end := tc.off + tc.n
		if tc.mode&keep == 0 && end > int64(len(model)) {
			model = append(model, make([]byte, end-int64(len(model)))...)
		}
		clear(model[min(tc.off, int64(len(model))):min(end, int64(len(model)))])
		h.Close()
		if got, err := readErr(t, tv, "f"); err != nil || !bytes.Equal(got, model) {
			t.Fatalf("after zero range %d+%d mode %#x: %d bytes, %v; want %d", tc.off, tc.n, tc.mode, len(got), err, len(model))
		}
		h = tv.open(t, "f", syscall.O_RDWR)
	}
	// A version 3 file on the local backend has holes: PUNCH_HOLE works
	// (holes_test.go tests it at length); other modes are ENOTSUP.
	if err := h.Allocate(ctx, 0, 4096, punch|keep); err != nil {
		t.Errorf("punch hole: %v", err)
	}
	const collapseRange = 0x08
	if err := h.Allocate(ctx, 0, 4096, collapseRange); !errors.Is(err, syscall.EOPNOTSUPP) {
		t.Errorf("collapse range: %v, want EOPNOTSUPP", err)
	}
	h.Close()
	clear(model[:min(4096, len(model))])
	if got, err := readErr(t, tv, "f"); err != nil || !bytes.Equal(got, model) {
		t.Fatalf("after punch hole: %d bytes, %v", len(got), err)
	}
}
