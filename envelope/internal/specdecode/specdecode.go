// Package specdecode reads the bytes kmsfs stores by docs/FORMAT.md alone,
// with nothing but the standard library: a second, independent
// implementation of the format that the tests hold against the test vectors
// and the fixture volumes. It deliberately imports nothing of kmsfs
// (envelope in particular): where it and envelope disagree, either the code
// or the document is wrong, and a test fails.
//
// One exception to the standard library: the standard library has no zstd
// decoder, so the zstd frames of compressed files (section 4a) are
// decompressed by github.com/klauspost/compress/zstd, for that step only.
// Everything around it (the frame being exactly one frame, the payload
// kinds, the unit table, the sizes) is read here from the document.
package specdecode

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"

	"github.com/klauspost/compress/zstd"
)

// Section 3: the header region.
const (
	magic       = "KMFS"
	prefixLen   = 10 // magic, version, flags, region size, fields length
	macLen      = 32
	minRegion   = 256
	idLen       = 16
	keyLen      = 32
	nonceLen    = 12
	tagLen      = 16
	blockExtra  = nonceLen + tagLen
	typeKeySlot = 0x80 // types at and above: the key slot, outside the MAC
	critical    = 0x40 // an unknown type with this bit: refuse the file
)

// Field types of section 3.
const (
	TypeFileID      = 0x01
	TypeVolumeID    = 0x02
	TypeMode        = 0x03
	TypeSuite       = 0x04
	TypeBlockSize   = 0x05
	TypeBucketKeyID = 0x06
	TypeCompression = 0x47 // section 4a, version 4 only
	TypeKMSKeyID    = 0x81
	TypeWrappedKey  = 0x82
)

// Field is one TLV field as stored.
type Field struct {
	Type  byte
	Value []byte
}

// Header is a parsed header region.
type Header struct {
	Version    byte   // byte 4: 1, 2 or 3 (section 4: how blocks are bound), 4 (section 4a: units)
	Prefix     []byte // bytes 0..7
	RegionSize int
	Fields     []Field // in stored order
	MAC        []byte

	FileID, VolumeID, BucketKeyID []byte
	Mode, Suite                   byte
	BlockSize                     uint32
	KMSKeyID                      string
	WrappedKey                    []byte
	// Compression is field 0x47, present in version 4 only.
	Compression *Compression
}

// ParseHeader decodes a header region by the rules of section 3 (magic,
// version 1 to 4, no flags, TLV fields each at most once, the required ones
// present, field 0x47 in version 4 and only there, zero padding). It does
// not check the MAC: Verify does.
func ParseHeader(region []byte) (*Header, error) {
	if len(region) < prefixLen || string(region[:4]) != magic {
		return nil, errors.New("no KMFS magic")
	}
	if region[4] < 1 || region[4] > 4 {
		return nil, fmt.Errorf("version %d", region[4])
	}
	if region[5] != 0 {
		return nil, fmt.Errorf("flags 0x%02x", region[5])
	}
	h := &Header{Version: region[4], Prefix: region[:8], RegionSize: int(binary.BigEndian.Uint16(region[6:8]))}
	fieldsLen := int(binary.BigEndian.Uint16(region[8:10]))
	if h.RegionSize < minRegion || h.RegionSize > len(region) {
		return nil, fmt.Errorf("region size %d with %d bytes", h.RegionSize, len(region))
	}
	end := prefixLen + fieldsLen
	if end+macLen > h.RegionSize {
		return nil, fmt.Errorf("fields length %d overflows the region", fieldsLen)
	}
	seen := map[byte]bool{}
	for b := region[prefixLen:end]; len(b) > 0; {
		if len(b) < 3 || len(b) < 3+int(binary.BigEndian.Uint16(b[1:3])) {
			return nil, errors.New("truncated field")
		}
		n := int(binary.BigEndian.Uint16(b[1:3]))
		f := Field{Type: b[0], Value: b[3 : 3+n]}
		b = b[3+n:]
		if seen[f.Type] {
			return nil, fmt.Errorf("field 0x%02x twice", f.Type)
		}
		seen[f.Type] = true
		h.Fields = append(h.Fields, f)
		if err := h.set(f); err != nil {
			return nil, err
		}
	}
	for _, t := range []byte{TypeFileID, TypeVolumeID, TypeMode, TypeSuite, TypeBlockSize, TypeKMSKeyID, TypeWrappedKey} {
		if !seen[t] {
			return nil, fmt.Errorf("required field 0x%02x missing", t)
		}
	}
	if h.Mode == 2 && !seen[TypeBucketKeyID] {
		return nil, errors.New("bucket-key mode without a bucket key ID")
	}
	if (h.Version == 4) != seen[TypeCompression] {
		return nil, fmt.Errorf("version %d header: compression field present: %v (section 4a: in version 4, and only there)", h.Version, seen[TypeCompression])
	}
	h.MAC = region[end : end+macLen]
	for _, c := range region[end+macLen : h.RegionSize] {
		if c != 0 {
			return nil, errors.New("non-zero padding")
		}
	}
	return h, nil
}

