package keycache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/kms"
)

// env is a cache over a fake KMS and a fake clock.
type env struct {
	t     *testing.T
	kms   *fakeKMS
	clock *fakeClock
	c     *Cache
}

func newEnv(t *testing.T, lim Limits) *env {
	t.Helper()
	f := newFakeKMS()
	clk := newFakeClock()
	c, err := New(f, lim, clk.now)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &env{t: t, kms: f, clock: clk, c: c}
}

func ecFor(file string) kms.EncryptionContext {
	return kms.EncryptionContext{"kmsfs:volume": "vol-1", "kmsfs:file": file}
}

// newKey makes a data key in the fake KMS without going through the cache,
// as if the file had been written by another mount.
func (e *env) newKey(file string) kms.DataKey {
	e.t.Helper()
	dk, err := e.kms.GenerateDataKey(context.Background(), testARN, 32, ecFor(file))
	if err != nil {
		e.t.Fatal(err)
	}
	return dk
}

func (e *env) decrypt(keyID string, dk kms.DataKey, file string) []byte {
	e.t.Helper()
	p, arn, err := e.c.Decrypt(context.Background(), keyID, dk.CiphertextBlob, ecFor(file))
	if err != nil {
		e.t.Fatalf("Decrypt %s: %v", file, err)
	}
	if !bytes.Equal(p, dk.Plaintext) {
		e.t.Fatalf("Decrypt %s: wrong plaintext", file)
	}
	if arn != testARN {
		e.t.Fatalf("Decrypt %s: key ARN %q, want %q", file, arn, testARN)
	}
	return p
}

// internal returns the cache's own entry for the key, or nil.
func (e *env) internal(dk kms.DataKey, file string) *entry {
	e.c.mu.Lock()
	defer e.c.mu.Unlock()
	return e.c.entries[keyFor(dk.CiphertextBlob, ecFor(file))]
}

func (e *env) wantKMSDecrypts(n int64) {
	e.t.Helper()
	if got := e.kms.decrypts.Load(); got != n {
		e.t.Fatalf("KMS Decrypt calls = %d, want %d", got, n)
	}
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return len(b) > 0
}

func TestHitAndMiss(t *testing.T) {
	e := newEnv(t, Limits{})
	dk := e.newKey("f1")

	e.decrypt("", dk, "f1")
	e.wantKMSDecrypts(1)
	e.decrypt("", dk, "f1")
	e.decrypt(testARN, dk, "f1")
	e.wantKMSDecrypts(1)

	// The encryption context is part of the cache key: the same blob under
	// another context is a miss, and the KMS refuses it.
	_, _, err := e.c.Decrypt(context.Background(), "", dk.CiphertextBlob, ecFor("f2"))
	if !errors.Is(err, kms.ErrInvalidCiphertext) {
		t.Fatalf("Decrypt under other context: err = %v, want InvalidCiphertext", err)
	}
	e.wantKMSDecrypts(2)

	s := e.c.Stats()
	if s.Hits != 2 || s.Misses != 2 || s.Entries != 1 {
		t.Fatalf("stats = %+v, want 2 hits, 2 misses, 1 entry", s)
	}
	if got := s.KMSCalls[OpDecrypt][ResultOK]; got != 1 {
		t.Errorf("Decrypt ok calls = %d, want 1", got)
	}
	if got := s.KMSCalls[OpDecrypt][kms.CodeInvalidCiphertext]; got != 1 {
		t.Errorf("Decrypt InvalidCiphertext calls = %d, want 1", got)
	}
	if got := s.KMSCallCount(OpDecrypt); got != 2 {
		t.Errorf("KMSCallCount(Decrypt) = %d, want 2", got)
	}
	if got := s.HitRate(); got != 0.5 {
		t.Errorf("HitRate = %v, want 0.5", got)
	}
}

