package volume

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/kmsfs/kmsfs/envelope"
)

// backingUse is the space the backing file of name takes on disk.
func (tv *testVol) backingUse(t testing.TB, name string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(tv.dir, name), &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// zeroBlock overwrites stored block i of name with zeros behind the
// volume's back, as an attacker with the backing store could.
func (tv *testVol) zeroBlock(t testing.TB, name string, i uint64) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(tv.dir, name), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	l := tv.layout
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	n := min(l.SealedBlockSize(), fi.Size()-l.BlockOffset(i))
	if _, err := f.WriteAt(make([]byte, n), l.BlockOffset(i)); err != nil {
		t.Fatal(err)
	}
}

func readAtErr(h *Handle, off int64, n int) ([]byte, error) {
	buf := make([]byte, n)
	got, err := h.ReadAt(context.Background(), buf, off)
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return buf[:got], err
}

// TestSparseGrowthCostsNoSpace: truncate up and a write far past the end
// of a version 3 file leave holes: a 10 GiB file takes a few blocks of
// backing store and reads zeros in its holes.
func TestSparseGrowthCostsNoSpace(t *testing.T) {
	const size = 10 << 30
	for _, how := range []string{"truncate", "write"} {
		t.Run(how, func(t *testing.T) {
			tv := newTestVolume(t, envelope.ModePerObject)
			ctx := context.Background()
			h := tv.open(t, "f", syscall.O_RDWR|syscall.O_CREAT)
			if _, err := h.WriteAt(ctx, []byte("head"), 0); err != nil {
				t.Fatal(err)
			}
			tail := pattern(4096, 3)
			switch how {
			case "truncate":
				if err := h.Truncate(ctx, size); err != nil {
					t.Fatal(err)
				}
				tail = make([]byte, 4096)
			case "write":
				if _, err := h.WriteAt(ctx, tail, size-4096); err != nil {
					t.Fatal(err)
				}
			}
			if err := h.Close(); err != nil {
				t.Fatal(err)
			}
			if use := tv.backingUse(t, "f"); use >= 1<<20 {
				t.Errorf("a %d-byte sparse file takes %d bytes of backing store", size, use)
			}
			tv = tv.reopen(t)
			h = tv.open(t, "f", syscall.O_RDONLY)
			defer h.Close()
			if got, _ := h.Size(); got != size {
				t.Fatalf("size %d, want %d", got, size)
			}
			for _, off := range []int64{4, 4096, 1 << 20, 5 << 30, size - 3*8192} {
				got, err := readAtErr(h, off, 8192)
				if err != nil || !bytes.Equal(got, make([]byte, 8192)) {
					t.Fatalf("hole at %d: %v (%d bytes)", off, err, len(got))
				}
			}
			got, err := readAtErr(h, 0, 4)
			if err != nil || string(got) != "head" {
				t.Fatalf("head: %q, %v", got, err)
			}
			got, err = readAtErr(h, size-4096, 4096)
			if err != nil || !bytes.Equal(got, tail) {
				t.Fatalf("tail: %v", err)
			}
		})
	}
}

// TestZeroedBlockIsEIO: a stored block zeroed in the backing file reads as
// an authentication error, as do the blocks (holes or not) it leaves
// unvouched, whether it is in the middle, before a hole, or the last one.
func TestZeroedBlockIsEIO(t *testing.T) {
	const bs = envelope.DefaultBlockSize
	// Blocks 0..9 data, 10..29 holes, 30..34 data.
	build := func(t *testing.T) (*testVol, *Handle) {
		tv := newTestVolume(t, envelope.ModePerObject)
		ctx := context.Background()
		h := tv.open(t, "f", syscall.O_RDWR|syscall.O_CREAT)
		if _, err := h.WriteAt(ctx, pattern(10*bs, 1), 0); err != nil {
			t.Fatal(err)
		}
		// A write past the end leaves a gap, closed as holes at close.
		if _, err := h.WriteAt(ctx, pattern(5*bs, 2), 30*bs); err != nil {
			t.Fatal(err)
		}
		if err := h.Close(); err != nil {
			t.Fatal(err)
		}
		tv = tv.reopen(t)
		return tv, tv.open(t, "f", syscall.O_RDONLY)
	}
	tv, h := build(t)
	got, err := readAtErr(h, 0, 35*bs)
	want := append(append(pattern(10*bs, 1), make([]byte, 20*bs)...), pattern(5*bs, 2)...)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("untouched file: %v", err)
	}
	h.Close()
	_ = tv
	for _, tc := range []struct {
		zero    []uint64
		bad     []int64 // block numbers that must fail
		good    []int64 // block numbers that must read
		comment string
	}{
		{[]uint64{3}, []int64{3, 4}, []int64{2, 5, 15, 31}, "a middle block"},
		{[]uint64{3, 4}, []int64{3, 4, 5}, []int64{2, 6}, "two adjacent blocks"},
		{[]uint64{9}, []int64{9, 10, 29, 30}, []int64{8, 31}, "the block before the holes"},
		{[]uint64{30}, []int64{30, 31, 10, 29}, []int64{9, 32}, "the block after the holes"},
		{[]uint64{34}, []int64{34}, []int64{0, 33}, "the last block"},
		{[]uint64{31, 32, 33, 34}, []int64{31, 34}, []int64{30}, "the file's last blocks"},
	} {
		t.Run(tc.comment, func(t *testing.T) {
			tv, h := build(t)
			defer h.Close()
			for _, b := range tc.zero {
				tv.zeroBlock(t, "f", b)
			}
			for _, b := range tc.bad {
				if _, err := readAtErr(h, b*bs, bs); !errors.Is(err, envelope.ErrBlockAuth) {
					t.Errorf("block %d: err = %v, want ErrBlockAuth", b, err)
				}
			}
			for _, b := range tc.good {
				if got, err := readAtErr(h, b*bs, bs); err != nil || !bytes.Equal(got, want[b*bs:(b+1)*bs]) {
					t.Errorf("block %d: %v", b, err)
				}
			}
		})
	}
}