func (h *Header) set(f Field) error {
	fixed := func(n int) error {
		if len(f.Value) != n {
			return fmt.Errorf("field 0x%02x: %d bytes, want %d", f.Type, len(f.Value), n)
		}
		return nil
	}
	var err error
	switch f.Type {
	case TypeFileID:
		err, h.FileID = fixed(idLen), f.Value
	case TypeVolumeID:
		err, h.VolumeID = fixed(idLen), f.Value
	case TypeBucketKeyID:
		err, h.BucketKeyID = fixed(idLen), f.Value
	case TypeMode:
		if err = fixed(1); err == nil {
			h.Mode = f.Value[0]
			if h.Mode != 1 && h.Mode != 2 {
				err = fmt.Errorf("mode %d", h.Mode)
			}
		}
	case TypeSuite:
		if err = fixed(1); err == nil {
			h.Suite = f.Value[0]
			if h.Suite != 1 {
				err = fmt.Errorf("cipher suite %d", h.Suite)
			}
		}
	case TypeBlockSize:
		if err = fixed(4); err == nil {
			h.BlockSize = binary.BigEndian.Uint32(f.Value)
		}
	case TypeCompression:
		h.Compression, err = parseCompression(f.Value)
	case TypeKMSKeyID:
		h.KMSKeyID = string(f.Value)
	case TypeWrappedKey:
		h.WrappedKey = f.Value
	default:
		if f.Type&critical != 0 {
			err = fmt.Errorf("unknown critical field 0x%02x", f.Type)
		}
	}
	return err
}

// MACOf is the header MAC of section 3: HMAC(macKey, bytes 0..7 || every
// field of type < 0x80 as stored, in stored order).
func MACOf(macKey, prefix []byte, fields []Field) []byte {
	m := hmac.New(sha256.New, macKey)
	m.Write(prefix[:8])
	for _, f := range fields {
		if f.Type >= typeKeySlot {
			continue
		}
		m.Write([]byte{f.Type, byte(len(f.Value) >> 8), byte(len(f.Value))})
		m.Write(f.Value)
	}
	return m.Sum(nil)
}

// Verify checks the header MAC.
func (h *Header) Verify(macKey []byte) error {
	if !hmac.Equal(MACOf(macKey, h.Prefix, h.Fields), h.MAC) {
		return errors.New("header MAC does not verify")
	}
	return nil
}