func TestGenerateDataKeyThenDecryptIsHit(t *testing.T) {
	e := newEnv(t, Limits{})
	ec := ecFor("new")
	dk, err := e.c.GenerateDataKey(context.Background(), testAlias, 32, ec)
	if err != nil {
		t.Fatal(err)
	}
	want := clone(dk.Plaintext)
	dk.Zero() // the caller's copy: zeroing it must not touch the cache's
	dk.Plaintext = want

	for _, id := range []string{"", testARN, testAlias} {
		e.decrypt(id, dk, "new")
	}
	e.wantKMSDecrypts(0)
	s := e.c.Stats()
	if s.Hits != 3 || s.Misses != 0 {
		t.Fatalf("stats = %+v, want 3 hits", s)
	}
	if got := s.KMSCalls[OpGenerateDataKey][ResultOK]; got != 1 {
		t.Fatalf("GenerateDataKey ok = %d, want 1", got)
	}
	if ent := e.internal(dk, "new"); ent.uses != 3 {
		t.Fatalf("uses = %d, want 3 (GenerateDataKey is not a use)", ent.uses)
	}

	_, err = e.c.GenerateDataKey(context.Background(), "alias/missing", 32, ec)
	if !errors.Is(err, kms.ErrNotFound) || !strings.Contains(err.Error(), "alias/missing") {
		t.Fatalf("GenerateDataKey error = %v, want wrapped NotFound naming the key", err)
	}
	if got := e.c.Stats().KMSCalls[OpGenerateDataKey][kms.CodeNotFound]; got != 1 {
		t.Fatalf("GenerateDataKey NotFound = %d, want 1", got)
	}
}

// A cached entry must not let a caller skip the key ID check the KMS makes.
func TestKeyIDIsCheckedByKMS(t *testing.T) {
	e := newEnv(t, Limits{})
	dk := e.newKey("f")
	e.c.Put(dk, ecFor("f"))

	_, _, err := e.c.Decrypt(context.Background(), "arn:aws:kms:us-east-1:111122223333:key/other", dk.CiphertextBlob, ecFor("f"))
	if !errors.Is(err, kms.ErrIncorrectKey) {
		t.Fatalf("Decrypt under another key: err = %v, want IncorrectKey", err)
	}
	e.wantKMSDecrypts(1)

	// The alias was never seen: the KMS is asked once, then it is known.
	e.decrypt(testAlias, dk, "f")
	e.wantKMSDecrypts(2)
	e.decrypt(testAlias, dk, "f")
	e.decrypt(testARN, dk, "f")
	e.wantKMSDecrypts(2)
	if s := e.c.Stats(); s.Entries != 1 || s.Hits != 2 || s.Misses != 2 {
		t.Fatalf("stats = %+v, want 1 entry, 2 hits, 2 misses", s)
	}
}

func TestMaxAge(t *testing.T) {
	e := newEnv(t, Limits{MaxAge: time.Minute})
	dk := e.newKey("f")
	e.decrypt("", dk, "f")
	e.clock.advance(time.Minute - time.Nanosecond)
	e.decrypt("", dk, "f") // still fresh: age is measured from insertion
	e.wantKMSDecrypts(1)
	e.clock.advance(time.Nanosecond)
	e.decrypt("", dk, "f")
	e.wantKMSDecrypts(2)
	s := e.c.Stats()
	if s.Evictions.Age != 1 || s.Entries != 1 || s.Hits != 1 || s.Misses != 2 {
		t.Fatalf("stats = %+v, want 1 age eviction, 1 entry, 1 hit, 2 misses", s)
	}
}

func TestMaxUses(t *testing.T) {
	e := newEnv(t, Limits{MaxUses: 3})
	dk := e.newKey("f")
	e.c.Put(dk, ecFor("f"))
	for i := 0; i < 3; i++ {
		e.decrypt("", dk, "f")
	}
	e.wantKMSDecrypts(0)
	if s := e.c.Stats(); s.Evictions.Uses != 1 || s.Entries != 0 {
		t.Fatalf("after 3 uses: stats = %+v, want evicted by uses", s)
	}
	// A miss fills the entry and counts as its first use.
	e.decrypt("", dk, "f")
	e.decrypt("", dk, "f")
	e.wantKMSDecrypts(1)
	if ent := e.internal(dk, "f"); ent == nil || ent.uses != 2 {
		t.Fatalf("entry after miss + hit: %+v, want 2 uses", ent)
	}
	e.decrypt("", dk, "f")
	e.decrypt("", dk, "f")
	e.wantKMSDecrypts(2)
	if s := e.c.Stats(); s.Evictions.Uses != 2 {
		t.Fatalf("stats = %+v, want 2 use evictions", s)
	}
}

