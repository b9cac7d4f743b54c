package envelope

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
)

// TestBlocksParallelMatchesSerial seals runs large enough to be split
// across goroutines (and small ones that are not) and checks that every
// block sits where the format says, opens on its own with OpenBlock, and
// that OpenBlocks returns the plaintext, including a short last block.
func TestBlocksParallelMatchesSerial(t *testing.T) {
	keys := testKeys(t, id(7))
	const bs = 4096
	sb := bs + BlockOverhead
	for _, size := range []int{1, bs, bs + 1, parallelMinBytes - 1, 2*parallelMinBytes + 17, 1 << 20, 3<<20 + 5} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			plain := make([]byte, size)
			for i := range plain {
				plain[i] = byte(i*131 + i>>12)
			}
			prefix := []byte("keep")
			sealed, err := keys.SealBlocks(append([]byte(nil), prefix...), plain, 5, bs, true, densePrev(5))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(sealed[:len(prefix)], prefix) {
				t.Fatal("SealBlocks overwrote what dst held")
			}
			sealed = sealed[len(prefix):]
			n := (size + bs - 1) / bs
			if want := size + n*BlockOverhead; len(sealed) != want {
				t.Fatalf("sealed %d bytes, want %d", len(sealed), want)
			}
			for i := 0; i < n; i++ {
				got, err := keys.OpenBlock(nil, sealed[i*sb:min((i+1)*sb, len(sealed))], 5+uint64(i), i == n-1, densePrev(5+uint64(i)))
				if err != nil {
					t.Fatalf("block %d: %v", i, err)
				}
				if !bytes.Equal(got, plain[i*bs:min((i+1)*bs, size)]) {
					t.Fatalf("block %d: wrong plaintext", i)
				}
			}
			opened, err := keys.OpenBlocks([]byte("x"), sealed, 5, sb, true, densePrev(5))
			if err != nil {
				t.Fatal(err)
			}
			if opened[0] != 'x' || !bytes.Equal(opened[1:], plain) {
				t.Fatal("OpenBlocks: wrong plaintext")
			}
		})
	}
}

// TestOpenBlocksTamperInLaterShare flips a byte in a block that a second
// goroutine opens: the call must fail, name that block, and return nothing.
func TestOpenBlocksTamperInLaterShare(t *testing.T) {
	keys := testKeys(t, id(8))
	const bs = 4096
	sb := bs + BlockOverhead
	plain := bytes.Repeat([]byte{0xab}, 1<<20)
	sealed, err := keys.SealBlocks(nil, plain, 0, bs, false, densePrev(0))
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []int{0, 200, 255} {
		c := bytes.Clone(sealed)
		c[bad*sb+NonceSize+3] ^= 1
		out, err := keys.OpenBlocks(nil, c, 0, sb, false, densePrev(0))
		if !errors.Is(err, ErrBlockAuth) {
			t.Fatalf("block %d tampered: err = %v, want ErrBlockAuth", bad, err)
		}
		if want := fmt.Sprintf("block %d:", bad); !bytes.Contains([]byte(err.Error()), []byte(want)) {
			t.Fatalf("error %q does not name %q", err, want)
		}
		if out != nil {
			t.Fatal("OpenBlocks returned plaintext with an error")
		}
	}
	// Blocks swapped between the two halves fail too.
	c := bytes.Clone(sealed)
	copy(c[10*sb:11*sb], sealed[200*sb:201*sb])
	if _, err := keys.OpenBlocks(nil, c, 0, sb, false, densePrev(0)); !errors.Is(err, ErrBlockAuth) {
		t.Fatalf("swapped block: err = %v", err)
	}
	// A last block too short to hold a tag.
	if _, err := keys.OpenBlocks(nil, sealed[:sb+BlockOverhead], 0, sb, false, densePrev(0)); !errors.Is(err, ErrBlockAuth) {
		t.Fatalf("short last block: err = %v", err)
	}
}

