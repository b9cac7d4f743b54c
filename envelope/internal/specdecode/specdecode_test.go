package specdecode

import (
	"bytes"
	"crypto/aes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The test vectors envelope writes (envelope/testdata) and the volumes the
// first release wrote (volume/testdata/v1), read by this package's own
// reading of docs/FORMAT.md.
var (
	envelopeTestdata = filepath.Join("..", "..", "testdata")
	fixtureVolumes   = filepath.Join("..", "..", "..", "volume", "testdata", "v1")
	fixtureVolumesV2 = filepath.Join("..", "..", "..", "volume", "testdata", "v2")
	fixtureVolumesV3 = filepath.Join("..", "..", "..", "volume", "testdata", "v3")
	fixtureVolumesV4 = filepath.Join("..", "..", "..", "volume", "testdata", "v4")
)

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("hex %q: %v", s, err)
	}
	return b
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// TestVectors: the key derivations, the header region (structure, field
// values, MAC, and the writer's field order) and the sealed blocks of
// vectors.json are what FORMAT.md sections 3 to 5 say.
func TestVectors(t *testing.T) {
	t.Run("v1", func(t *testing.T) { testVectors(t, 1, "vectors.json") })
	t.Run("v2", func(t *testing.T) { testVectors(t, 2, "vectors_v2.json") })
	t.Run("v3", func(t *testing.T) { testVectors(t, 3, "vectors_v3.json") })
}

