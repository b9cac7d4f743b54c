package envelope

// Layout (docs/FORMAT.md section 4): where blocks sit in a stored file and
// how its stored size gives the plaintext size.

import (
	"fmt"
)

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