// EncodeHeader writes a header region as section 3 tells writers to: the
// authenticated fields in ascending type order, then 0x81, then 0x82, the
// MAC and zero padding up to regionSize, as format version.
func EncodeHeader(version byte, regionSize int, fields []Field, macKey []byte) ([]byte, error) {
	auth := []Field{}
	slot := map[byte][]byte{}
	for _, f := range fields {
		if f.Type >= typeKeySlot {
			slot[f.Type] = f.Value
		} else {
			auth = append(auth, f)
		}
	}
	sort.SliceStable(auth, func(i, j int) bool { return auth[i].Type < auth[j].Type })
	ordered := append(auth, Field{TypeKMSKeyID, slot[TypeKMSKeyID]}, Field{TypeWrappedKey, slot[TypeWrappedKey]})
	out := []byte(magic)
	out = append(out, version, 0, byte(regionSize>>8), byte(regionSize), 0, 0)
	for _, f := range ordered {
		out = append(out, f.Type, byte(len(f.Value)>>8), byte(len(f.Value)))
		out = append(out, f.Value...)
	}
	binary.BigEndian.PutUint16(out[8:10], uint16(len(out)-prefixLen))
	out = append(out, MACOf(macKey, out[:8], ordered)...)
	if len(out) > regionSize {
		return nil, fmt.Errorf("header needs %d bytes, region has %d", len(out), regionSize)
	}
	return append(out, make([]byte, regionSize-len(out))...), nil
}

// Section 5: keys.

func hkdfKey(ikm, salt []byte, info string, n int) []byte {
	k, err := hkdf.Key(sha256.New, ikm, salt, info, n)
	if err != nil {
		panic(err) // only for lengths beyond 255*32 bytes, which this package never asks for
	}
	return k
}

// FileSubkeys derives the block key and the header MAC key from a file key.
func FileSubkeys(fileKey, fileID []byte) (blockKey, macKey []byte) {
	return hkdfKey(fileKey, fileID, "kmsfs v1 block key", keyLen),
		hkdfKey(fileKey, fileID, "kmsfs v1 header mac key", keyLen)
}

// BucketFileKey derives a file key from a bucket key (mode 2).
func BucketFileKey(bucketKey, fileID []byte) []byte {
	return hkdfKey(bucketKey, fileID, "kmsfs v1 bucket-key file key", keyLen)
}

func gcm(key []byte) cipher.AEAD {
	b, err := aes.NewCipher(key)
	if err != nil {
		panic(err) // keys here are always 32 bytes
	}
	a, err := cipher.NewGCM(b)
	if err != nil {
		panic(err)
	}
	return a
}

// Section 4: blocks.

// NoPrev is prev_i of a version 3 block with no stored block before it.
const NoPrev = 0xFFFFFFFFFFFFFFFF

// BlockAAD is file ID || block number (uint64), in versions 2 and 3 one
// more byte: 0x01 for the file's last block, 0x00 for every other, and in
// version 3 the index of the nearest stored block before it (uint64), or
// NoPrev.
func BlockAAD(version byte, fileID []byte, blockNo uint64, last bool, prev uint64) []byte {
	ad := binary.BigEndian.AppendUint64(append([]byte(nil), fileID...), blockNo)
	if version >= 2 {
		flag := byte(0)
		if last {
			flag = 1
		}
		ad = append(ad, flag)
	}
	if version == 3 {
		ad = binary.BigEndian.AppendUint64(ad, prev)
	}
	return ad
}

// SealBlock is nonce || AES-GCM(blockKey, nonce, plain, BlockAAD).
func SealBlock(version byte, blockKey, fileID []byte, blockNo uint64, last bool, prev uint64, nonce, plain []byte) []byte {
	return gcm(blockKey).Seal(append([]byte(nil), nonce...), nonce, plain, BlockAAD(version, fileID, blockNo, last, prev))
}

// OpenBlock authenticates and decrypts one sealed block.
func OpenBlock(version byte, blockKey, fileID []byte, blockNo uint64, last bool, prev uint64, sealed []byte) ([]byte, error) {
	if len(sealed) <= blockExtra {
		return nil, fmt.Errorf("block %d: %d bytes", blockNo, len(sealed))
	}
	return gcm(blockKey).Open(nil, sealed[:nonceLen], sealed[nonceLen:], BlockAAD(version, fileID, blockNo, last, prev))
}

// IsHole says whether a stored block of a version 3 file is a hole: all
// of its bytes zero.
func IsHole(stored []byte) bool {
	for _, b := range stored {
		if b != 0 {
			return false
		}
	}
	return true
}

