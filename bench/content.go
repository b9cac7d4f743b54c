package bench

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
)

// stampEvery is the spacing of the stamps written into file content: every
// 4 KiB (the default kmsfs block) carries the file's index and its own
// block number, so a block read from the wrong file or the wrong offset
// (a swapped or misplaced block that somehow authenticated) fails the check.
const stampEvery = 4096

// stampLen is the size of one stamp: file index and block number, 64-bit
// little-endian each.
const stampLen = 16

// baseLen is the period of the pseudo-random filler; a multiple of
// stampEvery so that the stamps and the filler line up.
const baseLen = 1 << 20

// Content is the deterministic content of the bench's files: incompressible
// filler from a seed, stamped with (file, block) every stampEvery bytes. It
// is cheap to produce and to check (a copy and a compare), so that on two
// cores the bench measures the filesystem, not its own data generator.
type Content struct {
	base []byte
}

// NewContent returns the content generator for seed.
func NewContent(seed uint64) *Content {
	r := rand.New(rand.NewChaCha8([32]byte{0: byte(seed), 1: byte(seed >> 8), 2: byte(seed >> 16), 3: byte(seed >> 24),
		4: byte(seed >> 32), 5: byte(seed >> 40), 6: byte(seed >> 48), 7: byte(seed >> 56)}))
	base := make([]byte, baseLen)
	for i := 0; i < len(base); i += 8 {
		binary.LittleEndian.PutUint64(base[i:], r.Uint64())
	}
	return &Content{base: base}
}

// Fill writes into p the bytes of file at offset off.
func (c *Content) Fill(p []byte, file int, off int64) {
	for i := 0; i < len(p); {
		at := (off + int64(i)) % baseLen
		i += copy(p[i:], c.base[at:])
	}
	// Stamps whose 16 bytes overlap [off, off+len(p)), including one that
	// starts before off.
	end := off + int64(len(p))
	var stamp [stampLen]byte
	binary.LittleEndian.PutUint64(stamp[:8], uint64(file))
	for blk := off / stampEvery; blk*stampEvery < end; blk++ {
		start := blk * stampEvery
		if start+stampLen <= off {
			continue
		}
		binary.LittleEndian.PutUint64(stamp[8:], uint64(blk))
		lo := max(start, off)
		hi := min(start+stampLen, end)
		copy(p[lo-off:hi-off], stamp[lo-start:hi-start])
	}
}

// Check compares p with the bytes file should hold at offset off, using
// scratch (at least len(p) bytes) to build the expected bytes.
func (c *Content) Check(p, scratch []byte, file int, off int64) error {
	want := scratch[:len(p)]
	c.Fill(want, file, off)
	if bytes.Equal(p, want) {
		return nil
	}
	for i := range p {
		if p[i] != want[i] {
			return fmt.Errorf("content differs at byte %d", off+int64(i))
		}
	}
	return nil
}