// TestFinalFlagDetectsMovedEnd: in version 2 a file cut at a block
// boundary, or extended with a genuine block of an older, longer version
// of itself, fails to open; version 1 accepts both (the gap version 2
// closes).
func TestFinalFlagDetectsMovedEnd(t *testing.T) {
	const bs = 4096
	sb := bs + BlockOverhead
	plain := bytes.Repeat([]byte("0123456789abcdef"), 4*bs/16) // 4 blocks
	for _, version := range []uint8{Version1, Version2} {
		keys, err := DeriveFileKeys(bytes.Repeat([]byte{0x42}, KeySize), id(3), version)
		if err != nil {
			t.Fatal(err)
		}
		long, err := keys.SealBlocks(nil, plain, 0, bs, true, densePrev(0)) // an older, longer version
		if err != nil {
			t.Fatal(err)
		}
		short, err := keys.SealBlocks(nil, plain[:3*bs], 0, bs, true, densePrev(0)) // the file now
		if err != nil {
			t.Fatal(err)
		}
		if _, err := keys.OpenBlocks(nil, short, 0, sb, true, densePrev(0)); err != nil {
			t.Fatalf("v%d: the file itself: %v", version, err)
		}
		cut := short[:2*sb]
		_, err = keys.OpenBlocks(nil, cut, 0, sb, true, densePrev(0))
		if wantFail := version == Version2; (err != nil) != wantFail || (err != nil && !errors.Is(err, ErrBlockAuth)) {
			t.Errorf("v%d: cut at a block boundary: %v", version, err)
		}
		extended := append(bytes.Clone(short), long[3*sb:]...)
		_, err = keys.OpenBlocks(nil, extended, 0, sb, true, densePrev(0))
		if wantFail := version == Version2; (err != nil) != wantFail || (err != nil && !errors.Is(err, ErrBlockAuth)) {
			t.Errorf("v%d: a block appended: %v", version, err)
		}
	}
}

// FuzzOpenBlocks: a run of sealed blocks opens only as a genuine run: whole
// blocks of what was sealed, at their own numbers, ending the file exactly
// when they end with its last block. Any other input, a run cut or extended
// at a block boundary included, is an error and returns no plaintext.
func FuzzOpenBlocks(f *testing.F) {
	const bs = MinBlockSize
	keys := testKeys(f, id(9))
	plain := bytes.Repeat([]byte("fuzz"), 3*bs/4+10) // 3 full blocks and a short one
	nonces := make([]byte, 4*NonceSize)              // fixed: every fuzz worker seals the same run
	var sealed []byte
	for i := 0; i < 4; i++ {
		sealed = keys.sealWithNonce(sealed, plain[i*bs:min((i+1)*bs, len(plain))], 2+uint64(i), i == 3, densePrev(2+uint64(i)), nonces[i*NonceSize:(i+1)*NonceSize])
	}
	sb := bs + BlockOverhead
	f.Add(sealed, uint64(2), true)
	f.Add(sealed[:3*sb], uint64(2), true)
	f.Add(sealed[sb:], uint64(3), true)
	f.Add(sealed, uint64(2), false)
	f.Fuzz(func(t *testing.T, b []byte, first uint64, final bool) {
		got, err := keys.OpenBlocks(nil, b, first, sb, final, densePrev(first))
		genuine := false
		var want []byte
		for k0 := 0; k0 < 4; k0++ {
			for k1 := k0 + 1; k1 <= 4; k1++ {
				if first == 2+uint64(k0) && final == (k1 == 4) && bytes.Equal(b, sealed[k0*sb:min(k1*sb, len(sealed))]) {
					genuine, want = true, plain[k0*bs:min(k1*bs, len(plain))]
				}
			}
		}
		if err == nil && !genuine && len(b) > 0 {
			t.Fatalf("a forged run of %d bytes opened as block %d (final %v)", len(b), first, final)
		}
		if err != nil && got != nil {
			t.Fatal("plaintext returned with an error")
		}
		if genuine && (err != nil || !bytes.Equal(got, want)) {
			t.Fatalf("a genuine run: %v", err)
		}
	})
}

// densePrev is the previous stored block of block i in a file without holes.
func densePrev(i uint64) uint64 {
	if i == 0 {
		return NoPrev
	}
	return i - 1
}
