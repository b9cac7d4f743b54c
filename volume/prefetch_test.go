package volume

import (
	"context"
	"fmt"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/backend/local"
	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/keycache"
	"github.com/kmsfs/kmsfs/kms"
)

// slowKMS answers Decrypt after a delay, as a regional KMS does, and counts
// the calls and the speculative ones.
type slowKMS struct {
	kms.Crypto
	delay            time.Duration
	dec, speculative atomic.Int64
	refuse           atomic.Bool
}

func (s *slowKMS) Decrypt(ctx context.Context, keyID string, blob []byte, ec kms.EncryptionContext) ([]byte, string, error) {
	s.dec.Add(1)
	if kms.IsSpeculative(ctx) {
		s.speculative.Add(1)
	}
	time.Sleep(s.delay)
	if s.refuse.Load() {
		return nil, "", kms.Errorf(kms.CodeDisabled, "key is disabled")
	}
	return s.Crypto.Decrypt(ctx, keyID, blob, ec)
}

// prefetchVolume writes files per directory to a fresh per-object volume
// and reopens it over a key cache in front of a KMS that answers Decrypt
// in delay.
func prefetchVolume(t *testing.T, dirs, files int, delay time.Duration) (*testVol, *slowKMS, *keycache.Cache) {
	t.Helper()
	tv := newTestVolume(t, envelope.ModePerObject)
	ctx := context.Background()
	for d := range dirs {
		if err := tv.be.Mkdir(ctx, fmt.Sprintf("d%02d", d), 0o755, nil); err != nil {
			t.Fatal(err)
		}
		for f := range files {
			h := tv.open(t, fmt.Sprintf("d%02d/f%03d", d, f), syscall.O_RDWR|syscall.O_CREAT)
			if _, err := h.WriteAt(ctx, []byte(fmt.Sprintf("file %d %d", d, f)), 0); err != nil {
				t.Fatal(err)
			}
			h.Close()
		}
	}
	tv.Close()
	be, err := local.New(tv.dir)
	if err != nil {
		t.Fatal(err)
	}
	sk := &slowKMS{Crypto: tv.ks, delay: delay}
	cache, err := keycache.New(sk, keycache.DefaultLimits(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cache.Close() })
	v, err := Open(ctx, unlocked(be), Options{Keys: cache, PrefetchMax: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return &testVol{Volume: v, dir: tv.dir, ks: tv.ks, keyID: tv.keyID}, sk, cache
}

func readFile(t *testing.T, tv *testVol, name string) string {
	t.Helper()
	h := tv.open(t, name, syscall.O_RDONLY)
	defer h.Close()
	return string(readAll(t, h))
}

// waitPrefetchIdle waits until no prefetch is running.
func waitPrefetchIdle(t *testing.T, v *Volume) {
	t.Helper()
	giveUp := time.Now().Add(20 * time.Second)
	for time.Now().Before(giveUp) {
		v.ra.mu.Lock()
		idle := v.ra.running == 0
		listing := false
		for _, s := range v.ra.streams {
			listing = listing || s.listing
		}
		v.ra.mu.Unlock()
		if idle && !listing {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("prefetches still running after 20s")
}

// TestKeyReadAheadHidesKMSLatency: reading a directory's files one after
// the other, in name order, after a remount: the keys of the files to come
// are unwrapped ahead of the reader, each key is asked for once, and most
// reads find their key prefetched.
func TestKeyReadAheadHidesKMSLatency(t *testing.T) {
	const files = 60
	tv, sk, cache := prefetchVolume(t, 1, files, 5*time.Millisecond)
	start := time.Now()
	for f := range files {
		if got, want := readFile(t, tv, fmt.Sprintf("d00/f%03d", f)), fmt.Sprintf("file 0 %d", f); got != want {
			t.Fatalf("f%03d: %q, want %q", f, got, want)
		}
	}
	elapsed := time.Since(start)
	waitPrefetchIdle(t, tv.Volume)
	if n := sk.dec.Load(); n != files {
		t.Errorf("%d KMS Decrypt calls for %d files read, want one each", n, files)
	}
	s := cache.Stats()
	if s.PrefetchUsed < files/2 || s.Prefetches != uint64(sk.speculative.Load()) || s.PrefetchUnused != 0 {
		t.Errorf("key cache stats %+v, speculative calls seen by the KMS %d: want most keys prefetched and used", s, sk.speculative.Load())
	}
	// Serially, 60 Decrypts of 5 ms take 300 ms.
	t.Logf("%d files in %v, %d of %d keys prefetched", files, elapsed, s.PrefetchUsed, files)
}

// TestKeyReadAheadReaddirOrder: a reader that follows readdir order (cp -a,
// tar) is followed in that order.
func TestKeyReadAheadReaddirOrder(t *testing.T) {
	const files = 40
	tv, sk, cache := prefetchVolume(t, 1, files, 5*time.Millisecond)
	ents, err := tv.be.ReadDir(context.Background(), "d00")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		readFile(t, tv, "d00/"+e.Name)
	}
	waitPrefetchIdle(t, tv.Volume)
	if n := sk.dec.Load(); n != files {
		t.Errorf("%d KMS Decrypt calls for %d files read", n, files)
	}
	if s := cache.Stats(); s.PrefetchUsed < files/2 {
		t.Errorf("%d of %d keys prefetched and used in readdir order (stats %+v)", s.PrefetchUsed, files, s)
	}
}

// TestKeyReadAheadBudget: opening the first file of many directories and
// nothing else starts a stream in each, but the keys prefetched for files
// nobody opens stay within the budget, and reading everything again later
// costs nothing more than one call per file.
func TestKeyReadAheadBudget(t *testing.T) {
	const dirs, files = 20, 10
	tv, sk, cache := prefetchVolume(t, dirs, files, time.Millisecond)
	for d := range dirs {
		readFile(t, tv, fmt.Sprintf("d%02d/f000", d))
		waitPrefetchIdle(t, tv.Volume)
	}
	st := tv.ra.stats()
	if st.Issued > keyBudgetSlack+st.Used+st.Needed/10 {
		t.Fatalf("%d speculative Decrypts, %d used, %d keys needed: over the budget", st.Issued, st.Used, st.Needed)
	}
	if got := uint64(sk.speculative.Load()); got != st.Issued || got != cache.Stats().Prefetches {
		t.Fatalf("speculative calls: KMS saw %d, read-ahead counted %d, cache %d", got, st.Issued, cache.Stats().Prefetches)
	}
	if int(sk.dec.Load()) > dirs+keyBudgetSlack+dirs/10 {
		t.Fatalf("%d Decrypts for %d files opened", sk.dec.Load(), dirs)
	}
	// A key already cached is never asked for again, speculatively or not.
	for d := range dirs {
		for f := range files {
			readFile(t, tv, fmt.Sprintf("d%02d/f%03d", d, f))
		}
	}
	waitPrefetchIdle(t, tv.Volume)
	if n := sk.dec.Load(); n > dirs*files+dirs*files/10+keyBudgetSlack {
		t.Fatalf("%d Decrypts for %d files", n, dirs*files)
	}
	// The budget grew back with the files read: reading on in order is
	// prefetched again.
	if st := tv.ra.stats(); st.Used == 0 {
		t.Fatalf("no prefetched key used after the budget was spent once: %+v", st)
	}
}

// TestKeyReadAheadRefusedCachesNothing: a prefetch the KMS refuses (key
// disabled) leaves nothing cached, so the reader's own open asks the KMS
// and is refused too: prefetching makes no file readable that would not be.
func TestKeyReadAheadRefusedCachesNothing(t *testing.T) {
	tv, sk, cache := prefetchVolume(t, 1, 10, time.Millisecond)
	readFile(t, tv, "d00/f000")
	waitPrefetchIdle(t, tv.Volume)
	sk.refuse.Store(true)
	cache.Purge() // as if MaxAge had passed
	h := tv.open(t, "d00/f001", syscall.O_RDONLY)
	defer h.Close()
	if _, err := h.ReadAt(context.Background(), make([]byte, 10), 0); err == nil {
		t.Fatal("read with the key disabled succeeded")
	}
	waitPrefetchIdle(t, tv.Volume)
	h2 := tv.open(t, "d00/f002", syscall.O_RDONLY)
	defer h2.Close()
	if _, err := h2.ReadAt(context.Background(), make([]byte, 10), 0); err == nil {
		t.Fatal("read of a file prefetched while the key was disabled succeeded")
	}
}
