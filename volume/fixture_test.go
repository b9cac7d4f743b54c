package volume

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
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
func TestFormatV1FilesStayV1(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS("testdata/v1")); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(dir, "keystore"), 0o700)
	ks, err := keystore.Open(filepath.Join(dir, "keystore"), keystore.Options{Warn: func(string) {}})
	if err != nil {
		t.Fatalf("open v1 keystore: %v", err)
	}
	defer ks.Close()
	var manifest struct {
		Files map[string]string `json:"files"`
	}
	raw, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &manifest); err != nil {
		t.Fatal(err)
	}
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
	ctx := context.Background()
	tmp := t.TempDir()
	if err := os.CopyFS(tmp, os.DirFS("testdata/v1")); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(tmp, "keystore"), 0o700)
	ks, err := keystore.Open(filepath.Join(tmp, "keystore"), keystore.Options{Warn: func(string) {}})
	if err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	var manifest struct {
		Files map[string]string `json:"files"`
	}
	raw, err := os.ReadFile(filepath.Join(tmp, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &manifest); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join("testdata", "v2")
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
		v.Close()
		v1.Close()
		// What a mount leaves behind that is not part of the format.
		os.Remove(filepath.Join(dir, ".kmsfs", "lock"))
		os.Remove(filepath.Join(dir, ".kmsfs", "intents"))
	}
	sum := sha256.Sum256(append(pattern(4096, 1), pattern(4096+100, 2)...))
	manifest.Files[v2FixtureAppended] = hex.EncodeToString(sum[:])
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
func TestFormatV2Fixtures(t *testing.T) {
	ctx := context.Background()
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
	}
	raw, err := os.ReadFile(filepath.Join(tmp, "v2", "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &manifest); err != nil {
		t.Fatal(err)
	}
	if _, ok := manifest.Files[v2FixtureAppended]; !ok {
		t.Fatalf("no %s in the v2 manifest", v2FixtureAppended)
	}
	for _, mode := range []string{"per-object", "bucket-key"} {
		t.Run(mode, func(t *testing.T) {
			root := filepath.Join(tmp, "v2", mode)
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
				if len(stored) > 4 && stored[4] != 2 {
					t.Errorf("%s: header version %d, want 2", name, stored[4])
				}
				h, err := v.OpenFile(ctx, name, syscall.O_RDONLY, 0, nil)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				got := readAll(t, h)
				h.Close()
				if s := sha256.Sum256(got); hex.EncodeToString(s[:]) != sum {
					t.Errorf("%s: content differs from the v2 fixture", name)
				}
			}
		})
	}
}
