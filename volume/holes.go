package volume

import (
	"context"
	"errors"
	"fmt"
	"io"
	"syscall"

	"github.com/kmsfs/kmsfs/backend"
	"github.com/kmsfs/kmsfs/envelope"
)

// Holes of version 3 files (docs/FORMAT.md section 4).
//
// A block whose stored bytes are all zero is a hole: it reads as zeros, and
// where the backing file is sparse (backend.SparseFile) it costs no space.
// Every stored block binds the index of the stored block before it, so a
// stored block zeroed behind our back breaks the next stored block, and a
// hole is read only once the next stored block (the last block always is
// one) has opened with the stored block before the hole as its previous
// one. Making or filling a hole therefore reseals the next stored block, in
// the same intent (a KMI2 record) as the change itself.
//
// Holes are made only on backends whose files keep them (the local
// backend): elsewhere a file grows with encrypted zeros as in version 2,
// which is a version 3 file without holes.

// sparse says whether this file's holes cost no backing space, so that
// growing it leaves holes instead of encrypted zeros.
func (h *Handle) sparse(keys *envelope.FileKeys) bool {
	_, ok := h.f.(backend.SparseFile)
	return ok && keys.HasHoles()
}

// storedBlocks is the number of blocks of a stored file of cs bytes.
func (h *Handle) storedBlocks(cs int64) uint64 {
	l := h.v.layout
	if cs <= l.HeaderSize {
		return 0
	}
	return uint64((cs - l.HeaderSize + l.SealedBlockSize() - 1) / l.SealedBlockSize())
}

// blockOf is the block holding stored offset off (>= HeaderSize).
func (h *Handle) blockOf(off int64) uint64 {
	l := h.v.layout
	return uint64((off - l.HeaderSize) / l.SealedBlockSize())
}

// inGap says whether block i lies in a deferred gap (gaps.go): not yet
// written, but sealed around as if it were stored.
func (st *fileState) inGap(i uint64, bs int64) bool {
	return st.gapsOverlap(int64(i)*bs, int64(i+1)*bs)
}

// holeAt says whether stored block i (below the stored end) is a hole. It
// reads the block's nonce, and the rest only when the nonce is zero.
func (h *Handle) holeAt(i uint64) (bool, error) {
	l := h.v.layout
	var nonce [envelope.NonceSize]byte
	if err := h.readFull(nonce[:], l.BlockOffset(i)); err != nil {
		return false, err
	}
	if !envelope.IsHole(nonce[:]) {
		return false, nil
	}
	blk := make([]byte, l.SealedBlockSize())
	n, err := h.f.ReadAt(blk, l.BlockOffset(i))
	if err != nil && !errors.Is(err, io.EOF) {
		return false, err
	}
	return envelope.IsHole(blk[:n]), nil
}

// readFull reads len(p) stored bytes at off; fewer is corruption.
func (h *Handle) readFull(p []byte, off int64) error {
	n, err := h.f.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: stored file ends inside block data at %d", envelope.ErrCorrupt, off+int64(n))
	}
	return err
}

// prevStored is the nearest stored block before block i of a version 3
// file, or envelope.NoPrev: the previous-block index block i is (or is to
// be) sealed with. Blocks past the stored end are holes to be; blocks of a
// deferred gap count as stored (they were sealed around as if written).
// The content lock is held.
func (h *Handle) prevStored(i uint64) (uint64, error) {
	cs, err := h.cipherSize()
	if err != nil {
		return 0, err
	}
	nb := h.storedBlocks(cs)
	bs := h.v.layout.BlockSize
	j := i
	sf, sparse := h.f.(backend.SparseFile)
	for j > 0 {
		c := j - 1
		if h.st.inGap(c, bs) {
			return c, nil
		}
		if c >= nb {
			// Past the stored end: holes to be, but for gap blocks.
			j = h.st.gapAbove(nb, c, bs)
			continue
		}
		if c == nb-1 {
			// The last block is always stored.
			return c, nil
		}
		hole, err := h.holeAt(c)
		if err != nil {
			return 0, err
		}
		if !hole {
			return c, nil
		}
		if !sparse {
			j = c
			continue
		}
		// Skip the rest of the hole with SEEK_DATA: the last data before
		// block c is in the block that holds it or in an earlier one.
		at, err := h.lastDataBefore(sf, h.v.layout.BlockOffset(c))
		if err != nil {
			return 0, err
		}
		floor := uint64(0) // no data before c: only a gap can be stored
		if at >= 0 {
			floor = h.blockOf(at) + 1
		}
		// A gap between the data found and c counts as stored.
		j = h.st.gapAbove(floor, c, bs)
	}
	return envelope.NoPrev, nil
}