// TestHolesAgainstModel writes, truncates and punches a version 3 file at
// random, with large jumps past the end that leave holes, and compares it
// with a plain byte slice after each step and after a reopen.
func TestHolesAgainstModel(t *testing.T) {
	const bs = envelope.DefaultBlockSize
	tv := newTestVolume(t, envelope.ModePerObject)
	ctx := context.Background()
	rng := rand.New(rand.NewSource(7))
	h := tv.open(t, "f", syscall.O_RDWR|syscall.O_CREAT)
	var model []byte
	check := func(op int, what string) {
		t.Helper()
		got, err := readAtErr(h, 0, len(model)+10)
		if err != nil || !bytes.Equal(got, model) {
			t.Fatalf("op %d (%s): read %d bytes, %v; model %d bytes", op, what, len(got), err, len(model))
		}
	}
	for op := 0; op < 300; op++ {
		switch r := rng.Intn(10); {
		case r < 5:
			// A write anywhere up to well past the end (> maxDeferredGap
			// now and then, which leaves a hole at once).
			limit := len(model) + 3*bs
			if rng.Intn(8) == 0 {
				limit = len(model) + maxDeferredGap + 40*bs
			}
			off := rng.Intn(limit + 1)
			p := pattern(1+rng.Intn(3*bs), byte(op))
			if _, err := h.WriteAt(ctx, p, int64(off)); err != nil {
				t.Fatalf("op %d: write %d@%d: %v", op, len(p), off, err)
			}
			if need := off + len(p); need > len(model) {
				model = append(model, make([]byte, need-len(model))...)
			}
			copy(model[off:], p)
			check(op, "write")
		case r < 7:
			n := rng.Intn(len(model) + 50*bs + 1)
			if err := h.Truncate(ctx, int64(n)); err != nil {
				t.Fatalf("op %d: truncate %d: %v", op, n, err)
			}
			if n > len(model) {
				model = append(model, make([]byte, n-len(model))...)
			}
			model = model[:n]
			check(op, "truncate")
		case r < 9:
			if len(model) == 0 {
				continue
			}
			off := rng.Intn(len(model))
			n := 1 + rng.Intn(min(len(model)-off, 20*bs))
			if err := h.Allocate(ctx, int64(off), int64(n), fallocPunchHole|fallocKeepSize); err != nil {
				t.Fatalf("op %d: punch %d@%d: %v", op, n, off, err)
			}
			clear(model[off : off+n])
			check(op, "punch")
		default:
			if err := h.Close(); err != nil {
				t.Fatal(err)
			}
			tv = tv.reopen(t)
			h = tv.open(t, "f", syscall.O_RDWR)
			check(op, "reopen")
		}
	}
	h.Close()
}

