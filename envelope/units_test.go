package envelope

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/kmsfs/kmsfs/envelope/internal/specdecode"
)

var updateV4 = flag.Bool("update-v4", false,
	"write testdata/vectors_v4.json (once, when format version 4 was new; never again)")

// vectorsV4 is testdata/vectors_v4.json: the compressed layout (format
// version 4, docs/FORMAT.md section 4a) for fixed keys, IDs, nonces and
// plaintext. A zstd frame's bytes depend on the encoder, so the vectors
// hold each unit's payload (kind byte and bytes) as sealed: a reader
// checks that it decrypts and decompresses to the plaintext, and that
// sealing the payload again gives the sealed bytes; nothing requires an
// encoder to compress to the same frame.
type vectorsV4 struct {
	Version    uint8  `json:"version"`
	FileKey    string `json:"file_key"`
	FileID     string `json:"file_id"`
	BlockKey   string `json:"block_key"`
	HeaderMAC  string `json:"header_mac_key"`
	BucketKey  string `json:"bucket_key"`
	BucketFile string `json:"bucket_file_key"`
	// HeaderSize and BlockSize are the volume geometry the files'
	// stored sizes are given for (section 4a, sizes).
	HeaderSize int            `json:"header_size"`
	BlockSize  int            `json:"block_size"`
	Files      []vectorFileV4 `json:"files"`
}

type vectorFileV4 struct {
	// Mode is per-object (the file key is file_key) or bucket-key (the
	// file key is bucket_file_key, derived from bucket_key).
	Mode       string       `json:"mode"`
	Header     string       `json:"header_region"` // the whole region of H4 bytes
	UnitSize   int          `json:"unit_size"`
	PlainSize  int64        `json:"plain_size"`
	StoredSize int64        `json:"stored_size"` // C: header, units, then zeros
	Units      []vectorUnit `json:"units"`
}

type vectorUnit struct {
	UnitNo    uint64 `json:"unit_no"`
	Kind      uint8  `json:"kind"` // 0 stored, 1 zstd
	Nonce     string `json:"nonce"`
	Plaintext string `json:"plaintext"`
	Payload   string `json:"payload"` // kind || stored bytes or zstd frame
	Sealed    string `json:"sealed"`
}

// The vector files: a per-object file of three 4 KiB units (text that
// compresses, bytes that do not, and a short compressible last unit), and
// a bucket-key file of one short unit in 64 KiB units that is stored as
// is (its zstd frame would be longer).
func v4VectorPlaintexts() [][][]byte {
	var text []byte
	for i := 0; len(text) < MinUnitSize; i++ {
		text = fmt.Appendf(text, "line %04d: kmsfs compresses each unit on its own\n", i)
	}
	noise := make([]byte, 0, MinUnitSize)
	for i := uint64(0); len(noise) < MinUnitSize; i++ {
		sum := sha256.Sum256(binary.BigEndian.AppendUint64(nil, i))
		noise = append(noise, sum[:]...)
	}
	return [][][]byte{
		{text[:MinUnitSize], noise, bytes.Repeat([]byte("kmsfs "), 17)[:100]},
		{[]byte("hello, kmsfs")},
	}
}

// v4VectorKinds is the payload kind each vector unit must have.
var v4VectorKinds = [][]uint8{{unitZstd, unitStored, unitZstd}, {unitStored}}

// v4VectorSetup is the fixed material of the version 4 vectors: the keys
// of each vector file and its header without units.
func v4VectorSetup(t testing.TB) (fileKey, bucketKey, bucketFileKey []byte, keys []*FileKeys, headers []Header) {
	fileKey = bytes.Repeat([]byte{0x42}, KeySize)
	bucketKey = bytes.Repeat([]byte{0x07}, KeySize)
	fileID := id(0x10)
	bfk, err := BucketFileKey(bucketKey, fileID)
	if err != nil {
		t.Fatal(err)
	}
	for i, mode := range []Mode{ModePerObject, ModeBucketKey} {
		k := fileKey
		if mode == ModeBucketKey {
			k = bfk
		}
		fk, err := DeriveFileKeys(k, fileID, Version4)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, fk)
		h := testHeader(mode)
		h.Version = Version4
		h.Units = &Units{Algorithm: CompressZstd, UnitSize: []int{MinUnitSize, DefaultUnitSize}[i]}
		headers = append(headers, h)
	}
	return fileKey, bucketKey, bfk, keys, headers
}

