package envelope

import (
	"crypto/rand"
	"fmt"
	"runtime"
	"slices"
	"sync"
)

// parallelMinBytes is the smallest run of blocks that SealBlocks and
// OpenBlocks split across goroutines. AES-GCM runs at about 4 GB/s per core
// here, so 128 KiB is ~30 µs of work per core against ~1 µs to hand a share
// to another goroutine; FUSE's 1 MiB requests are split, 4 KiB ones are not.
const parallelMinBytes = 128 << 10

// shares splits n blocks of blockBytes each into at most GOMAXPROCS
// contiguous shares of at least parallelMinBytes, and runs fn on each, one
// on the calling goroutine. It returns the error of the lowest share that
// failed, so that a read reports the first bad block.
func shares(n, blockBytes int, fn func(lo, hi int) error) error {
	workers := min(runtime.GOMAXPROCS(0), n*blockBytes/parallelMinBytes)
	if workers <= 1 {
		return fn(0, n)
	}
	per := (n + workers - 1) / workers
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := 1; w < workers; w++ {
		lo, hi := w*per, min((w+1)*per, n)
		if lo >= hi {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[w] = fn(lo, hi)
		}()
	}
	errs[0] = fn(0, min(per, n))
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// SealBlocks appends the encrypted blocks of plain to dst, starting at
// block firstBlock: plain is split into blockSize pieces (the last may be
// short). One call to the random source serves all nonces, which matters at
// 4 KiB blocks, and a large run is sealed on several cores (a sealed
// block's position in the output depends only on its index). final seals
// the run's last block as the file's last block (version 2; every other
// block of the run is sealed as followed by more). prev is the stored block
// before the run (version 3): each later block of the run follows the one
// before it.
func (k *FileKeys) SealBlocks(dst, plain []byte, firstBlock uint64, blockSize int, final bool, prev uint64) ([]byte, error) {
	n := (len(plain) + blockSize - 1) / blockSize
	nonces := make([]byte, n*NonceSize)
	if err := randNonces(nonces); err != nil {
		return nil, err
	}
	total := len(plain) + n*BlockOverhead
	start := len(dst)
	dst = slices.Grow(dst, total)[:start+total]
	out := dst[start:]
	sealedSize := blockSize + BlockOverhead
	_ = shares(n, blockSize, func(lo, hi int) error {
		for i := lo; i < hi; i++ {
			end := min((i+1)*blockSize, len(plain))
			o := i * sealedSize
			// Seal appends in place: out[o:o] has the capacity of the rest.
			k.sealWithNonce(out[o:o], plain[i*blockSize:end], firstBlock+uint64(i), final && i == n-1, runPrev(prev, firstBlock, i), nonces[i*NonceSize:(i+1)*NonceSize])
		}
		return nil
	})
	return dst, nil
}

// OpenBlocks appends the plaintext of the consecutive sealed blocks in
// sealed (every one sealedBlockSize bytes but the last, which may be
// shorter), the first of which is block firstBlock. final says the run ends
// with the file's last block (version 2: it must be sealed final, the
// others not). prev is the stored block before the run (version 3); the
// run holds no hole. A block that fails authentication fails the whole
// call, naming the lowest such block.
func (k *FileKeys) OpenBlocks(dst, sealed []byte, firstBlock uint64, sealedBlockSize int, final bool, prev uint64) ([]byte, error) {
	if len(sealed) == 0 {
		return dst, nil
	}
	n := (len(sealed) + sealedBlockSize - 1) / sealedBlockSize
	last := len(sealed) - (n-1)*sealedBlockSize
	if last <= BlockOverhead {
		return nil, fmt.Errorf("block %d: %w (only %d bytes)", firstBlock+uint64(n-1), ErrBlockAuth, last)
	}
	blockSize := sealedBlockSize - BlockOverhead
	total := len(sealed) - n*BlockOverhead
	start := len(dst)
	dst = slices.Grow(dst, total)[:start+total]
	out := dst[start:]
	err := shares(n, blockSize, func(lo, hi int) error {
		for i := lo; i < hi; i++ {
			blk := sealed[i*sealedBlockSize : min((i+1)*sealedBlockSize, len(sealed))]
			if _, err := k.OpenBlock(out[i*blockSize:i*blockSize], blk, firstBlock+uint64(i), final && i == n-1, runPrev(prev, firstBlock, i)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		// Never hand back a partly decrypted buffer.
		clear(out)
		return nil, err
	}
	return dst, nil
}

// runPrev is the previous stored block of the i-th block of a run without
// holes that starts at firstBlock after stored block prev.
func runPrev(prev, firstBlock uint64, i int) uint64 {
	if i == 0 {
		return prev
	}
	return firstBlock + uint64(i) - 1
}

// randNonces fills nonces with random 12-byte nonces, none of them zero:
// a zero nonce could make a sealed block read as a hole (version 3).
func randNonces(nonces []byte) error {
	if _, err := rand.Read(nonces); err != nil {
		return err
	}
	for o := 0; o < len(nonces); o += NonceSize {
		for isZero(nonces[o : o+NonceSize]) {
			if _, err := rand.Read(nonces[o : o+NonceSize]); err != nil {
				return err
			}
		}
	}
	return nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
