package volume

import (
	"context"
	"syscall"

	"github.com/kmsfs/kmsfs/backend"
)

// Handle is one open plaintext file.
type Handle struct {
	v      *Volume
	name   string
	f      backend.File
	st     *fileState
	append bool
	// writable: opened for writing (the backend file accepts writes).
	writable bool
	// opened is the backing file's stat as the open found it.
	opened syscall.Stat_t
}

// OpenFile opens (or with O_CREAT creates) the regular file name. flags are
// open(2) flags; O_TRUNC and O_APPEND are applied to the plaintext.
func (v *Volume) OpenFile(ctx context.Context, name string, flags int, mode uint32, owner *backend.Owner) (*Handle, error) {
	if v.readOnly && (flags&syscall.O_ACCMODE != syscall.O_RDONLY || flags&(syscall.O_CREAT|syscall.O_TRUNC) != 0) {
		return nil, syscall.EROFS
	}
	// O_TRUNC is applied below under the file's content lock, not by the
	// backend: a backend truncate would cut the header out from under a
	// writer that holds the lock on another handle.
	f, err := v.be.Open(ctx, name, backendOpenFlags(flags), mode, owner)
	if err != nil {
		return nil, err
	}
	var sst syscall.Stat_t
	if err := f.Stat(&sst); err != nil {
		f.Close()
		return nil, err
	}
	h := &Handle{v: v, name: name, f: f, st: v.acquire(sst.Ino), append: flags&syscall.O_APPEND != 0,
		writable: flags&syscall.O_ACCMODE != syscall.O_RDONLY, opened: sst}
	if h.writable {
		v.mu.Lock()
		h.st.writers++
		v.mu.Unlock()
	}
	v.stats.filesOpened.Add(1)
	if flags&syscall.O_TRUNC != 0 && sst.Size != 0 {
		// Truncating to 0 drops the header too: the next write makes a new
		// header with a new data key, as an S3 PUT over an object gets one.
		if err := h.Truncate(ctx, 0); err != nil {
			h.Close()
			return nil, err
		}
	}
	return h, nil
}

// backendOpenFlags are the open(2) flags of a plaintext open as the backing
// file gets them. O_TRUNC and O_APPEND apply to the plaintext (see
// OpenFile). O_DIRECT is the kernel's business, not the backing file's: the
// kernel already sends an O_DIRECT opener's reads and writes to us
// uncached, at the opener's offsets and sizes, and we turn each into
// whole sealed blocks at HeaderSize + k*SealedBlockSize (4124-byte blocks
// after a 1024-byte header by default). Those never meet the backing
// device's alignment, so an O_DIRECT backing file refused almost every
// write with EINVAL (only runs that happened to be a multiple of 512 bytes
// long, such as 256 blocks, went through).
func backendOpenFlags(flags int) int {
	return flags &^ (syscall.O_APPEND | syscall.O_TRUNC | syscall.O_DIRECT)
}

// OpenStat is the backing file's stat as the open found it, before any
// read or write through the handle: its times decide whether opening it
// to read moves its atime (fs/atime.go), at no extra system call. The
// size is the stored file's.
func (h *Handle) OpenStat() *syscall.Stat_t { return &h.opened }

// AccessOpen records an access to the file through its open backing file
// where the backend can (backend.OpenAccesser); false sends the caller to
// the backend's Accesser.
func (h *Handle) AccessOpen(st *syscall.Stat_t) (bool, error) {
	if oa, ok := h.f.(backend.OpenAccesser); ok {
		return oa.AccessOpen(st)
	}
	return false, nil
}

// Name is the path the handle was opened with, for log lines.
func (h *Handle) Name() string { return h.name }

func (h *Handle) cipherSize() (int64, error) {
	var st syscall.Stat_t
	if err := h.f.Stat(&st); err != nil {
		return 0, err
	}
	return st.Size, nil
}

// Size returns the plaintext size.
func (h *Handle) Size() (int64, error) {
	if n, ok := h.st.stagedSize(); ok {
		return n, nil
	}
	cs, err := h.cipherSize()
	if err != nil {
		return 0, err
	}
	return h.v.layout.PlainSize(cs)
}

// Stat returns the backend stat with the plaintext size filled in.
func (h *Handle) Stat(st *syscall.Stat_t) error {
	// The stage first: a write-out between the two would leave a stat of
	// the stored file from before it.
	staged, isStaged := h.st.stagedSize()
	if err := h.f.Stat(st); err != nil {
		return err
	}
	if isStaged {
		st.Size = staged
		return nil
	}
	st.Size = h.v.PlainSize(h.name, st.Size)
	return nil
}

