package volume

import (
	"context"
	"fmt"
	"slices"

	"github.com/kmsfs/kmsfs/envelope"
)

// Deferred gaps (mounts with the writeback cache only).
//
// The kernel's writeback keeps up to max_background (12) WRITEs of a file in
// flight, and both the flusher and fsync send them, so a file written front
// to back reaches us with writes up to ~12 MiB ahead of ones still to come.
// Filling the gap before such a write with encrypted zeros, as a hole is
// filled, costs the zeros and then an in-place overwrite (journaled as an
// intent) when the missing write arrives; waiting for it instead can stall:
// the waiting requests hold the kernel's background slots the missing one
// needs. So on such a mount a write past the end is written at once at its
// own blocks, the skipped whole blocks are left as a hole in the backing file
// and remembered as a gap, and a later write into a gap is a fresh write (no
// intent: nothing was there). Gaps still open when the data must be whole on
// the backend are filled with encrypted zeros: before fsync, before a
// backend flush or the last close, before a truncation, and before a read
// of a gap block. A crash can leave a gap unfilled: its blocks then fail
// authentication and read as EIO (never as other data); only data written
// after the last fsync can be in one, as with any crash.

// gapRange is a run of whole blocks [lo, hi) (plaintext offsets, multiples
// of the block size) inside the file that were never written.
type gapRange struct{ lo, hi int64 }

// gapIndex returns the gap that holds every block of [first, last), or -1.
func (st *fileState) gapIndex(first, last int64) int {
	for i, g := range st.gaps {
		if g.lo <= first && last <= g.hi {
			return i
		}
	}
	return -1
}

// gapsOverlap says whether any gap has a block in [lo, hi).
func (st *fileState) gapsOverlap(lo, hi int64) bool {
	for _, g := range st.gaps {
		if g.lo < hi && lo < g.hi {
			return true
		}
	}
	return false
}

// removeGap takes [lo, hi) out of gap i (which holds it), splitting it when
// the range is in its middle.
func (st *fileState) removeGap(i int, lo, hi int64) {
	g := st.gaps[i]
	var rest []gapRange
	if g.lo < lo {
		rest = append(rest, gapRange{g.lo, lo})
	}
	if hi < g.hi {
		rest = append(rest, gapRange{hi, g.hi})
	}
	st.gaps = append(st.gaps[:i], append(rest, st.gaps[i+1:]...)...)
}

// writeIntoGap writes p at off when every block it touches lies in one gap:
// the blocks are sealed with zeros around p and written without an intent,
// and leave the gap. It reports false (and writes nothing) otherwise.
func (h *Handle) writeIntoGap(ctx context.Context, keys *envelope.FileKeys, p []byte, off int64) (bool, error) {
	l := h.v.layout
	bs := l.BlockSize
	first, last := l.Blocks(off, int64(len(p)))
	lo, hi := int64(first)*bs, int64(last)*bs
	i := h.st.gapIndex(lo, hi)
	if i < 0 {
		return false, nil
	}
	// Whole blocks (the writeback cache's page-aligned writes) are sealed
	// straight from p; otherwise the blocks are p with zeros around it.
	plain := p
	if off != lo || off+int64(len(p)) != hi {
		pbp := bufPool.Get().(*[]byte)
		defer bufPool.Put(pbp)
		plain = slices.Grow((*pbp)[:0], int(hi-lo))[:hi-lo]
		clear(plain[:off-lo])
		copy(plain[off-lo:], p)
		clear(plain[off-lo+int64(len(p)):])
		*pbp = plain[:0]
	}
	sbp := bufPool.Get().(*[]byte)
	defer bufPool.Put(sbp)
	// A gap is always followed by data: none of its blocks is the last.
	sealed, err := keys.SealBlocks((*sbp)[:0], plain, first, int(bs), false, densePrev(first))
	if err != nil {
		return true, err
	}
	*sbp = sealed[:0]
	if err := h.changeInPlace(ctx, keys, l.BlockOffset(first), sealed, 0, -1); err != nil {
		return true, err
	}
	h.st.removeGap(i, lo, hi)
	return true, nil
}

