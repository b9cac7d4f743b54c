package volume

import (
	"context"
	"fmt"
	"syscall"

	"github.com/kmsfs/kmsfs/backend"
	"github.com/kmsfs/kmsfs/envelope"
)

// writeBehindBytes is how much sequentially written ciphertext accumulates
// before its writeback is started: large enough that the disk gets long
// runs, small enough that the final fsync of a large file waits for little.
const writeBehindBytes = 8 << 20

// WriteAt writes plaintext at off (at the end with O_APPEND). Writing past
// the end fills the gap with encrypted zero blocks: holes are stored, so a
// zeroed-out block is still detected as tampering. A gap of up to
// maxDeferredGap is filled later, or by the writes it is waiting for (see
// gaps.go).
func (h *Handle) WriteAt(ctx context.Context, p []byte, off int64) (int, error) {
	if h.v.readOnly {
		return 0, syscall.EROFS
	}
	h.st.content.Lock()
	defer h.st.content.Unlock()
	size, err := h.Size()
	if err != nil {
		return 0, err
	}
	if h.append {
		off = size
	}
	if staged, spilled, err := h.stageWrite(ctx, p, off); err != nil {
		return 0, err
	} else if staged {
		return len(p), nil
	} else if spilled {
		// The stage was written out in the block layout (the file
		// outgrew it): that is the size now.
		if size, err = h.Size(); err != nil {
			return 0, err
		}
	}
	if err := h.writeAtOffset(ctx, p, off, size); err != nil {
		return 0, err
	}
	return len(p), nil
}

// writeAtOffset is WriteAt at off, for a file of size bytes. The content
// lock is held.
func (h *Handle) writeAtOffset(ctx context.Context, p []byte, off, size int64) error {
	end := off + int64(len(p))
	if end > MaxFileSize {
		return syscall.EFBIG
	}
	keys, err := h.fileKeys(ctx, true)
	if err != nil {
		return err
	}
	if len(h.st.gaps) > 0 && len(p) > 0 {
		bs := h.v.layout.BlockSize
		lo, hi := off-off%bs, (end+bs-1)/bs*bs
		if h.st.gapsOverlap(lo, hi) {
			done, err := h.writeIntoGap(ctx, keys, p, off)
			if err != nil {
				return err
			}
			if done {
				h.v.stats.bytesWritten.Add(uint64(len(p)))
				return nil
			}
			if err := h.fillGaps(ctx, lo, hi); err != nil {
				return err
			}
		}
		if keys.HasHoles() && off < size {
			// A write inside a version 3 file may reseal the next stored
			// block, which is found past any gap only once gaps are holes.
			if err := h.fillGaps(ctx, 0, -1); err != nil {
				return err
			}
		}
	}
	finish := noFinish
	if end > size {
		if finish, err = h.beginExtend(ctx, keys, size); err != nil {
			return err
		}
	}
	err = h.writeAtLocked(ctx, keys, p, off, size)
	if ferr := finish(err == nil); err == nil {
		err = ferr
	}
	if err != nil {
		return err
	}
	if end >= size {
		h.writeBehind(h.v.layout.CipherSize(end, true))
	}
	h.v.stats.bytesWritten.Add(uint64(len(p)))
	return nil
}

// writeAtLocked is WriteAt's write once the gaps it meets are dealt with:
// past the end (leaving a gap, or filling the hole first) or over the file.
func (h *Handle) writeAtLocked(ctx context.Context, keys *envelope.FileKeys, p []byte, off, size int64) error {
	switch {
	case off > size && off-size <= maxDeferredGap && len(p) > 0:
		return h.writePastEnd(ctx, keys, p, off, size)
	case off > size && h.sparse(keys) && len(p) > 0:
		// Whole blocks skipped become holes at once: only the partial
		// last block is completed, then p is written after the hole.
		return h.writeAfterHole(ctx, keys, p, off, size)
	case off > size:
		if err := h.extendLocked(ctx, keys, size, off); err != nil {
			return err
		}
		size = off
	}
	return h.writeLocked(ctx, keys, p, off, size)
}