// gapAbove is one past the highest gap block in [floor, c), or floor when
// no gap has a block there.
func (st *fileState) gapAbove(floor, c uint64, bs int64) uint64 {
	j := floor
	for _, g := range st.gaps {
		if gb := uint64(g.hi/bs) - 1; gb < c && gb >= j && uint64(g.lo/bs) <= gb {
			j = gb + 1
		} else if gb >= c && uint64(g.lo/bs) < c && c > j {
			j = c // c-1 is in this gap
		}
	}
	return j
}

// lastDataBefore is the offset of the last byte before end (and at or after
// the first block) that may hold data, by SEEK_DATA and SEEK_HOLE over
// windows that double backwards, or -1 when there is none.
func (h *Handle) lastDataBefore(sf backend.SparseFile, end int64) (int64, error) {
	floor := h.v.layout.HeaderSize
	for w := int64(1 << 20); ; w *= 2 {
		lo := max(floor, end-w)
		d, err := sf.SeekData(lo)
		if err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		if err == nil && d < end {
			// Walk the extents of [d, end) to the last one.
			for {
				e, err := sf.SeekHole(d)
				if err != nil {
					return 0, err
				}
				if e >= end {
					return end - 1, nil
				}
				d2, err := sf.SeekData(e)
				if errors.Is(err, io.EOF) || (err == nil && d2 >= end) {
					return e - 1, nil
				}
				if err != nil {
					return 0, err
				}
				d = d2
			}
		}
		if lo == floor {
			return -1, nil
		}
	}
}

// errGapAhead: a hole's next stored block lies past a deferred gap, which
// must be closed before the hole can be vouched for.
var errGapAhead = errors.New("a deferred gap follows the hole")

// nextStored is the first stored block at or after block i of a version 3
// file of cs stored bytes. The last block is stored by definition (a hole
// there fails when it is opened), so there always is one below the end.
// It is errGapAhead when a deferred gap comes first.
func (h *Handle) nextStored(i uint64, cs int64) (uint64, error) {
	nb := h.storedBlocks(cs)
	if nb == 0 {
		return 0, fmt.Errorf("%w: no stored block after a hole", envelope.ErrCorrupt)
	}
	bs := h.v.layout.BlockSize
	gap := uint64(MaxFileSize / bs) // the first gap block at or after i
	for _, g := range h.st.gaps {
		if hi := uint64(g.hi / bs); hi > i {
			gap = min(gap, max(i, uint64(g.lo/bs)))
		}
	}
	sf, sparse := h.f.(backend.SparseFile)
	for i < nb-1 {
		if i >= gap {
			return 0, errGapAhead
		}
		if sparse {
			d, err := sf.SeekData(h.v.layout.BlockOffset(i))
			if errors.Is(err, io.EOF) {
				return nb - 1, nil
			}
			if err != nil {
				return 0, err
			}
			i = max(i, h.blockOf(d))
			if i >= gap {
				return 0, errGapAhead
			}
			if i >= nb-1 {
				break
			}
		}
		hole, err := h.holeAt(i)
		if err != nil {
			return 0, err
		}
		if !hole {
			return i, nil
		}
		i++
	}
	return nb - 1, nil
}

// openWithHoles decrypts the sealed blocks cbuf (block first onwards, as
// readBlocks read them) of a version 3 file of cs stored bytes into dst:
// runs of stored blocks are opened naming the stored block before them,
// holes read as zeros. A run that ends in holes is vouched for by the next
// stored block, which is opened too. final: cbuf ends with the file's last
// block, sealed as the last. prev is the stored block before block first
// when known (the caller read the block before), else it is looked up.
func (h *Handle) openWithHoles(keys *envelope.FileKeys, dst, cbuf []byte, first uint64, cs int64, final bool, prev uint64, known bool) ([]byte, error) {
	l := h.v.layout
	sbs := int(l.SealedBlockSize())
	n := (len(cbuf) + sbs - 1) / sbs
	block := func(i int) []byte { return cbuf[i*sbs : min((i+1)*sbs, len(cbuf))] }
	// prev, known: the stored block before block first+i
	prevOf := func() (uint64, error) {
		if !known {
			p, err := h.prevStored(first)
			if err != nil {
				return 0, err
			}
			prev, known = p, true
		}
		return prev, nil
	}
	start := len(dst)
	fail := func(err error) ([]byte, error) {
		clear(dst[start:])
		return nil, err
	}
	for i := 0; i < n; {
		k := i
		if envelope.IsHole(block(i)) {
			for k < n && envelope.IsHole(block(k)) {
				k++
			}
			if k == n && final {
				return fail(fmt.Errorf("block %d: %w (the file's last block is all zeros: a hole where a stored block must be)", first+uint64(n-1), envelope.ErrBlockAuth))
			}
			p, err := prevOf()
			if err != nil {
				return fail(err)
			}
			if k == n {
				if err := h.vouchHoles(keys, first+uint64(n), p, cs); err != nil {
					return fail(err)
				}
			}
			dst = append(dst, make([]byte, (k-i)*int(l.BlockSize))...)
			i = k
			continue
		}
		for k < n && !envelope.IsHole(block(k)) {
			k++
		}
		p, err := prevOf()
		if err != nil {
			return fail(err)
		}
		dst, err = keys.OpenBlocks(dst, cbuf[i*sbs:min(k*sbs, len(cbuf))], first+uint64(i), sbs, final && k == n, p)
		if err != nil {
			return fail(err)
		}
		prev, known = first+uint64(k-1), true
		i = k
	}
	return dst, nil
}

