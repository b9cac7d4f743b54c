package envelope

// The compressed layout (format version 4, docs/FORMAT.md section 4a): the
// plaintext is cut into units of UnitSize bytes, each compressed on its own
// (or kept as is when that does not make it shorter) and sealed with
// AES-GCM. The header's compression field lists every unit's stored
// length, so a read finds and decompresses only the units it touches, and
// the plaintext size and the end of the file are authenticated by the
// header MAC.

import (
	"encoding/binary"
	"fmt"

	"github.com/klauspost/compress/zstd"
)

// Compression algorithms of the compression field.
const (
	CompressZstd uint8 = 1
)

// Unit geometry. 64 KiB units keep a random 4 KiB read to one unit of
// decompression (about 20 µs at zstd's 3 GB/s) while giving zstd enough
// context that a source file compresses nearly as well as whole.
const (
	DefaultUnitSize = 64 << 10
	MinUnitSize     = 4 << 10
	MaxUnitSize     = 1 << 20
)

// Unit payload kinds: the first plaintext byte of a sealed unit says how the
// rest holds the unit's bytes.
const (
	unitStored = 0 // the unit's plaintext as is
	unitZstd   = 1 // one zstd frame of the unit's plaintext
)

// flagUnit is the AAD byte of a version 4 unit, where a version 2 or 3
// block has its final flag: a unit and a block never open as each other.
const flagUnit = 0x02

// UnitOverhead is what sealing adds to a unit's payload: nonce, tag and the
// kind byte.
const UnitOverhead = BlockOverhead + 1

// Units is the compression field of a version 4 header.
type Units struct {
	Algorithm uint8
	UnitSize  int      // plaintext bytes per unit; the last unit may be shorter
	PlainSize int64    // the file's plaintext size
	Lengths   []uint32 // stored length of each sealed unit, in order
}

// unitsFixedLen is algorithm (1) || unit size (uint32) || plaintext size (uint64).
const unitsFixedLen = 1 + 4 + 8

// UnitCount is the number of units of a file of plainSize bytes.
func UnitCount(plainSize int64, unitSize int) int {
	return int((plainSize + int64(unitSize) - 1) / int64(unitSize))
}

func checkUnitSize(n int) error {
	if n < MinUnitSize || n > MaxUnitSize || n&(n-1) != 0 {
		return fmt.Errorf("unit size %d: must be a power of two in %d..%d", n, MinUnitSize, MaxUnitSize)
	}
	return nil
}

func (u *Units) marshal() ([]byte, error) {
	if u.Algorithm != CompressZstd {
		return nil, fmt.Errorf("%w: unknown compression algorithm %d", ErrCorrupt, u.Algorithm)
	}
	if err := checkUnitSize(u.UnitSize); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if u.PlainSize <= 0 || len(u.Lengths) != UnitCount(u.PlainSize, u.UnitSize) {
		return nil, fmt.Errorf("%w: %d unit lengths for %d bytes in units of %d", ErrCorrupt, len(u.Lengths), u.PlainSize, u.UnitSize)
	}
	b := make([]byte, 0, unitsFixedLen+4*len(u.Lengths))
	b = append(b, u.Algorithm)
	b = binary.BigEndian.AppendUint32(b, uint32(u.UnitSize))
	b = binary.BigEndian.AppendUint64(b, uint64(u.PlainSize))
	for _, n := range u.Lengths {
		b = binary.BigEndian.AppendUint32(b, n)
	}
	return b, nil
}

func parseUnits(val []byte) (*Units, error) {
	if len(val) < unitsFixedLen || (len(val)-unitsFixedLen)%4 != 0 {
		return nil, fmt.Errorf("%w: compression field has length %d", ErrCorrupt, len(val))
	}
	u := &Units{
		Algorithm: val[0],
		UnitSize:  int(binary.BigEndian.Uint32(val[1:])),
		PlainSize: int64(binary.BigEndian.Uint64(val[5:])),
	}
	if u.Algorithm != CompressZstd {
		return nil, fmt.Errorf("%w: file is compressed with algorithm %d, which this kmsfs does not know", ErrVersion, u.Algorithm)
	}
	if err := checkUnitSize(u.UnitSize); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	n := (len(val) - unitsFixedLen) / 4
	if u.PlainSize <= 0 || u.PlainSize > int64(n)*int64(u.UnitSize) || n != UnitCount(u.PlainSize, u.UnitSize) {
		return nil, fmt.Errorf("%w: %d units cannot hold %d bytes in units of %d", ErrCorrupt, n, u.PlainSize, u.UnitSize)
	}
	u.Lengths = make([]uint32, n)
	for i := range u.Lengths {
		u.Lengths[i] = binary.BigEndian.Uint32(val[unitsFixedLen+4*i:])
		if u.Lengths[i] <= UnitOverhead || int(u.Lengths[i]) > u.UnitSize+UnitOverhead {
			return nil, fmt.Errorf("%w: unit %d has stored length %d", ErrCorrupt, i, u.Lengths[i])
		}
	}
	return u, nil
}

