package volume

import (
	"syscall"
	"testing"

	"github.com/kmsfs/kmsfs/envelope"
)

// The free space plainStatfs reports, written as one new file, fits in the
// backend's free space once stored: header, sealed blocks, the backing
// file rounded up to whole units and one block's intent record.
func TestPlainStatfsFitsOneFile(t *testing.T) {
	for _, l := range []envelope.Layout{{HeaderSize: 1024, BlockSize: 4096}, {HeaderSize: 4096, BlockSize: 65536}} {
		for _, unit := range []int64{512, 1024, 4096} {
			for _, free := range []uint64{0, 1, 3, 4, 5, 17, 1000, 16384, 1 << 20, 1<<20 + 7, 1 << 40} {
				st := syscall.Statfs_t{Bsize: unit, Frsize: unit, Blocks: free * 2, Bfree: free, Bavail: free}
				plainStatfs(&st, l)
				plain := int64(st.Bavail) * unit
				if st.Bavail > st.Bfree || st.Bfree > st.Blocks {
					t.Fatalf("layout %+v unit %d free %d: blocks %d bfree %d bavail %d out of order", l, unit, free, st.Blocks, st.Bfree, st.Bavail)
				}
				if plain == 0 {
					if free*uint64(unit) >= uint64(l.HeaderSize+4*unit+2*l.SealedBlockSize()) {
						t.Errorf("layout %+v unit %d: %d units free, 0 reported", l, unit, free)
					}
					continue
				}
				stored := l.CipherSize(plain, true)
				units := (stored+unit-1)/unit + (l.SealedBlockSize()+unit-1)/unit
				if uint64(units) > free {
					t.Errorf("layout %+v unit %d: %d units free; reported %d plaintext bytes take %d units", l, unit, free, plain, units)
				}
				// Not needlessly low: within the reserve (a header, a
				// sealed block, a unit) and one unit of rounding of the
				// exact ratio.
				exact := float64(free*uint64(unit)) * float64(l.BlockSize) / float64(l.SealedBlockSize())
				slack := ((l.HeaderSize+unit-1)/unit + (l.SealedBlockSize()+unit-1)/unit + 2) * unit
				if float64(plain) < exact-float64(slack) {
					t.Errorf("layout %+v unit %d free %d: reported %d plaintext bytes, ratio gives %.0f", l, unit, free, plain, exact)
				}
			}
		}
	}
	// Totals shrink by the block ratio.
	st := syscall.Statfs_t{Bsize: 4096, Frsize: 4096, Blocks: 4124 * 1000, Bfree: 0, Bavail: 0}
	plainStatfs(&st, envelope.Layout{HeaderSize: 1024, BlockSize: 4096})
	if st.Blocks != 4096*1000 {
		t.Errorf("blocks %d, want %d", st.Blocks, 4096*1000)
	}
}
