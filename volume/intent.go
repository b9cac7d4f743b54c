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
	ints, journal := h.v.be.(backend.Intents)
	journal = journal && (oldBytes > 0 || truncateTo >= 0)
	var id string
	if journal {
		// Only the bytes that held data before need the protection: a torn
		// write past the old end destroys nothing that was there.
		in := &intent{fileID: keys.FileID(), off: off, truncateTo: truncateTo, data: sealed[:min(int64(len(sealed)), max(oldBytes, 0))]}
		if truncateTo >= 0 {
			in.data = sealed
		}
		id = hex.EncodeToString(in.fileID[:])
		if err := ints.WriteIntent(ctx, id, in.marshal()); err != nil {
			return fmt.Errorf("record intent: %w", err)
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
	if journal {
		return ints.ClearIntent(ctx, id)
	}
	return nil
}

// replayIntent finishes a change that a crash interrupted, before the
// file's blocks are read. Called with the file's keys just loaded.
func (h *Handle) replayIntent(ctx context.Context, fileID [envelope.IDLen]byte) error {
	ints, ok := h.v.be.(backend.Intents)
	if !ok {
		return nil
	}
	id := hex.EncodeToString(fileID[:])
	rec, err := ints.ReadIntent(ctx, id)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read intent: %w", err)
	}
	if h.v.readOnly {
		h.v.log.Warn("a write interrupted by a crash is pending; mount read-write to finish it", "path", "/"+h.name)
		return nil
	}
	in, perr := parseIntent(rec)
	if perr == nil && in.fileID == fileID {
		h.v.log.Warn("finishing a write interrupted by a crash", "path", "/"+h.name, "offset", in.off, "bytes", len(in.data))
		// This handle may be read-only: replay through one of our own.
		f, err := h.v.be.Open(ctx, h.name, syscall.O_RDWR, 0, nil)
		if err != nil {
			return fmt.Errorf("replay intent: %w", err)
		}
		defer f.Close()
		if in.truncateTo >= 0 {
			if err := f.Truncate(in.truncateTo); err != nil {
				return err
			}
		}
		if _, err := f.WriteAt(in.data, in.off); err != nil {
			return err
		}
	}
	return ints.ClearIntent(ctx, id)
}
