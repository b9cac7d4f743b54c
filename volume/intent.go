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
//
// A change of a version 3 file that also moves a hole (docs/FORMAT.md
// section 4: filling or punching a hole reseals the next stored block) is
// several ranges, recorded as one "KMI2" record so that replay makes all of
// them or none:
//
//	magic "KMI2" | file ID (16) | truncate-to (int64) | count (uint32) |
//	count x (offset (uint64) | kind (1: 0 data, 1 hole) | length (uint64) | data, for kind 0) |
//	SHA-256 of everything before it (32)
//
// A hole range is replayed as a punched hole (zeros where the file cannot
// punch).
const (
	intentMagic       = "KMI1"
	intentMagicRanges = "KMI2"
)

type intent struct {
	fileID     [envelope.IDLen]byte
	off        int64
	truncateTo int64
	data       []byte
	// more are ranges changed after data (KMI2).
	more []intentRange
}

// intentRange is one more range of a KMI2 record: data written at off, or
// (data nil) a hole of holeLen bytes punched at off.
type intentRange struct {
	off     int64
	data    []byte
	holeLen int64
}

func (in *intent) marshal() []byte {
	if len(in.more) > 0 {
		return in.marshalRanges()
	}
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

// ranges is every range of the record in replay order.
func (in *intent) ranges() []intentRange {
	var rs []intentRange
	if len(in.data) > 0 {
		rs = append(rs, intentRange{off: in.off, data: in.data})
	}
	return append(rs, in.more...)
}

func (in *intent) marshalRanges() []byte {
	rs := in.ranges()
	b := make([]byte, 0, 4+envelope.IDLen+8+4+len(rs)*17+sha256.Size)
	b = append(b, intentMagicRanges...)
	b = append(b, in.fileID[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(in.truncateTo))
	b = binary.BigEndian.AppendUint32(b, uint32(len(rs)))
	for _, r := range rs {
		b = binary.BigEndian.AppendUint64(b, uint64(r.off))
		if r.data == nil {
			b = append(b, 1)
			b = binary.BigEndian.AppendUint64(b, uint64(r.holeLen))
			continue
		}
		b = append(b, 0)
		b = binary.BigEndian.AppendUint64(b, uint64(len(r.data)))
		b = append(b, r.data...)
	}
	sum := sha256.Sum256(b)
	return append(b, sum[:]...)
}

// parseIntentRanges decodes the body (checksum checked) of a KMI2 record.
func parseIntentRanges(body []byte) (*intent, error) {
	const fixed = 4 + envelope.IDLen + 8 + 4
	bad := errors.New("intent record: bad length")
	if len(body) < fixed {
		return nil, bad
	}
	in := &intent{}
	copy(in.fileID[:], body[4:])
	in.truncateTo = int64(binary.BigEndian.Uint64(body[4+envelope.IDLen:]))
	n := binary.BigEndian.Uint32(body[4+envelope.IDLen+8:])
	rest := body[fixed:]
	for range n {
		if len(rest) < 17 {
			return nil, bad
		}
		r := intentRange{off: int64(binary.BigEndian.Uint64(rest))}
		kind, length := rest[8], binary.BigEndian.Uint64(rest[9:])
		rest = rest[17:]
		switch {
		case kind == 1:
			r.holeLen = int64(length)
		case kind == 0 && length <= uint64(len(rest)):
			r.data, rest = rest[:length], rest[length:]
		default:
			return nil, bad
		}
		in.more = append(in.more, r)
	}
	if len(rest) != 0 {
		return nil, bad
	}
	return in, nil
}

// parseIntent decodes a record; a torn or foreign one is an error (and
// means the change it announced never started).
func parseIntent(b []byte) (*intent, error) {
	const fixed = 4 + envelope.IDLen + 8 + 8 + 4
	if len(b) < fixed+sha256.Size || (string(b[:4]) != intentMagic && string(b[:4]) != intentMagicRanges) {
		return nil, errors.New("intent record: torn or not an intent")
	}
	body, sum := b[:len(b)-sha256.Size], b[len(b)-sha256.Size:]
	if want := sha256.Sum256(body); !bytes.Equal(want[:], sum) {
		return nil, errors.New("intent record: checksum mismatch (torn)")
	}
	if string(b[:4]) == intentMagicRanges {
		return parseIntentRanges(body)
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
		log.Warn("finishing a write interrupted by a crash", "path", "/"+name, "offset", in.off, "bytes", len(in.data), "ranges", len(in.more))
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
	for _, r := range in.ranges() {
		if r.data == nil {
			if err := punch(f, r.off, r.holeLen); err != nil {
				return err
			}
			continue
		}
		if _, err := f.WriteAt(r.data, r.off); err != nil {
			return err
		}
	}
	return nil
}

// punch makes [off, off+n) of a stored file zeros: a punched hole where the
// backing file can have one, else written zeros (which read the same: a
// version 3 block whose bytes are all zero is a hole).
func punch(f backend.File, off, n int64) error {
	if sf, ok := f.(backend.SparseFile); ok {
		err := sf.PunchHole(off, n)
		if err == nil || !errors.Is(err, syscall.EOPNOTSUPP) {
			return err
		}
	}
	zeros := make([]byte, min(n, 1<<20))
	for n > 0 {
		k := min(n, int64(len(zeros)))
		if _, err := f.WriteAt(zeros[:k], off); err != nil {
			return err
		}
		off, n = off+k, n-k
	}
	return nil
}
