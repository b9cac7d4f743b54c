package volume

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/kmsfs/kmsfs/backend"
	"github.com/kmsfs/kmsfs/envelope"
)

// compressibleText is seeded text that zstd shrinks severalfold.
func compressibleText(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, 1))
	words := []string{"volume ", "block ", "unit ", "header ", "key ", "file ", "read ", "write ", "\n"}
	var b bytes.Buffer
	for b.Len() < n {
		fmt.Fprintf(&b, "%d ", rng.IntN(1000))
		b.WriteString(words[rng.IntN(len(words))])
	}
	return b.Bytes()[:n]
}

func newCompressedVolume(t testing.TB) *testVol {
	t.Helper()
	return newTestVolumeInit(t, InitOptions{Mode: envelope.ModePerObject, Compress: "zstd:3"}, Options{PrefetchMax: -1})
}

func storedVersion(t testing.TB, tv *testVol, name string) byte {
	t.Helper()
	tv.outq.wait()
	b := make([]byte, 5)
	f, err := os.Open(filepath.Join(tv.dir, name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b[4]
}

func readAllCtx(t testing.TB, h *Handle) []byte {
	t.Helper()
	size, err := h.Size()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, size)
	n, err := h.ReadAt(context.Background(), buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("read %s: %v", h.Name(), err)
	}
	return buf[:n]
}

// TestCompressStaged: a new file is held in memory while it is written (in
// any order), reads and sizes come from memory, and the close writes it
// out compressed, with the stored size of the block layout.
func TestCompressStaged(t *testing.T) {
	ctx := context.Background()
	tv := newCompressedVolume(t)
	want := compressibleText(1, 200000)
	h := tv.open(t, "f", syscall.O_RDWR|syscall.O_CREAT)
	// Second half first: the stage is a plain buffer.
	if _, err := h.WriteAt(ctx, want[100000:], 100000); err != nil {
		t.Fatal(err)
	}
	if _, err := h.WriteAt(ctx, want[:100000], 0); err != nil {
		t.Fatal(err)
	}
	if got := readAllCtx(t, h); !bytes.Equal(got, want) {
		t.Fatalf("read before close: %d bytes differ", len(got))
	}
	if n, ok := tv.StagedSize(h.st.ino); !ok || n != int64(len(want)) {
		t.Fatalf("StagedSize = %d, %v; want %d", n, ok, len(want))
	}
	if fi, err := os.Stat(filepath.Join(tv.dir, "f")); err != nil || fi.Size() != 0 {
		t.Fatalf("stored file before close: %v, %v; want empty", fi.Size(), err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if v := storedVersion(t, tv, "f"); v != envelope.Version4 {
		t.Fatalf("stored as version %d, want 4", v)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(tv.dir, "f"), &st); err != nil {
		t.Fatal(err)
	}
	if want := tv.layout.CipherSize(int64(len(want)), true); st.Size != want {
		t.Fatalf("stored size %d, want the block layout's %d", st.Size, want)
	}
	if st.Blocks*512 > int64(len(want))/2 {
		t.Errorf("compressed file takes %d bytes of disk, more than half of its %d", st.Blocks*512, len(want))
	}
	tv.outq.wait()
	fresh := tv.reopen(t)
	h = fresh.open(t, "f", syscall.O_RDONLY)
	defer h.Close()
	if got := readAllCtx(t, h); !bytes.Equal(got, want) {
		t.Fatalf("read after reopen: %d bytes, first difference at %d", len(got), firstDiff(got, want))
	}
	// A random read decompresses the units it touches only.
	for i := 0; i < 50; i++ {
		off := rand.IntN(len(want))
		buf := make([]byte, rand.IntN(100000)+1)
		n, err := h.ReadAt(ctx, buf, int64(off))
		if err != nil && !errors.Is(err, io.EOF) {
			t.Fatal(err)
		}
		if !bytes.Equal(buf[:n], want[off:off+n]) {
			t.Fatalf("read %d at %d differs", len(buf), off)
		}
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestCompressOutgrowsStage: a file written past 4 MiB is written out in
// the block layout and goes on as any file.
func TestCompressOutgrowsStage(t *testing.T) {
	ctx := context.Background()
	tv := newCompressedVolume(t)
	want := compressibleText(2, stageMax+300000)
	h := tv.open(t, "big", syscall.O_RDWR|syscall.O_CREAT)
	for off := 0; off < len(want); off += 128 << 10 {
		if _, err := h.WriteAt(ctx, want[off:min(off+128<<10, len(want))], int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if v := storedVersion(t, tv, "big"); v != envelope.CurrentVersion {
		t.Fatalf("stored as version %d, want %d", v, envelope.CurrentVersion)
	}
	tv.outq.wait()
	h = tv.reopen(t).open(t, "big", syscall.O_RDONLY)
	defer h.Close()
	if got := readAllCtx(t, h); !bytes.Equal(got, want) {
		t.Fatalf("%d bytes, first difference at %d", len(got), firstDiff(got, want))
	}
}

// TestCompressIncompressible: random data is stored in units kept as is,
// no larger than its block layout.
func TestCompressIncompressible(t *testing.T) {
	ctx := context.Background()
	tv := newCompressedVolume(t)
	want := make([]byte, 1<<20)
	for i := range want {
		want[i] = byte(rand.Uint32())
	}
	h := tv.open(t, "r", syscall.O_RDWR|syscall.O_CREAT)
	if _, err := h.WriteAt(ctx, want, 0); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	tv.outq.wait()
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(tv.dir, "r"), &st); err != nil {
		t.Fatal(err)
	}
	if limit := tv.layout.CipherSize(int64(len(want)), true) * 1005 / 1000; st.Blocks*512 > limit {
		t.Errorf("random MiB takes %d bytes of disk, more than %d", st.Blocks*512, limit)
	}
	h = tv.reopen(t).open(t, "r", syscall.O_RDONLY)
	defer h.Close()
	if got := readAllCtx(t, h); !bytes.Equal(got, want) {
		t.Fatal("random data reads back different")
	}
}

// TestCompressChangedInPlace: writes, an append and truncations of a
// compressed file rewrite it whole, compressed; truncation to 0 starts a
// new key; fallocate converts it to the block layout.
func TestCompressChangedInPlace(t *testing.T) {
	ctx := context.Background()
	tv := newCompressedVolume(t)
	want := compressibleText(3, 150000)
	h := tv.open(t, "f", syscall.O_RDWR|syscall.O_CREAT)
	if _, err := h.WriteAt(ctx, want, 0); err != nil {
		t.Fatal(err)
	}
	if err := h.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if v := storedVersion(t, tv, "f"); v != envelope.Version4 {
		t.Fatalf("after fsync: version %d, want 4", v)
	}
	h.Close()
	tv.outq.wait()
	tv1 := tv.reopen(t)
	h = tv1.open(t, "f", syscall.O_RDWR|syscall.O_APPEND)
	more := compressibleText(4, 3000)
	if _, err := h.WriteAt(ctx, more, 0); err != nil { // O_APPEND: at the end
		t.Fatal(err)
	}
	want = append(want, more...)
	if err := h.Truncate(ctx, 100001); err != nil {
		t.Fatal(err)
	}
	want = want[:100001]
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	tv1.outq.wait()
	tv2 := tv.reopen(t)
	h = tv2.open(t, "f", syscall.O_RDWR)
	if got := readAllCtx(t, h); !bytes.Equal(got, want) {
		t.Fatalf("after append and truncate: %d bytes, first difference at %d", len(got), firstDiff(got, want))
	}
	if v := storedVersion(t, tv2, "f"); v != envelope.Version4 {
		t.Fatalf("rewritten: version %d, want 4", v)
	}
	oldID := h.st.keys.FileID()
	if err := h.Allocate(ctx, 0, 200000, 0); err != nil {
		t.Fatal(err)
	}
	want = append(want, make([]byte, 200000-len(want))...)
	if got := readAllCtx(t, h); !bytes.Equal(got, want) {
		t.Fatalf("after fallocate: first difference at %d", firstDiff(got, want))
	}
	if v := storedVersion(t, tv2, "f"); v != envelope.CurrentVersion {
		t.Fatalf("after fallocate: version %d, want %d", v, envelope.CurrentVersion)
	}
	if h.st.keys.FileID() != oldID {
		t.Fatal("converting to the block layout changed the file ID")
	}
	if err := h.Truncate(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := h.WriteAt(ctx, []byte("new"), 0); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	tv2.outq.wait()
	h = tv2.reopen(t).open(t, "f", syscall.O_RDONLY)
	defer h.Close()
	if got := readAllCtx(t, h); string(got) != "new" {
		t.Fatalf("after truncate to 0 and write: %q", got)
	}
	if h.st.keys.FileID() == oldID {
		t.Fatal("truncation to 0 kept the file ID")
	}
}

// tornBackend fails every WriteAt of its files after failAfter bytes have
// been written through them, as a crash in the middle of a rewrite would
// leave the stored file.
type tornBackend struct {
	backend.Backend
	backend.Intents
	budget *int64
}

type tornFile struct {
	backend.File
	budget *int64
}

func (b tornBackend) Open(ctx context.Context, name string, flags int, mode uint32, owner *backend.Owner) (backend.File, error) {
	f, err := b.Backend.Open(ctx, name, flags, mode, owner)
	if err != nil {
		return nil, err
	}
	return tornFile{f, b.budget}, nil
}

func (f tornFile) WriteAt(p []byte, off int64) (int, error) {
	if *f.budget <= 0 {
		return 0, syscall.EIO
	}
	if int64(len(p)) > *f.budget {
		n, _ := f.File.WriteAt(p[:*f.budget], off)
		*f.budget = 0
		return n, syscall.EIO
	}
	*f.budget -= int64(len(p))
	return f.File.WriteAt(p, off)
}

func (f tornFile) PunchHole(off, n int64) error {
	return f.File.(backend.SparseFile).PunchHole(off, n)
}
func (f tornFile) SeekData(off int64) (int64, error) {
	return f.File.(backend.SparseFile).SeekData(off)
}
func (f tornFile) SeekHole(off int64) (int64, error) {
	return f.File.(backend.SparseFile).SeekHole(off)
}

// TestCompressTornRewrite: a rewrite of a compressed file that stops half
// way (the process died) is completed from its intent when the file is
// next opened: it reads as the new content, never as a mix.
func TestCompressTornRewrite(t *testing.T) {
	ctx := context.Background()
	tv := newCompressedVolume(t)
	old := compressibleText(5, 300000)
	h := tv.open(t, "f", syscall.O_RDWR|syscall.O_CREAT)
	if _, err := h.WriteAt(ctx, old, 0); err != nil {
		t.Fatal(err)
	}
	h.Close()
	tv.outq.wait()

	budget := int64(1 << 40)
	be := tv.reopen(t).be
	v, err := Open(ctx, tornBackend{Backend: be, Intents: be.(backend.Intents), budget: &budget}, Options{Keys: tv.ks, PrefetchMax: -1})
	if err != nil {
		t.Fatal(err)
	}
	h, err = v.OpenFile(ctx, "f", syscall.O_RDWR, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(old)
	copy(want[1000:], "CHANGED")
	if _, err := h.WriteAt(ctx, []byte("CHANGED"), 1000); err != nil {
		t.Fatal(err)
	}
	budget = 5000 // the intent record goes through Intents; the file write is cut
	if err := h.Sync(ctx); err == nil {
		t.Fatal("a torn rewrite reported success")
	}
	h.st.content.Lock()
	h.st.setStage(nil) // the process is gone: nothing of its memory survives
	h.st.content.Unlock()

	fresh := tv.reopen(t)
	h2 := fresh.open(t, "f", syscall.O_RDONLY)
	defer h2.Close()
	if got := readAllCtx(t, h2); !bytes.Equal(got, want) {
		t.Fatalf("after the torn rewrite: %d bytes, first difference at %d (old content: %v)", len(got), firstDiff(got, want), bytes.Equal(got, old))
	}
}