// Sync makes written data durable.
func (h *Handle) Sync(ctx context.Context) error {
	if err := h.writeOutLocked(ctx); err != nil {
		return err
	}
	if err := h.fillAllGaps(ctx); err != nil {
		return err
	}
	if !h.writable {
		// A read-only handle cannot seal an open tail (tail.go): note
		// that its last block becomes durable unsealed.
		h.st.content.Lock()
		h.st.tailSynced = h.st.openTail
		h.st.content.Unlock()
	}
	defer h.holdForUpload()()
	return h.f.Sync()
}

// fillAllGaps fills the file's gaps (gaps.go) and, through a writable
// handle, seals its end (tail.go) before the backend must hold the whole
// file.
func (h *Handle) fillAllGaps(ctx context.Context) error {
	h.st.content.Lock()
	defer h.st.content.Unlock()
	if err := h.fillGaps(ctx, 0, -1); err != nil {
		return err
	}
	if !h.writable {
		return nil
	}
	return h.finishTail(ctx)
}

// Close releases the handle; the file's keys are zeroed when its last
// handle closes.
//
// The shared state is released before the backing file is closed: once it
// is closed the backend may hand its inode number to a new file, which must
// not find this file's state (and keys) under that number.
func (h *Handle) Close() error {
	if h.writable {
		h.st.content.Lock()
		if s := h.st.stage; s != nil && s.dirty {
			// A file held in memory (compress.go): the workers write it
			// out and finish this close (writeout.go); on a backend that
			// uploads at close, the close does (close-to-open: a
			// truncate(2) by path, for one, has no FLUSH).
			if h.v.outq != nil && !h.NeedsFlush() && h.v.outq.offer(h, int64(len(s.data))) {
				h.st.content.Unlock()
				h.v.mu.Lock()
				h.st.writers--
				h.v.mu.Unlock()
				return nil
			}
			h.closeStage(context.Background())
		}
		// Release has no request context; the keys are loaded already.
		err := h.fillGaps(context.Background(), 0, -1)
		// Never fill through this handle once its descriptor is closed:
		// the number may then belong to another file.
		if h.st.gapWriter == h {
			h.st.gapWriter = nil
		}
		if err != nil {
			h.v.log.Error("close: holes left unfilled read as EIO", "path", "/"+h.name, "err", err)
		} else if err := h.finishTail(context.Background()); err != nil {
			h.v.log.Error("close: the file's last block could not be sealed as the last; it reads as EIO", "path", "/"+h.name, "err", err)
		}
		h.st.content.Unlock()
		h.v.mu.Lock()
		h.st.writers--
		h.v.mu.Unlock()
	}
	h.v.release(h.st)
	return h.f.Close()
}

// NeedsFlush says whether Flush does anything for this file: only for
// backends that stage writes until close.
func (h *Handle) NeedsFlush() bool {
	_, ok := h.f.(backend.Flusher)
	return ok
}

// Flush runs at close(2): backends that stage writes (S3) upload here, so a
// failed upload is reported to the closing application.
//
// A file held in memory (compress.go) is stored first, so that an open
// elsewhere after this close reads it (close-to-open). The upload runs
// under the content lock held shared: a write-out by another handle of the
// file, which replaces the stored file in steps, is never uploaded half
// done.
func (h *Handle) Flush(ctx context.Context) error {
	if fl, ok := h.f.(backend.Flusher); ok {
		if err := h.writeOutLocked(ctx); err != nil {
			return err
		}
		if err := h.fillAllGaps(ctx); err != nil {
			return err
		}
		defer h.holdForUpload()()
		return fl.Flush()
	}
	return nil
}

// holdForUpload takes the content lock shared, on a compressing volume
// whose backend uploads the file whole (S3, shared), for the upload of a
// flush or fsync; it returns the unlock.
func (h *Handle) holdForUpload() func() {
	if _, ok := h.f.(backend.Flusher); !ok || h.v.compressLevel == 0 {
		return func() {}
	}
	h.st.content.RLock()
	return h.st.content.RUnlock
}

// writeOutLocked writes out the file's stage if it is dirty.
func (h *Handle) writeOutLocked(ctx context.Context) error {
	if h.st.stageLen.Load() == 0 {
		return nil
	}
	h.st.content.Lock()
	defer h.st.content.Unlock()
	if h.st.stage == nil || !h.st.stage.dirty {
		return nil
	}
	return h.writeOut(ctx, false)
}