// PlainLen is the plaintext length of unit i.
func (u *Units) PlainLen(i int) int {
	return int(min(int64(u.UnitSize), u.PlainSize-int64(i)*int64(u.UnitSize)))
}

// Offsets returns where each unit starts in the stored file, and where the
// last one ends, for a header region of regionSize bytes.
func (u *Units) Offsets(regionSize int) (starts []int64, end int64) {
	starts = make([]int64, len(u.Lengths))
	end = int64(regionSize)
	for i, n := range u.Lengths {
		starts[i] = end
		end += int64(n)
	}
	return starts, end
}

// Codec compresses and decompresses units with zstd. One Codec serves any
// number of goroutines: zstd's EncodeAll and DecodeAll are safe for
// concurrent use.
type Codec struct {
	enc *zstd.Encoder
	dec *zstd.Decoder
}

// NewCodec returns a codec compressing at zstd level (1..22, as the zstd
// command's -LEVEL; klauspost/compress maps it to its nearest encoder).
func NewCodec(level int) (*Codec, error) {
	// Lower encoder memory: every unit is one EncodeAll of at most
	// MaxUnitSize bytes, which smaller tables serve as well (the same
	// output here) and clear faster: a 30 KB source file compresses in
	// 60% of the time. No CRC: the unit is authenticated by AES-GCM.
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(level)),
		zstd.WithEncoderConcurrency(2), zstd.WithZeroFrames(true), zstd.WithEncoderCRC(false),
		zstd.WithLowerEncoderMem(true))
	if err != nil {
		return nil, err
	}
	// A unit decompresses to at most MaxUnitSize bytes, so no frame needs
	// more window than that; a frame asking for more is refused before any
	// memory is taken for it.
	dec, err := zstd.NewReader(nil, zstd.WithDecoderMaxWindow(MaxUnitSize), zstd.WithDecoderMaxMemory(MaxUnitSize),
		zstd.WithDecoderConcurrency(0))
	if err != nil {
		enc.Close()
		return nil, err
	}
	return &Codec{enc: enc, dec: dec}, nil
}

// Close releases the codec's goroutines.
func (c *Codec) Close() {
	c.enc.Close()
	c.dec.Close()
}

// SealUnit appends sealed unit unitNo of a version 4 file to dst: its
// plaintext compressed when that makes it shorter, as is otherwise, sealed
// with a fresh random nonce.
func (k *FileKeys) SealUnit(dst, plain []byte, unitNo uint64, c *Codec) ([]byte, error) {
	if k.version != Version4 {
		return nil, fmt.Errorf("seal unit: keys are for format version %d", k.version)
	}
	payload := make([]byte, 1, 1+len(plain))
	payload[0] = unitZstd
	payload = c.enc.EncodeAll(plain, payload)
	if len(payload) >= 1+len(plain) {
		payload = append(payload[:1], plain...)
		payload[0] = unitStored
	}
	var nonce [NonceSize]byte
	if err := randNonces(nonce[:]); err != nil {
		return nil, err
	}
	dst = k.sealUnitWithNonce(dst, payload, unitNo, nonce[:])
	clear(payload)
	return dst, nil
}

// sealUnitWithNonce appends nonce || AES-GCM(payload) of unit unitNo to
// dst: payload is the kind byte and the unit's bytes as SealUnit made
// them. The test vectors seal with fixed nonces through it.
func (k *FileKeys) sealUnitWithNonce(dst, payload []byte, unitNo uint64, nonce []byte) []byte {
	var ad [IDLen + 9]byte
	dst = append(dst, nonce...)
	return k.aead.Seal(dst, nonce, payload, k.unitAAD(&ad, unitNo))
}