func testVectors(t *testing.T, version byte, file string) {
	var v struct {
		FileKey    string `json:"file_key"`
		FileID     string `json:"file_id"`
		BlockKey   string `json:"block_key"`
		MACKey     string `json:"header_mac_key"`
		BucketKey  string `json:"bucket_key"`
		BucketFile string `json:"bucket_file_key"`
		Header     string `json:"header_region"`
		Blocks     []struct {
			BlockNo   uint64  `json:"block_no"`
			Final     bool    `json:"final"`
			Prev      *uint64 `json:"prev"`
			Nonce     string  `json:"nonce"`
			Plaintext string  `json:"plaintext"`
			Sealed    string  `json:"sealed"`
		} `json:"blocks"`
	}
	readJSON(t, filepath.Join(envelopeTestdata, file), &v)
	fileKey, fileID := unhex(t, v.FileKey), unhex(t, v.FileID)

	blockKey, macKey := FileSubkeys(fileKey, fileID)
	if got := hex.EncodeToString(blockKey); got != v.BlockKey {
		t.Errorf("block key: FORMAT.md gives %s, the vector %s", got, v.BlockKey)
	}
	if got := hex.EncodeToString(macKey); got != v.MACKey {
		t.Errorf("header MAC key: FORMAT.md gives %s, the vector %s", got, v.MACKey)
	}
	if got := hex.EncodeToString(BucketFileKey(unhex(t, v.BucketKey), fileID)); got != v.BucketFile {
		t.Errorf("bucket-key file key: FORMAT.md gives %s, the vector %s", got, v.BucketFile)
	}

	region := unhex(t, v.Header)
	h, err := ParseHeader(region)
	if err != nil {
		t.Fatalf("header vector: %v", err)
	}
	if h.Version != version || h.RegionSize != len(region) || !bytes.Equal(h.FileID, fileID) || h.Mode != 1 || h.Suite != 1 || h.BlockSize != 4096 ||
		!strings.HasPrefix(h.KMSKeyID, "arn:aws:kms:") || len(h.WrappedKey) == 0 || h.BucketKeyID != nil {
		t.Errorf("header vector fields: region %d of %d bytes, file ID %x, mode %d, suite %d, block size %d, key %q, %d-byte wrapped key, bucket key ID %x",
			h.RegionSize, len(region), h.FileID, h.Mode, h.Suite, h.BlockSize, h.KMSKeyID, len(h.WrappedKey), h.BucketKeyID)
	}
	if err := h.Verify(macKey); err != nil {
		t.Errorf("header vector: %v", err)
	}
	// Section 8: a reader finds a torn header's intent by the file ID in
	// bytes 13..28 (field 0x01 comes first).
	if got := region[13:29]; !bytes.Equal(got, fileID) {
		t.Errorf("bytes 13..28 of the header are %x, not the file ID %x", got, fileID)
	}
	if again, err := EncodeHeader(version, h.RegionSize, h.Fields, macKey); err != nil || !bytes.Equal(again, region) {
		t.Errorf("a header written by FORMAT.md's writer rules differs from the vector (%v):\n got %x\nwant %x", err, again, region)
	}
	// Verify above recomputed the MAC from bytes 0..7 and the fields below
	// 0x80 only. An edit of those fails it; one of the key slot does not
	// (section 3: rewrap replaces the slot and keeps the MAC).
	for _, tc := range []struct {
		what    string
		edit    func(*Header)
		covered bool
	}{
		{"the region size", func(p *Header) { p.Prefix = append([]byte{}, p.Prefix...); p.Prefix[7] ^= 1 }, true},
		{"the file ID", func(p *Header) { p.Fields[0].Value = bytes.Clone(p.Fields[0].Value); p.Fields[0].Value[0] ^= 1 }, true},
		{"the KMS key ID", func(p *Header) { p.Fields[len(p.Fields)-2].Value = []byte("arn:aws:kms:other") }, false},
		{"the wrapped key", func(p *Header) { p.Fields[len(p.Fields)-1].Value = []byte{1, 2, 3} }, false},
	} {
		p, err := ParseHeader(region)
		if err != nil {
			t.Fatal(err)
		}
		tc.edit(p)
		if err := p.Verify(macKey); (err != nil) != tc.covered {
			t.Errorf("an edit of %s: verify %v; FORMAT.md says the MAC covers it: %v", tc.what, err, tc.covered)
		}
	}

	if len(v.Blocks) == 0 {
		t.Fatal("no block vectors")
	}
	for _, b := range v.Blocks {
		nonce, plain, sealed := unhex(t, b.Nonce), unhex(t, b.Plaintext), unhex(t, b.Sealed)
		// Version 3 vectors name the previous stored block; versions 1
		// and 2 do not bind it (any value does).
		prev := uint64(NoPrev)
		if b.Prev != nil {
			prev = *b.Prev
		} else if version == 3 {
			t.Fatalf("version 3 block %d without prev", b.BlockNo)
		}
		if got := SealBlock(version, blockKey, fileID, b.BlockNo, b.Final, prev, nonce, plain); !bytes.Equal(got, sealed) {
			t.Errorf("block %d: FORMAT.md seals it as %s, the vector says %s", b.BlockNo, short(got), short(sealed))
		}
		if got, err := OpenBlock(version, blockKey, fileID, b.BlockNo, b.Final, prev, sealed); err != nil || !bytes.Equal(got, plain) {
			t.Errorf("block %d: opens as %s, %v", b.BlockNo, short(got), err)
		}
		if _, err := OpenBlock(version, blockKey, fileID, b.BlockNo+1, b.Final, prev, sealed); err == nil {
			t.Errorf("block %d opened at position %d", b.BlockNo, b.BlockNo+1)
		}
		// Section 4: versions 2 and 3 bind the last-block flag, version 1 has none.
		if _, err := OpenBlock(version, blockKey, fileID, b.BlockNo, !b.Final, prev, sealed); (err == nil) != (version == 1) {
			t.Errorf("version %d block %d (last: %v) with the other flag: %v", version, b.BlockNo, b.Final, err)
		}
		// Version 3 binds the previous stored block.
		if _, err := OpenBlock(version, blockKey, fileID, b.BlockNo, b.Final, prev-1, sealed); (err == nil) != (version < 3) {
			t.Errorf("version %d block %d (prev %d) with another prev: %v", version, b.BlockNo, prev, err)
		}
	}
}

// short is the hex of b, cut to keep a failure readable.
func short(b []byte) string {
	if len(b) > 40 {
		return fmt.Sprintf("%x...(%d bytes)", b[:40], len(b))
	}
	return fmt.Sprintf("%x", b)
}