// PlaintextSize is the plaintext size of a stored file of size stored, by
// the rule of section 4.
func PlaintextSize(stored, headerSize, blockSize int64) (int64, error) {
	if stored == 0 {
		return 0, nil
	}
	if stored < headerSize {
		return 0, fmt.Errorf("stored size %d is below the header size %d", stored, headerSize)
	}
	s := blockSize + blockExtra
	d := stored - headerSize
	full, rest := d/s, d%s
	if rest > 0 && rest <= blockExtra {
		return 0, fmt.Errorf("stored size %d ends in a torn block", stored)
	}
	size := full * blockSize
	if rest > 0 {
		size += rest - blockExtra
	}
	return size, nil
}

// DecryptFile returns the plaintext of a stored file of any version (a
// version 4 file: DecryptUnits). fileKey gives the file key for its parsed
// header (the KMS part of section 5).
func DecryptFile(stored []byte, headerSize, blockSize int, fileKey func(*Header) ([]byte, error)) ([]byte, error) {
	size, err := PlaintextSize(int64(len(stored)), int64(headerSize), int64(blockSize))
	if err != nil || size == 0 {
		return nil, err
	}
	h, err := ParseHeader(stored[:headerSize])
	if err != nil {
		return nil, err
	}
	// Section 4a: a version 4 region is at most header_size (ParseHeader
	// was given that much) and at least 256 (ParseHeader checks that too).
	if (h.Version != 4 && h.RegionSize != headerSize) || int(h.BlockSize) != blockSize {
		return nil, fmt.Errorf("header says region %d and blocks of %d; the volume %d and %d", h.RegionSize, h.BlockSize, headerSize, blockSize)
	}
	k, err := fileKey(h)
	if err != nil {
		return nil, err
	}
	blockKey, macKey := FileSubkeys(k, h.FileID)
	if err := h.Verify(macKey); err != nil {
		return nil, err
	}
	if h.Version == 4 {
		return DecryptUnits(stored, h, blockKey, size)
	}
	var out []byte
	s := blockSize + blockExtra
	prev := uint64(NoPrev) // version 3: the last stored block so far
	for i, off := uint64(0), headerSize; off < len(stored); i, off = i+1, off+s {
		last := off+s >= len(stored)
		block := stored[off:min(off+s, len(stored))]
		if h.Version == 3 && IsHole(block) {
			// A hole reads as B zeros; it is vouched for by the next
			// stored block, whose prev skips it. The last block is stored.
			if last {
				return nil, fmt.Errorf("block %d: the last block is a hole", i)
			}
			out = append(out, make([]byte, blockSize)...)
			continue
		}
		plain, err := OpenBlock(h.Version, blockKey, h.FileID, i, last, prev, block)
		if err != nil {
			return nil, fmt.Errorf("block %d: %w", i, err)
		}
		out = append(out, plain...)
		prev = i
	}
	if int64(len(out)) != size {
		return nil, fmt.Errorf("%d plaintext bytes, the size rule says %d", len(out), size)
	}
	return out, nil
}

// Section 4a: compressed files (version 4).

// Unit geometry and payload kinds of section 4a.
const (
	minUnit    = 4096
	maxUnit    = 1 << 20
	unitExtra  = blockExtra + 1 // nonce, tag and the kind byte
	unitFlag   = 0x02           // the AAD byte after the unit number
	KindStored = 0x00
	KindZstd   = 0x01
)

// Compression is the value of field 0x47.
type Compression struct {
	Algorithm byte   // 1: zstd
	UnitSize  uint32 // U
	PlainSize uint64 // P
	Lengths   []uint32
}

