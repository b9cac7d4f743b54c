package shared

import (
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"
)

// A file whose chunks have a gap below the last one is rebuilt with the
// gap read as zeros and a note; one without chunk 0 is refused; a chunk
// cut after its data does not end the stream, a partial one does.
func TestSalvageRebuildHoles(t *testing.T) {
	region := []byte("header region")
	chunk := func(idx, gen, skip, n int64, flags uint16) seen {
		key := "vol/chunks/0123"
		if skip > 0 {
			key += "-" + strconv.FormatInt(skip, 10)
		}
		return seen{h: ChunkHeader{Ino: 7, Gen: gen, Index: idx, Offset: idx*1000 + skip, Length: n, Flags: flags}, region: region, key: key}
	}
	f, why := rebuild(7, []seen{chunk(0, 2, 0, 1000, 0), chunk(1, 1, 0, 1000, 0), chunk(4, 2, 600, 400, 0)}, 64)
	if f == nil {
		t.Fatalf("refused: %s", why)
	}
	if f.size != 5000 || len(f.chunks) != 3 || len(f.holes) != 1 || f.holes[0] != [2]int64{2, 3} || f.chunks[2].offset != 4600 {
		t.Errorf("rebuilt %+v", f)
	}
	// Chunk 1 of the newest generation, cut after its data: the file goes
	// on; chunk 2 partial and not cut: the file ends there (chunk 3 is an
	// old tail).
	f, why = rebuild(7, []seen{chunk(0, 2, 0, 1000, 0), chunk(1, 2, 0, 10, ChunkTrimmed), chunk(2, 2, 0, 500, 0), chunk(3, 1, 0, 1000, 0)}, 64)
	if f == nil || f.size != 2500 || len(f.chunks) != 3 || len(f.holes) != 0 {
		t.Fatalf("rebuilt %+v, %q; want 2500 bytes, chunks 0-2", f, why)
	}
	// SEEK_DATA and SEEK_HOLE over the rebuilt stream: data 0-1010,
	// 2000-2500.
	sf := &salvageFile{f: f}
	for _, c := range []struct {
		data      bool
		off, want int64 // want -1: io.EOF
	}{
		{true, 0, 0}, {true, 1010, 2000}, {true, 2499, 2499}, {true, 2500, -1},
		{false, 0, 1010}, {false, 1500, 1500}, {false, 2000, 2500}, {false, 2500, -1},
	} {
		seek := sf.SeekHole
		if c.data {
			seek = sf.SeekData
		}
		got, err := seek(c.off)
		if c.want < 0 && !errors.Is(err, io.EOF) || c.want >= 0 && (err != nil || got != c.want) {
			t.Errorf("salvaged: seek(%d, data %v) = %d, %v; want %d", c.off, c.data, got, err, c.want)
		}
	}
	if f, why := rebuild(7, []seen{chunk(1, 2, 0, 1000, 0), chunk(2, 2, 0, 10, 0)}, 64); f != nil || !strings.Contains(why, "chunk 0") {
		t.Errorf("without chunk 0: %+v, %q; want a refusal", f, why)
	}
	if f, why := rebuild(7, []seen{chunk(0, 2, 0, 1000, 0), chunk(2, 2, 0, 1000, 0), {h: ChunkHeader{Ino: 7, Gen: 2, Index: 3, Offset: 3100, Length: 10}, region: region, key: "vol/chunks/x"}}, 64); f != nil || !strings.Contains(why, "starts at stream offset") {
		t.Errorf("a chunk out of place: %+v, %q; want a refusal", f, why)
	}
}
