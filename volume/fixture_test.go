package volume

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/kmsfs/kmsfs/backend/local"
	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/kms/keystore"
)

// TestFormatV1Fixtures reads volumes written by the first kmsfs release
// (testdata/v1: one per-object and one bucket-key volume, with the embedded
// keystore that holds their key). A change to the header, the blocks, the
// key derivation, the config or the keystore that would break existing
// volumes fails here. Never regenerate these files for format version 1.
func TestFormatV1Fixtures(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	// Work on a copy: opening a keystore may write maintenance to it.
	if err := os.CopyFS(dir, os.DirFS("testdata/v1")); err != nil {
		t.Fatal(err)
	}
	var manifest struct {
		Files  map[string]string `json:"files"`
		Xattrs map[string]struct {
			File, Name, Plaintext string
			Stored                string `json:"stored_base64"`
		} `json:"xattrs"`
	}
	raw, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &manifest); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(dir, "keystore"), 0o700)
	ks, err := keystore.Open(filepath.Join(dir, "keystore"), keystore.Options{Warn: func(string) {}})
	if err != nil {
		t.Fatalf("open v1 keystore: %v", err)
	}
	defer ks.Close()
	for _, mode := range []string{"per-object", "bucket-key"} {
		t.Run(mode, func(t *testing.T) {
			be, err := local.New(filepath.Join(dir, mode))
			if err != nil {
				t.Fatal(err)
			}
			v, err := Open(ctx, be, Options{Keys: ks, ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer v.Close()
			if v.Config().Mode != mode {
				t.Fatalf("config mode %q", v.Config().Mode)
			}
			for name, sum := range manifest.Files {
				h, err := v.OpenFile(ctx, name, syscall.O_RDONLY, 0, nil)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				got := readAll(t, h)
				h.Close()
				if s := sha256.Sum256(got); hex.EncodeToString(s[:]) != sum {
					t.Errorf("%s: content differs from the v1 fixture", name)
				}
			}
			x := manifest.Xattrs[mode]
			stored, _ := base64.StdEncoding.DecodeString(x.Stored)
			val, err := v.OpenXattr(ctx, x.Name, stored)
			if err != nil || string(val) != x.Plaintext {
				t.Errorf("xattr %s: %q, %v", x.Name, val, err)
			}
		})
	}
}

// TestFormatV1FilesStayV1: a version 1 file written through this kmsfs
// (an append, an overwrite, a truncation) keeps its version 1 header and
// blocks, and reads back; a new file in the same volume is version 2.
// v1Manifest is the part of testdata/v1/manifest.json the writing tests use.
type v1Manifest struct {
	Files map[string]string `json:"files"`
}

// copyV1Fixture copies testdata/v1 (opening a keystore may write
// maintenance to it) and opens its keystore and manifest.
func copyV1Fixture(t *testing.T) (string, *keystore.Keystore, v1Manifest) {
	t.Helper()
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS("testdata/v1")); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(dir, "keystore"), 0o700)
	ks, err := keystore.Open(filepath.Join(dir, "keystore"), keystore.Options{Warn: func(string) {}})
	if err != nil {
		t.Fatalf("open v1 keystore: %v", err)
	}
	t.Cleanup(func() { ks.Close() })
	var manifest v1Manifest
	raw, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &manifest); err != nil {
		t.Fatal(err)
	}
	return dir, ks, manifest
}