func parseCompression(v []byte) (*Compression, error) {
	if len(v) < 13 {
		return nil, fmt.Errorf("compression field of %d bytes", len(v))
	}
	c := &Compression{Algorithm: v[0], UnitSize: binary.BigEndian.Uint32(v[1:5]), PlainSize: binary.BigEndian.Uint64(v[5:13])}
	if c.Algorithm != 1 {
		return nil, fmt.Errorf("compression algorithm %d", c.Algorithm)
	}
	if c.UnitSize < minUnit || c.UnitSize > maxUnit || c.UnitSize&(c.UnitSize-1) != 0 {
		return nil, fmt.Errorf("unit size %d", c.UnitSize)
	}
	if c.PlainSize == 0 {
		return nil, errors.New("compressed file of 0 bytes")
	}
	n := (c.PlainSize-1)/uint64(c.UnitSize) + 1 // ceil(P / U), P > 0
	if uint64(len(v)-13) != 4*n {
		return nil, fmt.Errorf("compression field of %d bytes for %d units", len(v), n)
	}
	for i := uint64(0); i < n; i++ {
		l := binary.BigEndian.Uint32(v[13+4*i:])
		if l <= unitExtra || l > c.UnitSize+unitExtra {
			return nil, fmt.Errorf("unit %d: stored length %d", i, l)
		}
		c.Lengths = append(c.Lengths, l)
	}
	return c, nil
}

// UnitPlainLen is the plaintext length of unit i: [i*U, min((i+1)*U, P)).
func (c *Compression) UnitPlainLen(i int) int {
	return int(min(uint64(c.UnitSize), c.PlainSize-uint64(i)*uint64(c.UnitSize)))
}

// UnitAAD is file ID || unit number (uint64) || 0x02.
func UnitAAD(fileID []byte, unitNo uint64) []byte {
	return append(binary.BigEndian.AppendUint64(append([]byte(nil), fileID...), unitNo), unitFlag)
}

// SealUnit is nonce || AES-GCM(blockKey, nonce, payload, UnitAAD); payload
// is the kind byte and the unit's bytes.
func SealUnit(blockKey, fileID []byte, unitNo uint64, nonce, payload []byte) []byte {
	return gcm(blockKey).Seal(append([]byte(nil), nonce...), nonce, payload, UnitAAD(fileID, unitNo))
}

// OpenUnitPayload authenticates and decrypts one sealed unit to its
// payload.
func OpenUnitPayload(blockKey, fileID []byte, unitNo uint64, sealed []byte) ([]byte, error) {
	if len(sealed) <= unitExtra {
		return nil, fmt.Errorf("unit %d: %d bytes", unitNo, len(sealed))
	}
	return gcm(blockKey).Open(nil, sealed[:nonceLen], sealed[nonceLen:], UnitAAD(fileID, unitNo))
}

// OpenUnit returns the plaintext of a sealed unit, which must be want
// bytes long.
func OpenUnit(blockKey, fileID []byte, unitNo uint64, sealed []byte, want int) ([]byte, error) {
	payload, err := OpenUnitPayload(blockKey, fileID, unitNo, sealed)
	if err != nil {
		return nil, err
	}
	var plain []byte
	switch payload[0] {
	case KindStored:
		plain = payload[1:]
	case KindZstd:
		if plain, err = DecodeFrame(payload[1:]); err != nil {
			return nil, fmt.Errorf("unit %d: %w", unitNo, err)
		}
	default:
		return nil, fmt.Errorf("unit %d: payload kind %d", unitNo, payload[0])
	}
	if len(plain) != want {
		return nil, fmt.Errorf("unit %d: %d plaintext bytes, want %d", unitNo, len(plain), want)
	}
	return plain, nil
}

// DecodeFrame decompresses one zstd frame (RFC 8878) with nothing after it.
// The frame's structure is walked here to check that it is one frame;
// klauspost/compress decompresses it, with at most maxUnit bytes of
// window and of output (a unit is never longer).
func DecodeFrame(frame []byte) ([]byte, error) {
	if n, err := frameLen(frame); err != nil {
		return nil, err
	} else if n != len(frame) {
		return nil, fmt.Errorf("zstd: %d bytes after the frame", len(frame)-n)
	}
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(maxUnit), zstd.WithDecoderMaxMemory(maxUnit))
	if err != nil {
		return nil, err
	}
	defer d.Close()
	out, err := d.DecodeAll(frame, nil)
	if err != nil {
		return nil, fmt.Errorf("zstd: %w", err)
	}
	return out, nil
}

