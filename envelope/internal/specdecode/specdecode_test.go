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

func testFixtures(t *testing.T, volumes string, version byte) {
	var manifest struct {
		Files  map[string]string `json:"files"`
		Xattrs map[string]struct {
			File, Name, Plaintext string
			Stored                string `json:"stored_base64"`
		} `json:"xattrs"`
	}
	readJSON(t, filepath.Join(volumes, "manifest.json"), &manifest)
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
			}
			readJSON(t, filepath.Join(dir, ".kmsfs", "volume.json"), &cfg)
			if cfg.Format != 1 || cfg.Mode != mode || len(cfg.VolumeID) != 32 || cfg.BlockSize != 4096 || cfg.HeaderSize != 1024 {
				t.Fatalf("volume.json: %+v", cfg)
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
				if len(stored) > 0 {
					if h, err := ParseHeader(stored[:cfg.HeaderSize]); err != nil || h.Version != version {
						t.Errorf("%s: header %v, want version %d", name, err, version)
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
