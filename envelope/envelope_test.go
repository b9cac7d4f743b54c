package envelope

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/vectors.json from the current code (only for a deliberate new format version)")

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func id(b byte) (out [IDLen]byte) {
	for i := range out {
		out[i] = b + byte(i)
	}
	return out
}

func testKeys(t testing.TB, fileID [IDLen]byte) *FileKeys {
	t.Helper()
	key := bytes.Repeat([]byte{0x42}, KeySize)
	k, err := DeriveFileKeys(key, fileID, CurrentVersion)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// marshal is h.Marshal, failing the test on an error.
func marshal(t testing.TB, h Header, macKey []byte) []byte {
	t.Helper()
	region, err := h.Marshal(macKey)
	if err != nil {
		t.Fatal(err)
	}
	return region
}

// parse is ParseHeader, failing the test on an error.
func parse(t testing.TB, region []byte) *ParsedHeader {
	t.Helper()
	p, err := ParseHeader(region)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func testHeader(mode Mode) Header {
	h := Header{
		RegionSize: DefaultHeaderSize, Mode: mode, Suite: SuiteAES256GCM, BlockSize: DefaultBlockSize,
		FileID: id(0x10), VolumeID: id(0x20),
		KeyID:      "arn:aws:kms:local:000000000000:key/11111111-2222-3333-4444-555555555555",
		WrappedKey: bytes.Repeat([]byte{0xAB}, 81),
	}
	if mode == ModeBucketKey {
		h.BucketKeyID = id(0x30)
	}
	return h
}

// vectors is testdata/vectors.json (version 1), vectors_v2.json or
// vectors_v3.json: fixed
// key, IDs, nonces and plaintext and the exact bytes they must produce. A
// format change that breaks existing volumes changes these bytes and fails
// TestVectors.
type vectors struct {
	Version    uint8         `json:"version,omitempty"`
	FileKey    string        `json:"file_key"`
	FileID     string        `json:"file_id"`
	BlockKey   string        `json:"block_key"`
	HeaderMAC  string        `json:"header_mac_key"`
	BucketKey  string        `json:"bucket_key"`
	BucketFile string        `json:"bucket_file_key"`
	Header     string        `json:"header_region"`
	Blocks     []vectorBlock `json:"blocks"`
}

type vectorBlock struct {
	BlockNo uint64 `json:"block_no"`
	Final   bool   `json:"final,omitempty"`
	// Prev is the previous stored block (version 3 only; NoPrev for none).
	Prev       *uint64 `json:"prev,omitempty"`
	Nonce      string  `json:"nonce"`
	Plaintext  string  `json:"plaintext"`
	Ciphertext string  `json:"sealed"`
}

func TestVectors(t *testing.T) {
	t.Run("v1", func(t *testing.T) { testVectors(t, Version1, "vectors.json") })
	t.Run("v2", func(t *testing.T) { testVectors(t, Version2, "vectors_v2.json") })
	t.Run("v3", func(t *testing.T) { testVectors(t, Version3, "vectors_v3.json") })
}

// vectorPrev is the previous stored block a vector block was sealed after.
func vectorPrev(b vectorBlock) uint64 {
	if b.Prev != nil {
		return *b.Prev
	}
	return densePrev(b.BlockNo)
}

func testVectors(t *testing.T, version uint8, file string) {
	path := filepath.Join("testdata", file)
	fileKey := bytes.Repeat([]byte{0x42}, KeySize)
	fileID := id(0x10)
	keys, err := DeriveFileKeys(fileKey, fileID, version)
	if err != nil {
		t.Fatal(err)
	}
	h := testHeader(ModePerObject)
	h.Version = version
	region, err := h.Marshal(keys.MACKey())
	if err != nil {
		t.Fatal(err)
	}
	bucketKey := bytes.Repeat([]byte{0x07}, KeySize)
	bfk, err := BucketFileKey(bucketKey, fileID)
	if err != nil {
		t.Fatal(err)
	}
	// Vectors are written once, when their version is new: never for an
	// older version, whose stored files they stand for.
	if *update && version == CurrentVersion {
		refuseRewrite(t, path)
		v := vectors{
			Version: version,
			FileKey: hex.EncodeToString(fileKey), FileID: hex.EncodeToString(fileID[:]),
			BlockKey: hex.EncodeToString(keys.blockKey), HeaderMAC: hex.EncodeToString(keys.macKey),
			BucketKey: hex.EncodeToString(bucketKey), BucketFile: hex.EncodeToString(bfk),
			Header: hex.EncodeToString(region),
		}
		// Version 3: block 7 follows holes 1..6 after stored block 0, and
		// block 14 follows block 7 (holes 8..13); block 0 has no stored
		// block before it.
		for i, b := range []struct {
			no, prev uint64
			final    bool
			pt       []byte
		}{
			{0, NoPrev, false, []byte("hello, kmsfs")},
			{0, NoPrev, true, []byte("hello, kmsfs")},
			{7, 0, false, bytes.Repeat([]byte{0}, DefaultBlockSize)},
			{14, 7, true, []byte{0xff}},
			{14, 13, true, []byte{0xff}},
		} {
			nonce := bytes.Repeat([]byte{byte(i + 1)}, NonceSize)
			sealed := keys.sealWithNonce(nil, b.pt, b.no, b.final, b.prev, nonce)
			v.Blocks = append(v.Blocks, vectorBlock{b.no, b.final, &b.prev, hex.EncodeToString(nonce), hex.EncodeToString(b.pt), hex.EncodeToString(sealed)})
		}
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var v vectors
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(keys.blockKey); got != v.BlockKey {
		t.Errorf("block key derivation changed: %s, vector %s", got, v.BlockKey)
	}
	if got := hex.EncodeToString(keys.macKey); got != v.HeaderMAC {
		t.Errorf("header MAC key derivation changed: %s, vector %s", got, v.HeaderMAC)
	}
	if got := hex.EncodeToString(bfk); got != v.BucketFile {
		t.Errorf("bucket file key derivation changed: %s, vector %s", got, v.BucketFile)
	}
	if got := hex.EncodeToString(region); got != v.Header {
		t.Errorf("header encoding changed:\n got %s\nwant %s", got, v.Header)
	}
	// The stored header must parse and verify with the stored keys, and
	// only with keys of its own version.
	p, err := ParseHeader(mustHex(t, v.Header))
	if err != nil {
		t.Fatal(err)
	}
	if p.Version != version {
		t.Errorf("header vector parses as version %d, want %d", p.Version, version)
	}
	if err := p.Verify(keys); err != nil {
		t.Fatal(err)
	}
	for _, other := range []uint8{Version1, Version2, Version3} {
		if ok, _ := DeriveFileKeys(fileKey, fileID, other); other != version && p.Verify(ok) == nil {
			t.Errorf("a version %d header verified with version %d keys", version, other)
		}
	}
	for _, b := range v.Blocks {
		sealed := keys.sealWithNonce(nil, mustHex(t, b.Plaintext), b.BlockNo, b.Final, vectorPrev(b), mustHex(t, b.Nonce))
		if hex.EncodeToString(sealed) != b.Ciphertext {
			t.Errorf("block %d: sealing changed", b.BlockNo)
		}
		pt, err := keys.OpenBlock(nil, mustHex(t, b.Ciphertext), b.BlockNo, b.Final, vectorPrev(b))
		if err != nil || !bytes.Equal(pt, mustHex(t, b.Plaintext)) {
			t.Errorf("block %d: vector does not open: %v", b.BlockNo, err)
		}
		// Version 2 binds the final flag; version 1 has none.
		_, err = keys.OpenBlock(nil, mustHex(t, b.Ciphertext), b.BlockNo, !b.Final, vectorPrev(b))
		if (err == nil) != (version == Version1) {
			t.Errorf("block %d (final %v) opened with the other flag: %v", b.BlockNo, b.Final, err)
		}
		// Version 3 binds the previous stored block; earlier versions do not.
		_, err = keys.OpenBlock(nil, mustHex(t, b.Ciphertext), b.BlockNo, b.Final, vectorPrev(b)-1)
		if (err == nil) != (version < Version3) {
			t.Errorf("block %d (prev %d) opened with another previous block: %v", b.BlockNo, vectorPrev(b), err)
		}
	}
}

func TestHeaderRoundTrip(t *testing.T) {
	for _, mode := range []Mode{ModePerObject, ModeBucketKey} {
		h := testHeader(mode)
		keys := testKeys(t, h.FileID)
		region, err := h.Marshal(keys.MACKey())
		if err != nil {
			t.Fatal(err)
		}
		if len(region) != DefaultHeaderSize {
			t.Fatalf("region is %d bytes", len(region))
		}
		p, err := ParseHeader(region)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Verify(keys); err != nil {
			t.Fatal(err)
		}
		if p.Mode != mode || p.KeyID != h.KeyID || !bytes.Equal(p.WrappedKey, h.WrappedKey) ||
			p.FileID != h.FileID || p.VolumeID != h.VolumeID || p.BucketKeyID != h.BucketKeyID || p.BlockSize != h.BlockSize {
			t.Fatalf("mode %v: round trip mismatch: %+v", mode, p.Header)
		}
	}
}

// Every byte of the authenticated part of the header matters: flipping any bit
// is either a parse error or an authentication failure, never accepted.
func TestHeaderTamper(t *testing.T) {
	h := testHeader(ModeBucketKey)
	keys := testKeys(t, h.FileID)
	region := marshal(t, h, keys.MACKey())
	keySlotStart := bytes.Index(region, []byte(h.KeyID)) - 3
	for i := 0; i < len(region); i++ {
		if i >= keySlotStart && i < keySlotStart+3+len(h.KeyID)+3+len(h.WrappedKey) {
			continue // key slot: protected by the KMS AEAD instead (TestKeySlotNotMACed)
		}
		if i == 8 || i == 9 {
			continue // fields length: a change misparses, checked below
		}
		bad := bytes.Clone(region)
		bad[i] ^= 0x01
		p, err := ParseHeader(bad)
		if err == nil {
			err = p.Verify(keys)
		}
		if err == nil {
			t.Fatalf("flipping byte %d went unnoticed", i)
		}
	}
	// Fields length changes are caught by parsing.
	for _, i := range []int{8, 9} {
		bad := bytes.Clone(region)
		bad[i] ^= 0x01
		if p, err := ParseHeader(bad); err == nil && p.Verify(keys) == nil {
			t.Fatalf("flipping fields length byte %d went unnoticed", i)
		}
	}
}

// A header moved onto another file is refused: the other file's keys do not
// verify it.
func TestHeaderMovedToOtherFile(t *testing.T) {
	a := testHeader(ModePerObject)
	keysA := testKeys(t, a.FileID)
	regionA := marshal(t, a, keysA.MACKey())
	otherKey := bytes.Repeat([]byte{0x43}, KeySize)
	keysB, err := DeriveFileKeys(otherKey, a.FileID, CurrentVersion)
	if err != nil {
		t.Fatal(err)
	}
	p := parse(t, regionA)
	if err := p.Verify(keysB); !errors.Is(err, ErrAuth) {
		t.Fatalf("verify with another key: %v, want ErrAuth", err)
	}
	keysOtherID := testKeys(t, id(0x99))
	if err := p.Verify(keysOtherID); !errors.Is(err, ErrAuth) {
		t.Fatalf("verify with keys of another file ID: %v, want ErrAuth", err)
	}
}

func TestKeySlotNotMACed(t *testing.T) {
	h := testHeader(ModePerObject)
	keys := testKeys(t, h.FileID)
	region := marshal(t, h, keys.MACKey())
	p := parse(t, region)
	newRegion, err := p.ReplaceKeySlot("arn:aws:kms:local:000000000000:key/other", bytes.Repeat([]byte{0xCD}, 184))
	if err != nil {
		t.Fatal(err)
	}
	p2, err := ParseHeader(newRegion)
	if err != nil {
		t.Fatal(err)
	}
	if err := p2.Verify(keys); err != nil {
		t.Fatalf("rewrapped header does not verify: %v", err)
	}
	if p2.KeyID != "arn:aws:kms:local:000000000000:key/other" || len(p2.WrappedKey) != 184 {
		t.Fatal("key slot not replaced")
	}
	if _, err := p.ReplaceKeySlot("k", make([]byte, 2000)); err == nil {
		t.Fatal("oversized key slot accepted")
	}
}

// TestHeaderFileIDSurvivesATornRewrap: a region whose first part is the
// rewrapped header and whose rest is the old one (a write torn between
// them) still names its file, so the intent that completes it is found.
func TestHeaderFileIDSurvivesATornRewrap(t *testing.T) {
	h := testHeader(ModeBucketKey)
	keys := testKeys(t, h.FileID)
	region := marshal(t, h, keys.MACKey())
	p := parse(t, region)
	rewrapped, err := p.ReplaceKeySlot("arn:aws:kms:local:000000000000:key/other", bytes.Repeat([]byte{0xCD}, 300))
	if err != nil {
		t.Fatal(err)
	}
	for _, cut := range []int{0, 9, 11, 40, 200, len(region)} {
		torn := append(bytes.Clone(rewrapped[:cut]), region[cut:]...)
		if id, ok := HeaderFileID(torn); !ok || id != h.FileID {
			t.Fatalf("torn at %d: file ID %x, %v; want %x", cut, id, ok, h.FileID)
		}
	}
	for name, bad := range map[string][]byte{
		"empty":       nil,
		"short":       region[:20],
		"zeroed":      make([]byte, len(region)),
		"bad magic":   append([]byte("XMFS"), region[4:]...),
		"bad version": append(append(bytes.Clone(region[:4]), 5), region[5:]...),
	} {
		if _, ok := HeaderFileID(bad); ok {
			t.Fatalf("%s region gave a file ID", name)
		}
	}
}

func TestCriticalUnknownFieldRefused(t *testing.T) {
	h := testHeader(ModePerObject)
	keys := testKeys(t, h.FileID)
	h.unknown = []rawField{{0x45, []byte("future")}}
	region := marshal(t, h, keys.MACKey())
	if _, err := ParseHeader(region); !errors.Is(err, ErrVersion) {
		t.Fatalf("critical unknown field: %v, want ErrVersion", err)
	}
	h.unknown = []rawField{{0x05 | 0x20, []byte("optional")}}
	region = marshal(t, h, keys.MACKey())
	p, err := ParseHeader(region)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Verify(keys); err != nil {
		t.Fatalf("non-critical unknown field breaks verification: %v", err)
	}
}

func TestBlockRoundTripAndTamper(t *testing.T) {
	keys := testKeys(t, id(1))
	other := testKeys(t, id(2))
	plain := bytes.Repeat([]byte("0123456789abcdef"), 1024) // 16 KiB = 4 blocks
	sealed, err := keys.SealBlocks(nil, plain, 0, DefaultBlockSize, false, densePrev(0))
	if err != nil {
		t.Fatal(err)
	}
	sb := DefaultBlockSize + BlockOverhead
	if len(sealed) != 4*sb {
		t.Fatalf("sealed %d bytes", len(sealed))
	}
	blk := func(i int) []byte { return sealed[i*sb : (i+1)*sb] }
	for i := 0; i < 4; i++ {
		pt, err := keys.OpenBlock(nil, blk(i), uint64(i), false, densePrev(uint64(i)))
		if err != nil || !bytes.Equal(pt, plain[i*DefaultBlockSize:(i+1)*DefaultBlockSize]) {
			t.Fatalf("block %d: %v", i, err)
		}
	}
	// Flipped bit anywhere in the block.
	for _, pos := range []int{0, NonceSize, NonceSize + 100, sb - 1} {
		bad := bytes.Clone(blk(1))
		bad[pos] ^= 0x80
		if _, err := keys.OpenBlock(nil, bad, 1, false, densePrev(1)); !errors.Is(err, ErrBlockAuth) {
			t.Fatalf("bit flip at %d: %v", pos, err)
		}
	}
	// Block swapped within the file.
	if _, err := keys.OpenBlock(nil, blk(2), 1, false, densePrev(1)); !errors.Is(err, ErrBlockAuth) {
		t.Fatalf("swapped block opened: %v", err)
	}
	// Block moved to another file.
	if _, err := other.OpenBlock(nil, blk(1), 1, false, densePrev(1)); !errors.Is(err, ErrBlockAuth) {
		t.Fatalf("block from another file opened: %v", err)
	}
	// Truncated block.
	if _, err := keys.OpenBlock(nil, blk(1)[:sb-1], 1, false, densePrev(1)); !errors.Is(err, ErrBlockAuth) {
		t.Fatalf("truncated block opened: %v", err)
	}
	if _, err := keys.OpenBlock(nil, blk(1)[:5], 1, false, densePrev(1)); !errors.Is(err, ErrBlockAuth) {
		t.Fatalf("short block: %v", err)
	}
}

// Rewriting one block many times never reuses a nonce.
func TestNoncesDistinct(t *testing.T) {
	keys := testKeys(t, id(1))
	seen := map[string]bool{}
	for i := 0; i < 20000; i++ {
		s, err := keys.SealBlock(nil, []byte("same"), 0, false, densePrev(0))
		if err != nil {
			t.Fatal(err)
		}
		n := string(s[:NonceSize])
		if seen[n] {
			t.Fatalf("nonce repeated after %d seals", i)
		}
		seen[n] = true
	}
}

func TestLayout(t *testing.T) {
	l := Layout{HeaderSize: 1024, BlockSize: 4096}
	for _, p := range []int64{0, 1, 4095, 4096, 4097, 8192, 1 << 33, 5<<30 + 17} {
		c := l.CipherSize(p, true)
		got, err := l.PlainSize(c)
		if err != nil || got != p {
			t.Fatalf("plain %d -> cipher %d -> %d, %v", p, c, got, err)
		}
	}
	if l.CipherSize(0, false) != 0 {
		t.Fatal("empty file without header should be 0 bytes")
	}
	if _, err := l.PlainSize(100); err == nil {
		t.Fatal("partial header accepted")
	}
	if _, err := l.PlainSize(1024 + 4124 + 20); err == nil {
		t.Fatal("torn last block accepted")
	}
	if f, e := l.Blocks(4095, 2); f != 0 || e != 2 {
		t.Fatalf("Blocks(4095,2) = %d,%d", f, e)
	}
	if l.BlockOffset(2) != 1024+2*4124 {
		t.Fatal("BlockOffset")
	}
}

func FuzzParseHeader(f *testing.F) {
	h := testHeader(ModeBucketKey)
	keys := testKeys(f, h.FileID)
	region := marshal(f, h, keys.MACKey())
	f.Add(region)
	h.Version = Version1
	f.Add(marshal(f, h, keys.MACKey()))
	f.Add([]byte("KMFS\x01\x00\x01\x00\x00\x00"))
	f.Add([]byte("KMFS\x02\x00\x01\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParseHeader(b)
		if err != nil {
			return
		}
		_ = p.Verify(keys)
		_, _ = p.ReplaceKeySlot("x", []byte{1})
	})
}

func FuzzOpenBlock(f *testing.F) {
	keys := testKeys(f, id(1))
	// A fixed nonce: fuzz workers run this setup again and must get the
	// same genuine block as the coordinator that seeded the corpus.
	// Block 3 sealed after stored block 1 (block 2 a hole: version 3).
	s := keys.sealWithNonce(nil, []byte("seed"), 3, true, 1, make([]byte, NonceSize))
	f.Add(s, uint64(3), true, uint64(1))
	f.Add(s, uint64(3), false, uint64(1))
	f.Add(s, uint64(3), true, uint64(2))
	f.Add(make([]byte, 64), uint64(3), true, uint64(1))
	f.Add([]byte{}, uint64(0), false, NoPrev)
	f.Fuzz(func(t *testing.T, b []byte, n uint64, final bool, prev uint64) {
		pt, err := keys.OpenBlock(nil, b, n, final, prev)
		if err == nil && !(n == 3 && final && prev == 1 && bytes.Equal(b, s) && string(pt) == "seed") {
			t.Fatalf("forged block opened")
		}
	})
}

// refuseRewrite fails the test when the vectors at path exist: they stand
// for files already stored in that format version, so -update writes a new
// version's vectors once and never rewrites them.
func refuseRewrite(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Stat(path); err == nil {
		t.Fatalf("%s exists: the vectors of a format version are written once, never rewritten (remove it by hand only while that version is unreleased)", path)
	}
}
