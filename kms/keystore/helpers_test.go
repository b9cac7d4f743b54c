package keystore

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/kms"
)

// fakeClock is a settable clock for Options.Now.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// warnings collects Options.Warn messages.
type warnings struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnings) Warn(msg string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, msg)
}

func (w *warnings) all() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Join(w.msgs, "\n")
}

type fixture struct {
	dir   string
	clock *fakeClock
	warn  *warnings
	ks    *Keystore
}

// newFixture opens a root-key keystore in a fresh directory with a fake clock.
func newFixture(t testing.TB) *fixture {
	t.Helper()
	f := &fixture{dir: t.TempDir() + "/ks", clock: newFakeClock(), warn: &warnings{}}
	f.ks = f.open(t, nil)
	return f
}

func (f *fixture) open(t testing.TB, passphrase []byte) *Keystore {
	t.Helper()
	ks, err := Open(f.dir, Options{Passphrase: passphrase, Now: f.clock.Now, Warn: f.warn.Warn})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { ks.Close() })
	return ks
}

func createKey(t testing.TB, ks *Keystore) kms.KeyMetadata {
	t.Helper()
	md, err := ks.CreateKey(context.Background(), kms.CreateKeyInput{Description: "test key"})
	if err != nil {
		t.Fatalf("CreateKey: %v", err)
	}
	return md
}

func wantCode(t testing.TB, err error, sentinel *kms.Error) {
	t.Helper()
	if !errors.Is(err, sentinel) {
		t.Fatalf("got error %v, want %s", err, sentinel.Code)
	}
}

func wantCodeName(t testing.TB, err error, code string) {
	t.Helper()
	if kms.Code(err) != code {
		t.Fatalf("got error %v, want %s", err, code)
	}
}