// OpenUnit appends the plaintext of sealed unit unitNo to dst; want is its
// plaintext length (Units.PlainLen), which the unit must decode to exactly.
func (k *FileKeys) OpenUnit(dst, sealed []byte, unitNo uint64, want int, c *Codec) ([]byte, error) {
	if k.version != Version4 {
		return nil, fmt.Errorf("open unit: keys are for format version %d", k.version)
	}
	if len(sealed) <= UnitOverhead {
		return nil, fmt.Errorf("unit %d: %w (only %d bytes)", unitNo, ErrBlockAuth, len(sealed))
	}
	var ad [IDLen + 9]byte
	payload, err := k.aead.Open(nil, sealed[:NonceSize], sealed[NonceSize:], k.unitAAD(&ad, unitNo))
	if err != nil {
		return nil, fmt.Errorf("unit %d: %w", unitNo, ErrBlockAuth)
	}
	defer clear(payload)
	start := len(dst)
	switch payload[0] {
	case unitStored:
		dst = append(dst, payload[1:]...)
	case unitZstd:
		// DecodeAll would read any number of frames: the format
		// allows exactly one (docs/FORMAT.md section 4a).
		if n, ferr := zstdFrameLen(payload[1:]); ferr != nil || n != len(payload)-1 {
			return nil, fmt.Errorf("unit %d: %w: the payload is not one zstd frame", unitNo, ErrCorrupt)
		}
		dst, err = c.dec.DecodeAll(payload[1:], dst)
		if err != nil {
			return nil, fmt.Errorf("unit %d: %w: zstd: %v", unitNo, ErrCorrupt, err)
		}
	default:
		return nil, fmt.Errorf("unit %d: %w: unknown payload kind %d", unitNo, ErrCorrupt, payload[0])
	}
	if len(dst)-start != want {
		return nil, fmt.Errorf("unit %d: %w: %d plaintext bytes, want %d", unitNo, ErrCorrupt, len(dst)-start, want)
	}
	return dst, nil
}

// unitAAD is file ID || unitNo (uint64) || 0x02.
func (k *FileKeys) unitAAD(ad *[IDLen + 9]byte, unitNo uint64) []byte {
	copy(ad[:], k.fileID[:])
	binary.BigEndian.PutUint64(ad[IDLen:], unitNo)
	ad[IDLen+8] = flagUnit
	return ad[:]
}

// AsVersion returns keys for the same file key and file ID under another
// format version: the subkeys do not depend on the version, so a file
// converted between the block layout and the compressed one keeps its
// wrapped key. The copy has its own key bytes; Zero each.
func (k *FileKeys) AsVersion(version uint8) (*FileKeys, error) {
	if !knownVersion(version) {
		return nil, fmt.Errorf("%w %d", ErrVersion, version)
	}
	return &FileKeys{fileID: k.fileID, version: version, blockKey: append([]byte(nil), k.blockKey...),
		macKey: append([]byte(nil), k.macKey...), aead: k.aead}, nil
}

// zstdFrameLen is the length of the zstd frame that b starts with (RFC 8878
// section 3.1.1): its header, its blocks to the last one, and its
// checksum. A skippable frame, a dictionary or a reserved bit is an error.
func zstdFrameLen(b []byte) (int, error) {
	const magic = 0xFD2FB528
	if len(b) < 5 || binary.LittleEndian.Uint32(b) != magic {
		return 0, fmt.Errorf("not a zstd frame")
	}
	fhd := b[4]
	fcsFlag, single, reserved, checksum, dictFlag := fhd>>6, fhd>>5&1, fhd>>3&1, fhd>>2&1, fhd&3
	if reserved != 0 || dictFlag != 0 {
		return 0, fmt.Errorf("zstd frame with a reserved bit or a dictionary")
	}
	pos := 5
	if single == 0 {
		pos++ // window descriptor
	}
	fcsLen := [4]int{0, 2, 4, 8}[fcsFlag]
	if fcsFlag == 0 && single == 1 {
		fcsLen = 1
	}
	pos += fcsLen
	for {
		if pos+3 > len(b) {
			return 0, fmt.Errorf("zstd frame cut short")
		}
		hdr := uint32(b[pos]) | uint32(b[pos+1])<<8 | uint32(b[pos+2])<<16
		pos += 3
		switch size := int(hdr >> 3); hdr >> 1 & 3 {
		case 0, 2: // raw, compressed
			pos += size
		case 1: // RLE: one byte
			pos++
		default:
			return 0, fmt.Errorf("zstd block of the reserved type")
		}
		if pos > len(b) {
			return 0, fmt.Errorf("zstd frame cut short")
		}
		if hdr&1 == 1 {
			break
		}
	}
	if checksum == 1 {
		pos += 4
	}
	if pos > len(b) {
		return 0, fmt.Errorf("zstd frame cut short")
	}
	return pos, nil
}
