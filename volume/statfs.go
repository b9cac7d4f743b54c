package volume

import (
	"context"
	"syscall"

	"github.com/kmsfs/kmsfs/envelope"
)

// Statfs reports the backend's capacity as plaintext: what a program can
// still write through the mount, not what the backing store has free. A
// program that fallocates (or writes) the free space statfs reports must
// not get ENOSPC, and every plaintext block costs a sealed block of
// BlockSize + nonce + tag bytes on the backend, plus a header region per
// file.
func (v *Volume) Statfs(ctx context.Context, st *syscall.Statfs_t) error {
	if err := v.be.Statfs(ctx, st); err != nil {
		return err
	}
	plainStatfs(st, v.layout)
	return nil
}

// plainStatfs turns the backend's block counts into plaintext ones. The
// totals shrink by BlockSize/SealedBlockSize. The free counts shrink by the
// same ratio after setting aside, in the backend's own units, one file's
// header region, one sealed block (an in-place change of a partial block
// records that block in an intent file until it is written) and one unit
// (the backing file's last unit is allocated whole, and a partial last
// block carries a whole nonce and tag). Counts stay in the
// backend's fragment size, so df's arithmetic (f_blocks * f_frsize) works
// as before.
func plainStatfs(st *syscall.Statfs_t, l envelope.Layout) {
	unit := uint64(st.Frsize)
	if unit == 0 {
		unit = uint64(st.Bsize)
	}
	if unit == 0 {
		return
	}
	bs, sbs := uint64(l.BlockSize), uint64(l.SealedBlockSize())
	// c*bs/sbs without overflowing for the "plenty" counts of an S3 bucket.
	scale := func(c uint64) uint64 { return c/sbs*bs + c%sbs*bs/sbs }
	reserve := (uint64(l.HeaderSize)+unit-1)/unit + (sbs+unit-1)/unit + 1
	free := func(c uint64) uint64 {
		if c <= reserve {
			return 0
		}
		return scale(c - reserve)
	}
	st.Blocks = scale(st.Blocks)
	st.Bfree = min(free(st.Bfree), st.Blocks)
	st.Bavail = min(free(st.Bavail), st.Bfree)
}