// maxDeferredGap is the largest gap a write past the end leaves to be
// filled later: ample for the writeback cache's reordering (about 12 MiB),
// small enough that filling it at close is quick. A larger hole is filled
// at once, after a free-space check (extendLocked).
const maxDeferredGap = 64 << 20

// writeBehind starts writeback of what a write that ended at the end of the
// file (stored size cipherEnd) added, once that is writeBehindBytes: a file
// written front to back is then on its way to the disk while it is being
// written, as with a plain file written by cp or dd, instead of all at the
// fsync or close. Random writes inside a file are left to the page cache.
// The content lock is held.
func (h *Handle) writeBehind(cipherEnd int64) {
	wb, ok := h.f.(backend.WriteBehinder)
	if !ok {
		return
	}
	st := h.st
	if st.behindTo > cipherEnd {
		st.behindTo = cipherEnd // truncated since
	}
	if cipherEnd-st.behindTo < writeBehindBytes {
		return
	}
	// Failure only means the data waits for the kernel's own writeback.
	if err := wb.WriteBehind(st.behindTo, cipherEnd-st.behindTo); err != nil {
		h.v.log.Debug("write-behind failed", "path", h.name, "err", err)
	}
	st.behindTo = cipherEnd
}

// writeLocked writes p at off <= size as whole sealed blocks: the first and
// last blocks are read, modified and resealed when p covers them partly.
// A write that extends a version 2 file ending on a block boundary follows
// beginExtend, which resealed its old last block as followed by more.
func (h *Handle) writeLocked(ctx context.Context, keys *envelope.FileKeys, p []byte, off, size int64) error {
	if len(p) == 0 {
		return nil
	}
	l := h.v.layout
	bs := l.BlockSize
	end := off + int64(len(p))
	first, last := l.Blocks(off, int64(len(p)))
	regionStart := int64(first) * bs
	regionEnd := min(int64(last)*bs, max(end, size))
	pbp := bufPool.Get().(*[]byte)
	defer bufPool.Put(pbp)
	buf := (*pbp)[:0]
	cs := l.CipherSize(size, true)
	var err error
	// Existing plaintext of the first block, when p starts inside it.
	readFirst := off > regionStart && regionStart < size
	if readFirst {
		if buf, err = h.readBlocks(keys, buf, first, first+1, cs); err != nil {
			return err
		}
	}
	need := int(regionEnd - regionStart)
	// When p is exactly the blocks (page-aligned writes, appends of whole
	// blocks), it is sealed as it is, without a copy.
	whole := off == regionStart && end == regionEnd
	if whole {
		buf = p
	} else if cap(buf) < need {
		nb := make([]byte, len(buf), need)
		copy(nb, buf)
		buf = nb
	}
	if !whole {
		buf = buf[:need]
		copy(buf[off-regionStart:], p)
	}
	// Existing plaintext after p in the last block, unless that block is the
	// first one and was read above (p overwrote only its middle then). Every
	// other byte of buf comes from p: off <= size, so nothing stale from the
	// pool reaches a sealed block.
	if end < regionEnd && !(last-1 == first && readFirst) {
		lastStart := int64(last-1) * bs
		tail, err := h.readBlocks(keys, nil, last-1, last, cs)
		if err != nil {
			return err
		}
		if int64(len(tail)) < regionEnd-lastStart {
			return fmt.Errorf("%w: block %d shorter than the file size says", envelope.ErrCorrupt, last-1)
		}
		copy(buf[end-regionStart:], tail[end-lastStart:regionEnd-lastStart])
	}
	newSize := max(end, size)
	holdsLast := regionEnd == newSize && keys.MarksEnd()
	final := holdsLast && tailFinal(newSize, bs, end > size, h.st.openTail)
	var prev uint64
	var after []intentRange
	if keys.HasHoles() {
		if prev, err = h.prevStored(first); err != nil {
			return err
		}
		if after, err = h.fillHoleReseal(keys, last, size, cs); err != nil {
			return err
		}
	}
	sbp := bufPool.Get().(*[]byte)
	defer bufPool.Put(sbp)
	sealed, err := keys.SealBlocks((*sbp)[:0], buf, first, int(bs), final, prev)
	if err != nil {
		return err
	}
	*sbp = sealed[:0]
	if !whole {
		*pbp = buf[:0]
	}
	if len(after) > 0 {
		// The write fills a hole: the next stored block names the last
		// block of the write as its previous one, in the same intent.
		if err := h.changeRanges(ctx, keys, append([]intentRange{{off: l.BlockOffset(first), data: sealed}}, after...)); err != nil {
			return err
		}
	} else if err := h.changeInPlace(ctx, keys, l.BlockOffset(first), sealed, cs-l.BlockOffset(first), -1); err != nil {
		return err
	}
	if holdsLast {
		h.st.openTail = !final
		h.st.tailSynced = h.st.tailSynced && !final
	}
	return nil
}

