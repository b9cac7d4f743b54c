package envelope

// Block AEAD (docs/FORMAT.md section 4): each block sealed with AES-GCM
// under the block key, bound to its file and position.

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Block geometry. DefaultBlockSize was chosen with BenchmarkBlockSize (see
// docs/BENCHMARKS.md): 4 KiB keeps a random 4 KiB write to one block with no
// read-modify-write of its neighbours, while per-block overhead (nonce, tag,
// AEAD call) stays under 10% of AES-GCM's throughput.
const (
	MinBlockSize     = 512
	MaxBlockSize     = 1 << 20
	DefaultBlockSize = 4096

	NonceSize     = 12
	TagSize       = 16
	BlockOverhead = NonceSize + TagSize
	// KeySize is the length of a data key and of a bucket key.
	KeySize = 32
)

// Final-block flag values of a version 2 and 3 block's AAD.
const (
	flagMore  = 0x00 // more blocks follow
	flagFinal = 0x01 // the file's last block
)

// NoPrev is the previous-stored-block index of a version 3 block that has
// no stored block before it (docs/FORMAT.md section 4, holes).
const NoPrev = ^uint64(0)

// aadLen is the longest block AAD: file ID, block number, final flag and
// (version 3) the index of the previous stored block.
const aadLen = IDLen + 8 + 1 + 8

// blockAAD is the associated data of block blockNo: file ID || blockNo
// (uint64 big-endian), and in version 2 a final-block flag byte. It makes a
// block swapped within a file (other blockNo) or between files (other file
// ID, and other key) fail to open; the flag makes a file cut at a block
// boundary (its new last block was not sealed final) or extended by a block
// (the old last one was) fail too, as age marks its last chunk
// (https://age-encryption.org/v1, "payload"). Version 3 adds prev, the
// index of the nearest stored (non-hole) block before blockNo, or NoPrev:
// a stored block zeroed into a hole then breaks the next stored block.
func (k *FileKeys) blockAAD(ad *[aadLen]byte, blockNo uint64, final bool, prev uint64) []byte {
	copy(ad[:], k.fileID[:])
	binary.BigEndian.PutUint64(ad[IDLen:], blockNo)
	if k.version < Version2 {
		return ad[:IDLen+8]
	}
	ad[IDLen+8] = flagMore
	if final {
		ad[IDLen+8] = flagFinal
	}
	if k.version < Version3 {
		return ad[:IDLen+9]
	}
	binary.BigEndian.PutUint64(ad[IDLen+9:], prev)
	return ad[:]
}

// SealBlock appends the encrypted block blockNo (nonce || ciphertext || tag)
// to dst. plain must be 1..BlockSize bytes; only the last block of a file is
// short. final marks the file's last block (ignored for version 1 files);
// prev is the index of the stored block before it, or NoPrev (version 3
// only). The nonce is random: see docs/FORMAT.md for the bound on writes.
func (k *FileKeys) SealBlock(dst, plain []byte, blockNo uint64, final bool, prev uint64) ([]byte, error) {
	var nonce [NonceSize]byte
	if err := randNonces(nonce[:]); err != nil {
		return nil, err
	}
	return k.sealWithNonce(dst, plain, blockNo, final, prev, nonce[:]), nil
}

func (k *FileKeys) sealWithNonce(dst, plain []byte, blockNo uint64, final bool, prev uint64, nonce []byte) []byte {
	var buf [aadLen]byte
	ad := k.blockAAD(&buf, blockNo, final, prev)
	dst = append(dst, nonce...)
	return k.aead.Seal(dst, nonce, plain, ad)
}

// ErrBlockAuth is returned for a block that fails authentication: a flipped
// bit, a block from another position or another file, a wrong key.
var ErrBlockAuth = errors.New("block authentication failed")

// OpenBlock appends the plaintext of encrypted block blockNo to dst. final
// says whether the caller expects it to be the file's last block (ignored
// for version 1 files), prev which stored block it expects before it
// (version 3 only).
func (k *FileKeys) OpenBlock(dst, sealed []byte, blockNo uint64, final bool, prev uint64) ([]byte, error) {
	if len(sealed) <= BlockOverhead {
		return nil, fmt.Errorf("block %d: %w (only %d bytes)", blockNo, ErrBlockAuth, len(sealed))
	}
	var buf [aadLen]byte
	out, err := k.aead.Open(dst, sealed[:NonceSize], sealed[NonceSize:], k.blockAAD(&buf, blockNo, final, prev))
	if err == nil {
		return out, nil
	}
	if k.MarksEnd() {
		// Only to name the cause in the log: a block that opens with the
		// other flag is genuine but in the wrong role, so the file's end
		// was moved (blocks cut off, or appended). Failure costs nothing
		// on the good path.
		if pt, err2 := k.aead.Open(dst[len(dst):], sealed[:NonceSize], sealed[NonceSize:], k.blockAAD(&buf, blockNo, !final, prev)); err2 == nil {
			clear(pt)
			if final {
				return nil, fmt.Errorf("block %d: %w (it should be the file's last block but is not sealed as one: the file was cut at a block boundary)", blockNo, ErrBlockAuth)
			}
			return nil, fmt.Errorf("block %d: %w (it is sealed as the file's last block but more blocks follow: blocks were appended)", blockNo, ErrBlockAuth)
		}
	}
	if k.HasHoles() && IsHole(sealed) {
		return nil, fmt.Errorf("block %d: %w (it is all zeros, a hole, where a stored block must be)", blockNo, ErrBlockAuth)
	}
	return nil, fmt.Errorf("block %d: %w", blockNo, ErrBlockAuth)
}

// IsHole says whether a stored block is a hole of a version 3 file: every
// byte zero. A sealed block never is (its nonce is drawn again if it comes
// out zero), so the test looks at the nonce first and at the rest only
// when the nonce is zero.
func IsHole(sealed []byte) bool {
	if len(sealed) < NonceSize {
		return false
	}
	for _, b := range sealed[:NonceSize] {
		if b != 0 {
			return false
		}
	}
	for _, b := range sealed[NonceSize:] {
		if b != 0 {
			return false
		}
	}
	return true
}