// vouchHoles checks the holes from block i up to the next stored block: that
// block must open naming prev, the stored block before the holes.
func (h *Handle) vouchHoles(keys *envelope.FileKeys, i, prev uint64, cs int64) error {
	j, err := h.nextStored(i, cs)
	if err != nil {
		return err
	}
	sealed, final, err := h.readSealed(j, cs)
	if err != nil {
		return err
	}
	plain, err := keys.OpenBlock(nil, sealed, j, final, prev)
	clear(plain)
	if err != nil {
		return fmt.Errorf("holes before block %d: %w", j, err)
	}
	return nil
}

// readSealed reads stored block j of a file of cs stored bytes, and says
// whether it is sealed as the file's last block.
func (h *Handle) readSealed(j uint64, cs int64) ([]byte, bool, error) {
	l := h.v.layout
	off := l.BlockOffset(j)
	end := min(off+l.SealedBlockSize(), cs)
	sealed := make([]byte, end-off)
	if err := h.readFull(sealed, off); err != nil {
		return nil, false, err
	}
	return sealed, end == cs && !h.st.openTail, nil
}

// resealPrev returns stored block j (of a file of cs stored bytes) sealed
// again naming newPrev instead of oldPrev as the stored block before it.
func (h *Handle) resealPrev(keys *envelope.FileKeys, j, oldPrev, newPrev uint64, cs int64) ([]byte, error) {
	sealed, final, err := h.readSealed(j, cs)
	if err != nil {
		return nil, err
	}
	plain, err := keys.OpenBlock(nil, sealed, j, final, oldPrev)
	if err != nil {
		return nil, err
	}
	defer clear(plain)
	return keys.SealBlock(nil, plain, j, final, newPrev)
}

// changeRanges makes several in-place changes of the stored file as one
// intent (a KMI2 record): replayed after a crash, all of them happen.
func (h *Handle) changeRanges(ctx context.Context, keys *envelope.FileKeys, ranges []intentRange) error {
	in := &intent{fileID: keys.FileID(), truncateTo: -1, more: ranges}
	done, err := announce(ctx, h.v.be, in)
	if err != nil {
		return err
	}
	if err := in.apply(h.f); err != nil {
		return err
	}
	return done()
}

// prevIfHoles is prevStored for a version 3 file, 0 (unused) otherwise.
func (h *Handle) prevIfHoles(keys *envelope.FileKeys, i uint64) (uint64, error) {
	if !keys.HasHoles() {
		return 0, nil
	}
	return h.prevStored(i)
}

// densePrev is the previous stored block of block i when the blocks before
// it are stored (or in a gap, sealed around as if they were).
func densePrev(i uint64) uint64 {
	if i == 0 {
		return envelope.NoPrev
	}
	return i - 1
}

// fillHoleReseal prepares the reseal that a write of blocks up to last (one
// past its last block) into a version 3 file of size bytes (cs stored)
// needs: when the block before last was a hole, the next stored block
// named the stored block before that hole as its previous one, and must now
// name last-1. It returns the resealed block as an intent range, or none.
func (h *Handle) fillHoleReseal(keys *envelope.FileKeys, last uint64, size, cs int64) ([]intentRange, error) {
	bs := h.v.layout.BlockSize
	if int64(last)*bs >= size || h.st.inGap(last-1, bs) {
		return nil, nil // nothing stored after the write
	}
	hole, err := h.holeAt(last - 1)
	if err != nil || !hole {
		return nil, err
	}
	j, err := h.nextStored(last, cs)
	if err != nil {
		return nil, err
	}
	// The blocks from last-1 to j-1 are holes: j's previous stored block is
	// the one before last-1.
	oldPrev, err := h.prevStored(last - 1)
	if err != nil {
		return nil, err
	}
	sealed, err := h.resealPrev(keys, j, oldPrev, last-1, cs)
	if err != nil {
		return nil, err
	}
	return []intentRange{{off: h.v.layout.BlockOffset(j), data: sealed}}, nil
}