func TestMaxUsesOneNeverKeeps(t *testing.T) {
	e := newEnv(t, Limits{MaxUses: 1})
	dk := e.newKey("f")
	e.decrypt("", dk, "f")
	e.decrypt("", dk, "f")
	e.wantKMSDecrypts(2)
	if s := e.c.Stats(); s.Entries != 0 || s.Evictions.Uses != 2 {
		t.Fatalf("stats = %+v", s)
	}
}

func TestMaxBytes(t *testing.T) {
	e := newEnv(t, Limits{MaxBytes: 100})
	dk := e.newKey("f")
	ec := ecFor("f")
	e.c.ReportBytes(dk.CiphertextBlob, ec, 1000) // not cached: no effect
	e.c.Put(dk, ec)
	e.c.ReportBytes(dk.CiphertextBlob, ec, 60)
	e.c.ReportBytes(dk.CiphertextBlob, ec, 40) // exactly the limit: not exceeded
	e.decrypt("", dk, "f")
	e.wantKMSDecrypts(0)
	e.c.ReportBytes(dk.CiphertextBlob, ec, 1)
	if s := e.c.Stats(); s.Evictions.Bytes != 1 || s.Entries != 0 {
		t.Fatalf("stats = %+v, want evicted by bytes", s)
	}
	e.decrypt("", dk, "f")
	e.wantKMSDecrypts(1)

	// The byte count saturates instead of wrapping around to a small number.
	e2 := newEnv(t, Limits{MaxBytes: math.MaxUint64})
	e2.c.Put(dk, ec)
	e2.c.ReportBytes(dk.CiphertextBlob, ec, math.MaxUint64-1)
	e2.c.ReportBytes(dk.CiphertextBlob, ec, 5)
	if ent := e2.internal(dk, "f"); ent == nil || ent.bytes != math.MaxUint64 {
		t.Fatalf("saturated entry = %+v", ent)
	}
}

func TestCapacityEvictsLeastRecentlyUsed(t *testing.T) {
	e := newEnv(t, Limits{Capacity: 3})
	keys := map[string]kms.DataKey{}
	for _, f := range []string{"a", "b", "c"} {
		keys[f] = e.newKey(f)
		e.c.Put(keys[f], ecFor(f))
	}
	e.decrypt("", keys["a"], "a") // a is now the most recently used; b the least
	keys["d"] = e.newKey("d")
	e.decrypt("", keys["d"], "d")
	if e.internal(keys["b"], "b") != nil {
		t.Fatal("b should have been evicted")
	}
	for _, f := range []string{"a", "c", "d"} {
		if e.internal(keys[f], f) == nil {
			t.Fatalf("%s should still be cached", f)
		}
	}
	e.c.Put(keys["b"], ecFor("b")) // now c is the least recently used
	if e.internal(keys["c"], "c") != nil {
		t.Fatal("c should have been evicted")
	}
	if s := e.c.Stats(); s.Evictions.Capacity != 2 || s.Entries != 3 {
		t.Fatalf("stats = %+v, want 2 capacity evictions, 3 entries", s)
	}
}