func TestPlaintextSize(t *testing.T) {
	const H, B = 1024, 4096
	for _, tc := range []struct {
		stored, want int64
		corrupt      bool
	}{
		{0, 0, false},
		{1, 0, true},
		{H - 1, 0, true},
		{H, 0, false},
		{H + 1, 0, true},
		{H + 28, 0, true},
		{H + 29, 1, false},
		{H + B + 28, B, false},
		{H + B + 28 + 28, 0, true},
		{H + 2*(B+28) + 29, 2*B + 1, false},
	} {
		got, err := PlaintextSize(tc.stored, H, B)
		if (err != nil) != tc.corrupt || got != tc.want {
			t.Errorf("stored size %d: %d, %v; want %d, corrupt=%v", tc.stored, got, err, tc.want, tc.corrupt)
		}
	}
}

// The metadata key and volume ID of names.json, as given with the vectors
// in envelope/names_test.go: 32 bytes 0x4D, and 0x56, 0x57, ... 0x65.
func nameVectorKeys() (metaKey, volumeID []byte) {
	metaKey = bytes.Repeat([]byte{0x4D}, 32)
	volumeID = make([]byte, 16)
	for i := range volumeID {
		volumeID[i] = 0x56 + byte(i)
	}
	return metaKey, volumeID
}

// TestNameVectors: every stored name of names.json is what section 10
// makes of its name in its directory, and decrypts back.
func TestNameVectors(t *testing.T) {
	var vs []struct {
		DirID  string `json:"dir_id"`
		Name   string `json:"name"`
		Stored string `json:"stored"`
	}
	readJSON(t, filepath.Join(envelopeTestdata, "names.json"), &vs)
	if len(vs) == 0 {
		t.Fatal("no name vectors")
	}
	k := DeriveNameKeys(nameVectorKeys())
	for _, v := range vs {
		dir := k.RootDirID()
		if v.DirID != "root" {
			dir = unhex(t, v.DirID)
		}
		if got := k.EncryptName(dir, v.Name); got != v.Stored {
			t.Errorf("%q in %s: FORMAT.md stores it as %q, the vector says %q", v.Name, v.DirID, got, v.Stored)
		}
		if got, err := k.DecryptName(dir, v.Stored); err != nil || got != v.Name {
			t.Errorf("%q in %s: decrypts to %q, %v", v.Stored, v.DirID, got, err)
		}
		if strings.ContainsAny(v.Stored[:1], ".~") {
			t.Errorf("%q starts with . or ~", v.Stored)
		}
		// Over 175 bytes a name's stored form is over 255 bytes, and is
		// stored under its 44-byte long name instead.
		if long := len(v.Stored) > 255; long != (len(v.Name) > 175) {
			t.Errorf("%d-byte name, %d-byte stored form: FORMAT.md's 175-byte limit is wrong", len(v.Name), len(v.Stored))
		} else if long && len(LongName(v.Stored)) != 44 {
			t.Errorf("long name %q is not 44 bytes", LongName(v.Stored))
		}
		other := bytes.Clone(dir)
		other[0] ^= 1
		if _, err := k.DecryptName(other, v.Stored); err == nil {
			t.Errorf("%q decrypts in another directory", v.Stored)
		}
	}
}

// TestNameCounterBlock pins down the detail where section 10 departs from
// RFC 5297: the tag is the initial counter block as it is, with no bits
// cleared, incremented as one 128-bit big-endian number.
func TestNameCounterBlock(t *testing.T) {
	k := DeriveNameKeys(nameVectorKeys())
	name := strings.Repeat("n", 40) // three counter blocks
	stored := k.EncryptName(k.RootDirID(), name)
	raw, err := base64.RawURLEncoding.DecodeString(stored)
	if err != nil {
		t.Fatal(err)
	}
	blk, err := aes.NewCipher(k.Enc)
	if err != nil {
		t.Fatal(err)
	}
	ctr := new(big128).set(raw[:16])
	var ks []byte
	for len(ks) < len(name) {
		var out [16]byte
		blk.Encrypt(out[:], ctr.bytes())
		ks = append(ks, out[:]...)
		ctr.inc()
	}
	for i := range name {
		if raw[16+i]^ks[i] != name[i] {
			t.Fatalf("byte %d of the name is not XORed with AES(nameEncKey, tag + %d)", i, i/16)
		}
	}
}

// big128 is a 128-bit big-endian counter.
type big128 struct{ hi, lo uint64 }

func (c *big128) set(b []byte) *big128 {
	c.hi, c.lo = binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:16])
	return c
}

func (c *big128) bytes() []byte {
	return binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, c.hi), c.lo)
}

