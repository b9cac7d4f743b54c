package volume

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/kmsfs/kmsfs/backend"
	"github.com/kmsfs/kmsfs/envelope"
)

// The end of a version 2 file (docs/FORMAT.md section 4): its last block is
// sealed with the final flag and every other block without, so a file cut
// at a block boundary, or extended with a block from elsewhere, fails
// authentication instead of reading as another length.
//
// Resealing the old last block on every extending write would cost a block
// of crypto and an in-place rewrite (journaled as an intent) per write of a
// sequential copy. So the flag is set lazily: a write that leaves the file
// on a block boundary seals its last block as followed by more and marks
// the tail open (fileState.openTail); the next extending write then costs
// nothing, and finishTail seals the last block final once, at fsync, at a
// backend flush and at close. A write that leaves a partial last block
// seals it final at once (any later append rewrites that block anyway).
// Appending to a file whose tail is closed reseals its last block once
// (beginExtend). A crash while the tail is open leaves the last block
// unsealed as the last: it reads as EIO, like an unfilled gap, and only a
// file extended since its last fsync or close can be in that state.

// noFinish is beginExtend's answer when there is nothing to undo.
func noFinish(bool) error { return nil }

// tailFinal says whether the block that ends a write at the end of a
// version 2 file is sealed final: yes when it is partial; when it is full,
// not if the write extended the file (the tail opens), else as it was.
func tailFinal(newSize, blockSize int64, extends, openTail bool) bool {
	switch {
	case newSize%blockSize != 0:
		return true
	case extends:
		return false
	}
	return !openTail
}

// beginExtend prepares an extension of a version 2 file of size bytes: when
// the file ends on a block boundary and its last block is sealed final,
// that block is resealed as followed by more. What it returns must be
// called once the extension is written (ok) or has failed (!ok, which puts
// the old block back).
//
// The intent it records is the old state (the stored size and the old
// block), not the new: replayed after a crash anywhere before the
// extension is done, it restores the file as it was, instead of leaving
// a formerly last block that is no longer sealed as one (EIO for bytes that
// may have been fsynced). It is cleared once the extension is written.
func (h *Handle) beginExtend(ctx context.Context, keys *envelope.FileKeys, size int64) (func(ok bool) error, error) {
	l := h.v.layout
	if !keys.MarksEnd() || h.st.openTail || size == 0 || size%l.BlockSize != 0 {
		return noFinish, nil
	}
	last := uint64(size/l.BlockSize - 1)
	off, cs := l.BlockOffset(last), l.CipherSize(size, true)
	old := make([]byte, cs-off)
	if n, err := h.f.ReadAt(old, off); err != nil && !(errors.Is(err, io.EOF) && n == len(old)) {
		return nil, fmt.Errorf("read last block: %w", err)
	}
	prev, err := h.prevIfHoles(keys, last)
	if err != nil {
		return nil, err
	}
	plain, err := keys.OpenBlock(nil, old, last, true, prev)
	if err != nil {
		return nil, err
	}
	sealed, err := keys.SealBlock(nil, plain, last, false, prev)
	clear(plain)
	if err != nil {
		return nil, err
	}
	undo := &intent{fileID: keys.FileID(), off: off, truncateTo: cs, data: old}
	done, err := announce(ctx, h.v.be, undo)
	if err != nil {
		return nil, err
	}
	if _, err := h.f.WriteAt(sealed, off); err != nil {
		if uerr := undo.apply(h.f); uerr != nil {
			return nil, fmt.Errorf("reseal last block: %w (and putting it back: %v)", err, uerr)
		}
		return nil, errors.Join(fmt.Errorf("reseal last block: %w", err), done())
	}
	h.st.openTail = true
	return func(ok bool) error {
		if !ok {
			if err := undo.apply(h.f); err != nil {
				// The intent stays: the next open replays it.
				return fmt.Errorf("undo a failed extension: %w", err)
			}
			h.st.openTail = false
		}
		return done()
	}, nil
}

// cutAtBlock truncates a version 2 file from size to newSize, a multiple of
// the block size, resealing the new last block as the last one: the cut and
// the rewrite are one intent.
func (h *Handle) cutAtBlock(ctx context.Context, keys *envelope.FileKeys, newSize, size int64) error {
	l := h.v.layout
	blockNo := uint64(newSize/l.BlockSize - 1)
	plain, err := h.readBlocks(keys, nil, blockNo, blockNo+1, l.CipherSize(size, true))
	if err != nil {
		return err
	}
	prev, err := h.prevIfHoles(keys, blockNo)
	if err != nil {
		clear(plain)
		return err
	}
	sealed, err := keys.SealBlock(nil, plain, blockNo, true, prev)
	clear(plain)
	if err != nil {
		return err
	}
	if err := h.changeInPlace(ctx, keys, l.BlockOffset(blockNo), sealed, int64(len(sealed)), l.CipherSize(newSize, true)); err != nil {
		return err
	}
	h.st.openTail = false
	return nil
}

// finishTail seals the last block of a file whose tail is open as the last
// one (once per fsync, flush or close after an extension). The content lock
// is held.
func (h *Handle) finishTail(ctx context.Context) error {
	st := h.st
	if !st.openTail {
		return nil
	}
	keys, err := h.fileKeys(ctx, false)
	if err != nil {
		return err
	}
	cs, err := h.cipherSize()
	if err != nil {
		return err
	}
	size, err := h.v.layout.PlainSize(cs)
	if err != nil {
		return err
	}
	if keys == nil || size == 0 {
		st.openTail = false
		return nil
	}
	l := h.v.layout
	last := uint64((size - 1) / l.BlockSize)
	plain, err := h.readBlocks(keys, nil, last, last+1, cs)
	if err != nil {
		return err
	}
	prev, err := h.prevIfHoles(keys, last)
	if err != nil {
		clear(plain)
		return err
	}
	sealed, err := keys.SealBlock(nil, plain, last, true, prev)
	clear(plain)
	if err != nil {
		return err
	}
	// While the tail is open the last block was written by the extension
	// that opened it, after the last fsync (which seals the tail): a torn
	// rewrite can lose only bytes never fsynced, as any crash can, so it
	// needs no intent, unless the backend was synced meanwhile.
	//
	// The content does not change, so neither does the modification time
	// where the backend can keep it: this runs at close, after cp -p or
	// rsync -t may have set the times of the open file.
	qw, quiet := h.f.(backend.QuietWriter)
	switch {
	case quiet && !st.tailSynced:
		if _, err := qw.WriteAtQuiet(sealed, l.BlockOffset(last)); err != nil {
			return err
		}
	default:
		var oldBytes int64
		if st.tailSynced {
			oldBytes = int64(len(sealed))
		}
		if err := h.changeInPlace(ctx, keys, l.BlockOffset(last), sealed, oldBytes, -1); err != nil {
			return err
		}
	}
	st.openTail, st.tailSynced = false, false
	return nil
}