// Every way out of the cache zeroes the cache's copy of the key and leaves
// the copies callers hold alone.
func TestEvictionZeroes(t *testing.T) {
	type trigger func(e *env, dk kms.DataKey)
	cases := map[string]struct {
		lim    Limits
		evict  trigger
		reason func(Evictions) uint64
	}{
		"age": {Limits{MaxAge: time.Minute}, func(e *env, dk kms.DataKey) {
			e.clock.advance(time.Minute)
			other := e.newKey("other")
			e.c.Put(other, ecFor("other")) // any operation sweeps
		}, func(v Evictions) uint64 { return v.Age }},
		"uses": {Limits{MaxUses: 2}, func(e *env, dk kms.DataKey) {
			e.decrypt("", dk, "f")
		}, func(v Evictions) uint64 { return v.Uses }},
		"bytes": {Limits{MaxBytes: 10}, func(e *env, dk kms.DataKey) {
			e.c.ReportBytes(dk.CiphertextBlob, ecFor("f"), 11)
		}, func(v Evictions) uint64 { return v.Bytes }},
		"capacity": {Limits{Capacity: 1}, func(e *env, dk kms.DataKey) {
			e.c.Put(e.newKey("other"), ecFor("other"))
		}, func(v Evictions) uint64 { return v.Capacity }},
		"explicit": {Limits{}, func(e *env, dk kms.DataKey) {
			if !e.c.Evict(dk.CiphertextBlob, ecFor("f")) {
				e.t.Fatal("Evict: not cached")
			}
		}, func(v Evictions) uint64 { return v.Explicit }},
		"purge": {Limits{}, func(e *env, dk kms.DataKey) {
			e.c.Purge()
		}, func(v Evictions) uint64 { return v.Explicit }},
		"close": {Limits{}, func(e *env, dk kms.DataKey) {
			e.c.Close()
		}, func(v Evictions) uint64 { return v.Explicit }},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, tc.lim)
			dk := e.newKey("f")
			mine := e.decrypt("", dk, "f")
			ent := e.internal(dk, "f")
			if ent == nil {
				t.Fatal("not cached")
			}
			cached := ent.plain
			if &cached[0] == &mine[0] {
				t.Fatal("Decrypt returned the cache's own slice")
			}
			tc.evict(e, dk)
			if e.internal(dk, "f") != nil {
				t.Fatal("still cached")
			}
			if !allZero(cached) {
				t.Fatal("evicted key not zeroed")
			}
			if !bytes.Equal(mine, dk.Plaintext) {
				t.Fatal("caller's copy changed by eviction")
			}
			if got := tc.reason(e.c.Stats().Evictions); got != 1 {
				t.Fatalf("eviction counted %d times for its reason, want 1", got)
			}
		})
	}
}

func TestCallerCopiesAreIndependent(t *testing.T) {
	e := newEnv(t, Limits{})
	dk := e.newKey("f")
	p1 := e.decrypt("", dk, "f") // miss: the KMS's slice
	p2 := e.decrypt("", dk, "f") // hit
	kms.Zero(p1)
	p3 := e.decrypt("", dk, "f")
	kms.Zero(p2)
	p4 := e.decrypt("", dk, "f")
	if !bytes.Equal(p3, dk.Plaintext) || !bytes.Equal(p4, dk.Plaintext) {
		t.Fatal("zeroing a caller's copy changed the cache")
	}

	// Put copies too.
	dk2 := e.newKey("g")
	put := kms.DataKey{KeyID: dk2.KeyID, Plaintext: clone(dk2.Plaintext), CiphertextBlob: dk2.CiphertextBlob}
	e.c.Put(put, ecFor("g"))
	put.Zero()
	e.decrypt("", dk2, "g")
	e.wantKMSDecrypts(1)

	// A key with no plaintext (as from GenerateDataKeyWithoutPlaintext)
	// is not cached.
	dk3 := e.newKey("h")
	e.c.Put(kms.DataKey{KeyID: testARN, CiphertextBlob: dk3.CiphertextBlob}, ecFor("h"))
	if e.internal(dk3, "h") != nil {
		t.Fatal("Put cached an empty key")
	}
}

func TestErrorsAreNotCached(t *testing.T) {
	e := newEnv(t, Limits{})
	dk := e.newKey("f")
	e.kms.setErr(kms.Errorf(kms.CodeDisabled, "key is disabled"))
	_, _, err := e.c.Decrypt(context.Background(), testARN, dk.CiphertextBlob, ecFor("f"))
	if !errors.Is(err, kms.ErrDisabled) {
		t.Fatalf("err = %v, want Disabled", err)
	}
	if !strings.HasPrefix(err.Error(), "keycache: Decrypt data key under \""+testARN) {
		t.Fatalf("error lacks context: %q", err)
	}
	_, _, err = e.c.Decrypt(context.Background(), testARN, dk.CiphertextBlob, ecFor("f"))
	if !errors.Is(err, kms.ErrDisabled) {
		t.Fatalf("second call: err = %v, want Disabled", err)
	}
	e.wantKMSDecrypts(2)
	e.kms.setErr(nil)
	e.decrypt(testARN, dk, "f")
	e.wantKMSDecrypts(3)
	s := e.c.Stats()
	if s.KMSCalls[OpDecrypt][kms.CodeDisabled] != 2 || s.KMSCalls[OpDecrypt][ResultOK] != 1 || s.Entries != 1 {
		t.Fatalf("stats = %+v", s)
	}
}