// TestSeekDataHole: SEEK_DATA and SEEK_HOLE report a version 3 file's holes
// in plaintext offsets, the end of the file as a hole, ENXIO past it.
func TestSeekDataHole(t *testing.T) {
	const bs = envelope.DefaultBlockSize
	tv := newTestVolume(t, envelope.ModePerObject)
	ctx := context.Background()
	h := tv.open(t, "f", syscall.O_RDWR|syscall.O_CREAT)
	defer h.Close()
	// Data in blocks 0..1, holes 2..99 (a gap), data 100, holes 101..999
	// (truncate), the last block 1000 stored.
	if _, err := h.WriteAt(ctx, pattern(2*bs, 1), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := h.WriteAt(ctx, pattern(bs, 2), 100*bs); err != nil {
		t.Fatal(err)
	}
	if err := h.Truncate(ctx, 1000*bs+10); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		off    int64
		whence int
		want   int64
	}{
		{0, SeekData, 0}, {0, SeekHole, 2 * bs}, {bs + 5, SeekHole, 2 * bs},
		{2 * bs, SeekData, 100 * bs}, {3*bs + 7, SeekHole, 3*bs + 7}, {100*bs + 1, SeekData, 100*bs + 1},
		{100 * bs, SeekHole, 101 * bs}, {101 * bs, SeekData, 1000 * bs}, {1000 * bs, SeekHole, 1000*bs + 10},
	} {
		got, err := h.Seek(ctx, tc.off, tc.whence)
		if err != nil || got != tc.want {
			t.Errorf("seek %d whence %d: %d, %v; want %d", tc.off, tc.whence, got, err, tc.want)
		}
	}
	for _, whence := range []int{SeekData, SeekHole} {
		if _, err := h.Seek(ctx, 1000*bs+10, whence); !errors.Is(err, syscall.ENXIO) {
			t.Errorf("whence %d at the end: %v, want ENXIO", whence, err)
		}
	}
}

// FuzzReadHoles edits the stored bytes of a version 3 file with holes (one
// block zeroed, or one byte changed, anywhere after the header) and reads
// it: a read either fails authentication or returns the plaintext written,
// and a file whose stored bytes changed never reads whole.
func FuzzReadHoles(f *testing.F) {
	// The smallest blocks: the most blocks (and holes) per byte decrypted.
	const bs = envelope.MinBlockSize
	tv := newTestVolumeInit(f, InitOptions{Mode: envelope.ModePerObject, BlockSize: bs}, Options{PrefetchMax: -1})
	ctx := context.Background()
	h := tv.open(f, "f", syscall.O_RDWR|syscall.O_CREAT)
	// Blocks 0..3 data, 4..9 holes (a gap closed at close), 10 and the
	// short last block 11 data.
	want := append(append(pattern(4*bs, 1), make([]byte, 6*bs)...), pattern(bs+100, 2)...)
	if _, err := h.WriteAt(ctx, want[:4*bs], 0); err != nil {
		f.Fatal(err)
	}
	if _, err := h.WriteAt(ctx, want[10*bs:], 10*bs); err != nil {
		f.Fatal(err)
	}
	if err := h.Close(); err != nil {
		f.Fatal(err)
	}
	backing := filepath.Join(tv.dir, "f")
	genuine, err := os.ReadFile(backing)
	if err != nil {
		f.Fatal(err)
	}
	// One handle and one descriptor for all inputs: each input patches the
	// stored bytes in place and puts them back after.
	bf, err := os.OpenFile(backing, os.O_RDWR, 0)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { bf.Close() })
	h, err = tv.OpenFile(ctx, "f", syscall.O_RDONLY, 0, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { h.Close() })
	f.Add(uint8(3), true, uint32(0), uint8(0), int64(0))
	f.Add(uint8(5), false, uint32(6*(bs+envelope.BlockOverhead)+7), uint8(1), int64(5*bs))
	f.Add(uint8(11), true, uint32(0), uint8(0), int64(11*bs))
	f.Add(uint8(9), false, uint32(0), uint8(0), int64(9*bs-10))
	f.Fuzz(func(t *testing.T, block uint8, zero bool, at uint32, xor uint8, off int64) {
		l := tv.layout
		var lo, hi int64 // the stored range the input changes
		if zero {
			i := uint64(block) % 12
			lo, hi = l.BlockOffset(i), min(l.BlockOffset(i+1), int64(len(genuine)))
		} else {
			lo = l.HeaderSize + int64(at)%(int64(len(genuine))-l.HeaderSize)
			hi = lo + 1
		}
		patch := bytes.Clone(genuine[lo:hi])
		if zero {
			clear(patch)
		} else {
			patch[0] ^= xor
		}
		changed := !bytes.Equal(patch, genuine[lo:hi])
		if _, err := bf.WriteAt(patch, lo); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if _, err := bf.WriteAt(genuine[lo:hi], lo); err != nil {
				t.Fatal(err)
			}
		}()
		off = max(0, off%int64(len(want)))
		for k, r := range [][2]int64{{0, int64(len(want))}, {off, min(3*bs, int64(len(want))-off)}} {
			got, err := readAtErr(h, r[0], int(r[1]))
			if err != nil {
				if !errors.Is(err, envelope.ErrBlockAuth) && !errors.Is(err, envelope.ErrCorrupt) {
					t.Fatalf("read %d@%d: %v, want an authentication error", r[1], r[0], err)
				}
				continue
			}
			if !bytes.Equal(got, want[r[0]:r[0]+r[1]]) {
				t.Fatalf("read %d@%d returned other data", r[1], r[0])
			}
			if k == 0 && changed {
				t.Fatal("a changed stored file read whole without an error")
			}
		}
	})
}