func TestFormatV1FilesStayV1(t *testing.T) {
	ctx := context.Background()
	dir, ks, manifest := copyV1Fixture(t)
	for _, mode := range []string{"per-object", "bucket-key"} {
		t.Run(mode, func(t *testing.T) {
			root := filepath.Join(dir, mode)
			be, err := local.New(root)
			if err != nil {
				t.Fatal(err)
			}
			v, err := Open(ctx, be, Options{Keys: ks, PrefetchMax: -1})
			if err != nil {
				t.Fatal(err)
			}
			defer v.Close()
			version := func(name string) byte {
				b := make([]byte, 5)
				f, err := os.Open(filepath.Join(root, name))
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				f.ReadAt(b, 0)
				return b[4]
			}
			for name := range manifest.Files {
				h, err := v.OpenFile(ctx, name, syscall.O_RDWR, 0, nil)
				if err != nil {
					t.Fatal(err)
				}
				want := readAll(t, h)
				if len(want) == 0 {
					h.Close()
					continue
				}
				add := bytes.Repeat([]byte("appended "), 1000)
				if _, err := h.WriteAt(ctx, add, int64(len(want))); err != nil {
					t.Fatal(err)
				}
				want = append(want, add...)
				if _, err := h.WriteAt(ctx, []byte("over"), 1); err != nil {
					t.Fatal(err)
				}
				copy(want[1:], "over")
				if err := h.Truncate(ctx, int64(len(want)-4096)); err != nil {
					t.Fatal(err)
				}
				want = want[:len(want)-4096]
				h.Close()
				h, err = v.OpenFile(ctx, name, syscall.O_RDONLY, 0, nil)
				if err != nil {
					t.Fatal(err)
				}
				if got := readAll(t, h); !bytes.Equal(got, want) {
					t.Errorf("%s: written through this kmsfs, reads back %d bytes, want %d", name, len(got), len(want))
				}
				h.Close()
				if got := version(name); got != 1 {
					t.Errorf("%s: header version %d after a write, want 1", name, got)
				}
			}
			h, err := v.OpenFile(ctx, "new-file", syscall.O_RDWR|syscall.O_CREAT, 0o644, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := h.WriteAt(ctx, []byte("new"), 0); err != nil {
				t.Fatal(err)
			}
			h.Close()
			if got := version("new-file"); got != envelope.CurrentVersion {
				t.Errorf("a new file in a version 1 volume: header version %d, want %d", got, envelope.CurrentVersion)
			}
		})
	}
}

var writeV2Fixtures = flag.Bool("write-v2-fixtures", false,
	"write testdata/v2 (once, when file format version 2 was new; never again)")

// v2FixtureAppended is the file of testdata/v2 written in two sessions:
// one block, closed, then appended to from its block boundary.
const v2FixtureAppended = "appended.bin"

// TestWriteV2Fixtures writes testdata/v2 with -write-v2-fixtures: the
// files of the version 1 fixtures, written anew (so as version 2 files) in
// a per-object and a bucket-key volume under the keystore of testdata/v1,
// plus a file appended to across a block boundary in a second session.
func TestWriteV2Fixtures(t *testing.T) {
	if !*writeV2Fixtures {
		t.Skip("only with -write-v2-fixtures")
	}
	writeFixtures(t, "v2", nil)
}

var writeV3Fixtures = flag.Bool("write-v3-fixtures", false,
	"write testdata/v3 (once, when file format version 3 was new; never again)")

// v3FixtureSparse is the file of testdata/v3 with holes: 4 KiB of data,
// holes left by a truncation up to 64 KiB, 100 bytes written at 96 KiB
// (the blocks between are a gap closed as holes), and a final truncation
// up to 160 KiB + 10 (holes, then a stored last block of zeros).
const v3FixtureSparse = "sparse.bin"

// v3SparseContent is the plaintext of v3FixtureSparse.
func v3SparseContent() []byte {
	b := make([]byte, 160<<10+10)
	copy(b, pattern(4096, 3))
	copy(b[96<<10:], pattern(100, 4))
	return b
}

// TestWriteV3Fixtures writes testdata/v3 with -write-v3-fixtures, as
// TestWriteV2Fixtures wrote testdata/v2, plus a file with holes.
func TestWriteV3Fixtures(t *testing.T) {
	if !*writeV3Fixtures {
		t.Skip("only with -write-v3-fixtures")
	}
	writeFixtures(t, "v3", func(ctx context.Context, v *Volume) map[string][]byte {
		h, err := v.OpenFile(ctx, v3FixtureSparse, syscall.O_RDWR|syscall.O_CREAT, 0o644, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.WriteAt(ctx, pattern(4096, 3), 0); err != nil {
			t.Fatal(err)
		}
		if err := h.Truncate(ctx, 64<<10); err != nil {
			t.Fatal(err)
		}
		if _, err := h.WriteAt(ctx, pattern(100, 4), 96<<10); err != nil {
			t.Fatal(err)
		}
		if err := h.Truncate(ctx, 160<<10+10); err != nil {
			t.Fatal(err)
		}
		if err := h.Close(); err != nil {
			t.Fatal(err)
		}
		return map[string][]byte{v3FixtureSparse: v3SparseContent()}
	})
}

// writeFixtures writes testdata/NAME: the files of the version 1 fixtures
// written anew in a per-object and a bucket-key volume under the keystore
// of testdata/v1, a file appended to across a block boundary in a second
// session, and what extra writes (returning the contents it wrote).
func writeFixtures(t *testing.T, name string, extra func(context.Context, *Volume) map[string][]byte) {
	ctx := context.Background()
	tmp, ks, manifest := copyV1Fixture(t)
	out := filepath.Join("testdata", name)
	extraSums := map[string]string{} // what extra wrote, for the manifest
	if err := os.RemoveAll(out); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{"per-object", "bucket-key"} {
		old, err := local.New(filepath.Join(tmp, mode))
		if err != nil {
			t.Fatal(err)
		}
		v1, err := Open(ctx, old, Options{Keys: ks, ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(out, mode)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		be, err := local.New(dir)
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]envelope.Mode{"per-object": envelope.ModePerObject, "bucket-key": envelope.ModeBucketKey}[mode]
		if _, err := Init(ctx, be, ks, InitOptions{Mode: m, KeyID: v1.Config().KeyID}); err != nil {
			t.Fatal(err)
		}
		v, err := Open(ctx, be, Options{Keys: ks, PrefetchMax: -1})
		if err != nil {
			t.Fatal(err)
		}
		write := func(name string, data []byte, flags int) {
			h, err := v.OpenFile(ctx, name, syscall.O_WRONLY|syscall.O_CREAT|flags, 0o644, nil)
			if err != nil {
				t.Fatal(err)
			}
			size, _ := h.Size()
			if _, err := h.WriteAt(ctx, data, size); err != nil && len(data) > 0 {
				t.Fatal(err)
			}
			if err := h.Close(); err != nil {
				t.Fatal(err)
			}
		}
		for name := range manifest.Files {
			h, err := v1.OpenFile(ctx, name, syscall.O_RDONLY, 0, nil)
			if err != nil {
				t.Fatal(err)
			}
			data := readAll(t, h)
			h.Close()
			os.MkdirAll(filepath.Join(dir, filepath.Dir(name)), 0o755)
			write(name, data, 0)
		}
		write(v2FixtureAppended, pattern(4096, 1), 0)
		write(v2FixtureAppended, pattern(4096+100, 2), syscall.O_APPEND)
		if extra != nil {
			for n, data := range extra(ctx, v) {
				sum := sha256.Sum256(data)
				extraSums[n] = hex.EncodeToString(sum[:])
			}
		}
		v.Close()
		v1.Close()
		// What a mount leaves behind that is not part of the format.
		os.Remove(filepath.Join(dir, ".kmsfs", "lock"))
		os.Remove(filepath.Join(dir, ".kmsfs", "intents"))
	}
	sum := sha256.Sum256(append(pattern(4096, 1), pattern(4096+100, 2)...))
	manifest.Files[v2FixtureAppended] = hex.EncodeToString(sum[:])
	maps.Copy(manifest.Files, extraSums)
	b, err := json.MarshalIndent(manifest, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(out, "manifest.json"), append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestFormatV2Fixtures reads the volumes of testdata/v2, written when file
// format version 2 was new (their keys are in the keystore of
// testdata/v1): every file is a version 2 file and reads back as its
// manifest says. Never regenerate these files for format version 2.
func TestFormatV2Fixtures(t *testing.T) { testFormatFixtures(t, 2, []string{v2FixtureAppended}) }

// TestFormatV3Fixtures reads the volumes of testdata/v3 (written when file
// format version 3 was new, keys in the keystore of testdata/v1) the same
// way, a file with holes among them. Never regenerate them.
func TestFormatV3Fixtures(t *testing.T) {
	testFormatFixtures(t, 3, []string{v2FixtureAppended, v3FixtureSparse})
}

func testFormatFixtures(t *testing.T, version byte, must []string) {
	ctx := context.Background()
	dirName := fmt.Sprintf("v%d", version)
	tmp := t.TempDir()
	if err := os.CopyFS(tmp, os.DirFS("testdata")); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(tmp, "v1", "keystore"), 0o700)
	ks, err := keystore.Open(filepath.Join(tmp, "v1", "keystore"), keystore.Options{Warn: func(string) {}})
	if err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	var manifest struct {
		Files map[string]string `json:"files"`
		// Versions, in testdata/v4 and later, is each file's format
		// version (0: no header); before, every file is of version.
		Versions map[string]byte `json:"versions"`
	}
	raw, err := os.ReadFile(filepath.Join(tmp, dirName, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &manifest); err != nil {
		t.Fatal(err)
	}
	for _, name := range must {
		if _, ok := manifest.Files[name]; !ok {
			t.Fatalf("no %s in the %s manifest", name, dirName)
		}
	}
	for _, mode := range []string{"per-object", "bucket-key"} {
		t.Run(mode, func(t *testing.T) {
			root := filepath.Join(tmp, dirName, mode)
			be, err := local.New(root)
			if err != nil {
				t.Fatal(err)
			}
			v, err := Open(ctx, be, Options{Keys: ks, ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer v.Close()
			for name, sum := range manifest.Files {
				stored, err := os.ReadFile(filepath.Join(root, name))
				if err != nil {
					t.Fatal(err)
				}
				want := version
				if manifest.Versions != nil {
					v, ok := manifest.Versions[name]
					if !ok {
						t.Errorf("%s: no version in the %s manifest", name, dirName)
					}
					want = v
				}
				switch {
				case want == 0 && len(stored) != 0:
					t.Errorf("%s: %d stored bytes, want none (an empty file without a header)", name, len(stored))
				case want != 0 && (len(stored) < 5 || stored[4] != want):
					t.Errorf("%s: header %x, want version %d", name, stored[:min(5, len(stored))], want)
				}
				h, err := v.OpenFile(ctx, name, syscall.O_RDONLY, 0, nil)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				got := readAll(t, h)
				h.Close()
				if s := sha256.Sum256(got); hex.EncodeToString(s[:]) != sum {
					t.Errorf("%s: content differs from the %s fixture", name, dirName)
				}
				// The plaintext size follows from the stored size, in
				// every layout: a version 4 file is stored at the size a
				// version 3 file of its length has, its units then zeros.
				if size := v.PlainSize(name, int64(len(stored))); size != int64(len(got)) {
					t.Errorf("%s: stored size %d gives %d bytes, the file has %d", name, len(stored), size, len(got))
				}
				if want == envelope.Version4 {
					checkV4Stored(t, name, stored, v.Layout())
				}
			}
		})
	}
}

var writeV4Fixtures = flag.Bool("write-v4-fixtures", false,
	"write testdata/v4 (once, when file format version 4 was new; never again)")

// The files of testdata/v4, volumes with the compression feature.
const (
	v4FixtureText   = "text.txt"   // compressible text of several units
	v4FixtureRandom = "random.bin" // bytes that do not compress: stored units
	v4FixtureEdited = "edited.txt" // written compressed, then changed in place in a second session
	v4FixtureEmpty  = "empty"      // created and closed: no header
	v4FixtureBlocks = "blocks.txt" // written, then converted to the block layout by fallocate
)

// v4FixtureText is DefaultUnitSize*3 + 3392 bytes of numbered lines.
func v4TextContent(salt string, n int) []byte {
	var b []byte
	for i := 0; len(b) < n; i++ {
		b = fmt.Appendf(b, "%06d %s: kmsfs compresses each unit of a file on its own\n", i, salt)
	}
	return b[:n]
}

// v4RandomContent is bytes that no compressor shortens, from a fixed seed.
func v4RandomContent() []byte {
	b := make([]byte, 100_000)
	rng := rand.NewChaCha8([32]byte{'k', 'm', 's', 'f', 's', 4})
	rng.Read(b)
	return b
}

// v4EditedEdit is the change made to v4FixtureEdited in its second session:
// bytes at 70,000 (in its second unit) overwritten.
const v4EditedAt = 70_000

var v4EditedEdit = []byte("--- this line was written over in place, in a second session ---\n")

// v4FixtureContents is the content of every file of testdata/v4 and its
// format version.
func v4FixtureContents() (map[string][]byte, map[string]byte) {
	edited := v4TextContent("edited", 100_000)
	copy(edited[v4EditedAt:], v4EditedEdit)
	return map[string][]byte{
			v4FixtureText:   v4TextContent("text", 3*envelope.DefaultUnitSize+3392),
			v4FixtureRandom: v4RandomContent(),
			v4FixtureEdited: edited,
			v4FixtureEmpty:  {},
			v4FixtureBlocks: v4TextContent("blocks", 10_000),
		}, map[string]byte{
			v4FixtureText: envelope.Version4, v4FixtureRandom: envelope.Version4, v4FixtureEdited: envelope.Version4,
			v4FixtureEmpty: 0, v4FixtureBlocks: envelope.Version3,
		}
}

// v4UnitKinds is the payload kind of each unit of the version 4 files of
// testdata/v4 (0 stored, 1 zstd), which the spec decoder checks.
var v4UnitKinds = map[string][]int{
	v4FixtureText:   {1, 1, 1, 1},
	v4FixtureRandom: {0, 0},
	v4FixtureEdited: {1, 1},
}

// TestWriteV4Fixtures writes testdata/v4 with -write-v4-fixtures: a
// per-object and a bucket-key volume with the compression feature, under
// the keystore of testdata/v1, holding the files above, written through
// the volume as an application would.
func TestWriteV4Fixtures(t *testing.T) {
	if !*writeV4Fixtures {
		t.Skip("only with -write-v4-fixtures")
	}
	ctx := context.Background()
	tmp, ks, _ := copyV1Fixture(t)
	out := filepath.Join("testdata", "v4")
	if err := os.RemoveAll(out); err != nil {
		t.Fatal(err)
	}
	contents, versions := v4FixtureContents()
	for _, mode := range []string{"per-object", "bucket-key"} {
		old, err := local.New(filepath.Join(tmp, mode))
		if err != nil {
			t.Fatal(err)
		}
		v1, err := Open(ctx, old, Options{Keys: ks, ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		keyID := v1.Config().KeyID
		v1.Close()
		dir := filepath.Join(out, mode)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		be, err := local.New(dir)
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]envelope.Mode{"per-object": envelope.ModePerObject, "bucket-key": envelope.ModeBucketKey}[mode]
		if _, err := Init(ctx, be, ks, InitOptions{Mode: m, KeyID: keyID, Compress: "zstd"}); err != nil {
			t.Fatal(err)
		}
		session := func(fn func(v *Volume)) {
			v, err := Open(ctx, be, Options{Keys: ks, PrefetchMax: -1})
			if err != nil {
				t.Fatal(err)
			}
			fn(v)
			if err := v.Close(); err != nil {
				t.Fatal(err)
			}
		}
		write := func(v *Volume, name string, data []byte, off int64, then func(*Handle)) {
			h, err := v.OpenFile(ctx, name, syscall.O_RDWR|syscall.O_CREAT, 0o644, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(data) > 0 {
				if _, err := h.WriteAt(ctx, data, off); err != nil {
					t.Fatal(err)
				}
			}
			if then != nil {
				then(h)
			}
			if err := h.Close(); err != nil {
				t.Fatal(err)
			}
		}
		session(func(v *Volume) {
			for _, name := range []string{v4FixtureText, v4FixtureRandom, v4FixtureEmpty} {
				write(v, name, contents[name], 0, nil)
			}
			write(v, v4FixtureEdited, v4TextContent("edited", 100_000), 0, nil)
			// fallocate serves the block layout only: the file held in
			// memory is written out in it.
			write(v, v4FixtureBlocks, contents[v4FixtureBlocks], 0, func(h *Handle) {
				if err := h.Allocate(ctx, 0, int64(len(contents[v4FixtureBlocks])), 0); err != nil {
					t.Fatal(err)
				}
			})
		})
		// A remount: the edit loads the stored version 4 file back and
		// rewrites it whole, under an intent.
		session(func(v *Volume) { write(v, v4FixtureEdited, v4EditedEdit, v4EditedAt, nil) })
		// What a mount leaves behind that is not part of the format.
		os.Remove(filepath.Join(dir, ".kmsfs", "lock"))
		os.Remove(filepath.Join(dir, ".kmsfs", "intents"))
		for name, want := range versions {
			b, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			if got := byte(0); len(b) > 4 {
				got = b[4]
				if got != want {
					t.Fatalf("%s: written as version %d, want %d", name, got, want)
				}
			} else if want != 0 {
				t.Fatalf("%s: written as %d bytes", name, len(b))
			}
		}
	}
	manifest := struct {
		Files     map[string]string `json:"files"`
		Versions  map[string]byte   `json:"versions"`
		UnitKinds map[string][]int  `json:"unit_kinds"`
	}{map[string]string{}, versions, v4UnitKinds}
	for name, data := range contents {
		sum := sha256.Sum256(data)
		manifest.Files[name] = hex.EncodeToString(sum[:])
	}
	b, err := json.MarshalIndent(manifest, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(out, "manifest.json"), append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestFormatV4Fixtures reads the volumes of testdata/v4 (written when file
// format version 4 was new, keys in the keystore of testdata/v1): version
// 4 files of compressed and of stored units, one rewritten in place, an
// empty file and a version 3 one, each of the version and content its
// manifest gives. Never regenerate them.
func TestFormatV4Fixtures(t *testing.T) {
	contents, versions := v4FixtureContents()
	var manifest struct {
		Files    map[string]string `json:"files"`
		Versions map[string]byte   `json:"versions"`
	}
	raw, err := os.ReadFile(filepath.Join("testdata", "v4", "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &manifest); err != nil {
		t.Fatal(err)
	}
	// The manifest is what the generator meant to write.
	for name, data := range contents {
		sum := sha256.Sum256(data)
		if manifest.Files[name] != hex.EncodeToString(sum[:]) || manifest.Versions[name] != versions[name] {
			t.Errorf("%s: manifest sum %s and version %d, the fixture's content and version %d", name, manifest.Files[name], manifest.Versions[name], versions[name])
		}
	}
	testFormatFixtures(t, 4, slices.Collect(maps.Keys(contents)))
}

// checkV4Stored checks a stored version 4 file of testdata/v4 as git holds
// it: its units end before its stored size, and the rest is zeros written
// out (git keeps no holes; nothing reads them).
func checkV4Stored(t *testing.T, name string, stored []byte, l envelope.Layout) {
	t.Helper()
	p, err := envelope.ParseHeader(stored[:l.HeaderSize])
	if err != nil {
		t.Errorf("%s: %v", name, err)
		return
	}
	_, end := p.Units.Offsets(p.RegionSize)
	if int64(p.RegionSize) >= l.HeaderSize || end >= int64(len(stored)) || l.CipherSize(p.Units.PlainSize, true) != int64(len(stored)) {
		t.Errorf("%s: region of %d bytes, units end at %d, stored size %d for %d bytes", name, p.RegionSize, end, len(stored), p.Units.PlainSize)
		return
	}
	if slices.ContainsFunc(stored[end:], func(b byte) bool { return b != 0 }) {
		t.Errorf("%s: bytes after the units that are not zero", name)
	}
}