// waitWaiters blocks until n callers wait on the in-flight Decrypt of dk. It
// gives up after a generous while so that a cache that stops coalescing
// misses fails the test instead of hanging it.
func (e *env) waitWaiters(dk kms.DataKey, file, keyID string, n int) *flight {
	e.t.Helper()
	fk := flightKey{key: keyFor(dk.CiphertextBlob, ecFor(file)), keyID: keyID}
	giveUp := time.Now().Add(10 * time.Second)
	for {
		if time.Now().After(giveUp) {
			e.t.Fatalf("never saw %d callers waiting on one KMS Decrypt", n)
		}
		e.c.mu.Lock()
		f := e.c.flights[fk]
		got := -1
		if f != nil {
			got = f.waiters
		}
		e.c.mu.Unlock()
		if got == n {
			return f
		}
		time.Sleep(100 * time.Microsecond)
	}
}

func TestConcurrentMissesMakeOneKMSCall(t *testing.T) {
	const callers = 100
	e := newEnv(t, Limits{})
	dk := e.newKey("f")
	gate := make(chan struct{})
	e.kms.setGate(gate)

	out := make([][]byte, callers)
	errs := make([]error, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i], _, errs[i] = e.c.Decrypt(context.Background(), "", dk.CiphertextBlob, ecFor("f"))
		}()
	}
	f := e.waitWaiters(dk, "f", "", callers-1)
	close(gate)
	wg.Wait()

	e.wantKMSDecrypts(1)
	seen := map[*byte]bool{}
	for i := range callers {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		if !bytes.Equal(out[i], dk.Plaintext) {
			t.Fatalf("caller %d: wrong key", i)
		}
		if seen[&out[i][0]] {
			t.Fatalf("caller %d shares its slice with another caller", i)
		}
		seen[&out[i][0]] = true
	}
	// Each caller can zero its own copy without affecting the others.
	kms.Zero(out[0])
	if !bytes.Equal(out[1], dk.Plaintext) {
		t.Fatal("zeroing one caller's copy changed another's")
	}
	if !allZero(f.plain) || f.waiters != 0 {
		t.Fatalf("flight's copy not zeroed after the last waiter (waiters %d)", f.waiters)
	}
	s := e.c.Stats()
	if s.Misses != callers || s.Coalesced != callers-1 || s.Hits != 0 || s.KMSCallCount(OpDecrypt) != 1 {
		t.Fatalf("stats = %+v", s)
	}
	if ent := e.internal(dk, "f"); ent == nil || ent.uses != callers {
		t.Fatalf("entry = %+v, want %d uses", ent, callers)
	}
}

func TestConcurrentErrorIsSharedNotCached(t *testing.T) {
	e := newEnv(t, Limits{})
	dk := e.newKey("f")
	gate := make(chan struct{})
	e.kms.setGate(gate)
	e.kms.setErr(kms.Errorf(kms.CodeAccessDenied, "no"))
	var wg sync.WaitGroup
	errs := make([]error, 10)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, errs[i] = e.c.Decrypt(context.Background(), "", dk.CiphertextBlob, ecFor("f"))
		}()
	}
	e.waitWaiters(dk, "f", "", len(errs)-1)
	close(gate)
	wg.Wait()
	for i, err := range errs {
		if !errors.Is(err, kms.ErrAccessDenied) {
			t.Fatalf("caller %d: err = %v", i, err)
		}
	}
	e.wantKMSDecrypts(1)
	e.kms.setErr(nil)
	e.decrypt("", dk, "f")
	e.wantKMSDecrypts(2)
}