// TestHoleFillReplaysAfterCrash: a write into a hole changes two ranges of
// the stored file (the block written, and the next stored block resealed to
// name it), recorded as one KMI2 intent. When the writes never happen (the
// process dies after recording it), the next open replays both, and the
// file reads with the write: never with one range changed and not the
// other.
func TestHoleFillReplaysAfterCrash(t *testing.T) {
	const bs = envelope.DefaultBlockSize
	tv := newTestVolume(t, envelope.ModePerObject)
	ctx := context.Background()
	h := tv.open(t, "f", syscall.O_RDWR|syscall.O_CREAT)
	if _, err := h.WriteAt(ctx, pattern(2*bs, 1), 0); err != nil {
		t.Fatal(err)
	}
	if err := h.Truncate(ctx, 100*bs); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	h = tv.open(t, "f", syscall.O_RDWR)
	inner := h.f
	h.f = failingWrites{inner}
	if _, err := h.WriteAt(ctx, pattern(bs, 2), 50*bs); err == nil {
		t.Fatal("a write through a failing backend file succeeded")
	}
	h.f = inner
	h.Close()
	tv = tv.reopen(t)
	h = tv.open(t, "f", syscall.O_RDONLY)
	defer h.Close()
	want := append(pattern(2*bs, 1), make([]byte, 98*bs)...)
	copy(want[50*bs:], pattern(bs, 2))
	got, err := readAtErr(h, 0, len(want))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("after replay: %v (%d bytes)", err, len(got))
	}
}

// TestIntentRangesRoundTrip: a KMI2 record parses back to its ranges, and a
// torn one is refused.
func TestIntentRangesRoundTrip(t *testing.T) {
	in := &intent{fileID: [envelope.IDLen]byte{1, 2, 3}, truncateTo: -1, more: []intentRange{
		{off: 1024, data: []byte("sealed block")}, {off: 5148, holeLen: 4124 * 3}, {off: 99, data: []byte{0}},
	}}
	rec := in.marshal()
	out, err := parseIntent(rec)
	if err != nil {
		t.Fatal(err)
	}
	if out.fileID != in.fileID || out.truncateTo != -1 || len(out.ranges()) != 3 ||
		string(out.more[0].data) != "sealed block" || out.more[1].data != nil || out.more[1].holeLen != 4124*3 || out.more[2].off != 99 {
		t.Fatalf("round trip: %+v", out)
	}
	if _, err := parseIntent(rec[:len(rec)-1]); err == nil {
		t.Fatal("a torn KMI2 record parsed")
	}
}

// TestAllocateModeZeroAllocates: fallocate(2) mode 0 promises that writes
// into the range will not fail for lack of space, so it grows a version 3
// file with encrypted zeros, where truncate leaves holes.
func TestAllocateModeZeroAllocates(t *testing.T) {
	tv := newTestVolume(t, envelope.ModePerObject)
	ctx := context.Background()
	for _, name := range []string{"allocated", "truncated"} {
		h := tv.open(t, name, syscall.O_RDWR|syscall.O_CREAT)
		if _, err := h.WriteAt(ctx, []byte("x"), 0); err != nil {
			t.Fatal(err)
		}
		var err error
		if name == "allocated" {
			err = h.Allocate(ctx, 0, 8<<20, 0)
		} else {
			err = h.Truncate(ctx, 8<<20)
		}
		if err != nil {
			t.Fatal(err)
		}
		if got, err := readAtErr(h, 4<<20, 4096); err != nil || !bytes.Equal(got, make([]byte, 4096)) {
			t.Fatalf("%s: %v", name, err)
		}
		h.Close()
	}
	if a, tr := tv.backingUse(t, "allocated"), tv.backingUse(t, "truncated"); a < 8<<20 || tr >= 1<<20 {
		t.Errorf("backing use: allocated %d bytes, want >= 8 MiB; truncated %d, want < 1 MiB", a, tr)
	}
}