// unitPayload opens a sealed unit down to its payload (kind byte first).
func (k *FileKeys) unitPayload(sealed []byte, unitNo uint64) ([]byte, error) {
	var ad [IDLen + 9]byte
	return k.aead.Open(nil, sealed[:NonceSize], sealed[NonceSize:], k.unitAAD(&ad, unitNo))
}

func writeVectorsV4(t *testing.T, path string) {
	fileKey, bucketKey, bfk, keys, headers := v4VectorSetup(t)
	codec, err := NewCodec(3)
	if err != nil {
		t.Fatal(err)
	}
	defer codec.Close()
	l := Layout{HeaderSize: DefaultHeaderSize, BlockSize: DefaultBlockSize}
	v := vectorsV4{
		Version: Version4, FileKey: hex.EncodeToString(fileKey), FileID: hex.EncodeToString(keys[0].fileID[:]),
		BlockKey: hex.EncodeToString(keys[0].blockKey), HeaderMAC: hex.EncodeToString(keys[0].macKey),
		BucketKey: hex.EncodeToString(bucketKey), BucketFile: hex.EncodeToString(bfk),
		HeaderSize: DefaultHeaderSize, BlockSize: DefaultBlockSize,
	}
	for f, plains := range v4VectorPlaintexts() {
		k, h := keys[f], headers[f]
		vf := vectorFileV4{Mode: h.Mode.String(), UnitSize: h.Units.UnitSize}
		for i, p := range plains {
			// The payload is what SealUnit makes of the plaintext; it is
			// sealed again with a fixed nonce.
			random, err := k.SealUnit(nil, p, uint64(i), codec)
			if err != nil {
				t.Fatal(err)
			}
			payload, err := k.unitPayload(random, uint64(i))
			if err != nil {
				t.Fatal(err)
			}
			if payload[0] != v4VectorKinds[f][i] {
				t.Fatalf("file %d unit %d: payload kind %d, want %d", f, i, payload[0], v4VectorKinds[f][i])
			}
			nonce := bytes.Repeat([]byte{byte(0x10*f + i + 1)}, NonceSize)
			sealed := k.sealUnitWithNonce(nil, payload, uint64(i), nonce)
			vf.Units = append(vf.Units, vectorUnit{UnitNo: uint64(i), Kind: payload[0], Nonce: hex.EncodeToString(nonce),
				Plaintext: hex.EncodeToString(p), Payload: hex.EncodeToString(payload), Sealed: hex.EncodeToString(sealed)})
			h.Units.PlainSize += int64(len(p))
			h.Units.Lengths = append(h.Units.Lengths, uint32(len(sealed)))
		}
		region, err := h.MarshalCompact(k.macKey, DefaultHeaderSize)
		if err != nil {
			t.Fatal(err)
		}
		vf.Header, vf.PlainSize, vf.StoredSize = hex.EncodeToString(region), h.Units.PlainSize, l.CipherSize(h.Units.PlainSize, true)
		v.Files = append(v.Files, vf)
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestVectorsV4 holds envelope to testdata/vectors_v4.json: key
// derivations, the compact header (its encoding, its compression field,
// its MAC, only with version 4 keys), and every unit (its payload sealed
// again with its nonce gives its bytes, it opens to its plaintext only at
// its own position and never as a block, and the plaintext sealed anew is
// stored as the same kind).
func TestVectorsV4(t *testing.T) {
	path := filepath.Join("testdata", "vectors_v4.json")
	if *updateV4 {
		refuseRewrite(t, path)
		writeVectorsV4(t, path)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var v vectorsV4
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	fileKey, _, bfk, keys, headers := v4VectorSetup(t)
	if v.Version != Version4 || v.FileKey != hex.EncodeToString(fileKey) || v.BucketFile != hex.EncodeToString(bfk) {
		t.Errorf("vector version %d, file key %s, bucket file key %s", v.Version, v.FileKey, v.BucketFile)
	}
	if got := hex.EncodeToString(keys[0].blockKey); got != v.BlockKey {
		t.Errorf("block key derivation changed: %s, vector %s", got, v.BlockKey)
	}
	if got := hex.EncodeToString(keys[0].macKey); got != v.HeaderMAC {
		t.Errorf("header MAC key derivation changed: %s, vector %s", got, v.HeaderMAC)
	}
	codec, err := NewCodec(3)
	if err != nil {
		t.Fatal(err)
	}
	defer codec.Close()
	if len(v.Files) != len(headers) {
		t.Fatalf("%d vector files, want %d", len(v.Files), len(headers))
	}
	kinds := map[uint8]bool{}
	for f, vf := range v.Files {
		k, h := keys[f], headers[f]
		t.Run(vf.Mode, func(t *testing.T) {
			region := mustHex(t, vf.Header)
			p, err := ParseHeader(region)
			if err != nil {
				t.Fatal(err)
			}
			u := p.Units
			if p.Version != Version4 || p.Mode.String() != vf.Mode || p.RegionSize != len(region) || u == nil ||
				u.Algorithm != CompressZstd || u.UnitSize != vf.UnitSize || u.PlainSize != vf.PlainSize || len(u.Lengths) != len(vf.Units) {
				t.Fatalf("header vector parses as version %d, mode %v, region %d of %d bytes, units %+v",
					p.Version, p.Mode, p.RegionSize, len(region), u)
			}
			if err := p.Verify(k); err != nil {
				t.Fatal(err)
			}
			for _, other := range []uint8{Version1, Version2, Version3} {
				ok, err := k.AsVersion(other)
				if err != nil {
					t.Fatal(err)
				}
				if p.Verify(ok) == nil {
					t.Errorf("a version 4 header verified with version %d keys", other)
				}
			}
			// The header this code writes for the same units is the vector.
			h.Units.PlainSize, h.Units.Lengths = u.PlainSize, u.Lengths
			if again, err := h.MarshalCompact(k.macKey, v.HeaderSize); err != nil || !bytes.Equal(again, region) {
				t.Errorf("header encoding changed (%v):\n got %x\nwant %x", err, again, region)
			}
			starts, end := u.Offsets(p.RegionSize)
			if l := (Layout{HeaderSize: int64(v.HeaderSize), BlockSize: int64(v.BlockSize)}); l.CipherSize(u.PlainSize, true) != vf.StoredSize || end > vf.StoredSize {
				t.Errorf("stored size %d, units end at %d; the block layout of %d bytes is %d", vf.StoredSize, end, u.PlainSize, l.CipherSize(u.PlainSize, true))
			}
			var whole []byte
			for i, vu := range vf.Units {
				nonce, plain, payload, sealed := mustHex(t, vu.Nonce), mustHex(t, vu.Plaintext), mustHex(t, vu.Payload), mustHex(t, vu.Sealed)
				kinds[vu.Kind] = true
				if vu.UnitNo != uint64(i) || int(u.Lengths[i]) != len(sealed) || u.PlainLen(i) != len(plain) || payload[0] != vu.Kind {
					t.Fatalf("unit %d: number %d, %d sealed bytes (header: %d), %d plaintext bytes (header: %d), kind %d (payload %d)",
						i, vu.UnitNo, len(sealed), u.Lengths[i], len(plain), u.PlainLen(i), vu.Kind, payload[0])
				}
				if i > 0 && starts[i] != starts[i-1]+int64(u.Lengths[i-1]) {
					t.Errorf("unit %d starts at %d", i, starts[i])
				}
				if got := k.sealUnitWithNonce(nil, payload, vu.UnitNo, nonce); !bytes.Equal(got, sealed) {
					t.Errorf("unit %d: sealing changed", i)
				}
				got, err := k.OpenUnit(nil, sealed, vu.UnitNo, len(plain), codec)
				if err != nil || !bytes.Equal(got, plain) {
					t.Errorf("unit %d: vector does not open: %v", i, err)
				}
				whole = append(whole, got...)
				if _, err := k.OpenUnit(nil, sealed, vu.UnitNo+1, len(plain), codec); !errors.Is(err, ErrBlockAuth) {
					t.Errorf("unit %d opened at position %d: %v", i, vu.UnitNo+1, err)
				}
				if _, err := k.OpenUnit(nil, sealed, vu.UnitNo, len(plain)+1, codec); !errors.Is(err, ErrCorrupt) {
					t.Errorf("unit %d opened as %d bytes: %v", i, len(plain)+1, err)
				}
				// 0x02 in the AAD: a unit is never a block of any version.
				for _, ver := range []uint8{Version1, Version2, Version3} {
					bk, _ := k.AsVersion(ver)
					for _, final := range []bool{false, true} {
						for _, prev := range []uint64{NoPrev, vu.UnitNo - 1} {
							if _, err := bk.OpenBlock(nil, sealed, vu.UnitNo, final, prev); err == nil {
								t.Errorf("unit %d opened as a version %d block (final %v, prev %d)", i, ver, final, prev)
							}
						}
					}
				}
				// Sealed anew, the plaintext is stored as the same kind
				// (the frame's bytes may differ with the encoder).
				fresh, err := k.SealUnit(nil, plain, vu.UnitNo, codec)
				if err != nil {
					t.Fatal(err)
				}
				if pl, err := k.unitPayload(fresh, vu.UnitNo); err != nil || pl[0] != vu.Kind {
					t.Errorf("unit %d: sealed anew as kind %v (%v), the vector has %d", i, pl[:min(1, len(pl))], err, vu.Kind)
				}
			}
			if int64(len(whole)) != u.PlainSize {
				t.Errorf("units hold %d bytes, the header says %d", len(whole), u.PlainSize)
			}
		})
	}
	if !kinds[unitStored] || !kinds[unitZstd] {
		t.Errorf("the vectors have payload kinds %v, not both", kinds)
	}
	if len(v.Files) == 0 || len(v.Files[0].Units) < 2 || v.Files[0].PlainSize%int64(v.Files[0].UnitSize) == 0 {
		t.Error("the vectors have no file of several units with a short last one")
	}
}

// v4Region builds a header region by hand, the MAC computed with macKey:
// any fields in any order, for tests of what ParseHeader refuses.
func v4Region(version uint8, regionSize int, fields []rawField, macKey []byte) []byte {
	out := append([]byte(Magic), version, 0, byte(regionSize>>8), byte(regionSize), 0, 0)
	for _, f := range fields {
		out = append(out, f.typ)
		out = binary.BigEndian.AppendUint16(out, uint16(len(f.value)))
		out = append(out, f.value...)
	}
	binary.BigEndian.PutUint16(out[8:], uint16(len(out)-prefixLen))
	out = append(out, headerMAC(macKey, out[:8], fields)...)
	if len(out) < regionSize {
		out = append(out, make([]byte, regionSize-len(out))...)
	}
	return out
}

// v4TestFields are the fields of a version 4 header (per-object) whose
// compression field value is comp; nil leaves the field out.
func v4TestFields(comp []byte) []rawField {
	h := testHeader(ModePerObject)
	fs := []rawField{
		{fieldFileID, h.FileID[:]}, {fieldVolumeID, h.VolumeID[:]}, {fieldMode, []byte{byte(h.Mode)}},
		{fieldSuite, []byte{h.Suite}}, {fieldBlockSize, binary.BigEndian.AppendUint32(nil, uint32(h.BlockSize))},
	}
	if comp != nil {
		fs = append(fs, rawField{fieldCompression, comp})
	}
	return append(fs, rawField{fieldKeyID, []byte(h.KeyID)}, rawField{fieldWrappedKey, h.WrappedKey})
}

// compressionValue is the compression field value of Units.
func compressionValue(t testing.TB, u Units) []byte {
	t.Helper()
	b, err := u.marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestV4HeaderTamper: a version 4 header whose compression field was
// edited (a unit length, P, the unit size), removed, or put on a version 3
// header is refused: ErrCorrupt where the header cannot be a kmsfs header,
// ErrAuth where only the MAC tells; so is every flipped bit outside the
// key slot.
func TestV4HeaderTamper(t *testing.T) {
	k, err := DeriveFileKeys(bytes.Repeat([]byte{0x42}, KeySize), id(0x10), Version4)
	if err != nil {
		t.Fatal(err)
	}
	k3, err := k.AsVersion(Version3)
	if err != nil {
		t.Fatal(err)
	}
	good := Units{Algorithm: CompressZstd, UnitSize: MinUnitSize, PlainSize: 2*MinUnitSize + 100, Lengths: []uint32{300, MinUnitSize + UnitOverhead, 129}}
	h := testHeader(ModePerObject)
	h.Version, h.Units = Version4, &good
	region, err := h.MarshalCompact(k.macKey, DefaultHeaderSize)
	if err != nil {
		t.Fatal(err)
	}
	if p, err := ParseHeader(region); err != nil || p.Verify(k) != nil || !slices.Equal(p.Units.Lengths, good.Lengths) {
		t.Fatalf("the untouched header: %v", err)
	}
	// The field starts after 0x01..0x05 (5 fields, 16+16+1+1+4 bytes of
	// values): type, length, then algorithm, U, P and the lengths.
	at := bytes.Index(region, []byte{fieldCompression, 0, byte(len(compressionValue(t, good)))}) + 3
	if at < prefixLen+3 {
		t.Fatal("no compression field in the region")
	}
	edit := func(off int, b ...byte) []byte {
		bad := bytes.Clone(region)
		copy(bad[at+off:], b)
		return bad
	}
	u32 := func(n uint32) []byte { return binary.BigEndian.AppendUint32(nil, n) }
	u64 := func(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }
	withField := func(version uint8, comp []byte, macKey []byte) []byte {
		return v4Region(version, DefaultHeaderSize, v4TestFields(comp), macKey)
	}
	gv := compressionValue(t, good)
	for _, tc := range []struct {
		what   string
		region []byte
		keys   *FileKeys
		want   error
	}{
		{"a unit length changed", edit(13, u32(301)...), k, ErrAuth},
		{"the last unit length changed", edit(13+8, u32(128)...), k, ErrAuth},
		{"a unit length at most the overhead", edit(13, u32(UnitOverhead)...), k, ErrCorrupt},
		{"a unit length over U + overhead", edit(13+4, u32(MinUnitSize+UnitOverhead+1)...), k, ErrCorrupt},
		{"P changed within the units", edit(5, u64(2*MinUnitSize+99)...), k, ErrAuth},
		{"P changed past the units", edit(5, u64(3*MinUnitSize+1)...), k, ErrCorrupt},
		{"P changed to a unit fewer", edit(5, u64(2*MinUnitSize)...), k, ErrCorrupt},
		{"P zero", edit(5, u64(0)...), k, ErrCorrupt},
		{"P negative as int64", edit(5, u64(1<<63)...), k, ErrCorrupt},
		{"U changed", edit(1, u32(2*MinUnitSize)...), k, ErrCorrupt},
		{"U not a power of two", edit(1, u32(MinUnitSize+1)...), k, ErrCorrupt},
		{"U too small", edit(1, u32(MinUnitSize/2)...), k, ErrCorrupt},
		{"another algorithm", edit(0, 2), k, ErrVersion},
		{"the field removed", withField(Version4, nil, k.macKey), k, ErrCorrupt},
		{"the field on a version 3 header", withField(Version3, gv, k3.macKey), k3, ErrCorrupt},
		{"the version byte set to 3", func() []byte { b := bytes.Clone(region); b[4] = Version3; return b }(), k3, ErrCorrupt},
		{"a length dropped", withField(Version4, gv[:len(gv)-4], k.macKey), k, ErrCorrupt},
		{"a length added", withField(Version4, append(bytes.Clone(gv), u32(100)...), k.macKey), k, ErrCorrupt},
		{"the field cut inside a length", withField(Version4, gv[:len(gv)-1], k.macKey), k, ErrCorrupt},
		{"the field twice", v4Region(Version4, DefaultHeaderSize, append(v4TestFields(gv), rawField{fieldCompression, gv}), k.macKey), k, ErrCorrupt},
	} {
		p, err := ParseHeader(tc.region)
		if err == nil {
			err = p.Verify(tc.keys)
		}
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.what, err, tc.want)
		}
	}
	// A version 3 header made by hand with the same fields but no
	// compression field is fine: the test's own builder is not at fault.
	if p, err := ParseHeader(withField(Version3, nil, k3.macKey)); err != nil || p.Verify(k3) != nil {
		t.Fatalf("a version 3 header built like the tampered ones: %v", err)
	}
	if p, err := ParseHeader(withField(Version4, gv, k.macKey)); err != nil || p.Verify(k) != nil {
		t.Fatalf("a version 4 header built like the tampered ones: %v", err)
	}
	keySlot := bytes.Index(region, []byte(h.KeyID)) - 3
	for i := range region {
		if i == 8 || i == 9 || (i >= keySlot && i < keySlot+3+len(h.KeyID)+3+len(h.WrappedKey)) {
			continue // fields length and key slot: TestHeaderTamper covers them
		}
		bad := bytes.Clone(region)
		bad[i] ^= 0x01
		p, err := ParseHeader(bad)
		if err == nil {
			err = p.Verify(k)
		}
		if err == nil {
			t.Fatalf("flipping byte %d of a version 4 header went unnoticed", i)
		}
	}
}

// TestUnitTamper: a sealed unit flipped, cut, moved to another position or
// another file, or opened as a block, fails authentication (ErrBlockAuth);
// a genuine seal of a payload that is not what SealUnit makes (an unknown
// kind, a broken frame, the wrong length) fails as corrupt.
func TestUnitTamper(t *testing.T) {
	k, err := DeriveFileKeys(bytes.Repeat([]byte{0x42}, KeySize), id(1), Version4)
	if err != nil {
		t.Fatal(err)
	}
	other, err := DeriveFileKeys(bytes.Repeat([]byte{0x42}, KeySize), id(2), Version4)
	if err != nil {
		t.Fatal(err)
	}
	codec, err := NewCodec(3)
	if err != nil {
		t.Fatal(err)
	}
	defer codec.Close()
	plain := bytes.Repeat([]byte("compressible "), 500)
	sealed, err := k.SealUnit(nil, plain, 5, codec)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := k.OpenUnit(nil, sealed, 5, len(plain), codec); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("round trip: %v", err)
	}
	if len(sealed) >= len(plain) {
		t.Fatalf("compressible unit sealed as %d bytes", len(sealed))
	}
	for _, pos := range []int{0, NonceSize, NonceSize + 1, len(sealed) - 1} {
		bad := bytes.Clone(sealed)
		bad[pos] ^= 0x80
		if _, err := k.OpenUnit(nil, bad, 5, len(plain), codec); !errors.Is(err, ErrBlockAuth) {
			t.Errorf("bit flip at %d: %v", pos, err)
		}
	}
	for name, tc := range map[string]struct {
		keys   *FileKeys
		sealed []byte
		no     uint64
	}{
		"moved":         {k, sealed, 4},
		"other file":    {other, sealed, 5},
		"cut":           {k, sealed[:len(sealed)-1], 5},
		"only overhead": {k, sealed[:UnitOverhead], 5},
		"empty":         {k, nil, 5},
	} {
		if _, err := tc.keys.OpenUnit(nil, tc.sealed, tc.no, len(plain), codec); !errors.Is(err, ErrBlockAuth) {
			t.Errorf("%s: %v", name, err)
		}
	}
	k3, _ := k.AsVersion(Version3)
	block := k3.sealWithNonce(nil, plain[:100], 5, true, 4, bytes.Repeat([]byte{9}, NonceSize))
	if _, err := k.OpenUnit(nil, block, 5, 100, codec); !errors.Is(err, ErrBlockAuth) {
		t.Errorf("a block opened as a unit: %v", err)
	}
	if _, err := k3.OpenUnit(nil, sealed, 5, len(plain), codec); err == nil {
		t.Error("a unit opened with version 3 keys")
	}
	nonce := bytes.Repeat([]byte{7}, NonceSize)
	for name, payload := range map[string][]byte{
		"unknown kind":       append([]byte{2}, plain[:10]...),
		"broken frame":       append([]byte{unitZstd}, plain[:10]...),
		"stored, too long":   append([]byte{unitStored}, plain[:11]...),
		"stored, too short":  append([]byte{unitStored}, plain[:9]...),
		"zstd of other size": mustFrame(t, codec, plain[:11]),
	} {
		s := k.sealUnitWithNonce(nil, payload, 5, nonce)
		if _, err := k.OpenUnit(nil, s, 5, 10, codec); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// A unit of the kind byte alone is at most UnitOverhead bytes, which
	// no header lists (FORMAT.md: a stored length of at most 29).
	if _, err := k.OpenUnit(nil, k.sealUnitWithNonce(nil, []byte{unitStored}, 5, nonce), 5, 0, codec); !errors.Is(err, ErrBlockAuth) {
		t.Errorf("a unit of the kind byte alone: %v", err)
	}
	if got, err := k.OpenUnit(nil, k.sealUnitWithNonce(nil, mustFrame(t, codec, plain[:10]), 5, nonce), 5, 10, codec); err != nil || !bytes.Equal(got, plain[:10]) {
		t.Errorf("a zstd payload of the right size: %q, %v", got, err)
	}
}

// mustFrame is a zstd payload (kind byte and frame) of b.
func mustFrame(t testing.TB, c *Codec, b []byte) []byte {
	t.Helper()
	return c.enc.EncodeAll(b, []byte{unitZstd})
}

// FuzzParseUnits puts arbitrary bytes in the compression field of a
// version 4 header whose MAC is right, and arbitrary version and region
// size bytes around it: whatever ParseHeader accepts has a compression
// field exactly in version 4, verifies, re-encodes to the same value, and
// describes units that fit its plaintext size.
func FuzzParseUnits(f *testing.F) {
	k, err := DeriveFileKeys(bytes.Repeat([]byte{0x42}, KeySize), id(0x10), Version4)
	if err != nil {
		f.Fatal(err)
	}
	good := Units{Algorithm: CompressZstd, UnitSize: MinUnitSize, PlainSize: 2*MinUnitSize + 100, Lengths: []uint32{300, MinUnitSize + UnitOverhead, 129}}
	gv := compressionValue(f, good)
	f.Add(gv, uint8(Version4), uint16(DefaultHeaderSize))
	f.Add(gv, uint8(Version3), uint16(DefaultHeaderSize))
	f.Add(gv[:len(gv)-4], uint8(Version4), uint16(MinHeaderSize))
	f.Add(compressionValue(f, Units{Algorithm: CompressZstd, UnitSize: MaxUnitSize, PlainSize: 1, Lengths: []uint32{UnitOverhead + 1}}), uint8(Version4), uint16(MinHeaderSize))
	f.Add([]byte{}, uint8(Version4), uint16(MinHeaderSize))
	f.Fuzz(func(t *testing.T, comp []byte, version uint8, regionSize uint16) {
		if len(comp) > 4096 {
			return // the rules are per length, which 4 KiB covers; keep runs fast
		}
		// Regions up to 8 KiB: room for any field of the 4 KiB tried.
		region := v4Region(version, int(regionSize%8192), v4TestFields(comp), k.macKey)
		p, err := ParseHeader(region)
		if err != nil {
			return
		}
		u := p.Units
		if (u != nil) != (p.Version == Version4) {
			t.Fatalf("version %d header with units %v", p.Version, u)
		}
		if u == nil {
			return
		}
		if err := p.Verify(k); err != nil {
			t.Fatalf("a version 4 header with a right MAC: %v", err)
		}
		if again, err := u.marshal(); err != nil || !bytes.Equal(again, comp) {
			t.Fatalf("compression field %x parsed as %+v, encodes as %x (%v)", comp, u, again, err)
		}
		if u.PlainSize <= 0 || len(u.Lengths) != UnitCount(u.PlainSize, u.UnitSize) || u.PlainLen(len(u.Lengths)-1) <= 0 {
			t.Fatalf("units %+v do not fit %d bytes", u, u.PlainSize)
		}
		starts, end := u.Offsets(p.RegionSize)
		if starts[0] != int64(p.RegionSize) || end <= starts[len(starts)-1] {
			t.Fatalf("units at %v..%d", starts, end)
		}
		for _, n := range u.Lengths {
			if n <= UnitOverhead || int(n) > u.UnitSize+UnitOverhead {
				t.Fatalf("unit length %d accepted with units of %d", n, u.UnitSize)
			}
		}
	})
}

// FuzzOpenUnit: OpenUnit never panics, and opens nothing but the units
// sealed here, at their own position and plaintext length. With seal, the
// input is a payload sealed with the file's key (as only a key holder can):
// it opens only to want bytes, a stored payload of want bytes opens to
// them, and a zstd payload the spec decoder reads as one frame of want
// bytes opens to the same bytes.
func FuzzOpenUnit(f *testing.F) {
	k, err := DeriveFileKeys(bytes.Repeat([]byte{0x42}, KeySize), id(1), Version4)
	if err != nil {
		f.Fatal(err)
	}
	codec, err := NewCodec(3)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(codec.Close)
	// Fixed nonces and payloads: fuzz workers run this setup again and
	// must get the same genuine units as the coordinator that seeded the
	// corpus.
	text := bytes.Repeat([]byte("seed "), 40)
	frame := mustFrame(f, codec, text)
	genuine := []struct {
		sealed []byte
		no     uint64
		plain  []byte
	}{
		{k.sealUnitWithNonce(nil, frame, 3, make([]byte, NonceSize)), 3, text},
		{k.sealUnitWithNonce(nil, append([]byte{unitStored}, "seed"...), 0, bytes.Repeat([]byte{1}, NonceSize)), 0, []byte("seed")},
	}
	for _, g := range genuine {
		f.Add(g.sealed, g.no, len(g.plain), false)
		f.Add(g.sealed, g.no+1, len(g.plain), false)
		f.Add(g.sealed, g.no, len(g.plain)-1, false)
	}
	f.Add(make([]byte, 64), uint64(3), 100, false)
	f.Add([]byte{}, uint64(0), 0, false)
	f.Add(frame, uint64(3), len(text), true)
	f.Add(append(bytes.Clone(frame), frame[1:]...), uint64(3), 2*len(text), true)
	f.Add(append([]byte{unitStored}, "seed"...), uint64(0), 4, true)
	f.Add([]byte{7, 1, 2}, uint64(0), 2, true)
	nonce := bytes.Repeat([]byte{2}, NonceSize)
	f.Fuzz(func(t *testing.T, b []byte, n uint64, want int, seal bool) {
		if seal {
			pt, err := k.OpenUnit(nil, k.sealUnitWithNonce(nil, b, n, nonce), n, want, codec)
			if err == nil && len(pt) != want {
				t.Fatalf("payload %x opened as %d bytes, want %d", b, len(pt), want)
			}
			switch {
			case len(b) < 2:
				if err == nil {
					t.Fatalf("a unit of %d payload bytes opened", len(b))
				}
			case b[0] == unitStored && len(b)-1 == want:
				if err != nil || !bytes.Equal(pt, b[1:]) {
					t.Fatalf("stored payload of %d bytes: %v", want, err)
				}
			case b[0] == unitZstd:
				if spec, serr := specdecode.DecodeFrame(b[1:]); serr == nil && len(spec) == want && (err != nil || !bytes.Equal(pt, spec)) {
					t.Fatalf("a frame FORMAT.md decodes to %d bytes: %v", want, err)
				}
			case b[0] != unitStored:
				if err == nil {
					t.Fatalf("payload kind %d opened", b[0])
				}
			}
			return
		}
		pt, err := k.OpenUnit(nil, b, n, want, codec)
		if err != nil {
			return
		}
		for _, g := range genuine {
			if n == g.no && bytes.Equal(b, g.sealed) && bytes.Equal(pt, g.plain) && want == len(g.plain) {
				return
			}
		}
		t.Fatalf("forged unit opened: %d bytes at %d", len(pt), n)
	})
}
