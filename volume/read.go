package volume

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/kmsfs/kmsfs/envelope"
)

// bufPool holds block buffers for reads and writes (up to FUSE's MaxWrite
// plus one block of slack on each side), to keep the hot path free of
// large allocations.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 1<<20+64<<10); return &b }}

// readBlocks decrypts blocks [first, end) into dst (appending). A block
// short of the file's end stops the read (EOF); a block that fails
// authentication is an error. A run that reaches the end of the stored file
// (cipherSize) ends with its last block, which a version 2 file has sealed
// as the last unless an extension is under way (tail.go). The content lock
// is held.
func (h *Handle) readBlocks(keys *envelope.FileKeys, dst []byte, first, end uint64, cipherSize int64) ([]byte, error) {
	l := h.v.layout
	off := l.BlockOffset(first)
	stop := min(l.BlockOffset(end), cipherSize)
	if stop <= off {
		return dst, nil
	}
	// A version 3 block is opened naming the stored block before it: the
	// block before the run is read with it (one read, not two: on S3 a
	// second read is a second request), and it is that block unless it is
	// a hole.
	pre := int64(0)
	if keys.HasHoles() && first > 0 {
		pre = l.SealedBlockSize()
		off -= pre
	}
	cbp := bufPool.Get().(*[]byte)
	defer bufPool.Put(cbp)
	cbuf := (*cbp)[:0]
	if int64(cap(cbuf)) < stop-off {
		cbuf = make([]byte, 0, stop-off)
	}
	cbuf = cbuf[:stop-off]
	n, err := h.f.ReadAt(cbuf, off)
	if err != nil && !(errors.Is(err, io.EOF) && int64(n) == stop-off) {
		if !errors.Is(err, io.EOF) {
			return nil, err
		}
		cbuf = cbuf[:n]
	}
	final := stop == cipherSize && !h.st.openTail
	if keys.HasHoles() {
		prev := envelope.NoPrev
		if pre > 0 {
			if int64(len(cbuf)) < pre {
				return nil, fmt.Errorf("%w: stored file ends before block %d", envelope.ErrCorrupt, first)
			}
			if !envelope.IsHole(cbuf[:pre]) {
				prev = first - 1
			}
			cbuf = cbuf[pre:]
		}
		return h.openWithHoles(keys, dst, cbuf, first, cipherSize, final, prev, pre == 0 || prev != envelope.NoPrev)
	}
	return keys.OpenBlocks(dst, cbuf, first, int(l.SealedBlockSize()), final, 0)
}

// ReadAt reads plaintext at off. It returns io.EOF at the end of the file.
func (h *Handle) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	h.st.content.RLock()
	defer h.st.content.RUnlock()
	if s := h.st.stage; s != nil {
		if off >= int64(len(s.data)) {
			return 0, io.EOF
		}
		n := copy(p, s.data[off:])
		h.v.stats.bytesRead.Add(uint64(n))
		if n < len(p) {
			return n, io.EOF
		}
		return n, nil
	}
	bs := h.v.layout.BlockSize
	for h.st.gapsOverlap(off-off%bs, off+int64(len(p))) {
		if err := h.fillGapsShared(ctx, off-off%bs, off+int64(len(p))); err != nil {
			return 0, err
		}
	}
	n, err := h.readAtLocked(ctx, p, off)
	for errors.Is(err, errGapAhead) {
		// Holes of a version 3 file are vouched for by the next stored
		// block, past a gap: the gaps are closed (made holes) first.
		if err := h.fillGapsShared(ctx, 0, MaxFileSize); err != nil {
			return 0, err
		}
		n, err = h.readAtLocked(ctx, p, off)
	}
	return n, err
}

// readAtLocked is ReadAt once the gaps it reads are filled. The content lock
// is held (shared).
func (h *Handle) readAtLocked(ctx context.Context, p []byte, off int64) (int, error) {
	bs := h.v.layout.BlockSize
	cs, err := h.cipherSize()
	if err != nil {
		return 0, err
	}
	size, err := h.v.layout.PlainSize(cs)
	if err != nil {
		return 0, err
	}
	if off >= size {
		return 0, io.EOF
	}
	n := min(int64(len(p)), size-off)
	keys, err := h.fileKeys(ctx, false)
	if err != nil {
		return 0, err
	}
	if keys == nil {
		return 0, io.EOF
	}
	if keys.Version() == envelope.Version4 {
		return h.readUnits(keys, p, off, size)
	}
	first, end := h.v.layout.Blocks(off, n)
	if off%bs == 0 && (n%bs == 0 || off+n == size) {
		// The blocks decrypt to exactly p[:n] (the kernel's page-aligned
		// reads): decrypt straight into the reply, no bounce buffer.
		plain, err := h.readBlocks(keys, p[:0], first, end, cs)
		if err != nil {
			return 0, err
		}
		if int64(len(plain)) != n {
			return 0, fmt.Errorf("%w: file shorter than its size", envelope.ErrCorrupt)
		}
	} else {
		pbp := bufPool.Get().(*[]byte)
		defer bufPool.Put(pbp)
		plain, err := h.readBlocks(keys, (*pbp)[:0], first, end, cs)
		if err != nil {
			return 0, err
		}
		*pbp = plain[:0]
		skip := off - int64(first)*bs
		if int64(len(plain)) < skip+n {
			return 0, fmt.Errorf("%w: file shorter than its size", envelope.ErrCorrupt)
		}
		copy(p, plain[skip:skip+n])
	}
	h.v.stats.bytesRead.Add(uint64(n))
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}
