package volume

import (
	"context"
	"strings"
	"syscall"
	"testing"

	"github.com/kmsfs/kmsfs/backend/local"
	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/kms"
)

// TestRewrapCount: the total announced before a rewrap is the number of
// files the rewrap then reports, with plain and with encrypted names (whose
// directory IDs and long-name side files are not files of the volume).
func TestRewrapCount(t *testing.T) {
	ctx := context.Background()
	t.Run("plain", func(t *testing.T) {
		tv := newTestVolume(t, envelope.ModePerObject)
		rewrapTree(t, tv)
		checkRewrapCount(t, tv, 9)
	})
	t.Run("encrypted-names", func(t *testing.T) {
		tv := newTestVolumeInit(t, InitOptions{EncryptNames: true}, Options{PrefetchMax: -1})
		be := tv.Backend()
		for _, d := range []string{"d", "d/e"} {
			if err := be.Mkdir(ctx, d, 0o755, nil); err != nil {
				t.Fatal(err)
			}
		}
		for _, name := range []string{"top", "d/one", "d/e/two", "d/" + strings.Repeat("long", 60)} {
			h := tv.open(t, name, syscall.O_RDWR|syscall.O_CREAT)
			if _, err := h.WriteAt(ctx, []byte(name), 0); err != nil {
				t.Fatal(err)
			}
			if err := h.Close(); err != nil {
				t.Fatal(err)
			}
		}
		if err := tv.Close(); err != nil {
			t.Fatal(err)
		}
		checkRewrapCount(t, tv, 4)
	})
}

// checkRewrapCount counts the files of tv's volume on its raw backend (as
// kmsfs rewrap opens it), rewraps it, and compares both with want.
func checkRewrapCount(t *testing.T, tv *testVol, want int) {
	t.Helper()
	ctx := context.Background()
	be, err := local.New(tv.dir)
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	n, err := RewrapCount(ctx, be)
	if err != nil || n != want {
		t.Fatalf("RewrapCount = %d, %v; want %d", n, err, want)
	}
	keyB, err := tv.ks.CreateKey(ctx, kms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	prog, err := Rewrap(ctx, be, tv.ks, RewrapOptions{ToKey: keyB.KeyID})
	if err != nil || prog.Files != n {
		t.Fatalf("rewrap reached %d files (%v); RewrapCount said %d", prog.Files, err, n)
	}
}
