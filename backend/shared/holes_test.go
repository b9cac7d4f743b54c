package shared

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/backend"
)

// holeChunk is the chunk size of the hole tests: 16 pages, so that the
// staging file's holes (whole pages) can cover whole chunks.
const holeChunk = 64 << 10

// pattern is n bytes that are not zero.
func pattern(n int, salt byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i%251) + salt | 1
	}
	return p
}

func sparseFile(t *testing.T, f backend.File) backend.SparseFile {
	t.Helper()
	sf, ok := f.(backend.SparseFile)
	if !ok {
		t.Fatal("a shared volume's file is not a backend.SparseFile")
	}
	return sf
}

func readAt(t *testing.T, f backend.File, off int64, n int) []byte {
	t.Helper()
	p := make([]byte, n)
	if got, err := f.ReadAt(p, off); err != nil && !(errors.Is(err, io.EOF) && got == n) {
		t.Fatalf("read %d at %d: %d, %v", n, off, got, err)
	}
	return p
}

// A file grown by truncate and written at its end: the chunks in between
// (as many as a 10 GiB gap makes of 4 MiB chunks) hold no data and are not
// uploaded, the chunk of the first bytes and the last one are stored from
// their first data to their last, and another process reads zeros between.
func TestCommitDropsHoleChunks(t *testing.T) {
	e, a := newEnvChunks(t, holeChunk)
	ctx := context.Background()
	const size = 3000 * holeChunk
	head, tail := pattern(100, 1), pattern(10, 2)
	f, err := a.Open(ctx, "f", syscall.O_RDWR|syscall.O_CREAT|syscall.O_EXCL, 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	write(t, f, head, 0)
	if err := f.Truncate(size / 2); err != nil {
		t.Fatal(err)
	}
	write(t, f, tail, size-10)
	start := time.Now()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("commit of %d chunks, 2 with data: %v", size/holeChunk, time.Since(start))
	objs := e.objects()
	if len(objs) != 2 {
		t.Fatalf("%d chunk objects for 2 chunks with data among %d", len(objs), size/holeChunk)
	}
	for k, obj := range objs {
		h, _, body, err := ParseChunk(obj)
		if err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		switch h.Index {
		case 0:
			// Cut after its data: the rest of its range is a hole.
			if h.Offset != 0 || h.Length >= holeChunk || h.Flags&ChunkTrimmed == 0 || !bytes.Equal(body[:100], head) || chunkSkip(k) != 0 {
				t.Errorf("%s: chunk 0 is %+v", k, h)
			}
		case size/holeChunk - 1:
			// Stored from its first data: the holes before are left out,
			// as its key says.
			if h.Offset+h.Length != size || h.Length >= holeChunk || h.Flags&ChunkTrimmed != 0 || h.Offset-chunkSkip(k) != h.Index*holeChunk || !bytes.HasSuffix(body, tail) {
				t.Errorf("%s: last chunk is %+v, skip %d", k, h, chunkSkip(k))
			}
		default:
			t.Errorf("%s: chunk %d of the hole was stored", k, h.Index)
		}
	}
	_, chunks, err := a.store.File(ctx, lookupIno(t, a, "f"))
	if err != nil || len(chunks) != 2 {
		t.Fatalf("%d chunk rows, %v; want 2", len(chunks), err)
	}
	// Where the data is, and zeros around and across chunk boundaries.
	want := map[int64][]byte{0: append(bytes.Clone(head), make([]byte, holeChunk)...), size - 4096: append(make([]byte, 4086), tail...)}
	for _, off := range []int64{holeChunk - 100, 1500*holeChunk - 50, size - holeChunk - 10} {
		want[off] = make([]byte, 200)
	}
	expect := func(what string, b *Backend) {
		t.Helper()
		r, err := b.Open(ctx, "f", syscall.O_RDONLY, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		for off, w := range want {
			if got := readAt(t, r, off, len(w)); !bytes.Equal(got, w) {
				t.Errorf("%s: %d bytes at %d are not the data and zeros", what, len(w), off)
			}
		}
	}
	expect("another process", e.open())
	// A write into the last chunk, whose object leaves out its start:
	// the start stays out (staged as a hole, not as fetched zeros).
	g, err := a.Open(ctx, "f", syscall.O_RDWR, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	write(t, g, []byte("x"), size-1)
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	want[size-4096][4095] = 'x'
	_, chunks, _ = a.store.File(ctx, lookupIno(t, a, "f"))
	for _, c := range chunks {
		if c.Index == size/holeChunk-1 && chunkSkip(c.Key) == 0 {
			t.Errorf("the rewritten last chunk stores the zeros before its data: %+v", c)
		}
	}
	expect("after a rewrite of the last chunk", e.open())
}

// PunchHole on committed chunks: the range reads as zeros at once; at the
// commit the chunk it covers whole loses its row (its object is garbage)
// and the chunks it cuts into are stored again.
func TestPunchHoleCommitted(t *testing.T) {
	e, a := newEnvChunks(t, holeChunk)
	ctx := context.Background()
	want := pattern(5*holeChunk, 3)
	f, err := a.Open(ctx, "f", syscall.O_RDWR|syscall.O_CREAT|syscall.O_EXCL, 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	write(t, f, want, 0)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	ino := lookupIno(t, a, "f")
	_, before, err := a.store.File(ctx, ino)
	if err != nil || len(before) != 5 {
		t.Fatalf("%d chunks, %v", len(before), err)
	}
	f, err = a.Open(ctx, "f", syscall.O_RDWR, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	f.Stat(&st)
	mtime := st.Mtim
	time.Sleep(10 * time.Millisecond)
	// Chunk 1 from byte 100 on, chunk 2 whole, chunk 3's first 100 bytes.
	off, n := int64(holeChunk+100), int64(2*holeChunk)
	if err := sparseFile(t, f).PunchHole(off, n); err != nil {
		t.Fatal(err)
	}
	clear(want[off : off+n])
	if got := readAt(t, f, 0, len(want)); !bytes.Equal(got, want) {
		t.Fatal("the punched range does not read as zeros before the commit")
	}
	f.Stat(&st)
	if st.Mtim == mtime {
		t.Error("a punched hole left the modification time")
	}
	if h, err := sparseFile(t, f).SeekHole(0); err != nil || h < off || h > 2*holeChunk {
		t.Errorf("SeekHole(0) = %d, %v; want in [%d, %d]", h, err, off, 2*holeChunk)
	}
	if err := sparseFile(t, f).PunchHole(int64(len(want)), 10); err != nil {
		t.Errorf("a punch past the end: %v, want none (fallocate(2) KEEP_SIZE)", err)
	}
	if err := sparseFile(t, f).PunchHole(-1, 10); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("a punch at -1: %v, want EINVAL", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	_, after, err := a.store.File(ctx, ino)
	if err != nil {
		t.Fatal(err)
	}
	idx := map[int64]string{}
	for _, c := range after {
		idx[c.Index] = c.Key
	}
	if _, ok := idx[2]; ok || len(after) != 4 {
		t.Fatalf("chunks after the punch: %+v; want 0, 1, 3, 4", after)
	}
	if idx[0] != before[0].Key || idx[4] != before[4].Key || idx[1] == before[1].Key || idx[3] == before[3].Key {
		t.Errorf("chunks after the punch: %+v, before %+v: want 1 and 3 stored again, 0 and 4 kept", after, before)
	}
	gb, err := a.store.Garbage(ctx, time.Now().Add(time.Hour), 100)
	if err != nil {
		t.Fatal(err)
	}
	garbage := map[string]bool{}
	for _, g := range gb {
		garbage[g.Key] = true
	}
	if len(garbage) != 3 || !garbage[before[1].Key] || !garbage[before[2].Key] || !garbage[before[3].Key] {
		t.Errorf("garbage %v; want the old chunks 1, 2 and 3", garbage)
	}
	if got := readAll(t, e.open(), "f"); !bytes.Equal(got, want) {
		t.Fatal("another process does not read zeros in the punched range")
	}
	if n := len(e.objects()); n != 5+2 {
		t.Errorf("%d objects; want 5 and the 2 stored again (no object for the hole)", n)
	}
}

// SEEK_DATA and SEEK_HOLE over committed chunks, chunks without a row
// (dropped holes, and the end), and staged chunks.
func TestSeekDataHole(t *testing.T) {
	e, a := newEnvChunks(t, holeChunk)
	ctx := context.Background()
	const cs = holeChunk
	f, err := a.Open(ctx, "f", syscall.O_RDWR|syscall.O_CREAT|syscall.O_EXCL, 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Data: chunk 0, chunk 5; holes: 1-4, 6-9 (the size is 10 chunks).
	write(t, f, pattern(cs, 4), 0)
	if err := f.Truncate(10 * cs); err != nil {
		t.Fatal(err)
	}
	write(t, f, pattern(cs, 5), 5*cs)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	type seekCase struct {
		data bool
		off  int64
		want int64 // -1: io.EOF
	}
	check := func(what string, f backend.File, cases []seekCase) {
		t.Helper()
		sf := sparseFile(t, f)
		for _, c := range cases {
			seek, name := sf.SeekHole, "SeekHole"
			if c.data {
				seek, name = sf.SeekData, "SeekData"
			}
			got, err := seek(c.off)
			if c.want < 0 {
				if !errors.Is(err, io.EOF) {
					t.Errorf("%s: %s(%d) = %d, %v; want io.EOF", what, name, c.off, got, err)
				}
				continue
			}
			if err != nil || got != c.want {
				t.Errorf("%s: %s(%d) = %d, %v; want %d", what, name, c.off, got, err, c.want)
			}
		}
	}
	committed := []seekCase{
		{true, 0, 0}, {false, 0, cs}, {true, 100, 100}, {true, cs, 5 * cs}, {true, 3*cs + 7, 5 * cs},
		{false, cs + 1, cs + 1}, {false, 5 * cs, 6 * cs}, {true, 6 * cs, -1}, {false, 9 * cs, 9 * cs},
		{true, 10 * cs, -1}, {false, 10 * cs, -1},
	}
	// Another process, which has only the chunk rows.
	r, err := e.open().Open(ctx, "f", syscall.O_RDONLY, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	check("committed", r, committed)
	w, err := a.Open(ctx, "f", syscall.O_RDWR, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	check("committed, opened to write", w, committed)
	// Staged: data written into hole chunk 8 (the chunks before it, in
	// the tail the chunk rows left, are staged as holes), a page punched
	// at the start of chunk 5, and the file grown by 2 chunks (staged with
	// no data).
	write(t, w, []byte("x"), 8*cs+cs/2)
	if err := sparseFile(t, w).PunchHole(5*cs, 4096); err != nil {
		t.Fatal(err)
	}
	if err := w.Truncate(12 * cs); err != nil {
		t.Fatal(err)
	}
	staged := []seekCase{
		{true, 0, 0}, {false, 0, cs}, {true, cs, 5*cs + 4096}, {false, 5 * cs, 5 * cs}, {false, 5*cs + 4096, 6 * cs},
		{true, 6 * cs, 8*cs + cs/2}, {false, 8*cs + cs/2, 8*cs + cs/2 + 4096}, {true, 8*cs + cs/2 + 4096, -1},
		{false, 11 * cs, 11 * cs}, {true, 12 * cs, -1},
	}
	check("staged", w, staged)
	if err := w.(backend.Flusher).Flush(); err != nil {
		t.Fatal(err)
	}
	// Chunk 5 is stored from its second page, chunk 8 from the page of
	// its data to the end of the data (the start of the tail the file has
	// since it grew); the others grown or left are holes.
	r2, err := e.open().Open(ctx, "f", syscall.O_RDONLY, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	check("committed again", r2, []seekCase{
		{true, 0, 0}, {false, 0, cs}, {true, cs, 5*cs + 4096}, {false, 5 * cs, 5 * cs}, {false, 5*cs + 4096, 6 * cs},
		{true, 6 * cs, 8*cs + cs/2}, {false, 8*cs + cs/2, 8*cs + cs/2 + 1}, {true, 8*cs + cs/2 + 1, -1},
		{false, 11 * cs, 11 * cs}, {true, 12 * cs, -1},
	})
	_, chunks, err := a.store.File(ctx, lookupIno(t, a, "f"))
	if err != nil || len(chunks) != 3 || chunks[2].Index != 8 || chunkSkip(chunks[2].Key) != cs/2 {
		t.Errorf("chunks %+v, %v; want 0, 5 and 8 (stored from its middle)", chunks, err)
	}
}

// A chunk key names the holes its object leaves out; its header carries
// the trimmed flag.
func TestChunkSkipAndFlags(t *testing.T) {
	for key, want := range map[string]int64{"chunks/00ff": 0, "vol/chunks/00ff-4096": 4096, "p-1/chunks/00ff": 0, "chunks/00ff-x": 0} {
		if got := chunkSkip(key); got != want {
			t.Errorf("chunkSkip(%q) = %d, want %d", key, got, want)
		}
	}
	if k := newChunkKey(123); chunkSkip(k) != 123 || !strings.HasPrefix(k, ChunkDir) {
		t.Errorf("newChunkKey(123) = %q", k)
	}
	h := ChunkHeader{Ino: 1, Index: 2, Offset: 2100, Length: 5, Flags: ChunkTrimmed}
	got, _, body, err := ParseChunk(encodeChunk(h, []byte("r"), 8, []byte("abcde")))
	if err != nil || got != h || string(body) != "abcde" {
		t.Errorf("ParseChunk = %+v, %q, %v", got, body, err)
	}
}

// A store made before chunks could leave out stream bytes (schema version
// 1) stays at 1 while the files written to it store whole chunks, and is
// raised to 2 before the first chunk that leaves out its leading holes is
// committed, so that an older kmsfs refuses it from then on.
func TestSchemaRaisedBeforeChunksThatLeaveOut(t *testing.T) {
	e, _ := newEnvChunks(t, holeChunk)
	ctx := context.Background()
	e.pg.Psql("vol", "UPDATE kmsfs_volume SET schema_version = 1")
	b := e.open()
	schema := func() string {
		t.Helper()
		return strings.TrimSpace(e.pg.Psql("vol", "SELECT schema_version FROM kmsfs_volume"))
	}
	writeFile := func(name string, parts map[int64][]byte) {
		t.Helper()
		f, err := b.Open(ctx, name, syscall.O_RDWR|syscall.O_CREAT|syscall.O_EXCL, 0o644, nil)
		if err != nil {
			t.Fatal(err)
		}
		for off, p := range parts {
			write(t, f, p, off)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	writeFile("whole", map[int64][]byte{0: pattern(3*holeChunk, 1)})
	if got := schema(); got != "1" {
		t.Fatalf("schema version %s after a file of whole chunks, want 1", got)
	}
	// Chunk 2's data starts two pages into its range: its object leaves
	// them out (a key ending in "-8192").
	writeFile("holes", map[int64][]byte{0: pattern(100, 2), 2*holeChunk + 8192: pattern(100, 3)})
	if got := schema(); got != "2" {
		t.Fatalf("schema version %s after a chunk that leaves out its start, want 2", got)
	}
	skipped := false
	for k := range e.objects() {
		skipped = skipped || chunkSkip(k) == 8192
	}
	if !skipped {
		t.Fatal("no chunk object leaves out the 8,192 bytes of holes before its data")
	}
	g, err := b.Open(ctx, "holes", syscall.O_RDONLY, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if got := readAt(t, g, 2*holeChunk, 8292); !bytes.Equal(got[:8192], make([]byte, 8192)) || !bytes.Equal(got[8192:], pattern(100, 3)) {
		t.Fatal("chunk 2 does not read back as 8,192 zeros and its data")
	}
}