// writePastEnd writes p at off > size, leaving the whole blocks between
// the end of the file and the block of off as a gap. A partial last block
// at size is completed with zeros first (it held data: an ordinary,
// journaled rewrite).
func (h *Handle) writePastEnd(ctx context.Context, keys *envelope.FileKeys, p []byte, off, size int64) error {
	bs := h.v.layout.BlockSize
	if rest := size % bs; rest != 0 {
		next := size - rest + bs
		if next >= off {
			if err := h.extendLocked(ctx, keys, size, off); err != nil {
				return err
			}
			return h.writeLocked(ctx, keys, p, off, off)
		}
		if err := h.extendLocked(ctx, keys, size, next); err != nil {
			return err
		}
		size = next
	}
	start := off - off%bs
	buf := p
	if start < off {
		buf = make([]byte, off-start+int64(len(p)))
		copy(buf[off-start:], p)
	}
	// The gap is recorded first: a version 3 file's block at start is
	// sealed naming the gap's last block as its previous one (gaps count
	// as stored until they are filled or closed as holes).
	if start > size {
		h.st.gaps = append(h.st.gaps, gapRange{size, start})
		h.st.gapWriter = h
	}
	// Written as an append at start: nothing is read back, nothing replaced.
	if err := h.writeLocked(ctx, keys, buf, start, start); err != nil {
		if start > size {
			h.st.gaps = h.st.gaps[:len(h.st.gaps)-1]
		}
		return err
	}
	return nil
}

// fillGaps writes encrypted zeros into every gap with a block in [lo, hi)
// (all gaps when hi < 0), or on a sparse version 3 file makes them holes.
// The content lock is held.
func (h *Handle) fillGaps(ctx context.Context, lo, hi int64) error {
	if len(h.st.gaps) == 0 {
		return nil
	}
	keys, err := h.fileKeys(ctx, false)
	if err != nil {
		return err
	}
	if keys == nil {
		return fmt.Errorf("%w: gaps in a file without a header", envelope.ErrCorrupt)
	}
	w := h
	if !h.writable {
		w = h.st.gapWriter
	}
	if w == nil {
		// Its writer closed without managing to fill it (see Close).
		return fmt.Errorf("%w: hole left by a failed fill", envelope.ErrCorrupt)
	}
	l := h.v.layout
	const chunk = 1 << 20
	var zeros []byte
	var kept []gapRange
	for i, g := range h.st.gaps {
		if hi >= 0 && !(g.lo < hi && lo < g.hi) {
			kept = append(kept, g)
			continue
		}
		if zeros == nil {
			zeros = make([]byte, chunk)
		}
		if w.sparse(keys) {
			// A version 3 file on a sparse backend keeps the gap as a
			// hole: only the block after it is sealed again.
			if err := w.closeGap(ctx, keys, g); err != nil {
				h.st.gaps = append(append(kept, g), h.st.gaps[i+1:]...)
				return fmt.Errorf("close hole: %w", err)
			}
			continue
		}
		for at := g.lo; at < g.hi; at += chunk {
			n := min(g.hi-at, chunk)
			blockNo := uint64(at / l.BlockSize)
			sealed, err := keys.SealBlocks(nil, zeros[:n], blockNo, int(l.BlockSize), false, densePrev(blockNo))
			if err == nil {
				err = w.changeInPlace(ctx, keys, l.BlockOffset(blockNo), sealed, 0, -1)
			}
			if err != nil {
				// What is not filled stays a gap, so that nothing reads it.
				h.st.gaps = append(append(kept, gapRange{at, g.hi}), h.st.gaps[i+1:]...)
				return fmt.Errorf("fill hole: %w", err)
			}
		}
	}
	h.st.gaps = kept
	if len(kept) == 0 {
		h.st.gapWriter = nil
	}
	return nil
}

// fillGapsShared fills the gaps a reader is about to read, for a caller
// holding the read lock: it trades it for the write lock and back.
func (h *Handle) fillGapsShared(ctx context.Context, lo, hi int64) error {
	if !h.st.gapsOverlap(lo, hi) {
		return nil
	}
	h.st.content.RUnlock()
	h.st.content.Lock()
	err := h.fillGaps(ctx, lo, hi)
	h.st.content.Unlock()
	h.st.content.RLock()
	return err
}

// closeGap makes gap g of a version 3 file a hole: the block after it (a
// gap is always followed by data), sealed naming the gap's last block as
// its previous one, is sealed again naming the stored block before the gap.
// g is still in the gap list while the previous block is looked up, which
// is found below g.lo. The content lock is held.
func (h *Handle) closeGap(ctx context.Context, keys *envelope.FileKeys, g gapRange) error {
	bs := h.v.layout.BlockSize
	cs, err := h.cipherSize()
	if err != nil {
		return err
	}
	j := uint64(g.hi / bs)
	prev, err := h.prevStored(uint64(g.lo / bs))
	if err != nil {
		return err
	}
	sealed, err := h.resealPrev(keys, j, j-1, prev, cs)
	if err != nil {
		return err
	}
	return h.changeInPlace(ctx, keys, h.v.layout.BlockOffset(j), sealed, int64(len(sealed)), -1)
}