// When the caller that made the KMS call gives up, the callers waiting on it
// ask again rather than fail with someone else's cancellation.
func TestLeaderCanceledWaitersRetry(t *testing.T) {
	e := newEnv(t, Limits{})
	dk := e.newKey("f")
	gate := make(chan struct{})
	e.kms.setGate(gate)

	leaderCtx, cancel := context.WithCancel(context.Background())
	leaderErr := make(chan error, 1)
	go func() {
		_, _, err := e.c.Decrypt(leaderCtx, "", dk.CiphertextBlob, ecFor("f"))
		leaderErr <- err
	}()
	e.waitWaiters(dk, "f", "", 0)
	waiterOut := make(chan []byte, 1)
	go func() {
		p, _, err := e.c.Decrypt(context.Background(), "", dk.CiphertextBlob, ecFor("f"))
		if err != nil {
			t.Errorf("waiter: %v", err)
		}
		waiterOut <- p
	}()
	e.waitWaiters(dk, "f", "", 1)
	cancel()
	if err := <-leaderErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("leader err = %v, want Canceled", err)
	}
	close(gate)
	if p := <-waiterOut; !bytes.Equal(p, dk.Plaintext) {
		t.Fatal("waiter got the wrong key")
	}
	e.wantKMSDecrypts(2)
	s := e.c.Stats()
	if s.KMSCalls[OpDecrypt][ResultCanceled] != 1 || s.KMSCalls[OpDecrypt][ResultOK] != 1 || s.Misses != 2 {
		t.Fatalf("stats = %+v", s)
	}
}

func TestWaiterCanceledLeaves(t *testing.T) {
	e := newEnv(t, Limits{})
	dk := e.newKey("f")
	gate := make(chan struct{})
	e.kms.setGate(gate)
	leaderOut := make(chan []byte, 1)
	go func() {
		p, _, err := e.c.Decrypt(context.Background(), "", dk.CiphertextBlob, ecFor("f"))
		if err != nil {
			t.Errorf("leader: %v", err)
		}
		leaderOut <- p
	}()
	e.waitWaiters(dk, "f", "", 0)
	ctx, cancel := context.WithCancel(context.Background())
	waiterErr := make(chan error, 1)
	go func() {
		_, _, err := e.c.Decrypt(ctx, "", dk.CiphertextBlob, ecFor("f"))
		waiterErr <- err
	}()
	f := e.waitWaiters(dk, "f", "", 1)
	cancel()
	if err := <-waiterErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("waiter err = %v, want Canceled", err)
	}
	close(gate)
	if p := <-leaderOut; !bytes.Equal(p, dk.Plaintext) {
		t.Fatal("leader got the wrong key")
	}
	if f.plain != nil {
		t.Fatal("a copy was made for a waiter that had left")
	}
	e.wantKMSDecrypts(1)
}

func TestPurgeDuringFlightDoesNotCache(t *testing.T) {
	e := newEnv(t, Limits{})
	dk := e.newKey("f")
	gate := make(chan struct{})
	e.kms.setGate(gate)
	done := make(chan struct{})
	go func() {
		defer close(done)
		p, _, err := e.c.Decrypt(context.Background(), "", dk.CiphertextBlob, ecFor("f"))
		if err != nil || !bytes.Equal(p, dk.Plaintext) {
			t.Errorf("Decrypt across Purge: %v", err)
		}
	}()
	e.waitWaiters(dk, "f", "", 0)
	e.c.Purge()
	close(gate)
	<-done
	if e.internal(dk, "f") != nil || e.c.Stats().Entries != 0 {
		t.Fatal("a key fetched before Purge was cached after it")
	}
}

func TestClose(t *testing.T) {
	e := newEnv(t, Limits{})
	dk := e.newKey("f")
	e.decrypt("", dk, "f")
	if err := e.c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.c.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	ctx := context.Background()
	if _, _, err := e.c.Decrypt(ctx, "", dk.CiphertextBlob, ecFor("f")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Decrypt after Close: %v", err)
	}
	if _, err := e.c.GenerateDataKey(ctx, testARN, 32, ecFor("g")); !errors.Is(err, ErrClosed) {
		t.Fatalf("GenerateDataKey after Close: %v", err)
	}
	e.c.Put(dk, ecFor("f"))
	if s := e.c.Stats(); s.Entries != 0 || s.Evictions.Explicit != 1 {
		t.Fatalf("stats after Close = %+v", s)
	}
}

