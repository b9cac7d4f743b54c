package volume

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/backend"
	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/kms"
)

// rewrapTree writes the files a rewrap test checks: nested files of a few
// sizes, an empty file, a second link of one, and a user xattr. It closes
// the volume (releasing its lock) and returns the contents by path.
func rewrapTree(t *testing.T, tv *testVol) map[string][]byte {
	t.Helper()
	ctx := context.Background()
	want := map[string][]byte{}
	for _, d := range []string{"a", "a/b", "c"} {
		if err := os.Mkdir(filepath.Join(tv.dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for i, name := range []string{"top", "a/one", "a/two", "a/b/deep", "c/x", "c/y", "c/z"} {
		want[name] = bytes.Repeat([]byte{byte('a' + i)}, 1+i*3000)
	}
	for name, data := range want {
		h := tv.open(t, name, syscall.O_RDWR|syscall.O_CREAT)
		if _, err := h.WriteAt(ctx, data, 0); err != nil {
			t.Fatal(err)
		}
		if err := h.Close(); err != nil {
			t.Fatal(err)
		}
	}
	h := tv.open(t, "empty", syscall.O_RDWR|syscall.O_CREAT)
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	want["empty"] = nil
	if err := os.Link(filepath.Join(tv.dir, "c/x"), filepath.Join(tv.dir, "linked")); err != nil {
		t.Fatal(err)
	}
	want["linked"] = want["c/x"]
	sealed, err := tv.SealXattr(ctx, "user.note", []byte("kept"))
	if err != nil {
		t.Fatal(err)
	}
	if err := tv.Backend().Setxattr(ctx, "top", "user.note", sealed, 0); err != nil {
		t.Fatal(err)
	}
	// Times a rewrap must keep: an hour ago, unlike the rewrite's own.
	old := time.Now().Add(-time.Hour).Truncate(time.Second)
	for name := range want {
		if err := os.Chtimes(filepath.Join(tv.dir, name), old, old); err != nil {
			t.Fatal(err)
		}
	}
	if err := tv.Close(); err != nil {
		t.Fatal(err)
	}
	return want
}

// checkRewrapTree reads every file and the xattr back through a fresh
// volume (empty key cache) and checks the stored key slots name keyARN.
func checkRewrapTree(t *testing.T, tv *testVol, want map[string][]byte, keyARN string) {
	t.Helper()
	ctx := context.Background()
	fresh := tv.reopen(t)
	for name, data := range want {
		h := fresh.open(t, name, syscall.O_RDONLY)
		if got := readAll(t, h); !bytes.Equal(got, data) {
			t.Fatalf("%s: %d bytes back, want %d", name, len(got), len(data))
		}
		if err := h.Close(); err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(filepath.Join(tv.dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if time.Since(st.ModTime()) < 50*time.Minute {
			t.Fatalf("%s: rewrap changed the mtime to %v", name, st.ModTime())
		}
		if len(data) > 0 {
			if p := storedHeader(t, tv, name); p.KeyID != keyARN {
				t.Fatalf("%s: key slot names %s, want %s", name, p.KeyID, keyARN)
			}
		}
	}
	stored, err := fresh.Backend().Getxattr(ctx, "top", "user.note")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := fresh.OpenXattr(ctx, "user.note", stored); err != nil || string(got) != "kept" {
		t.Fatalf("xattr after rewrap: %q, %v", got, err)
	}
	if fresh.Config().KeyID != keyARN {
		t.Fatalf("config names %s, want %s", fresh.Config().KeyID, keyARN)
	}
}

func storedHeader(t *testing.T, tv *testVol, name string) *envelope.ParsedHeader {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(tv.dir, name))
	if err != nil {
		t.Fatal(err)
	}
	p, err := envelope.ParseHeader(data)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return p
}

// reEncryptCounter counts ReEncrypt calls and can fail those after a number.
type reEncryptCounter struct {
	*countingKMS
	reEncrypts atomic.Int64
	failAfter  int64 // 0: never
}

func (c *reEncryptCounter) ReEncrypt(ctx context.Context, blob []byte, srcEC kms.EncryptionContext, dest string, destEC kms.EncryptionContext) ([]byte, string, string, error) {
	if n := c.reEncrypts.Add(1); c.failAfter > 0 && n > c.failAfter {
		return nil, "", "", &kms.Error{Code: kms.CodeDependencyTimeout, Message: "injected KMS outage"}
	}
	return c.countingKMS.ReEncrypt(ctx, blob, srcEC, dest, destEC)
}

// TestRewrapToAnotherKey moves a volume to a second key with ReEncrypt only
// (no Decrypt, no GenerateDataKey: the plaintext keys never leave the KMS),
// after which the first key can be disabled and everything still reads.
func TestRewrapToAnotherKey(t *testing.T) {
	for _, tc := range []struct {
		mode envelope.Mode
		// ReEncrypt calls: the metadata key, then one per file with
		// content (c/x and linked are one file) or one per bucket key.
		calls int
	}{{envelope.ModePerObject, 1 + 7}, {envelope.ModeBucketKey, 1 + 1}} {
		t.Run(tc.mode.String(), func(t *testing.T) {
			ctx := context.Background()
			tv := newTestVolume(t, tc.mode)
			want := rewrapTree(t, tv)
			keyB, err := tv.ks.CreateKey(ctx, kms.CreateKeyInput{})
			if err != nil {
				t.Fatal(err)
			}
			crypto := &reEncryptCounter{countingKMS: &countingKMS{Crypto: tv.ks}}
			var reports int
			prog, err := Rewrap(ctx, tv.Backend(), crypto, RewrapOptions{
				ToKey: keyB.KeyID, Progress: func(RewrapProgress) { reports++ },
			})
			if err != nil {
				t.Fatal(err)
			}
			if !prog.Done || prog.Files != 9 || prog.Rewrapped != 7 || prog.Skipped != 2 || prog.Failed != 0 ||
				prog.ReEncrypts != tc.calls || prog.KeyARN != keyB.ARN || reports == 0 {
				t.Fatalf("progress %+v after %d reports; want 9 files, 7 rewrapped, 2 skipped, %d ReEncrypts", prog, reports, tc.calls)
			}
			if n := crypto.reEncrypts.Load(); n != int64(tc.calls) {
				t.Fatalf("%d ReEncrypt calls reached the KMS, want %d", n, tc.calls)
			}
			if crypto.gen != 0 || crypto.dec != 0 {
				t.Fatalf("rewrap called GenerateDataKey %d and Decrypt %d times", crypto.gen, crypto.dec)
			}
			if err := tv.ks.DisableKey(ctx, tv.keyID); err != nil {
				t.Fatal(err)
			}
			checkRewrapTree(t, tv, want, keyB.ARN)

			// Naming the key the volume now uses is a refresh: every file
			// again, under its current material.
			again, err := Rewrap(ctx, tv.Backend(), crypto, RewrapOptions{ToKey: keyB.ARN})
			if err != nil || again.Rewrapped != 7 || again.ReEncrypts != tc.calls {
				t.Fatalf("second rewrap to key B: %+v, %v; want a refresh of all 7 files", again, err)
			}
		})
	}
}

// TestRewrapRefreshAfterRotation: without a destination, every file is
// re-wrapped under the volume key's current material, so that material
// from before a rotation is no longer needed.
func TestRewrapRefreshAfterRotation(t *testing.T) {
	ctx := context.Background()
	tv := newTestVolume(t, envelope.ModePerObject)
	want := rewrapTree(t, tv)
	if err := tv.ks.RotateKeyOnDemand(ctx, tv.keyID); err != nil {
		t.Fatal(err)
	}
	prog, err := Rewrap(ctx, tv.Backend(), tv.ks, RewrapOptions{})
	if err != nil || prog.Rewrapped != 7 {
		t.Fatalf("refresh: %+v, %v; want 7 files rewrapped", prog, err)
	}
	for name, data := range want {
		if len(data) == 0 || name == "linked" {
			continue
		}
		// FORMAT.md section 6: bytes 17..20 of an embedded blob are the
		// backing material version.
		if v := binary.BigEndian.Uint32(storedHeader(t, tv, name).WrappedKey[17:]); v != 2 {
			t.Fatalf("%s: wrapped under material version %d after the refresh, want 2", name, v)
		}
	}
	checkRewrapTree(t, tv, want, tv.keyID)
}

// TestRewrapResumesAfterAnInterruption: a KMS outage stops a rewrap part
// way; every file stays readable (each under one key or the other), and
// the next run starts at its checkpoint instead of the beginning.
func TestRewrapResumesAfterAnInterruption(t *testing.T) {
	ctx := context.Background()
	tv := newTestVolume(t, envelope.ModePerObject)
	want := rewrapTree(t, tv)
	if err := tv.ks.RotateKeyOnDemand(ctx, tv.keyID); err != nil {
		t.Fatal(err)
	}
	// The metadata key and 3 files succeed; the other 4 fail.
	failing := &reEncryptCounter{countingKMS: &countingKMS{Crypto: tv.ks}, failAfter: 4}
	prog, err := Rewrap(ctx, tv.Backend(), failing, RewrapOptions{Parallel: 1})
	if err == nil || prog.Done || prog.Rewrapped != 3 || prog.Failed != 4 {
		t.Fatalf("rewrap through an outage: %+v, %v; want 3 rewrapped, 4 failed, an error", prog, err)
	}
	checkRewrapTree(t, tv, want, tv.keyID)

	var logged bytes.Buffer
	v, err := Open(ctx, tv.Backend(), Options{Keys: tv.ks, ReadOnly: true, Logger: slog.New(slog.NewTextHandler(&logged, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logged.String(), "rewrap of this volume was interrupted") {
		t.Fatalf("opening a volume with an unfinished rewrap logged:\n%s", logged.String())
	}

	healthy := &reEncryptCounter{countingKMS: &countingKMS{Crypto: tv.ks}}
	prog, err = Rewrap(ctx, tv.Backend(), healthy, RewrapOptions{Parallel: 1})
	if err != nil || !prog.Done || prog.Rewrapped != 4 {
		t.Fatalf("resumed rewrap: %+v, %v; want the 4 remaining files rewrapped", prog, err)
	}
	if n := healthy.reEncrypts.Load(); n != 4 {
		t.Fatalf("resumed rewrap made %d ReEncrypt calls, want 4 (the metadata key was done)", n)
	}
	for name, data := range want {
		if len(data) > 0 && name != "linked" {
			if v := binary.BigEndian.Uint32(storedHeader(t, tv, name).WrappedKey[17:]); v != 2 {
				t.Fatalf("%s: material version %d after the resumed rewrap, want 2", name, v)
			}
		}
	}
	// A finished job is not resumed: a new run starts over.
	prog, err = Rewrap(ctx, tv.Backend(), healthy, RewrapOptions{Parallel: 1})
	if err != nil || prog.Rewrapped != 7 {
		t.Fatalf("rewrap after a finished one: %+v, %v; want all 7 again", prog, err)
	}
}

// TestRewrapLeavesACorruptFileAndGoesOn: a file whose header is garbage is
// reported with its path and left as it was; the others are rewrapped.
func TestRewrapLeavesACorruptFileAndGoesOn(t *testing.T) {
	ctx := context.Background()
	tv := newTestVolume(t, envelope.ModePerObject)
	want := rewrapTree(t, tv)
	garbage := bytes.Repeat([]byte{0xEE}, 2000)
	bad := filepath.Join(tv.dir, "a", "garbage")
	if err := os.WriteFile(bad, garbage, 0o644); err != nil {
		t.Fatal(err)
	}
	keyB, err := tv.ks.CreateKey(ctx, kms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	prog, err := Rewrap(ctx, tv.Backend(), tv.ks, RewrapOptions{ToKey: keyB.ARN})
	if err == nil || prog.Failed != 1 || prog.Rewrapped != 7 {
		t.Fatalf("rewrap with a corrupt file: %+v, %v; want 1 failed, 7 rewrapped, an error", prog, err)
	}
	if got, err := os.ReadFile(bad); err != nil || !bytes.Equal(got, garbage) {
		t.Fatalf("the corrupt file was changed (%v)", err)
	}
	checkRewrapTree(t, tv, want, keyB.ARN)
}

// TestRewrapRefusesAVolumeInUse: a read-write mount holds the volume lock.
func TestRewrapRefusesAVolumeInUse(t *testing.T) {
	tv := newTestVolume(t, envelope.ModePerObject)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := Rewrap(ctx, tv.Backend(), tv.ks, RewrapOptions{}); !errors.Is(err, backend.ErrVolumeBusy) {
		t.Fatalf("rewrap of an open volume: %v, want ErrVolumeBusy", err)
	}
}

// TestTornHeaderRewriteIsFinishedOnOpen: a rewrap killed in the middle of a
// header write (possible for headers larger than a page) leaves a region
// that is part new, part old, and its intent; opening the file completes it.
func TestTornHeaderRewriteIsFinishedOnOpen(t *testing.T) {
	ctx := context.Background()
	tv := newTestVolume(t, envelope.ModePerObject)
	h := tv.open(t, "f", syscall.O_RDWR|syscall.O_CREAT)
	if _, err := h.WriteAt(ctx, []byte("content"), 0); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tv.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(tv.dir, "f")
	stored, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p, err := envelope.ParseHeader(stored)
	if err != nil {
		t.Fatal(err)
	}
	keyB, err := tv.ks.CreateKey(ctx, kms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	fctx := fileContext(tv.Config().VolumeID, p.FileID)
	wrapped, _, arn, err := tv.ks.ReEncrypt(ctx, p.WrappedKey, fctx, keyB.ARN, fctx)
	if err != nil {
		t.Fatal(err)
	}
	newRegion, err := p.ReplaceKeySlot(arn, wrapped)
	if err != nil {
		t.Fatal(err)
	}
	in := &intent{fileID: p.FileID, truncateTo: -1, data: newRegion}
	if err := tv.Backend().(backend.Intents).WriteIntent(ctx, fmt.Sprintf("%x", p.FileID), in.marshal()); err != nil {
		t.Fatal(err)
	}
	// Torn inside the key slot: the new key ARN with the old wrapped key's
	// bytes after it does not parse or unwrap.
	torn := append(bytes.Clone(newRegion[:120]), stored[120:]...)
	if err := os.WriteFile(path, torn, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := envelope.ParseHeader(torn); err == nil {
		if q, _ := envelope.ParseHeader(torn); q.KeyID == arn && bytes.Equal(q.WrappedKey, wrapped) {
			t.Fatal("the torn region is the whole new header; the test tears nothing")
		}
	}
	fresh := tv.reopen(t)
	h = fresh.open(t, "f", syscall.O_RDONLY)
	defer h.Close()
	if got := readAll(t, h); string(got) != "content" {
		t.Fatalf("read %q after the torn header rewrite", got)
	}
	if q := storedHeader(t, tv, "f"); q.KeyID != arn {
		t.Fatalf("header names %s after replay, want %s", q.KeyID, arn)
	}
}

func TestWalkOrderAfter(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"b", "a", true}, {"a", "b", false}, {"a", "a", false},
		{"a/x", "a", true}, {"a", "a/x", false},
		{"a/z", "b", false}, {"b", "a/z", true},
		// "a-b" sorts before "a/..." as a string but after "a" as a name.
		{"a-b", "a/z", true}, {"a/z", "a-b", false},
	} {
		if got := walkOrderAfter(tc.a, tc.b); got != tc.want {
			t.Errorf("walkOrderAfter(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}
