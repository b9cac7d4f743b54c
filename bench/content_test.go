package bench

import (
	"bytes"
	"testing"
)

func TestContentPiecesMatchWhole(t *testing.T) {
	c := NewContent(7)
	const size = 3*stampEvery + 100
	whole := make([]byte, size)
	c.Fill(whole, 5, 0)
	// Split points inside a stamp, on a block boundary and inside filler.
	for _, split := range []int{1, 7, stampLen, stampEvery - 3, stampEvery, stampEvery + 9, 2*stampEvery + 15} {
		a, b := make([]byte, split), make([]byte, size-split)
		c.Fill(a, 5, 0)
		c.Fill(b, 5, int64(split))
		if !bytes.Equal(append(a, b...), whole) {
			t.Fatalf("split at %d: pieces differ from the whole", split)
		}
	}
	scratch := make([]byte, size)
	if err := c.Check(whole, scratch, 5, 0); err != nil {
		t.Fatal(err)
	}
}

func TestContentCheckCatchesWrongBytes(t *testing.T) {
	c := NewContent(1)
	scratch := make([]byte, 2*stampEvery)
	f0 := make([]byte, 2*stampEvery)
	c.Fill(f0, 0, 0)
	f1 := make([]byte, 2*stampEvery)
	c.Fill(f1, 1, 0)
	if bytes.Equal(f0, f1) {
		t.Fatal("two files have the same content")
	}
	// A block of another file at the same offset.
	if err := c.Check(f1, scratch, 0, 0); err == nil {
		t.Fatal("file 1's content passed as file 0's")
	}
	// The file's own second block where its first belongs.
	swapped := append(append([]byte(nil), f0[stampEvery:]...), f0[:stampEvery]...)
	if err := c.Check(swapped, scratch, 0, 0); err == nil {
		t.Fatal("swapped blocks passed")
	}
	flipped := append([]byte(nil), f0...)
	flipped[stampEvery+100] ^= 1
	err := c.Check(flipped, scratch, 0, 0)
	if err == nil || err.Error() != "content differs at byte 4196" {
		t.Fatalf("flipped bit: got %v", err)
	}
	// Same seed, same content; another seed, other content.
	g := make([]byte, 2*stampEvery)
	NewContent(1).Fill(g, 0, 0)
	if !bytes.Equal(g, f0) {
		t.Fatal("content is not deterministic")
	}
	NewContent(2).Fill(g, 0, 0)
	if bytes.Equal(g, f0) {
		t.Fatal("seed does not change the content")
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"4096": 4096, "4KiB": 4096, "4k": 4096, "256MiB": 256 << 20, "1G": 1 << 30, "0": 0, "12 B": 12} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "4XB", "1.5M", "99999999999999999G"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) succeeded", in)
		}
	}
}