func TestGrace(t *testing.T) {
	const maxAge, grace = 5 * time.Minute, time.Minute
	deadline := fmt.Errorf("rpc: %w", context.DeadlineExceeded)
	cases := []struct {
		name   string
		grace  time.Duration
		after  time.Duration // past expiry
		kmsErr error
		served bool
	}{
		{"unavailable", grace, 30 * time.Second, kms.Errorf(kms.CodeUnavailable, "dial tcp: connection refused"), true},
		{"dependency timeout", grace, 30 * time.Second, kms.Errorf(kms.CodeDependencyTimeout, ""), true},
		{"deadline", grace, 30 * time.Second, deadline, true},
		{"net timeout", grace, 30 * time.Second, fmt.Errorf("post: %w", timeoutErr{}), true},
		{"at expiry", grace, 0, kms.ErrUnavailable, true},
		{"past grace", grace, grace, kms.ErrUnavailable, false},
		{"grace off", 0, 30 * time.Second, kms.ErrUnavailable, false},
		{"disabled", grace, 30 * time.Second, kms.Errorf(kms.CodeDisabled, ""), false},
		{"throttled", grace, 30 * time.Second, kms.Errorf(kms.CodeThrottling, ""), false},
		{"access denied", grace, 30 * time.Second, kms.Errorf(kms.CodeAccessDenied, ""), false},
		{"canceled", grace, 30 * time.Second, context.Canceled, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, Limits{MaxAge: maxAge, Grace: tc.grace})
			dk := e.newKey("f")
			e.decrypt("", dk, "f")
			e.clock.advance(maxAge + tc.after)
			e.kms.setErr(tc.kmsErr)
			p, _, err := e.c.Decrypt(context.Background(), "", dk.CiphertextBlob, ecFor("f"))
			e.wantKMSDecrypts(2) // an expired entry is never served without asking
			s := e.c.Stats()
			if tc.served {
				if err != nil || !bytes.Equal(p, dk.Plaintext) {
					t.Fatalf("not served in grace: %v", err)
				}
				if s.GraceHits != 1 || s.Hits != 0 || s.Misses != 2 || s.Entries != 1 {
					t.Fatalf("stats = %+v", s)
				}
				return
			}
			if !errors.Is(err, tc.kmsErr) {
				t.Fatalf("err = %v, want %v", err, tc.kmsErr)
			}
			if s.GraceHits != 0 {
				t.Fatalf("stats = %+v, want no grace hit", s)
			}
		})
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string { return "i/o timeout" }
func (timeoutErr) Timeout() bool { return true }

func TestGraceEntryRefreshedAndSwept(t *testing.T) {
	e := newEnv(t, Limits{MaxAge: time.Minute, Grace: time.Minute})
	dk := e.newKey("f")
	e.decrypt("", dk, "f")
	old := e.internal(dk, "f").plain
	e.clock.advance(90 * time.Second)

	// The KMS answers: the expired entry is replaced by a fresh one.
	e.decrypt("", dk, "f")
	if !allZero(old) {
		t.Fatal("replaced entry not zeroed")
	}
	e.clock.advance(59 * time.Second)
	e.decrypt("", dk, "f")
	e.wantKMSDecrypts(2)
	if s := e.c.Stats(); s.Evictions.Age != 1 || s.Hits != 1 || s.GraceHits != 0 {
		t.Fatalf("stats = %+v", s)
	}

	// Idle past MaxAge + Grace: the sweep zeroes the entry even though
	// nobody asks for it again.
	cur := e.internal(dk, "f").plain
	e.clock.advance(2 * time.Minute)
	e.c.mu.Lock()
	e.c.sweepLocked(e.c.now())
	e.c.mu.Unlock()
	if !allZero(cur) || e.c.Stats().Entries != 0 {
		t.Fatal("expired entry survived the sweep")
	}
}

