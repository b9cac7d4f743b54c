package volume

import (
	"context"
	"errors"
	"io"
	"syscall"

	"github.com/kmsfs/kmsfs/backend"
)

// lseek(2) whence values for holes (linux/fs.h).
const (
	SeekData = 3
	SeekHole = 4
)

// Seek answers lseek(2) SEEK_DATA and SEEK_HOLE in plaintext offsets: the
// first offset at or after off in data, or in a hole (the end of the file
// counts as one). Past the end both are ENXIO, as lseek(2) says. Only the
// holes of version 3 files on sparse backends are reported (docs/FORMAT.md
// section 4): every other file is data from start to end. The answer is a
// hint, as on any filesystem: reads still authenticate every hole.
func (h *Handle) Seek(ctx context.Context, off int64, whence int) (int64, error) {
	if whence != SeekData && whence != SeekHole {
		return 0, syscall.EINVAL
	}
	if off < 0 {
		return 0, syscall.ENXIO
	}
	h.st.content.Lock()
	defer h.st.content.Unlock()
	size, err := h.Size()
	if err != nil {
		return 0, err
	}
	if off >= size {
		return 0, syscall.ENXIO
	}
	keys, err := h.fileKeys(ctx, false)
	if err != nil {
		return 0, err
	}
	// A file held in memory or compressed (compress.go) has no holes.
	if h.st.stage != nil || keys == nil || !h.sparse(keys) {
		if whence == SeekData {
			return off, nil
		}
		return size, nil
	}
	// Deferred gaps become holes first (gaps.go): then the stored bytes
	// say which blocks are holes.
	if err := h.fillGaps(ctx, 0, -1); err != nil {
		return 0, err
	}
	cs, err := h.cipherSize()
	if err != nil {
		return 0, err
	}
	bs := h.v.layout.BlockSize
	i := uint64(off / bs)
	if whence == SeekData {
		j, err := h.nextStored(i, cs)
		if err != nil {
			return 0, err
		}
		return max(off, int64(j)*bs), nil
	}
	last := h.storedBlocks(cs) - 1
	sf := h.f.(backend.SparseFile)
	for i < last {
		hole, err := h.holeAt(i)
		if err != nil {
			return 0, err
		}
		if hole {
			return max(off, int64(i)*bs), nil
		}
		// The backing file's next hole starts in the next hole block, if
		// any: a block is a hole only where it was never written or was
		// punched, which leaves its whole filesystem blocks unallocated.
		p, err := sf.SeekHole(h.v.layout.BlockOffset(i))
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, err
		}
		i = max(i+1, h.blockOf(p))
	}
	return size, nil
}

// HasWriters says whether the file is open for writing through any handle
// of this volume.
func (h *Handle) HasWriters() bool {
	h.v.mu.Lock()
	defer h.v.mu.Unlock()
	return h.st.writers > 0
}