// MaxFileSize is the largest plaintext file kmsfs makes: ext4's limit with
// 4 KiB blocks (16 TiB). Beyond it writes and truncates fail with EFBIG, as
// on ext4, instead of starting to fill an impossible hole.
const MaxFileSize = 1 << 44

// extendLocked grows the file from size to newSize with zeros, in chunks so
// that a large hole does not need a large buffer. Holes are stored as
// encrypted zeros, so a large one is checked against the free space first
// (ENOSPC before writing, not after filling the disk) and the filling stops
// when the request is cancelled.
func (h *Handle) extendLocked(ctx context.Context, keys *envelope.FileKeys, size, newSize int64) error {
	if newSize > MaxFileSize {
		return syscall.EFBIG
	}
	l := h.v.layout
	if h.sparse(keys) && !h.st.allocating {
		return h.extendWithHoles(ctx, keys, size, newSize)
	}
	if need := l.CipherSize(newSize, true) - l.CipherSize(size, true); need > 64<<20 {
		var st syscall.Statfs_t
		if err := h.v.be.Statfs(ctx, &st); err == nil && uint64(need) > st.Bavail*uint64(st.Bsize) {
			return syscall.ENOSPC
		}
	}
	const chunk = 1 << 20
	zeros := make([]byte, chunk)
	for size < newSize {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(newSize-size, chunk-size%l.BlockSize)
		if err := h.writeLocked(ctx, keys, zeros[:n], size, size); err != nil {
			return err
		}
		size += n
	}
	return nil
}

// Truncate sets the plaintext size.
func (h *Handle) Truncate(ctx context.Context, newSize int64) error {
	if h.v.readOnly {
		return syscall.EROFS
	}
	h.st.content.Lock()
	defer h.st.content.Unlock()
	if staged, err := h.stageTruncate(ctx, newSize); staged || err != nil {
		return err
	}
	size, err := h.Size()
	if err != nil {
		return err
	}
	// A sequential run written after a cut starts at the cut.
	h.st.behindTo = min(h.st.behindTo, h.v.layout.CipherSize(newSize, true))
	if newSize == 0 {
		h.st.gaps = nil
	} else if err := h.fillGaps(ctx, 0, -1); err != nil {
		return err
	}
	switch {
	case newSize == size:
		return nil
	case newSize == 0:
		// Drop the header too: the next write starts a new key.
		h.dropKeys()
		h.st.openTail, h.st.tailSynced = false, false
		return h.f.Truncate(0)
	case newSize > size:
		keys, err := h.fileKeys(ctx, true)
		if err != nil {
			return err
		}
		finish, err := h.beginExtend(ctx, keys, size)
		if err != nil {
			return err
		}
		err = h.extendLocked(ctx, keys, size, newSize)
		if ferr := finish(err == nil); err == nil {
			err = ferr
		}
		return err
	}
	keys, err := h.fileKeys(ctx, false)
	if err != nil {
		return err
	}
	l := h.v.layout
	if rest := newSize % l.BlockSize; rest != 0 {
		// The new last block is partial: reseal its first rest bytes.
		blockNo := uint64(newSize / l.BlockSize)
		plain, err := h.readBlocks(keys, nil, blockNo, blockNo+1, l.CipherSize(size, true))
		if err != nil {
			return err
		}
		prev, err := h.prevIfHoles(keys, blockNo)
		if err != nil {
			return err
		}
		sealed, err := keys.SealBlock(nil, plain[:rest], blockNo, true, prev)
		if err != nil {
			return err
		}
		// Truncate, then rewrite the new last block: a crash between the
		// two would leave a cut block, so the pair is one intent.
		if err := h.changeInPlace(ctx, keys, l.BlockOffset(blockNo), sealed, int64(len(sealed)), l.CipherSize(newSize, true)); err != nil {
			return err
		}
		h.st.openTail = false
		return nil
	}
	if keys.MarksEnd() {
		// The new last block was sealed as followed by more: reseal it as
		// the last, in the same intent as the cut.
		return h.cutAtBlock(ctx, keys, newSize, size)
	}
	return h.f.Truncate(l.CipherSize(newSize, true))
}

