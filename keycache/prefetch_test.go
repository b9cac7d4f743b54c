package keycache

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/kms"
)

// TestPrefetchThenDecryptIsHit: a prefetched key is one speculative KMS
// call, marked as such; the Decrypt that follows is a hit and counts the
// key as used.
func TestPrefetchThenDecryptIsHit(t *testing.T) {
	e := newEnv(t, Limits{})
	dk := e.newKey("f")
	if known, _ := e.c.KeyState("", dk.CiphertextBlob, ecFor("f")); known {
		t.Fatal("KeyState: known before any call")
	}
	issued, err := e.c.Prefetch(context.Background(), "", dk.CiphertextBlob, ecFor("f"))
	if err != nil || !issued {
		t.Fatalf("Prefetch = %v, %v; want a KMS call", issued, err)
	}
	if known, spec := e.c.KeyState("", dk.CiphertextBlob, ecFor("f")); !known || !spec {
		t.Fatalf("KeyState after Prefetch = %v, %v; want known, speculative", known, spec)
	}
	if issued, _ := e.c.Prefetch(context.Background(), "", dk.CiphertextBlob, ecFor("f")); issued {
		t.Fatal("second Prefetch of a cached key made a KMS call")
	}
	e.decrypt("", dk, "f")
	e.wantKMSDecrypts(1)
	if n := e.kms.speculative.Load(); n != 1 {
		t.Fatalf("%d speculative KMS calls seen by the KMS, want 1", n)
	}
	if known, spec := e.c.KeyState("", dk.CiphertextBlob, ecFor("f")); !known || spec {
		t.Fatalf("KeyState after use = %v, %v; want known, not speculative", known, spec)
	}
	s := e.c.Stats()
	if s.Prefetches != 1 || s.PrefetchUsed != 1 || s.PrefetchUnused != 0 || s.Hits != 1 || s.KMSCallCount(OpDecrypt) != 1 {
		t.Fatalf("stats = %+v", s)
	}
}

// TestPrefetchUnusedExpires: a prefetched key nobody uses leaves after
// PrefetchMaxAge, counted as unused; a used one lives MaxAge from the
// prefetch.
func TestPrefetchUnusedExpires(t *testing.T) {
	e := newEnv(t, Limits{MaxAge: time.Minute, PrefetchMaxAge: 10 * time.Second})
	unused, used := e.newKey("unused"), e.newKey("used")
	for _, f := range []struct {
		dk   kms.DataKey
		name string
	}{{unused, "unused"}, {used, "used"}} {
		if _, err := e.c.Prefetch(context.Background(), "", f.dk.CiphertextBlob, ecFor(f.name)); err != nil {
			t.Fatal(err)
		}
	}
	e.clock.advance(5 * time.Second)
	e.decrypt("", used, "used")
	e.clock.advance(6 * time.Second) // 11s after the prefetch
	if known, _ := e.c.KeyState("", unused.CiphertextBlob, ecFor("unused")); known {
		t.Fatal("an unused prefetched key outlived PrefetchMaxAge")
	}
	e.decrypt("", used, "used") // still cached: MaxAge counts, not PrefetchMaxAge
	e.wantKMSDecrypts(2)
	e.clock.advance(50 * time.Second) // 61s after the prefetch
	e.decrypt("", used, "used")
	e.wantKMSDecrypts(3)
	e.c.mu.Lock()
	e.c.sweepLocked(e.clock.now())
	e.c.mu.Unlock()
	s := e.c.Stats()
	if s.Prefetches != 2 || s.PrefetchUsed != 1 || s.PrefetchUnused != 1 {
		t.Fatalf("stats = %+v", s)
	}
}

// TestDecryptWaitsForPrefetch: a Decrypt that arrives while the prefetch of
// its key is out waits for it rather than asking the KMS again.
func TestDecryptWaitsForPrefetch(t *testing.T) {
	e := newEnv(t, Limits{})
	dk := e.newKey("f")
	gate := make(chan struct{})
	e.kms.setGate(gate)
	done := make(chan error, 1)
	go func() {
		_, err := e.c.Prefetch(context.Background(), "", dk.CiphertextBlob, ecFor("f"))
		done <- err
	}()
	got := make(chan []byte, 1)
	e.waitWaiters(dk, "f", "", 0)
	if known, spec := e.c.KeyState("", dk.CiphertextBlob, ecFor("f")); !known || !spec {
		t.Fatalf("KeyState during the prefetch = %v, %v", known, spec)
	}
	go func() {
		p, _, _ := e.c.Decrypt(context.Background(), "", dk.CiphertextBlob, ecFor("f"))
		got <- p
	}()
	e.waitWaiters(dk, "f", "", 1)
	close(gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if p := <-got; !bytes.Equal(p, dk.Plaintext) {
		t.Fatal("waiter got the wrong key")
	}
	e.wantKMSDecrypts(1)
	if s := e.c.Stats(); s.PrefetchUsed != 1 || s.Coalesced != 1 {
		t.Fatalf("stats = %+v", s)
	}
}

// TestPrefetchErrorNotCached: a refused prefetch caches nothing; the
// reader's own Decrypt asks the KMS and gets the refusal itself.
func TestPrefetchErrorNotCached(t *testing.T) {
	e := newEnv(t, Limits{})
	dk := e.newKey("f")
	e.kms.setErr(kms.Errorf(kms.CodeDisabled, "key disabled"))
	if issued, err := e.c.Prefetch(context.Background(), "", dk.CiphertextBlob, ecFor("f")); !issued || kms.Code(err) != kms.CodeDisabled {
		t.Fatalf("Prefetch = %v, %v; want the KMS's DisabledException", issued, err)
	}
	if _, _, err := e.c.Decrypt(context.Background(), "", dk.CiphertextBlob, ecFor("f")); kms.Code(err) != kms.CodeDisabled {
		t.Fatalf("Decrypt after a refused prefetch: %v", err)
	}
	e.wantKMSDecrypts(2)
}

// TestGraceSkipsUnusedPrefetch: Grace serves expired keys the mount was
// using while the KMS is unreachable, not keys prefetched and never used.
func TestGraceSkipsUnusedPrefetch(t *testing.T) {
	e := newEnv(t, Limits{MaxAge: time.Second, Grace: time.Hour})
	used, unused := e.newKey("used"), e.newKey("unused")
	for _, f := range []struct {
		dk   kms.DataKey
		name string
	}{{used, "used"}, {unused, "unused"}} {
		if _, err := e.c.Prefetch(context.Background(), "", f.dk.CiphertextBlob, ecFor(f.name)); err != nil {
			t.Fatal(err)
		}
	}
	e.decrypt("", used, "used")
	e.clock.advance(2 * time.Second)
	e.kms.setErr(kms.ErrUnavailable)
	if _, _, err := e.c.Decrypt(context.Background(), "", used.CiphertextBlob, ecFor("used")); err != nil {
		t.Fatalf("a used key within grace: %v", err)
	}
	if _, _, err := e.c.Decrypt(context.Background(), "", unused.CiphertextBlob, ecFor("unused")); err == nil {
		t.Fatal("grace served a prefetched key nobody had used")
	}
}