// frameLen is the length of the zstd frame b starts with (RFC 8878
// section 3.1.1): magic, frame header, blocks up to the last one, and the
// checksum if the header announces one.
func frameLen(b []byte) (int, error) {
	if len(b) < 5 || binary.LittleEndian.Uint32(b) != 0xFD2FB528 {
		return 0, errors.New("zstd: no frame magic")
	}
	fhd := b[4]
	if fhd&0x08 != 0 {
		return 0, errors.New("zstd: reserved bit set in the frame header")
	}
	single := fhd&0x20 != 0
	n := 5
	if !single {
		n++ // window descriptor
	}
	n += []int{0, 1, 2, 4}[fhd&3] // dictionary ID
	fcs := []int{0, 2, 4, 8}[fhd>>6]
	if fcs == 0 && single {
		fcs = 1
	}
	n += fcs
	for {
		if len(b) < n+3 {
			return 0, errors.New("zstd: frame cut")
		}
		bh := uint32(b[n]) | uint32(b[n+1])<<8 | uint32(b[n+2])<<16
		last, typ, size := bh&1 != 0, (bh>>1)&3, int(bh>>3)
		n += 3
		switch typ {
		case 0, 2: // raw, compressed: size bytes
			n += size
		case 1: // RLE: one byte
			n++
		default:
			return 0, errors.New("zstd: reserved block type")
		}
		if last {
			break
		}
	}
	if fhd&0x04 != 0 {
		n += 4 // content checksum
	}
	if len(b) < n {
		return 0, errors.New("zstd: frame cut")
	}
	return n, nil
}

// DecryptUnits returns the plaintext of a version 4 file whose header h
// was parsed from it and verified, by section 4a: P equals size (the size
// rule of section 4 on the stored size), the units, packed after the
// region, end within the stored file, and each opens at its position to
// its length. The bytes after the last unit are not read.
func DecryptUnits(stored []byte, h *Header, blockKey []byte, size int64) ([]byte, error) {
	c := h.Compression
	if c.PlainSize != uint64(size) {
		return nil, fmt.Errorf("the header says %d bytes, the stored size %d", c.PlainSize, size)
	}
	var out []byte
	off := int64(h.RegionSize)
	for i, l := range c.Lengths {
		if off+int64(l) > int64(len(stored)) {
			return nil, fmt.Errorf("unit %d ends at %d, past the stored size %d", i, off+int64(l), len(stored))
		}
		plain, err := OpenUnit(blockKey, h.FileID, uint64(i), stored[off:off+int64(l)], c.UnitPlainLen(i))
		if err != nil {
			return nil, err
		}
		out = append(out, plain...)
		off += int64(l)
	}
	return out, nil
}

// Section 5: extended attributes.

// XattrKey derives the key of user.* attribute values.
func XattrKey(metaKey, volumeID []byte) []byte {
	return hkdfKey(metaKey, volumeID, "kmsfs v1 xattr key", keyLen)
}

// OpenXattr decrypts a stored user.* value (nonce || AES-GCM, AAD = name).
func OpenXattr(xattrKey []byte, name string, stored []byte) ([]byte, error) {
	if len(stored) < blockExtra {
		return nil, errors.New("xattr value too short")
	}
	return gcm(xattrKey).Open(nil, stored[:nonceLen], stored[nonceLen:], []byte(name))
}

// Section 6: the embedded KMS's ciphertext blob.