// fallocate(2) modes (linux/falloc.h).
const (
	fallocKeepSize  = 0x01
	fallocPunchHole = 0x02
	fallocZeroRange = 0x10
)

// Allocate implements fallocate(2) mode 0 (reserve, growing the size),
// FALLOC_FL_KEEP_SIZE (a no-op: space is reserved by writing, and blocks
// past the end would be read as a torn file), FALLOC_FL_ZERO_RANGE, with
// or without KEEP_SIZE: the range is written as encrypted zeros, which is
// what the mode promises (zeros, with the space allocated), and
// FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE (the only form Linux passes on)
// on version 3 files of backends with sparse files (holes.go). Other modes,
// and PUNCH_HOLE where stored files cannot have holes (versions 1 and 2,
// docs/FORMAT.md section 4, and backends without sparse files), are
// ENOTSUP.
func (h *Handle) Allocate(ctx context.Context, off, n int64, mode uint32) error {
	if mode != fallocKeepSize {
		// The block layout serves these: a file held in memory or
		// compressed is written out in it first (compress.go).
		h.st.content.Lock()
		err := h.unstage(ctx)
		h.st.content.Unlock()
		if err != nil {
			return err
		}
	}
	if mode&fallocZeroRange != 0 && mode&^(fallocZeroRange|fallocKeepSize) == 0 {
		return h.zeroRange(ctx, off, off+n, mode&fallocKeepSize != 0)
	}
	if mode == fallocPunchHole|fallocKeepSize {
		return h.punchHole(ctx, off, off+n)
	}
	switch mode {
	case 0:
		size, err := h.Size()
		if err != nil {
			return err
		}
		if off+n > size {
			// posix_fallocate promises that writes into the range will
			// not fail for lack of space: the growth is written as
			// encrypted zeros, not left as holes.
			h.st.content.Lock()
			h.st.allocating = true
			h.st.content.Unlock()
			defer func() {
				h.st.content.Lock()
				h.st.allocating = false
				h.st.content.Unlock()
			}()
			return h.Truncate(ctx, off+n)
		}
		return nil
	case fallocKeepSize:
		return nil
	}
	return syscall.EOPNOTSUPP
}

// zeroRange writes zeros over [off, end), growing the file to end unless
// keepSize (then only the part below the size is zeroed).
func (h *Handle) zeroRange(ctx context.Context, off, end int64, keepSize bool) error {
	if h.v.readOnly {
		return syscall.EROFS
	}
	if off < 0 || end <= off {
		return syscall.EINVAL
	}
	h.st.content.Lock()
	defer h.st.content.Unlock()
	size, err := h.Size()
	if err != nil {
		return err
	}
	if keepSize {
		end = min(end, size)
	}
	const chunk = 1 << 20
	zeros := make([]byte, min(chunk, max(end-off, 0)))
	for at := off; at < end; {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(end-at, chunk-at%chunk)
		if err := h.writeAtOffset(ctx, zeros[:n], at, size); err != nil {
			return err
		}
		at += n
		size = max(size, at)
	}
	return nil
}
