package envelope

import (
	"fmt"
	"testing"
)

// BenchmarkSeal and BenchmarkOpen measure block crypto throughput (MB/s of
// plaintext) for 1 MiB of data at each candidate block size. BenchmarkRandomWrite4K
// measures the cost of a random 4 KiB write, which needs a read-modify-write
// (open + seal) of the whole block when blocks are larger than 4 KiB.
// Together they chose DefaultBlockSize (docs/BENCHMARKS.md).
var benchBlockSizes = []int{4096, 16384, 65536, 262144}

func BenchmarkSeal(b *testing.B) {
	keys := testKeys(b, id(1))
	plain := make([]byte, 1<<20)
	for _, bs := range benchBlockSizes {
		b.Run(fmt.Sprintf("block=%d", bs), func(b *testing.B) {
			dst := make([]byte, 0, len(plain)+len(plain)/bs*BlockOverhead+BlockOverhead)
			b.SetBytes(int64(len(plain)))
			for b.Loop() {
				if _, err := keys.SealBlocks(dst[:0], plain, 0, bs, false, densePrev(0)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkOpen(b *testing.B) {
	keys := testKeys(b, id(1))
	plain := make([]byte, 1<<20)
	for _, bs := range benchBlockSizes {
		b.Run(fmt.Sprintf("block=%d", bs), func(b *testing.B) {
			sealed, err := keys.SealBlocks(nil, plain, 0, bs, false, densePrev(0))
			if err != nil {
				b.Fatal(err)
			}
			dst := make([]byte, 0, bs)
			sb := bs + BlockOverhead
			b.SetBytes(int64(len(plain)))
			for b.Loop() {
				for i := 0; i*sb < len(sealed); i++ {
					if _, err := keys.OpenBlock(dst[:0], sealed[i*sb:(i+1)*sb], uint64(i), false, densePrev(uint64(i))); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

func BenchmarkRandomWrite4K(b *testing.B) {
	keys := testKeys(b, id(1))
	for _, bs := range benchBlockSizes {
		b.Run(fmt.Sprintf("block=%d", bs), func(b *testing.B) {
			plain := make([]byte, bs)
			sealed, err := keys.SealBlock(nil, plain, 0, false, densePrev(0))
			if err != nil {
				b.Fatal(err)
			}
			buf := make([]byte, 0, bs)
			out := make([]byte, 0, bs+BlockOverhead)
			b.SetBytes(4096)
			for b.Loop() {
				var err error
				if bs > 4096 { // read-modify-write of the enclosing block
					if buf, err = keys.OpenBlock(buf[:0], sealed, 0, false, densePrev(0)); err != nil {
						b.Fatal(err)
					}
				}
				if _, err = keys.SealBlock(out[:0], plain, 0, false, densePrev(0)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkOpenBlocks measures OpenBlocks on a FUSE-sized 1 MiB read at the
// default block size (split across cores).
func BenchmarkOpenBlocks(b *testing.B) {
	keys := testKeys(b, id(1))
	plain := make([]byte, 1<<20)
	sealed, err := keys.SealBlocks(nil, plain, 0, DefaultBlockSize, false, densePrev(0))
	if err != nil {
		b.Fatal(err)
	}
	dst := make([]byte, 0, len(plain))
	b.SetBytes(int64(len(plain)))
	for b.Loop() {
		if _, err := keys.OpenBlocks(dst[:0], sealed, 0, DefaultBlockSize+BlockOverhead, false, densePrev(0)); err != nil {
			b.Fatal(err)
		}
	}
}
