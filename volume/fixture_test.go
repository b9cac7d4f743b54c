package volume

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/kmsfs/kmsfs/backend/local"
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
			if got := version("new-file"); got != 2 {
				t.Errorf("a new file in a version 1 volume: header version %d, want 2", got)
			}
		})
	}
}
