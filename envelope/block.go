package envelope

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
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

// HKDF labels. Each subkey is HKDF-SHA256(ikm, salt = file ID, info = label).
const (
	labelBlockKey      = "kmsfs v1 block key"
	labelHeaderMACKey  = "kmsfs v1 header mac key"
	labelBucketFileKey = "kmsfs v1 bucket-key file key"
)

// FileKeys holds the keys derived from one file's key. It is what an open
// file keeps; Zero it on release.
type FileKeys struct {
	fileID   [IDLen]byte
	blockKey []byte
	macKey   []byte
	aead     cipher.AEAD
}

// DeriveFileKeys derives the block and header keys from a file key (the
// per-object data key, or the output of BucketFileKey).
func DeriveFileKeys(fileKey []byte, fileID [IDLen]byte) (*FileKeys, error) {
	if len(fileKey) != KeySize {
		return nil, fmt.Errorf("file key has %d bytes, want %d", len(fileKey), KeySize)
	}
	blockKey, err := hkdf.Key(sha256.New, fileKey, fileID[:], labelBlockKey, KeySize)
	if err != nil {
		return nil, err
	}
	macKey, err := hkdf.Key(sha256.New, fileKey, fileID[:], labelHeaderMACKey, KeySize)
	if err != nil {
		return nil, err
	}
	blk, err := aes.NewCipher(blockKey)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(blk)
	if err != nil {
		return nil, err
	}
	return &FileKeys{fileID: fileID, blockKey: blockKey, macKey: macKey, aead: aead}, nil
}

// BucketFileKey derives a file's own key from a volume-level bucket key and
// the file's random ID (bucket-key mode). The caller zeroes the result.
func BucketFileKey(bucketKey []byte, fileID [IDLen]byte) ([]byte, error) {
	if len(bucketKey) != KeySize {
		return nil, fmt.Errorf("bucket key has %d bytes, want %d", len(bucketKey), KeySize)
	}
	return hkdf.Key(sha256.New, bucketKey, fileID[:], labelBucketFileKey, KeySize)
}

// MACKey is the header authentication key, for Header.Marshal.
func (k *FileKeys) MACKey() []byte { return k.macKey }

// Zero wipes the derived key bytes. The AES key schedule inside the
// cipher.AEAD cannot be reached from Go; dropping the last reference is the
// best the standard library allows.
func (k *FileKeys) Zero() {
	clear(k.blockKey)
	clear(k.macKey)
	k.aead = nil
}

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

// Layout maps plaintext offsets to ciphertext offsets for one volume's
// geometry. It needs no key, so stat and listing cost no KMS call.
type Layout struct {
	HeaderSize int64 // header region bytes before block 0
	BlockSize  int64 // plaintext bytes per block
}

// SealedBlockSize is the stored size of a full block.
func (l Layout) SealedBlockSize() int64 { return l.BlockSize + BlockOverhead }

// BlockOffset is where block blockNo starts in the stored file.
func (l Layout) BlockOffset(blockNo uint64) int64 {
	return l.HeaderSize + int64(blockNo)*l.SealedBlockSize()
}

// CipherSize is the stored size of a file of plainSize bytes. An empty file
// with no header is 0 bytes; a file with a header and no data is HeaderSize.
func (l Layout) CipherSize(plainSize int64, hasHeader bool) int64 {
	if plainSize == 0 {
		if hasHeader {
			return l.HeaderSize
		}
		return 0
	}
	full := plainSize / l.BlockSize
	rest := plainSize % l.BlockSize
	size := l.HeaderSize + full*l.SealedBlockSize()
	if rest > 0 {
		size += rest + BlockOverhead
	}
	return size
}

// PlainSize is the plaintext size of a stored file of cipherSize bytes. A size
// that no sequence of whole blocks can produce (a torn last block, a partial
// header) is an error.
func (l Layout) PlainSize(cipherSize int64) (int64, error) {
	if cipherSize == 0 {
		return 0, nil
	}
	if cipherSize < l.HeaderSize {
		return 0, fmt.Errorf("%w: %d bytes, shorter than the %d-byte header", ErrCorrupt, cipherSize, l.HeaderSize)
	}
	data := cipherSize - l.HeaderSize
	full := data / l.SealedBlockSize()
	rest := data % l.SealedBlockSize()
	if rest != 0 && rest <= BlockOverhead {
		return 0, fmt.Errorf("%w: last block has %d bytes, not more than its %d-byte overhead", ErrCorrupt, rest, BlockOverhead)
	}
	plain := full * l.BlockSize
	if rest > 0 {
		plain += rest - BlockOverhead
	}
	return plain, nil
}

// Blocks returns the first and one-past-last block numbers covering the
// plaintext range [off, off+n).
func (l Layout) Blocks(off, n int64) (first, end uint64) {
	if n <= 0 {
		return uint64(off / l.BlockSize), uint64(off / l.BlockSize)
	}
	return uint64(off / l.BlockSize), uint64((off + n + l.BlockSize - 1) / l.BlockSize)
}

// FileID is the ID of the file these keys belong to.
func (k *FileKeys) FileID() [IDLen]byte { return k.fileID }