// EncodeContext is the canonical encoding of an encryption context.
func EncodeContext(ec map[string]string) []byte {
	keys := make([]string, 0, len(ec))
	for k := range ec {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := binary.BigEndian.AppendUint16(nil, uint16(len(keys)))
	for _, k := range keys {
		out = binary.BigEndian.AppendUint16(out, uint16(len(k)))
		out = append(out, k...)
		out = binary.BigEndian.AppendUint16(out, uint16(len(ec[k])))
		out = append(out, ec[k]...)
	}
	return out
}

// BlobKey is the key and backing material version an embedded blob names.
type BlobKey struct {
	KeyID   [16]byte // the key's UUID, raw
	Version uint32
}

// OpenBlob decrypts an embedded KMS ciphertext blob under the context ec;
// material returns the 32-byte backing material of a key version.
func OpenBlob(blob []byte, ec map[string]string, material func(BlobKey) ([]byte, error)) ([]byte, error) {
	const head = 1 + 16 + 4 + nonceLen
	if len(blob) < head+tagLen || blob[0] != 0x01 {
		return nil, errors.New("not an embedded KMS blob of format 1")
	}
	var bk BlobKey
	copy(bk.KeyID[:], blob[1:17])
	bk.Version = binary.BigEndian.Uint32(blob[17:21])
	m, err := material(bk)
	if err != nil {
		return nil, err
	}
	aad := append(append([]byte(nil), blob[:head]...), EncodeContext(ec)...)
	return gcm(m).Open(nil, blob[21:head], blob[head:], aad)
}

// Section 10: encrypted names.

var b64 = base64.RawURLEncoding

// NameKeys are the keys of section 10.
type NameKeys struct {
	Enc, MAC, Target []byte
}

// DeriveNameKeys derives the name keys from the metadata key.
func DeriveNameKeys(metaKey, volumeID []byte) NameKeys {
	k := hkdfKey(metaKey, volumeID, "kmsfs v1 name keys", 3*keyLen)
	return NameKeys{Enc: k[:32], MAC: k[32:64], Target: k[64:96]}
}

// RootDirID is HMAC(nameMACKey, "kmsfs v1 root directory")[0:16].
func (k NameKeys) RootDirID() []byte {
	m := hmac.New(sha256.New, k.MAC)
	m.Write([]byte("kmsfs v1 root directory"))
	return m.Sum(nil)[:idLen]
}

func (k NameKeys) tag(dirID []byte, name string) []byte {
	m := hmac.New(sha256.New, k.MAC)
	m.Write(dirID)
	m.Write([]byte(name))
	return m.Sum(nil)[:16]
}

// ctr is AES-256-CTR under nameEncKey with the tag as the initial counter
// block, taken whole.
func (k NameKeys) ctr(tag, in []byte) []byte {
	b, err := aes.NewCipher(k.Enc)
	if err != nil {
		panic(err)
	}
	out := make([]byte, len(in))
	cipher.NewCTR(b, tag).XORKeyStream(out, in)
	return out
}

// EncryptName is the stored form of name in directory dirID.
func (k NameKeys) EncryptName(dirID []byte, name string) string {
	tag := k.tag(dirID, name)
	return b64.EncodeToString(append(tag, k.ctr(tag, []byte(name))...))
}

// DecryptName reverses EncryptName and checks the tag.
func (k NameKeys) DecryptName(dirID []byte, stored string) (string, error) {
	raw, err := b64.DecodeString(stored)
	if err != nil || len(raw) <= 16 {
		return "", fmt.Errorf("stored name %q: not base64url of tag and name", stored)
	}
	name := string(k.ctr(raw[:16], raw[16:]))
	if !hmac.Equal(k.tag(dirID, name), raw[:16]) {
		return "", fmt.Errorf("stored name %q: tag does not match", stored)
	}
	return name, nil
}

// LongName is the name a stored form over 255 bytes is stored under.
func LongName(stored string) string {
	sum := sha256.Sum256([]byte(stored))
	return "~" + b64.EncodeToString(sum[:])
}

// DecryptTarget decrypts a stored symlink target.
func (k NameKeys) DecryptTarget(stored string) (string, error) {
	raw, err := b64.DecodeString(stored)
	if err != nil || len(raw) < blockExtra {
		return "", errors.New("stored target: not base64url of a sealed target")
	}
	t, err := gcm(k.Target).Open(nil, raw[:nonceLen], raw[nonceLen:], nil)
	return string(t), err
}