// Grace only covers key IDs the KMS has already accepted for the blob.
func TestGraceKeepsKeyIDCheck(t *testing.T) {
	e := newEnv(t, Limits{MaxAge: time.Minute, Grace: time.Minute})
	dk := e.newKey("f")
	e.decrypt(testARN, dk, "f")
	e.clock.advance(time.Minute)
	e.kms.setErr(kms.ErrUnavailable)
	if _, _, err := e.c.Decrypt(context.Background(), testAlias, dk.CiphertextBlob, ecFor("f")); !errors.Is(err, kms.ErrUnavailable) {
		t.Fatalf("grace served an unchecked key ID: err = %v", err)
	}
	e.decrypt(testARN, dk, "f")
	if s := e.c.Stats(); s.GraceHits != 1 {
		t.Fatalf("stats = %+v", s)
	}
}

func TestPassThroughOperationsAreCounted(t *testing.T) {
	e := newEnv(t, Limits{})
	ctx := context.Background()
	ec := ecFor("f")
	blob, arn, err := e.c.Encrypt(ctx, testARN, []byte("secret"), ec)
	if err != nil || arn != testARN {
		t.Fatal(err)
	}
	if _, _, _, err := e.c.ReEncrypt(ctx, blob, ec, testARN, ec); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.c.GenerateDataKeyWithoutPlaintext(ctx, testARN, 32, ec); err != nil {
		t.Fatal(err)
	}
	e.kms.setErr(kms.Errorf(kms.CodeThrottling, "slow down"))
	if _, _, err := e.c.Encrypt(ctx, testARN, []byte("x"), ec); !errors.Is(err, kms.ErrThrottling) || !strings.HasPrefix(err.Error(), "keycache: Encrypt") {
		t.Fatalf("Encrypt error = %v", err)
	}
	e.kms.setErr(errors.New("something odd"))
	if _, _, err := e.c.GenerateDataKeyWithoutPlaintext(ctx, testARN, 32, ec); err == nil {
		t.Fatal("want error")
	}
	s := e.c.Stats()
	want := map[string]map[string]uint64{
		OpEncrypt:                         {ResultOK: 1, kms.CodeThrottling: 1},
		OpReEncrypt:                       {ResultOK: 1},
		OpGenerateDataKeyWithoutPlaintext: {ResultOK: 1, ResultOther: 1},
	}
	if fmt.Sprint(s.KMSCalls) != fmt.Sprint(want) {
		t.Fatalf("KMSCalls = %v, want %v", s.KMSCalls, want)
	}
	if s.Entries != 0 {
		t.Fatal("pass-through operations cached something")
	}
}

func TestLimits(t *testing.T) {
	e := newEnv(t, Limits{})
	if got := e.c.Limits(); got != DefaultLimits() {
		t.Fatalf("Limits{} = %+v, want defaults %+v", got, DefaultLimits())
	}
	e2 := newEnv(t, Limits{MaxAge: time.Second, Grace: time.Second})
	if got := e2.c.Limits(); got.MaxAge != time.Second || got.Grace != time.Second || got.Capacity != 10000 {
		t.Fatalf("limits = %+v", got)
	}
	for _, bad := range []Limits{{MaxAge: -1}, {Grace: -1}, {Capacity: -1}} {
		if _, err := New(newFakeKMS(), bad, nil); err == nil {
			t.Fatalf("New(%+v) accepted", bad)
		}
	}
	if _, err := New(nil, Limits{}, nil); err == nil {
		t.Fatal("New(nil KMS) accepted")
	}
	if d := janitorInterval(DefaultLimits()); d != 30*time.Second {
		t.Fatalf("janitor interval for defaults = %v", d)
	}
	if d := janitorInterval(Limits{MaxAge: 2 * time.Second}); d != time.Second {
		t.Fatalf("janitor interval for 2s = %v", d)
	}
}

func TestResultIndex(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{nil, ResultOK},
		{fmt.Errorf("x: %w", kms.ErrDisabled), kms.CodeDisabled},
		{kms.Errorf(kms.CodeUnavailable, ""), kms.CodeUnavailable},
		{&kms.Error{Code: "LimitExceededException"}, ResultOther},
		{context.Canceled, ResultCanceled},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), ResultDeadlineExceeded},
		{errors.New("eof"), ResultOther},
	} {
		if got := results[resultIndex(tc.err)]; got != tc.want {
			t.Errorf("result(%v) = %s, want %s", tc.err, got, tc.want)
		}
	}
}
