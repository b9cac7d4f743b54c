// Package envelope is the kmsfs on-disk format: the file header (wrapped data
// key, KMS key ID, mode, file ID) and the block AEAD codec. It is pure code: no
// I/O, no KMS calls, no FUSE. docs/FORMAT.md specifies every byte; this
// package is its reference implementation (header.go, keys.go, block.go,
// blocks.go, layout.go, names.go), and internal/specdecode a second one,
// written from the document alone, that the tests hold it to.
package envelope

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// Header format versions. Version 2 differs from 1 only in the block AAD
// (a final-block flag, docs/FORMAT.md section 4), version 3 from 2 only in
// the block AAD too (the index of the previous stored block, so that holes
// stay holes and stay authenticated); the header layout is the same.
// Version 4 is the compressed layout (units.go, docs/FORMAT.md section 4a):
// its header carries the compression field and sizes its own region. New
// files are written as CurrentVersion, or as Version4 when a compressing
// volume writes them whole; all are read.
const (
	Version1       = 1
	Version2       = 2
	Version3       = 3
	Version4       = 4
	CurrentVersion = Version3
)

// knownVersion says whether this kmsfs reads header format version v.
func knownVersion(v uint8) bool { return v >= Version1 && v <= Version4 }

// Magic starts every encrypted file.
const Magic = "KMFS"

// MinHeaderSize and MaxHeaderSize bound the header region a volume may choose.
// DefaultHeaderSize leaves room for AWS KMS ciphertext blobs (about 184 bytes for
// a 32-byte data key) and long key ARNs; see docs/FORMAT.md.
const (
	MinHeaderSize     = 256
	MaxHeaderSize     = 65535
	DefaultHeaderSize = 1024
)

// prefixLen is magic(4) version(1) flags(1) regionSize(2) fieldsLen(2).
const prefixLen = 10

// macLen is the HMAC-SHA256 tag that authenticates the header.
const macLen = sha256.Size

// Mode says how a file's key was obtained.
type Mode uint8

const (
	// ModePerObject: the file key is a data key from KMS GenerateDataKey with
	// context {volume, file}, like S3 SSE-KMS (one KMS call per object).
	ModePerObject Mode = 1
	// ModeBucketKey: the wrapped key is a volume-level ("bucket") key under
	// context {volume, bucket key ID}; the file key is derived from it with
	// HKDF and the file ID, like S3 Bucket Keys.
	ModeBucketKey Mode = 2
)

