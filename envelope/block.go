package envelope

// Block AEAD (docs/FORMAT.md section 4): each block sealed with AES-GCM
// under the block key, bound to its file and position.

import (
	"crypto/rand"
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

// blockAAD is the associated data of block blockNo: file ID || blockNo
// (uint64 big-endian). It makes a block swapped within a file (other blockNo)
// or between files (other file ID, and other key) fail to open.
func (k *FileKeys) blockAAD(blockNo uint64) [IDLen + 8]byte {
	var ad [IDLen + 8]byte
	copy(ad[:], k.fileID[:])
	binary.BigEndian.PutUint64(ad[IDLen:], blockNo)
	return ad
}

// SealBlock appends the encrypted block blockNo (nonce || ciphertext || tag)
// to dst. plain must be 1..BlockSize bytes; only the last block of a file is
// short. The nonce is random: see docs/FORMAT.md for the bound on writes.
func (k *FileKeys) SealBlock(dst, plain []byte, blockNo uint64) ([]byte, error) {
	var nonce [NonceSize]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, err
	}
	return k.sealWithNonce(dst, plain, blockNo, nonce[:]), nil
}

func (k *FileKeys) sealWithNonce(dst, plain []byte, blockNo uint64, nonce []byte) []byte {
	ad := k.blockAAD(blockNo)
	dst = append(dst, nonce...)
	return k.aead.Seal(dst, nonce, plain, ad[:])
}

// ErrBlockAuth is returned for a block that fails authentication: a flipped
// bit, a block from another position or another file, a wrong key.
var ErrBlockAuth = errors.New("block authentication failed")

// OpenBlock appends the plaintext of encrypted block blockNo to dst.
func (k *FileKeys) OpenBlock(dst, sealed []byte, blockNo uint64) ([]byte, error) {
	if len(sealed) <= BlockOverhead {
		return nil, fmt.Errorf("block %d: %w (only %d bytes)", blockNo, ErrBlockAuth, len(sealed))
	}
	ad := k.blockAAD(blockNo)
	out, err := k.aead.Open(dst, sealed[:NonceSize], sealed[NonceSize:], ad[:])
	if err != nil {
		return nil, fmt.Errorf("block %d: %w", blockNo, ErrBlockAuth)
	}
	return out, nil
}