func (c *big128) inc() {
	c.lo++
	if c.lo == 0 {
		c.hi++
	}
}

// fixtureKeystore opens the embedded keystore of the fixtures: key
// material sealed with AES-256-GCM under the root key (root.key, hex), with
// additional data "kmsfs/keystore/material/v1" NUL uuid NUL uint32(version)
// (the layout kms/keystore/state.go documents).
func fixtureKeystore(t *testing.T) func(BlobKey) ([]byte, error) {
	t.Helper()
	rootHex, err := os.ReadFile(filepath.Join(fixtureVolumes, "keystore", "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	root := unhex(t, strings.TrimSpace(string(rootHex)))
	var st struct {
		Keys map[string]struct {
			Versions []struct {
				Version  uint32 `json:"version"`
				Material []byte `json:"material"`
			} `json:"versions"`
		} `json:"keys"`
	}
	readJSON(t, filepath.Join(fixtureVolumes, "keystore", "keystore.json"), &st)
	kek := gcm(root)
	return func(bk BlobKey) ([]byte, error) {
		u := hex.EncodeToString(bk.KeyID[:])
		uuid := u[:8] + "-" + u[8:12] + "-" + u[12:16] + "-" + u[16:20] + "-" + u[20:]
		for _, v := range st.Keys[uuid].Versions {
			if v.Version == bk.Version {
				aad := append([]byte("kmsfs/keystore/material/v1\x00"+uuid+"\x00"), binary.BigEndian.AppendUint32(nil, v.Version)...)
				return kek.Open(nil, v.Material[:nonceLen], v.Material[nonceLen:], aad)
			}
		}
		return nil, fmt.Errorf("no key %s version %d in the fixture keystore", uuid, bk.Version)
	}
}

// TestV1Fixtures reads the volumes the first release wrote, per FORMAT.md
// only: volume.json, the metadata key through the embedded KMS blob, every
// file's header, key (per-object data key or bucket key), MAC and blocks,
// and the encrypted xattr value, against the manifest's SHA-256 sums.
func TestV1Fixtures(t *testing.T) { testFixtures(t, fixtureVolumes, 1) }

// TestV2Fixtures reads the volumes written when format version 2 was new
// (under the keystore of the version 1 fixtures) the same way: every file a
// version 2 file, its last block sealed as the last.
func TestV2Fixtures(t *testing.T) { testFixtures(t, fixtureVolumesV2, 2) }

// TestV3Fixtures reads the volumes written when format version 3 was new,
// among them a file with holes (all-zero blocks, each stored block naming
// the stored block before it).
func TestV3Fixtures(t *testing.T) { testFixtures(t, fixtureVolumesV3, 3) }

// TestV4Fixtures reads the volumes written when format version 4 was new
// (volumes with the compression feature): files of several units, of
// stored units, one rewritten in place, an empty one, and one in the block
// layout, each of the version its manifest gives.
func TestV4Fixtures(t *testing.T) { testFixtures(t, fixtureVolumesV4, 4) }

func testFixtures(t *testing.T, volumes string, version byte) {
	var manifest struct {
		Files  map[string]string `json:"files"`
		Xattrs map[string]struct {
			File, Name, Plaintext string
			Stored                string `json:"stored_base64"`
		} `json:"xattrs"`
		// Versions, if there, is each file's format version (0: no
		// header); otherwise every file with a header is of version.
		Versions map[string]byte `json:"versions"`
		// UnitKinds is the payload kind of each unit of a version 4
		// file.
		UnitKinds map[string][]int `json:"unit_kinds"`
	}
	readJSON(t, filepath.Join(volumes, "manifest.json"), &manifest)
	if version == 4 {
		kinds := map[int]bool{}
		for _, ks := range manifest.UnitKinds {
			for _, k := range ks {
				kinds[k] = true
			}
		}
		if !kinds[KindStored] || !kinds[KindZstd] {
			t.Errorf("the fixture's units are of kinds %v, not both", kinds)
		}
	}
	material := fixtureKeystore(t)
	for _, mode := range []string{"per-object", "bucket-key"} {
		t.Run(mode, func(t *testing.T) {
			dir := filepath.Join(volumes, mode)
			var cfg struct {
				Format         int      `json:"format"`
				VolumeID       string   `json:"volume_id"`
				Mode           string   `json:"mode"`
				KMSKeyID       string   `json:"kms_key_id"`
				BlockSize      int      `json:"block_size"`
				HeaderSize     int      `json:"header_size"`
				WrappedMetaKey []byte   `json:"wrapped_meta_key"`
				Features       []string `json:"features"`
				Compress       string   `json:"compress"`
			}
			readJSON(t, filepath.Join(dir, ".kmsfs", "volume.json"), &cfg)
			if cfg.Format != 1 || cfg.Mode != mode || len(cfg.VolumeID) != 32 || cfg.BlockSize != 4096 || cfg.HeaderSize != 1024 {
				t.Fatalf("volume.json: %+v", cfg)
			}
			// Section 1: version 4 files come from a volume with the
			// compression feature (a reader needs no setting).
			if version == 4 && (!slices.Contains(cfg.Features, "compression") || !strings.HasPrefix(cfg.Compress, "zstd")) {
				t.Errorf("volume.json: features %v, compress %q", cfg.Features, cfg.Compress)
			}
			volID := unhex(t, cfg.VolumeID)
			metaKey, err := OpenBlob(cfg.WrappedMetaKey, map[string]string{"kmsfs:volume": cfg.VolumeID, "kmsfs:purpose": "metadata"}, material)
			if err != nil || len(metaKey) != 32 {
				t.Fatalf("wrapped_meta_key: %d bytes, %v", len(metaKey), err)
			}
			fileKey := func(h *Header) ([]byte, error) {
				if !bytes.Equal(h.VolumeID, volID) || h.KMSKeyID != cfg.KMSKeyID {
					return nil, fmt.Errorf("header names volume %x and key %s", h.VolumeID, h.KMSKeyID)
				}
				if want := map[string]byte{"per-object": 1, "bucket-key": 2}[mode]; h.Mode != want {
					return nil, fmt.Errorf("header mode %d in a %s volume", h.Mode, mode)
				}
				if h.Mode == 1 {
					return OpenBlob(h.WrappedKey, map[string]string{"kmsfs:volume": cfg.VolumeID, "kmsfs:file": hex.EncodeToString(h.FileID)}, material)
				}
				bk, err := OpenBlob(h.WrappedKey, map[string]string{"kmsfs:volume": cfg.VolumeID}, material)
				if err != nil {
					return nil, err
				}
				return BucketFileKey(bk, h.FileID), nil
			}
			for name, sum := range manifest.Files {
				stored, err := os.ReadFile(filepath.Join(dir, name))
				if err != nil {
					t.Fatal(err)
				}
				want := version
				if manifest.Versions != nil {
					v, ok := manifest.Versions[name]
					if !ok {
						t.Errorf("%s: no version in the manifest", name)
					}
					if want = v; len(stored) == 0 && want != 0 {
						t.Errorf("%s: no header, want version %d", name, want)
					}
				}
				if len(stored) > 0 {
					if h, err := ParseHeader(stored[:cfg.HeaderSize]); err != nil || h.Version != want {
						t.Errorf("%s: header %v, want version %d", name, err, want)
					}
				}
				plain, err := DecryptFile(stored, cfg.HeaderSize, cfg.BlockSize, fileKey)
				if err != nil {
					t.Errorf("%s: %v", name, err)
					continue
				}
				if got := sha256.Sum256(plain); hex.EncodeToString(got[:]) != sum {
					t.Errorf("%s: %d bytes that differ from the manifest", name, len(plain))
				}
				if want == 4 {
					if got := unitKinds(t, stored[:cfg.HeaderSize], stored, fileKey); !slices.Equal(got, manifest.UnitKinds[name]) {
						t.Errorf("%s: units of kinds %v, the manifest says %v", name, got, manifest.UnitKinds[name])
					}
				}
			}
			if version != 1 {
				return // attribute values did not change with version 2
			}
			x, ok := manifest.Xattrs[mode]
			if !ok {
				t.Fatal("no xattr in the manifest")
			}
			stored, err := base64.StdEncoding.DecodeString(x.Stored)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := OpenXattr(XattrKey(metaKey, volID), x.Name, stored); err != nil || string(got) != x.Plaintext {
				t.Errorf("xattr %s: %q, %v", x.Name, got, err)
			}
			if _, err := OpenXattr(XattrKey(metaKey, volID), x.Name+"2", stored); err == nil {
				t.Errorf("xattr %s opened under another name", x.Name)
			}
		})
	}
}

// TestVectorsV4: the header regions and sealed units of vectors_v4.json
// are what section 4a says: the compression field (0x47, after 0x01..0x06
// and covered by the MAC), each unit sealed with AAD file ID || i || 0x02
// over its payload (kind 0x00 and the plaintext, or 0x01 and one zstd
// frame of it), and the whole stored file (region, units, zeros up to the
// version 3 size of P) decodes to the plaintext, and only at that size.
func TestVectorsV4(t *testing.T) {
	var v struct {
		Version    byte   `json:"version"`
		FileKey    string `json:"file_key"`
		FileID     string `json:"file_id"`
		BlockKey   string `json:"block_key"`
		MACKey     string `json:"header_mac_key"`
		BucketKey  string `json:"bucket_key"`
		BucketFile string `json:"bucket_file_key"`
		HeaderSize int    `json:"header_size"`
		BlockSize  int    `json:"block_size"`
		Files      []struct {
			Mode       string `json:"mode"`
			Header     string `json:"header_region"`
			UnitSize   uint32 `json:"unit_size"`
			PlainSize  uint64 `json:"plain_size"`
			StoredSize int    `json:"stored_size"`
			Units      []struct {
				UnitNo    uint64 `json:"unit_no"`
				Kind      byte   `json:"kind"`
				Nonce     string `json:"nonce"`
				Plaintext string `json:"plaintext"`
				Payload   string `json:"payload"`
				Sealed    string `json:"sealed"`
			} `json:"units"`
		} `json:"files"`
	}
	readJSON(t, filepath.Join(envelopeTestdata, "vectors_v4.json"), &v)
	if v.Version != 4 || len(v.Files) == 0 {
		t.Fatalf("vectors_v4.json: version %d, %d files", v.Version, len(v.Files))
	}
	fileID := unhex(t, v.FileID)
	if got := hex.EncodeToString(BucketFileKey(unhex(t, v.BucketKey), fileID)); got != v.BucketFile {
		t.Errorf("bucket-key file key: FORMAT.md gives %s, the vector %s", got, v.BucketFile)
	}
	kinds := map[byte]bool{}
	multi := false
	for _, f := range v.Files {
		t.Run(f.Mode, func(t *testing.T) {
			fileKey := unhex(t, v.FileKey)
			if f.Mode == "bucket-key" {
				fileKey = BucketFileKey(unhex(t, v.BucketKey), fileID)
			}
			blockKey, macKey := FileSubkeys(fileKey, fileID)
			if f.Mode == "per-object" && (hex.EncodeToString(blockKey) != v.BlockKey || hex.EncodeToString(macKey) != v.MACKey) {
				t.Errorf("subkeys: FORMAT.md gives %x and %x, the vector %s and %s", blockKey, macKey, v.BlockKey, v.MACKey)
			}
			region := unhex(t, f.Header)
			h, err := ParseHeader(region)
			if err != nil {
				t.Fatalf("header vector: %v", err)
			}
			c := h.Compression
			if h.Version != 4 || h.RegionSize != len(region) || h.RegionSize < minRegion || h.RegionSize > v.HeaderSize ||
				!bytes.Equal(h.FileID, fileID) || h.Mode != map[string]byte{"per-object": 1, "bucket-key": 2}[f.Mode] ||
				h.BlockSize != uint32(v.BlockSize) || c == nil || c.UnitSize != f.UnitSize || c.PlainSize != f.PlainSize || len(c.Lengths) != len(f.Units) {
				t.Fatalf("header vector: version %d, region %d of %d bytes (header_size %d), mode %d, block size %d, compression %+v",
					h.Version, h.RegionSize, len(region), v.HeaderSize, h.Mode, h.BlockSize, c)
			}
			if err := h.Verify(macKey); err != nil {
				t.Errorf("header vector: %v", err)
			}
			if got := region[13:29]; !bytes.Equal(got, fileID) {
				t.Errorf("bytes 13..28 of the header are %x, not the file ID %x", got, fileID)
			}
			if again, err := EncodeHeader(4, h.RegionSize, h.Fields, macKey); err != nil || !bytes.Equal(again, region) {
				t.Errorf("a header written by FORMAT.md's writer rules differs from the vector (%v):\n got %x\nwant %x", err, again, region)
			}
			// The MAC covers field 0x47: P, U and every length.
			for i, fl := range h.Fields {
				if fl.Type != TypeCompression {
					continue
				}
				for _, at := range []int{0, 4, 12, len(fl.Value) - 1} {
					p, _ := ParseHeader(region)
					p.Fields[i].Value = bytes.Clone(fl.Value)
					p.Fields[i].Value[at] ^= 1
					if p.Verify(macKey) == nil {
						t.Errorf("byte %d of the compression field is not covered by the MAC", at)
					}
				}
			}
			// The stored file: region, units packed after it, zeros up to C.
			stored := bytes.Clone(region)
			var plain []byte
			for i, u := range f.Units {
				nonce, pt, payload, sealed := unhex(t, u.Nonce), unhex(t, u.Plaintext), unhex(t, u.Payload), unhex(t, u.Sealed)
				kinds[u.Kind] = true
				if u.UnitNo != uint64(i) || c.Lengths[i] != uint32(len(sealed)) || c.UnitPlainLen(i) != len(pt) || payload[0] != u.Kind {
					t.Fatalf("unit %d: number %d, %d sealed bytes (header %d), %d plaintext bytes (section 4a: %d), kind %d (payload %d)",
						i, u.UnitNo, len(sealed), c.Lengths[i], len(pt), c.UnitPlainLen(i), u.Kind, payload[0])
				}
				if got := SealUnit(blockKey, fileID, u.UnitNo, nonce, payload); !bytes.Equal(got, sealed) {
					t.Errorf("unit %d: FORMAT.md seals it as %s, the vector says %s", i, short(got), short(sealed))
				}
				if got, err := OpenUnitPayload(blockKey, fileID, u.UnitNo, sealed); err != nil || !bytes.Equal(got, payload) {
					t.Errorf("unit %d: payload %s, %v", i, short(got), err)
				}
				if got, err := OpenUnit(blockKey, fileID, u.UnitNo, sealed, len(pt)); err != nil || !bytes.Equal(got, pt) {
					t.Errorf("unit %d: opens as %s, %v", i, short(got), err)
				}
				if u.Kind == KindStored && !bytes.Equal(payload[1:], pt) {
					t.Errorf("unit %d: a stored payload that is not the plaintext", i)
				}
				if _, err := OpenUnit(blockKey, fileID, u.UnitNo+1, sealed, len(pt)); err == nil {
					t.Errorf("unit %d opened at position %d", i, u.UnitNo+1)
				}
				if _, err := OpenUnit(blockKey, fileID, u.UnitNo, sealed, len(pt)-1); err == nil {
					t.Errorf("unit %d opened as %d bytes", i, len(pt)-1)
				}
				for ver := byte(1); ver <= 3; ver++ {
					for _, last := range []bool{false, true} {
						if _, err := OpenBlock(ver, blockKey, fileID, u.UnitNo, last, u.UnitNo-1, sealed); err == nil {
							t.Errorf("unit %d opened as a version %d block", i, ver)
						}
					}
				}
				if u.Kind == KindZstd {
					// Section 4a: one frame, nothing after it.
					if _, err := DecodeFrame(append(bytes.Clone(payload[1:]), payload[1:]...)); err == nil {
						t.Errorf("unit %d: two frames decoded as one", i)
					}
					if _, err := DecodeFrame(payload[1 : len(payload)-1]); err == nil {
						t.Errorf("unit %d: a cut frame decoded", i)
					}
				}
				stored = append(stored, sealed...)
				plain = append(plain, pt...)
			}
			multi = multi || (len(f.Units) > 1 && f.PlainSize%uint64(f.UnitSize) != 0)
			if len(stored) > f.StoredSize {
				t.Fatalf("units end at %d, past the stored size %d", len(stored), f.StoredSize)
			}
			if want, err := PlaintextSize(int64(f.StoredSize), int64(v.HeaderSize), int64(v.BlockSize)); err != nil || want != int64(f.PlainSize) {
				t.Errorf("stored size %d: the size rule gives %d (%v), P is %d", f.StoredSize, want, err, f.PlainSize)
			}
			stored = append(stored, make([]byte, f.StoredSize-len(stored))...)
			key := func(*Header) ([]byte, error) { return fileKey, nil }
			if got, err := DecryptFile(stored, v.HeaderSize, v.BlockSize, key); err != nil || !bytes.Equal(got, plain) {
				t.Errorf("stored file decoded: %s, %v", short(got), err)
			}
			// The zero tail is not read; a file cut or extended no longer
			// has the size P gives.
			if end := len(region) + int(sumLengths(c)); end < len(stored) {
				tail := bytes.Clone(stored)
				tail[len(tail)-1] = 0xff
				if got, err := DecryptFile(tail, v.HeaderSize, v.BlockSize, key); err != nil || !bytes.Equal(got, plain) {
					t.Errorf("a byte after the units changed: %s, %v", short(got), err)
				}
			}
			for _, bad := range [][]byte{
				stored[:len(stored)-1],
				append(bytes.Clone(stored), make([]byte, v.BlockSize+blockExtra)...),
				append(bytes.Clone(stored), make([]byte, blockExtra+1)...),
			} {
				if _, err := DecryptFile(bad, v.HeaderSize, v.BlockSize, key); err == nil {
					t.Errorf("a stored file of %d bytes, not %d, decoded", len(bad), len(stored))
				}
			}
		})
	}
	if !kinds[KindStored] || !kinds[KindZstd] {
		t.Errorf("the vectors have payload kinds %v, not both", kinds)
	}
	if !multi {
		t.Error("no vector file of several units with a short last one")
	}
}

// unitKinds is the payload kind of each unit of a stored version 4 file.
func unitKinds(t *testing.T, region, stored []byte, fileKey func(*Header) ([]byte, error)) []int {
	t.Helper()
	h, err := ParseHeader(region)
	if err != nil || h.Compression == nil {
		t.Fatalf("not a version 4 header: %v", err)
	}
	k, err := fileKey(h)
	if err != nil {
		t.Fatal(err)
	}
	blockKey, _ := FileSubkeys(k, h.FileID)
	var kinds []int
	off := h.RegionSize
	for i, l := range h.Compression.Lengths {
		p, err := OpenUnitPayload(blockKey, h.FileID, uint64(i), stored[off:off+int(l)])
		if err != nil {
			t.Fatalf("unit %d: %v", i, err)
		}
		kinds = append(kinds, int(p[0]))
		off += int(l)
	}
	return kinds
}

func sumLengths(c *Compression) (n uint64) {
	for _, l := range c.Lengths {
		n += uint64(l)
	}
	return n
}

// TestParseCompression: the refusals section 4a lists for field 0x47.
func TestParseCompression(t *testing.T) {
	val := func(alg byte, u uint32, p uint64, lengths ...uint32) []byte {
		b := binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint32([]byte{alg}, u), p)
		for _, l := range lengths {
			b = binary.BigEndian.AppendUint32(b, l)
		}
		return b
	}
	for _, tc := range []struct {
		what string
		v    []byte
		ok   bool
	}{
		{"good", val(1, 4096, 4097, 100, 30), true},
		{"one byte, U at most", val(1, 1<<20, 1, 1<<20+29), true},
		{"another algorithm", val(2, 4096, 4097, 100, 30), false},
		{"U not a power of two", val(1, 4097, 4097, 100, 30), false},
		{"U below 4096", val(1, 2048, 4097, 100, 30, 30, 30), false},
		{"U above 1 MiB", val(1, 1<<21, 4097, 100), false},
		{"P = 0", val(1, 4096, 0), false},
		{"a length too few", val(1, 4096, 4097, 100), false},
		{"a length too many", val(1, 4096, 4097, 100, 30, 30), false},
		{"a length cut", val(1, 4096, 4097, 100, 30)[:20], false},
		{"a length of 29", val(1, 4096, 4097, 100, 29), false},
		{"a length over U + 29", val(1, 4096, 4097, 4096+30, 30), false},
		{"too short", val(1, 4096, 4097)[:12], false},
	} {
		if _, err := parseCompression(tc.v); (err == nil) != tc.ok {
			t.Errorf("%s: %v", tc.what, err)
		}
	}
}
