package volume

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"syscall"

	"github.com/kmsfs/kmsfs/backend"
	"github.com/kmsfs/kmsfs/envelope"
)

// An intent record describes one in-place change of a stored file, written
// to the backend (backend.Intents) before the change and cleared after it:
//
//	magic "KMI1" | file ID (16) | offset (uint64) | truncate-to (int64, -1: none) |
//	data length (uint32) | data | SHA-256 of everything before it (32)
//
// Replay truncates first (if asked), then writes data at offset. Replaying a
// change that had completed is harmless: the bytes are the same.
const intentMagic = "KMI1"

type intent struct {
	fileID     [envelope.IDLen]byte
	off        int64
	truncateTo int64
	data       []byte
}

func (in *intent) marshal() []byte {
	b := make([]byte, 0, 4+envelope.IDLen+8+8+4+len(in.data)+sha256.Size)
	b = append(b, intentMagic...)
	b = append(b, in.fileID[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(in.off))
	b = binary.BigEndian.AppendUint64(b, uint64(in.truncateTo))
	b = binary.BigEndian.AppendUint32(b, uint32(len(in.data)))
	b = append(b, in.data...)
	sum := sha256.Sum256(b)
	return append(b, sum[:]...)
}

// parseIntent decodes a record; a torn or foreign one is an error (and
// means the change it announced never started).
func parseIntent(b []byte) (*intent, error) {
	const fixed = 4 + envelope.IDLen + 8 + 8 + 4
	if len(b) < fixed+sha256.Size || string(b[:4]) != intentMagic {
		return nil, errors.New("intent record: torn or not an intent")
	}
	body, sum := b[:len(b)-sha256.Size], b[len(b)-sha256.Size:]
	if want := sha256.Sum256(body); !bytes.Equal(want[:], sum) {
		return nil, errors.New("intent record: checksum mismatch (torn)")
	}
	in := &intent{}
	copy(in.fileID[:], b[4:])
	in.off = int64(binary.BigEndian.Uint64(b[4+envelope.IDLen:]))
	in.truncateTo = int64(binary.BigEndian.Uint64(b[4+envelope.IDLen+8:]))
	n := int(binary.BigEndian.Uint32(b[4+envelope.IDLen+16:]))
	if fixed+n != len(body) {
		return nil, errors.New("intent record: bad length")
	}
	in.data = body[fixed:]
	return in, nil
}

// changeInPlace applies one change to the stored file: optionally truncate
// to truncateTo, then write sealed at off. When the change rewrites bytes
// that existed before (the first oldBytes of sealed, or a truncation) and
// the backend can tear such a write, it is announced as an intent first.
func (h *Handle) changeInPlace(ctx context.Context, keys *envelope.FileKeys, off int64, sealed []byte, oldBytes int64, truncateTo int64) error {
	done := func() error { return nil }
	if oldBytes > 0 || truncateTo >= 0 {
		// Only the bytes that held data before need the protection: a torn
		// write past the old end destroys nothing that was there.
		in := &intent{fileID: keys.FileID(), off: off, truncateTo: truncateTo, data: sealed[:min(int64(len(sealed)), max(oldBytes, 0))]}
		if truncateTo >= 0 {
			in.data = sealed
		}
		var err error
		if done, err = announce(ctx, h.v.be, in); err != nil {
			return err
		}
	}
	if truncateTo >= 0 {
		if err := h.f.Truncate(truncateTo); err != nil {
			return err
		}
	}
	if len(sealed) > 0 {
		if _, err := h.f.WriteAt(sealed, off); err != nil {
			return err
		}
	}
	return done()
}

// announce records in as its file's intent when the backend keeps intents
// (backend.Intents), and returns what clears it once the change is made.
func announce(ctx context.Context, be backend.Backend, in *intent) (done func() error, err error) {
	ints, ok := be.(backend.Intents)
	if !ok {
		return func() error { return nil }, nil
	}
	id := hex.EncodeToString(in.fileID[:])
	if err := ints.WriteIntent(ctx, id, in.marshal()); err != nil {
		return nil, fmt.Errorf("record intent: %w", err)
	}
	return func() error { return ints.ClearIntent(ctx, id) }, nil
}

// replayIntent finishes a change that a crash interrupted, before the
// file's blocks are read (or, for a header rewrite, before its header can
// be parsed). It reports whether it wrote anything.
func (h *Handle) replayIntent(ctx context.Context, fileID [envelope.IDLen]byte) (bool, error) {
	return finishIntent(ctx, h.v.be, h.v.log, h.name, fileID, h.v.readOnly)
}

// finishIntent replays the intent recorded for fileID, if there is one, on
// the stored file name, and clears it. A torn record (the change never
// started) is only cleared. readOnly leaves a pending intent in place.
func finishIntent(ctx context.Context, be backend.Backend, log *slog.Logger, name string, fileID [envelope.IDLen]byte, readOnly bool) (bool, error) {
	ints, ok := be.(backend.Intents)
	if !ok {
		return false, nil
	}
	id := hex.EncodeToString(fileID[:])
	rec, err := ints.ReadIntent(ctx, id)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read intent: %w", err)
	}
	if readOnly {
		log.Warn("a write interrupted by a crash is pending; mount read-write to finish it", "path", "/"+name)
		return false, nil
	}
	in, perr := parseIntent(rec)
	replayed := false
	if perr == nil && in.fileID == fileID {
		log.Warn("finishing a write interrupted by a crash", "path", "/"+name, "offset", in.off, "bytes", len(in.data))
		// The caller's handle may be read-only: replay through one of our own.
		f, err := be.Open(ctx, name, syscall.O_RDWR, 0, nil)
		if err != nil {
			return false, fmt.Errorf("replay intent: %w", err)
		}
		err = in.apply(f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return false, fmt.Errorf("replay intent: %w", err)
		}
		replayed = true
	}
	return replayed, ints.ClearIntent(ctx, id)
}

// apply makes the change an intent describes: truncate first (if asked),
// then write the data at its offset.
func (in *intent) apply(f backend.File) error {
	if in.truncateTo >= 0 {
		if err := f.Truncate(in.truncateTo); err != nil {
			return err
		}
	}
	if len(in.data) > 0 {
		if _, err := f.WriteAt(in.data, in.off); err != nil {
			return err
		}
	}
	return nil
}