func (m Mode) String() string {
	switch m {
	case ModePerObject:
		return "per-object"
	case ModeBucketKey:
		return "bucket-key"
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// SuiteAES256GCM: AES-256-GCM blocks with 96-bit random nonces, HKDF-SHA256
// subkeys, HMAC-SHA256 header tag. The only suite of format version 1.
const SuiteAES256GCM uint8 = 1

// Field types. Types below 0x80 are authenticated by the header MAC. Types
// 0x80 and above are key slots: they are protected by the KMS's own AEAD (the
// wrapped key binds its encryption context) and may be rewritten by
// `kmsfs rewrap`, which never sees the plaintext key and so cannot recompute
// the MAC. A type with bit 0x40 set is critical: a reader that does not know
// it must refuse the file instead of misreading it.
const (
	fieldFileID      = 0x01
	fieldVolumeID    = 0x02
	fieldMode        = 0x03
	fieldSuite       = 0x04
	fieldBlockSize   = 0x05
	fieldBucketKeyID = 0x06
	// fieldCompression is critical (bit 0x40) and authenticated (below
	// 0x80): a reader that cannot decompress must refuse the file.
	fieldCompression = 0x47
	fieldKeyID       = 0x81
	fieldWrappedKey  = 0x82

	fieldKeySlotBit  = 0x80
	fieldCriticalBit = 0x40
)

// IDLen is the length of file, volume and bucket key IDs.
const IDLen = 16

// Header is the decoded file header.
type Header struct {
	Version     uint8 // format version; 0 in Marshal means CurrentVersion
	RegionSize  int   // bytes reserved for the header; block 0 starts here
	Mode        Mode
	Suite       uint8
	BlockSize   int // plaintext bytes per block
	FileID      [IDLen]byte
	VolumeID    [IDLen]byte
	BucketKeyID [IDLen]byte // ModeBucketKey only
	KeyID       string      // ARN of the KMS key that wrapped WrappedKey
	WrappedKey  []byte      // KMS ciphertext blob of the data key or bucket key
	// Units describes the compressed layout; set in version 4 only.
	Units *Units

	// unknown holds non-critical fields this version does not know, kept
	// verbatim so that the MAC still verifies and re-marshalling keeps them.
	unknown []rawField
}

type rawField struct {
	typ   uint8
	value []byte
}

// Errors returned by ParseHeader and Verify. Callers map ErrAuth to EIO.
var (
	ErrNotEncrypted = errors.New("not a kmsfs file (bad magic)")
	ErrVersion      = errors.New("unsupported header version")
	ErrCorrupt      = errors.New("corrupt header")
	ErrAuth         = errors.New("authentication failed")
)

// Marshal encodes the header into a region of h.RegionSize bytes,
// authenticated with macKey (from FileKeys). Unused bytes are zero.
func (h *Header) Marshal(macKey []byte) ([]byte, error) {
	if h.RegionSize < MinHeaderSize || h.RegionSize > MaxHeaderSize {
		return nil, fmt.Errorf("%w: region size %d outside %d..%d", ErrCorrupt, h.RegionSize, MinHeaderSize, MaxHeaderSize)
	}
	if err := checkBlockSize(h.BlockSize); err != nil {
		return nil, err
	}
	var fields []rawField
	add := func(t uint8, v []byte) { fields = append(fields, rawField{t, v}) }
	add(fieldFileID, h.FileID[:])
	add(fieldVolumeID, h.VolumeID[:])
	add(fieldMode, []byte{byte(h.Mode)})
	add(fieldSuite, []byte{h.Suite})
	add(fieldBlockSize, binary.BigEndian.AppendUint32(nil, uint32(h.BlockSize)))
	if h.Mode == ModeBucketKey {
		add(fieldBucketKeyID, h.BucketKeyID[:])
	}
	version := h.Version
	if version == 0 {
		version = CurrentVersion
	}
	if (version == Version4) != (h.Units != nil) {
		return nil, fmt.Errorf("%w: a version 4 header, and only it, has the compression field", ErrCorrupt)
	}
	if h.Units != nil {
		v, err := h.Units.marshal()
		if err != nil {
			return nil, err
		}
		add(fieldCompression, v)
	}
	fields = append(fields, h.unknown...)
	add(fieldKeyID, []byte(h.KeyID))
	add(fieldWrappedKey, h.WrappedKey)

	if !knownVersion(version) {
		return nil, fmt.Errorf("%w %d", ErrVersion, version)
	}
	out := make([]byte, prefixLen, h.RegionSize)
	copy(out, Magic)
	out[4] = version
	out[5] = 0 // flags: none defined in versions 1 to 4
	binary.BigEndian.PutUint16(out[6:], uint16(h.RegionSize))
	for _, f := range fields {
		if len(f.value) > 0xffff {
			return nil, fmt.Errorf("%w: field 0x%02x too long", ErrCorrupt, f.typ)
		}
		out = append(out, f.typ)
		out = binary.BigEndian.AppendUint16(out, uint16(len(f.value)))
		out = append(out, f.value...)
	}
	fieldsLen := len(out) - prefixLen
	if prefixLen+fieldsLen+macLen > h.RegionSize {
		return nil, fmt.Errorf("header needs %d bytes, more than the volume's header size %d (key ID or wrapped key too long)",
			prefixLen+fieldsLen+macLen, h.RegionSize)
	}
	binary.BigEndian.PutUint16(out[8:], uint16(fieldsLen))
	out = append(out, headerMAC(macKey, out[:8], fields)...)
	return out[:h.RegionSize], nil
}

// keySlotSlack is what a compact region (MarshalCompact) leaves free for a
// rewrap to a key whose ARN or wrapped key is longer.
const keySlotSlack = 64

// MarshalCompact encodes the header into the smallest region that holds it
// with keySlotSlack bytes to spare, rounded up to 16 bytes (at least
// MinHeaderSize and at most maxRegion): the compressed layout's own region,
// sized per file, because a 1 KiB region would cost more than a small
// compressed file. It sets h.RegionSize.
func (h *Header) MarshalCompact(macKey []byte, maxRegion int) ([]byte, error) {
	h.RegionSize = MaxHeaderSize
	full, err := h.Marshal(macKey)
	if err != nil {
		return nil, err
	}
	used := prefixLen + int(binary.BigEndian.Uint16(full[8:])) + macLen
	size := max(MinHeaderSize, (used+keySlotSlack+15)/16*16)
	if size > maxRegion {
		return nil, fmt.Errorf("header needs %d bytes, more than %d", size, maxRegion)
	}
	// The region size is in the MAC's prefix: marshal again.
	h.RegionSize = size
	return h.Marshal(macKey)
}

// headerMAC is HMAC-SHA256 over the first 8 prefix bytes (magic, version,
// flags, region size) followed by every authenticated field as encoded
// (type, length, value), in order. Key-slot fields and the fields length are
// left out so that rewrap can replace the wrapped key without the data key.
func headerMAC(macKey, prefix8 []byte, fields []rawField) []byte {
	m := hmac.New(sha256.New, macKey)
	m.Write(prefix8)
	var tl [3]byte
	for _, f := range fields {
		if f.typ&fieldKeySlotBit != 0 {
			continue
		}
		tl[0] = f.typ
		binary.BigEndian.PutUint16(tl[1:], uint16(len(f.value)))
		m.Write(tl[:])
		m.Write(f.value)
	}
	return m.Sum(nil)
}

// ParsedHeader is a header decoded but not yet authenticated: its key slot
// tells the caller which KMS key and wrapped key to unwrap; Verify must then
// succeed before any block is trusted.
type ParsedHeader struct {
	Header
	prefix8 []byte
	fields  []rawField
	mac     []byte
}

// ParseHeader decodes a header region. It checks structure only; call Verify
// with the unwrapped file key before trusting any field.
func ParseHeader(region []byte) (*ParsedHeader, error) {
	if len(region) < prefixLen || string(region[:4]) != Magic {
		return nil, ErrNotEncrypted
	}
	if !knownVersion(region[4]) {
		return nil, fmt.Errorf("%w %d (this kmsfs reads versions %d to %d)", ErrVersion, region[4], Version1, Version4)
	}
	if region[5] != 0 {
		return nil, fmt.Errorf("%w: unknown flags 0x%02x", ErrCorrupt, region[5])
	}
	regionSize := int(binary.BigEndian.Uint16(region[6:]))
	fieldsLen := int(binary.BigEndian.Uint16(region[8:]))
	if regionSize < MinHeaderSize || len(region) < regionSize {
		return nil, fmt.Errorf("%w: region size %d, have %d bytes", ErrCorrupt, regionSize, len(region))
	}
	if prefixLen+fieldsLen+macLen > regionSize {
		return nil, fmt.Errorf("%w: fields length %d overflows region", ErrCorrupt, fieldsLen)
	}
	p := &ParsedHeader{prefix8: region[:8:8]}
	p.Version = region[4]
	p.RegionSize = regionSize
	body := region[prefixLen : prefixLen+fieldsLen]
	seen := map[uint8]bool{}
	for len(body) > 0 {
		if len(body) < 3 {
			return nil, fmt.Errorf("%w: truncated field", ErrCorrupt)
		}
		typ := body[0]
		n := int(binary.BigEndian.Uint16(body[1:]))
		if len(body) < 3+n {
			return nil, fmt.Errorf("%w: field 0x%02x overflows", ErrCorrupt, typ)
		}
		val := body[3 : 3+n : 3+n]
		body = body[3+n:]
		if seen[typ] {
			return nil, fmt.Errorf("%w: duplicate field 0x%02x", ErrCorrupt, typ)
		}
		seen[typ] = true
		p.fields = append(p.fields, rawField{typ, val})
		if err := p.setField(typ, val); err != nil {
			return nil, err
		}
	}
	for _, t := range []uint8{fieldFileID, fieldVolumeID, fieldMode, fieldSuite, fieldBlockSize, fieldKeyID, fieldWrappedKey} {
		if !seen[t] {
			return nil, fmt.Errorf("%w: missing field 0x%02x", ErrCorrupt, t)
		}
	}
	if p.Mode == ModeBucketKey && !seen[fieldBucketKeyID] {
		return nil, fmt.Errorf("%w: bucket-key header without bucket key ID", ErrCorrupt)
	}
	if p.Version == Version4 && !seen[fieldCompression] {
		return nil, fmt.Errorf("%w: version 4 header without the compression field", ErrCorrupt)
	}
	if p.Version != Version4 && seen[fieldCompression] {
		return nil, fmt.Errorf("%w: version %d header with the compression field", ErrCorrupt, p.Version)
	}
	macEnd := prefixLen + fieldsLen + macLen
	p.mac = region[prefixLen+fieldsLen : macEnd : macEnd]
	// Padding must be zero so that the region has exactly one valid encoding.
	if !allZero(region[macEnd:regionSize]) {
		return nil, fmt.Errorf("%w: non-zero padding", ErrCorrupt)
	}
	return p, nil
}

func (p *ParsedHeader) setField(typ uint8, val []byte) error {
	fixed := func(dst []byte) error {
		if len(val) != len(dst) {
			return fmt.Errorf("%w: field 0x%02x has length %d, want %d", ErrCorrupt, typ, len(val), len(dst))
		}
		copy(dst, val)
		return nil
	}
	switch typ {
	case fieldFileID:
		return fixed(p.FileID[:])
	case fieldVolumeID:
		return fixed(p.VolumeID[:])
	case fieldBucketKeyID:
		return fixed(p.BucketKeyID[:])
	case fieldMode:
		var m [1]byte
		if err := fixed(m[:]); err != nil {
			return err
		}
		p.Mode = Mode(m[0])
		if p.Mode != ModePerObject && p.Mode != ModeBucketKey {
			return fmt.Errorf("%w: unknown mode %d", ErrCorrupt, m[0])
		}
	case fieldSuite:
		var s [1]byte
		if err := fixed(s[:]); err != nil {
			return err
		}
		if s[0] != SuiteAES256GCM {
			return fmt.Errorf("%w: unknown cipher suite %d", ErrCorrupt, s[0])
		}
		p.Suite = s[0]
	case fieldBlockSize:
		var b [4]byte
		if err := fixed(b[:]); err != nil {
			return err
		}
		p.BlockSize = int(binary.BigEndian.Uint32(b[:]))
		if err := checkBlockSize(p.BlockSize); err != nil {
			return fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
	case fieldCompression:
		u, err := parseUnits(val)
		if err != nil {
			return err
		}
		p.Units = u
	case fieldKeyID:
		p.KeyID = string(val)
	case fieldWrappedKey:
		if len(val) == 0 {
			return fmt.Errorf("%w: empty wrapped key", ErrCorrupt)
		}
		p.WrappedKey = bytes.Clone(val)
	default:
		if typ&fieldCriticalBit != 0 {
			return fmt.Errorf("%w: file uses critical field 0x%02x that this kmsfs does not know", ErrVersion, typ)
		}
		if typ&fieldKeySlotBit == 0 {
			p.unknown = append(p.unknown, rawField{typ, bytes.Clone(val)})
		}
	}
	return nil
}

// Verify checks the header MAC with the file's keys. A header edited, or
// moved onto another file (whose wrapped key unwraps to a different key),
// fails with ErrAuth.
func (p *ParsedHeader) Verify(keys *FileKeys) error {
	if keys.fileID != p.FileID {
		return fmt.Errorf("header: %w (keys are for another file)", ErrAuth)
	}
	if keys.version != p.Version {
		return fmt.Errorf("header: %w (keys are for format version %d, the header is version %d)", ErrAuth, keys.version, p.Version)
	}
	want := headerMAC(keys.macKey, p.prefix8, p.fields)
	if !hmac.Equal(want, p.mac) {
		return fmt.Errorf("header: %w", ErrAuth)
	}
	return nil
}

// ReplaceKeySlot returns a copy of the header region with a new KMS key ID
// and wrapped key, keeping the MAC: what `kmsfs rewrap` writes after a KMS
// ReEncrypt, without ever holding the plaintext key.
func (p *ParsedHeader) ReplaceKeySlot(keyID string, wrapped []byte) ([]byte, error) {
	var fields []rawField
	for _, f := range p.fields {
		if f.typ&fieldKeySlotBit == 0 {
			fields = append(fields, f)
		}
	}
	fields = append(fields, rawField{fieldKeyID, []byte(keyID)}, rawField{fieldWrappedKey, wrapped})
	out := make([]byte, prefixLen, p.RegionSize)
	copy(out, p.prefix8)
	for _, f := range fields {
		out = append(out, f.typ)
		out = binary.BigEndian.AppendUint16(out, uint16(len(f.value)))
		out = append(out, f.value...)
	}
	fieldsLen := len(out) - prefixLen
	if prefixLen+fieldsLen+macLen > p.RegionSize {
		return nil, fmt.Errorf("new key slot needs %d bytes, more than the header size %d", prefixLen+fieldsLen+macLen, p.RegionSize)
	}
	binary.BigEndian.PutUint16(out[8:], uint16(fieldsLen))
	out = append(out, p.mac...)
	return out[:p.RegionSize], nil
}

// HeaderFileID reads the file ID of a header region without parsing or
// authenticating the rest. Writers put field 0x01 first, and a rewrap
// changes only the fields length and the key slot, so the file ID can be
// read even from a region torn between its old and new versions: enough to
// find the intent that completes it. ok is false when the region does not
// start like a kmsfs header.
func HeaderFileID(region []byte) (id [IDLen]byte, ok bool) {
	const at = prefixLen + 3
	if len(region) < at+IDLen || string(region[:4]) != Magic || !knownVersion(region[4]) ||
		region[prefixLen] != fieldFileID || binary.BigEndian.Uint16(region[prefixLen+1:]) != IDLen {
		return id, false
	}
	copy(id[:], region[at:])
	return id, true
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func checkBlockSize(n int) error {
	if n < MinBlockSize || n > MaxBlockSize || n&(n-1) != 0 {
		return fmt.Errorf("block size %d: must be a power of two in %d..%d", n, MinBlockSize, MaxBlockSize)
	}
	return nil
}