// extendWithHoles grows a version 3 file on a sparse backend from size to
// newSize: the partial last block is completed with zeros, the whole blocks
// after it are left as holes (never written: the backing file keeps them
// sparse), and the new last block, which must be stored, is sealed with
// zeros after them. The content lock is held.
func (h *Handle) extendWithHoles(ctx context.Context, keys *envelope.FileKeys, size, newSize int64) error {
	bs := h.v.layout.BlockSize
	if rest := size % bs; rest != 0 {
		n := min(newSize, size-rest+bs) - size
		if err := h.writeLocked(ctx, keys, make([]byte, n), size, size); err != nil {
			return err
		}
		size += n
	}
	if size >= newSize {
		return nil
	}
	lastStart := (newSize - 1) / bs * bs
	return h.writeLocked(ctx, keys, make([]byte, newSize-lastStart), lastStart, lastStart)
}

// writeAfterHole writes p at off > size on a sparse version 3 file: the
// partial last block is completed, the whole blocks up to off's block are
// left as holes. The content lock is held.
func (h *Handle) writeAfterHole(ctx context.Context, keys *envelope.FileKeys, p []byte, off, size int64) error {
	bs := h.v.layout.BlockSize
	start := off - off%bs
	if start <= size {
		if err := h.extendLocked(ctx, keys, size, off); err != nil {
			return err
		}
		return h.writeLocked(ctx, keys, p, off, off)
	}
	if rest := size % bs; rest != 0 {
		// Completed with zeros (it held data: an ordinary rewrite).
		if err := h.writeLocked(ctx, keys, make([]byte, bs-rest), size, size); err != nil {
			return err
		}
	}
	buf := p
	if start < off {
		buf = make([]byte, off-start+int64(len(p)))
		copy(buf[off-start:], p)
	}
	return h.writeLocked(ctx, keys, buf, start, start)
}

// punchHole makes [off, end) of a version 3 file on a sparse backend read
// as zeros: the whole blocks in it (but the last block of the file, which
// is always stored) are punched out of the backing file, with the next
// stored block resealed to name the stored block before them, in one
// intent; the partial blocks at its edges are written with zeros unless
// they are holes already.
func (h *Handle) punchHole(ctx context.Context, off, end int64) error {
	if h.v.readOnly {
		return syscall.EROFS
	}
	if off < 0 || end <= off {
		return syscall.EINVAL
	}
	h.st.content.Lock()
	defer h.st.content.Unlock()
	keys, err := h.fileKeys(ctx, false)
	if err != nil {
		return err
	}
	if keys == nil {
		return nil // an empty file: nothing to punch
	}
	if !h.sparse(keys) {
		return syscall.EOPNOTSUPP
	}
	if err := h.fillGaps(ctx, 0, -1); err != nil {
		return err
	}
	size, err := h.Size()
	if err != nil {
		return err
	}
	end = min(end, size)
	if off >= end {
		return nil
	}
	bs := h.v.layout.BlockSize
	lastBlock := (size - 1) / bs
	a := (off + bs - 1) / bs
	b := min(end/bs, lastBlock)
	if a < b {
		if err := h.punchBlocks(ctx, keys, uint64(a), uint64(b)); err != nil {
			return err
		}
	}
	// The edges: what of [off, end) is not in the punched blocks.
	edges := [][2]int64{{off, min(end, a*bs)}, {max(off, max(a, b)*bs), end}}
	if a >= b {
		edges = [][2]int64{{off, end}}
	}
	for _, e := range edges {
		for lo := e[0]; lo < e[1]; {
			blk := lo / bs
			hi := min(e[1], (blk+1)*bs)
			hole := false
			if blk != lastBlock {
				if hole, err = h.holeAt(uint64(blk)); err != nil {
					return err
				}
			}
			if !hole {
				if err := h.writeAtOffset(ctx, make([]byte, hi-lo), lo, size); err != nil {
					return err
				}
			}
			lo = hi
		}
	}
	return nil
}

// punchBlocks punches blocks [a, b) (b at most the last block) out of a
// version 3 file, resealing the next stored block in the same intent.
func (h *Handle) punchBlocks(ctx context.Context, keys *envelope.FileKeys, a, b uint64) error {
	cs, err := h.cipherSize()
	if err != nil {
		return err
	}
	if first, err := h.nextStored(a, cs); err != nil || first >= b {
		return err // all holes already
	}
	j, err := h.nextStored(b, cs)
	if err != nil {
		return err
	}
	oldPrev, err := h.prevStored(j)
	if err != nil {
		return err
	}
	newPrev, err := h.prevStored(a)
	if err != nil {
		return err
	}
	sealed, err := h.resealPrev(keys, j, oldPrev, newPrev, cs)
	if err != nil {
		return err
	}
	l := h.v.layout
	return h.changeRanges(ctx, keys, []intentRange{
		{off: l.BlockOffset(a), holeLen: l.BlockOffset(b) - l.BlockOffset(a)},
		{off: l.BlockOffset(j), data: sealed},
	})
}
