package volume

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/backend"
	"github.com/kmsfs/kmsfs/backend/local"
	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/keycache"
	"github.com/kmsfs/kmsfs/kms"
	"github.com/kmsfs/kmsfs/kms/keystore"
)

// countingKMS counts calls so tests can assert how many reach the KMS.
type countingKMS struct {
	kms.Crypto
	gen, dec int64 // updated atomically: the prefetch pool calls from goroutines
}

func (c *countingKMS) GenerateDataKey(ctx context.Context, keyID string, n int, ec kms.EncryptionContext) (kms.DataKey, error) {
	atomic.AddInt64(&c.gen, 1)
	return c.Crypto.GenerateDataKey(ctx, keyID, n, ec)
}

func (c *countingKMS) Decrypt(ctx context.Context, keyID string, blob []byte, ec kms.EncryptionContext) ([]byte, string, error) {
	atomic.AddInt64(&c.dec, 1)
	return c.Crypto.Decrypt(ctx, keyID, blob, ec)
}

type testVol struct {
	*Volume
	dir   string
	ks    *keystore.Keystore
	kms   *countingKMS
	keyID string
}

func newTestVolume(t testing.TB, mode envelope.Mode) *testVol {
	return newTestVolumeOpts(t, mode, Options{PrefetchMax: -1})
}

func newTestVolumeOpts(t testing.TB, mode envelope.Mode, opt Options) *testVol {
	t.Helper()
	return newTestVolumeInit(t, InitOptions{Mode: mode}, opt)
}

// newTestVolumeInit makes a volume (init's KeyID is filled in) on a fresh
// local backend and embedded keystore, and opens it with opt.
func newTestVolumeInit(t testing.TB, initOpt InitOptions, opt Options) *testVol {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	ks, err := keystore.Open(filepath.Join(dir, "ks"), keystore.Options{Warn: func(string) {}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ks.Close() })
	md, err := ks.CreateKey(ctx, kms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	vault := filepath.Join(dir, "vault")
	os.Mkdir(vault, 0o700)
	be, err := local.New(vault)
	if err != nil {
		t.Fatal(err)
	}
	initOpt.KeyID = md.ARN
	if _, err := Init(ctx, be, ks, initOpt); err != nil {
		t.Fatal(err)
	}
	ck := &countingKMS{Crypto: ks}
	cache, err := keycache.New(ck, keycache.DefaultLimits(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cache.Close() })
	opt.Keys = cache
	v, err := Open(ctx, be, opt)
	if err != nil {
		t.Fatal(err)
	}
	// Before the key cache closes: files written out in the background
	// (writeout.go) need it.
	t.Cleanup(v.outq.wait)
	return &testVol{Volume: v, dir: vault, ks: ks, kms: ck, keyID: md.ARN}
}

func (tv *testVol) open(t testing.TB, name string, flags int) *Handle {
	t.Helper()
	h, err := tv.OpenFile(context.Background(), name, flags, 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func readAll(t *testing.T, h *Handle) []byte {
	t.Helper()
	size, err := h.Size()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, size+10)
	n, err := h.ReadAt(context.Background(), buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	return buf[:n]
}

// TestRandomOpsAgainstModel drives one file with random writes, truncates
// and reads (block-straddling, past-the-end, appends) and checks every read
// and the final content against an in-memory model.
func TestRandomOpsAgainstModel(t *testing.T) {
	for _, mode := range []envelope.Mode{envelope.ModePerObject, envelope.ModeBucketKey} {
		t.Run(mode.String(), func(t *testing.T) {
			tv := newTestVolume(t, mode)
			ctx := context.Background()
			seed := uint64(42)
			rng := rand.New(rand.NewPCG(seed, uint64(mode)))
			h := tv.open(t, "f", syscall.O_RDWR|syscall.O_CREAT)
			defer h.Close()
			var model []byte
			for op := 0; op < 4000; op++ {
				switch r := rng.IntN(10); {
				case r < 5: // write
					off := rng.Int64N(int64(len(model)) + 3*4096 + 1)
					data := make([]byte, rng.IntN(3*4096+100)+1)
					for i := range data {
						data[i] = byte(rng.Uint32())
					}
					if _, err := h.WriteAt(ctx, data, off); err != nil {
						t.Fatalf("seed %d op %d: write %d@%d: %v", seed, op, len(data), off, err)
					}
					if end := off + int64(len(data)); end > int64(len(model)) {
						model = append(model, make([]byte, end-int64(len(model)))...)
					}
					copy(model[off:], data)
				case r < 7: // truncate
					size := rng.Int64N(int64(len(model)) + 2*4096 + 1)
					if rng.IntN(10) == 0 {
						size = 0
					}
					if err := h.Truncate(ctx, size); err != nil {
						t.Fatalf("seed %d op %d: truncate %d: %v", seed, op, size, err)
					}
					if size < int64(len(model)) {
						model = model[:size]
					} else {
						model = append(model, make([]byte, size-int64(len(model)))...)
					}
				default: // read
					off := rng.Int64N(int64(len(model)) + 100)
					buf := make([]byte, rng.IntN(3*4096)+1)
					n, err := h.ReadAt(ctx, buf, off)
					if err != nil && !errors.Is(err, io.EOF) {
						t.Fatalf("seed %d op %d: read: %v", seed, op, err)
					}
					want := []byte{}
					if off < int64(len(model)) {
						want = model[off:min(int64(len(model)), off+int64(len(buf)))]
					}
					if !bytes.Equal(buf[:n], want) {
						t.Fatalf("seed %d op %d: read %d@%d: content differs from model", seed, op, len(buf), off)
					}
				}
				if size, err := h.Size(); err != nil || size != int64(len(model)) {
					t.Fatalf("seed %d op %d: size %d (%v), model %d", seed, op, size, err, len(model))
				}
			}
			// A second handle (fresh open, keys from the cache) sees the same bytes.
			h2 := tv.open(t, "f", syscall.O_RDONLY)
			defer h2.Close()
			if got := readAll(t, h2); !bytes.Equal(got, model) {
				t.Fatal("final content differs from model")
			}
		})
	}
}

func TestEmptyFileNeedsNoKMS(t *testing.T) {
	tv := newTestVolume(t, envelope.ModePerObject)
	h := tv.open(t, "empty", syscall.O_RDWR|syscall.O_CREAT)
	h.Close()
	h = tv.open(t, "empty", syscall.O_RDONLY)
	if got := readAll(t, h); len(got) != 0 {
		t.Fatal("empty file not empty")
	}
	h.Close()
	if atomic.LoadInt64(&tv.kms.gen)+atomic.LoadInt64(&tv.kms.dec) != 0 {
		t.Fatalf("empty file cost %d GenerateDataKey and %d Decrypt calls", tv.kms.gen, tv.kms.dec)
	}
	st, _ := os.Stat(filepath.Join(tv.dir, "empty"))
	if st.Size() != 0 {
		t.Fatalf("empty file stored as %d bytes", st.Size())
	}
}

// Per-object mode: one GenerateDataKey per new file; re-opening is a cache hit.
// Bucket-key mode: one GenerateDataKey for many files.
func TestKMSCallsPerFile(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		mode    envelope.Mode
		wantGen int
	}{{envelope.ModePerObject, 50}, {envelope.ModeBucketKey, 1}} {
		tv := newTestVolume(t, tc.mode)
		for i := 0; i < 50; i++ {
			h := tv.open(t, "f"+string(rune('a'+i%26))+string(rune('a'+i/26)), syscall.O_RDWR|syscall.O_CREAT)
			if _, err := h.WriteAt(ctx, []byte("data"), 0); err != nil {
				t.Fatal(err)
			}
			h.Close()
		}
		h := tv.open(t, "faa", syscall.O_RDONLY)
		if string(readAll(t, h)) != "data" {
			t.Fatal("read back")
		}
		h.Close()
		if atomic.LoadInt64(&tv.kms.gen) != int64(tc.wantGen) || atomic.LoadInt64(&tv.kms.dec) != 0 {
			t.Fatalf("%v: %d GenerateDataKey, %d Decrypt; want %d and 0", tc.mode, tv.kms.gen, tv.kms.dec, tc.wantGen)
		}
	}
}

// Tampering with the stored file is an authentication error, never data.
func TestTamperedFileFails(t *testing.T) {
	ctx := context.Background()
	tv := newTestVolume(t, envelope.ModePerObject)
	payload := bytes.Repeat([]byte("secret!!"), 2048) // 16 KiB, 4 blocks
	for _, name := range []string{"a", "b"} {
		h := tv.open(t, name, syscall.O_RDWR|syscall.O_CREAT)
		if _, err := h.WriteAt(ctx, payload, 0); err != nil {
			t.Fatal(err)
		}
		h.Close()
	}
	raw, _ := os.ReadFile(filepath.Join(tv.dir, "a"))
	if bytes.Contains(raw, []byte("secret!!")) {
		t.Fatal("plaintext in the stored file")
	}
	l := tv.Layout()
	check := func(what string, mutate func(a, b []byte) []byte) {
		t.Helper()
		a, _ := os.ReadFile(filepath.Join(tv.dir, "a"))
		b, _ := os.ReadFile(filepath.Join(tv.dir, "b"))
		os.WriteFile(filepath.Join(tv.dir, "t"), mutate(bytes.Clone(a), b), 0o644)
		// A fresh volume: no cached keys, no open state.
		v2, err := Open(ctx, unlocked(tv.Backend()), Options{Keys: tv.ks})
		if err != nil {
			t.Fatal(err)
		}
		h, err := v2.OpenFile(ctx, "t", syscall.O_RDONLY, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		buf := make([]byte, len(payload))
		_, err = h.ReadAt(ctx, buf, 0)
		if Errno(err) != syscall.EIO {
			t.Fatalf("%s: read gave %v (errno %v), want EIO", what, err, Errno(err))
		}
	}
	check("flipped bit in block 1", func(a, _ []byte) []byte { a[l.BlockOffset(1)+40] ^= 1; return a })
	check("blocks 1 and 2 swapped", func(a, _ []byte) []byte {
		s := l.SealedBlockSize()
		b1 := bytes.Clone(a[l.BlockOffset(1) : l.BlockOffset(1)+s])
		copy(a[l.BlockOffset(1):], a[l.BlockOffset(2):l.BlockOffset(2)+s])
		copy(a[l.BlockOffset(2):], b1)
		return a
	})
	check("header of b on body of a", func(a, b []byte) []byte { copy(a, b[:l.HeaderSize]); return a })
	check("block of b in a", func(a, b []byte) []byte {
		copy(a[l.BlockOffset(1):], b[l.BlockOffset(1):l.BlockOffset(2)])
		return a
	})
	check("zeroed block", func(a, _ []byte) []byte { clear(a[l.BlockOffset(2):l.BlockOffset(3)]); return a })
	check("torn last block", func(a, _ []byte) []byte { return a[:len(a)-4100] })
}

// A disabled key refuses access (EACCES); other files are unaffected.
func TestDisabledKeyIsEACCES(t *testing.T) {
	ctx := context.Background()
	tv := newTestVolume(t, envelope.ModePerObject)
	h := tv.open(t, "a", syscall.O_RDWR|syscall.O_CREAT)
	h.WriteAt(ctx, []byte("x"), 0)
	h.Close()
	if err := tv.ks.DisableKey(ctx, tv.keyID); err != nil {
		t.Fatal(err)
	}
	v2, _ := Open(ctx, unlocked(tv.Backend()), Options{Keys: tv.ks})
	h2, _ := v2.OpenFile(ctx, "a", syscall.O_RDONLY, 0, nil)
	defer h2.Close()
	_, err := h2.ReadAt(ctx, make([]byte, 1), 0)
	if Errno(err) != syscall.EACCES || !errors.Is(err, kms.ErrDisabled) {
		t.Fatalf("read with disabled key: %v (errno %v), want DisabledException/EACCES", err, Errno(err))
	}
}

func TestXattrSealed(t *testing.T) {
	ctx := context.Background()
	tv := newTestVolume(t, envelope.ModePerObject)
	stored, err := tv.SealXattr(ctx, "user.note", []byte("hello"))
	if err != nil || bytes.Contains(stored, []byte("hello")) || len(stored) != 5+XattrOverhead {
		t.Fatalf("sealed xattr %x, %v", stored, err)
	}
	got, err := tv.OpenXattr(ctx, "user.note", stored)
	if err != nil || string(got) != "hello" {
		t.Fatal("xattr round trip", err)
	}
	if _, err := tv.OpenXattr(ctx, "user.other", stored); Errno(err) != syscall.EIO {
		t.Fatal("xattr value moved to another name was accepted")
	}
	if s, _ := tv.SealXattr(ctx, "security.selinux", []byte("x")); string(s) != "x" {
		t.Fatal("non-user xattr was transformed")
	}
}

func TestConfigRefusesUnknownFeature(t *testing.T) {
	ctx := context.Background()
	tv := newTestVolume(t, envelope.ModePerObject)
	cfg := *tv.Config()
	cfg.Features = append(cfg.Features, "name-encryption-v9")
	if err := cfg.validate(); err == nil {
		t.Fatal("unknown feature accepted")
	}
	if _, err := Init(ctx, tv.Backend(), tv.ks, InitOptions{KeyID: tv.keyID}); err == nil {
		t.Fatal("init over an existing volume accepted")
	}
}

// The prefetch pool serves creates from keys fetched ahead, each key used
// for exactly one file, and never fetches more than files + its bound.
func TestPrefetchPool(t *testing.T) {
	ctx := context.Background()
	tv := newTestVolumeOpts(t, envelope.ModePerObject, Options{PrefetchMax: 8})
	seen := map[[envelope.IDLen]byte]bool{}
	const files = 100
	for i := 0; i < files; i++ {
		name := fmt.Sprintf("f%03d", i)
		h := tv.open(t, name, syscall.O_RDWR|syscall.O_CREAT)
		if _, err := h.WriteAt(ctx, []byte(name), 0); err != nil {
			t.Fatal(err)
		}
		h.Close()
		raw, _ := os.ReadFile(filepath.Join(tv.dir, name))
		p, err := envelope.ParseHeader(raw)
		if err != nil {
			t.Fatal(err)
		}
		if seen[p.FileID] {
			t.Fatalf("file ID (and data key) reused for %s", name)
		}
		seen[p.FileID] = true
		// As between real creates, let the background fetches land: wait
		// until none is in flight (the pool may stay empty when it decides
		// the create rate needs no keys ahead).
		for deadline := time.Now().Add(10 * time.Second); ; {
			tv.pool.mu.Lock()
			idle := tv.pool.inflight == 0
			tv.pool.mu.Unlock()
			if idle {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("pool fetches still in flight after 10 s")
			}
			runtime.Gosched()
		}
	}
	tv.pool.mu.Lock()
	hits := tv.pool.hits
	tv.pool.mu.Unlock()
	if hits < files/2 {
		t.Fatalf("only %d of %d creates were served from the pool", hits, files)
	}
	tv.Close()
	if atomic.LoadInt64(&tv.kms.gen) > files+8 {
		t.Fatalf("%d GenerateDataKey calls for %d files with an 8-key pool", tv.kms.gen, files)
	}
	for i := 0; i < files; i += 17 {
		name := fmt.Sprintf("f%03d", i)
		h := tv.open(t, name, syscall.O_RDONLY)
		if string(readAll(t, h)) != name {
			t.Fatalf("%s reads back wrong", name)
		}
		h.Close()
	}
}

// O_TRUNC empties the file and the next write starts a new data key.
func TestOpenTruncNewKey(t *testing.T) {
	ctx := context.Background()
	tv := newTestVolume(t, envelope.ModePerObject)
	h := tv.open(t, "f", syscall.O_RDWR|syscall.O_CREAT)
	h.WriteAt(ctx, bytes.Repeat([]byte("a"), 10000), 0)
	h.Close()
	before, _ := os.ReadFile(filepath.Join(tv.dir, "f"))
	h = tv.open(t, "f", syscall.O_WRONLY|syscall.O_TRUNC)
	if size, _ := h.Size(); size != 0 {
		t.Fatalf("size after O_TRUNC: %d", size)
	}
	h.WriteAt(ctx, []byte("new"), 0)
	h.Close()
	after, _ := os.ReadFile(filepath.Join(tv.dir, "f"))
	p1, _ := envelope.ParseHeader(before)
	p2, _ := envelope.ParseHeader(after)
	if p1.FileID == p2.FileID || bytes.Equal(p1.WrappedKey, p2.WrappedKey) {
		t.Fatal("rewrite after O_TRUNC kept the old file ID and key")
	}
	h = tv.open(t, "f", syscall.O_RDONLY)
	defer h.Close()
	if got := readAll(t, h); string(got) != "new" {
		t.Fatalf("content %q", got)
	}
}

// A volume holds files of both modes: each mount reads what the other wrote.
func TestMixedModes(t *testing.T) {
	ctx := context.Background()
	tv := newTestVolume(t, envelope.ModePerObject)
	write := func(v *Volume, name string) {
		h, err := v.OpenFile(ctx, name, syscall.O_RDWR|syscall.O_CREAT, 0o644, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.WriteAt(ctx, []byte("content of "+name), 0); err != nil {
			t.Fatal(err)
		}
		h.Close()
	}
	write(tv.Volume, "po")
	bk, err := Open(ctx, unlocked(tv.Backend()), Options{Keys: tv.ks, Mode: envelope.ModeBucketKey, PrefetchMax: -1})
	if err != nil {
		t.Fatal(err)
	}
	write(bk, "bk")
	for _, v := range []*Volume{tv.Volume, bk} {
		for _, name := range []string{"po", "bk"} {
			h, err := v.OpenFile(ctx, name, syscall.O_RDONLY, 0, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := readAll(t, h); string(got) != "content of "+name {
				t.Fatalf("%s: %q", name, got)
			}
			h.Close()
		}
	}
	raw, _ := os.ReadFile(filepath.Join(tv.dir, "bk"))
	if p, _ := envelope.ParseHeader(raw); p.Mode != envelope.ModeBucketKey {
		t.Fatalf("file written by the bucket-key mount has mode %v", p.Mode)
	}
}

// A crash in the middle of an in-place overwrite leaves a torn block; the
// intent recorded before the write is replayed on the next open, so the
// block reads as its new content. A torn intent (the crash came before the
// overwrite started) is discarded and the old content stays.
func TestIntentReplayAfterTornWrite(t *testing.T) {
	ctx := context.Background()
	tv := newTestVolume(t, envelope.ModePerObject)
	old := bytes.Repeat([]byte("o"), 3*4096)
	h := tv.open(t, "f", syscall.O_RDWR|syscall.O_CREAT)
	h.WriteAt(ctx, old, 0)
	keys, _ := h.fileKeys(ctx, false)
	l := tv.Layout()
	newBlock := bytes.Repeat([]byte("n"), 4096)
	sealed, _ := keys.SealBlock(nil, newBlock, 1, false, densePrev(1))
	in := &intent{fileID: keys.FileID(), off: l.BlockOffset(1), truncateTo: -1, data: sealed}
	h.Close()
	ints := tv.Backend().(interface {
		WriteIntent(context.Context, string, []byte) error
	})
	path := filepath.Join(tv.dir, "f")
	crash := func(rec []byte, tornBytes int) {
		id := fmt.Sprintf("%x", in.fileID)
		if err := ints.WriteIntent(ctx, id, rec); err != nil {
			t.Fatal(err)
		}
		f, _ := os.OpenFile(path, os.O_WRONLY, 0)
		f.WriteAt(sealed[:tornBytes], l.BlockOffset(1)) // killed after tornBytes
		f.Close()
	}
	reopen := func() []byte {
		v2, err := Open(ctx, unlocked(tv.Backend()), Options{Keys: tv.ks, PrefetchMax: -1})
		if err != nil {
			t.Fatal(err)
		}
		h := must(v2.OpenFile(ctx, "f", syscall.O_RDONLY, 0, nil))
		defer h.Close()
		return readAll(t, h)
	}
	crash(in.marshal(), 2000)
	want := append(append(bytes.Clone(old[:4096]), newBlock...), old[8192:]...)
	if got := reopen(); !bytes.Equal(got, want) {
		t.Fatal("torn overwrite was not completed from its intent")
	}
	if _, err := os.Stat(filepath.Join(tv.dir, ".kmsfs", "intents", fmt.Sprintf("%x", in.fileID))); !os.IsNotExist(err) {
		t.Fatal("intent not cleared after replay")
	}
	// A torn intent record: the overwrite never started.
	rec := in.marshal()
	crash(rec[:len(rec)-10], 0)
	if got := reopen(); !bytes.Equal(got, want) {
		t.Fatal("a torn intent changed the file")
	}
}

func must(h *Handle, err error) *Handle {
	if err != nil {
		panic(err)
	}
	return h
}

func TestTruncateBeyondMaxIsEFBIG(t *testing.T) {
	ctx := context.Background()
	tv := newTestVolume(t, envelope.ModePerObject)
	h := tv.open(t, "f", syscall.O_RDWR|syscall.O_CREAT)
	defer h.Close()
	if err := h.Truncate(ctx, MaxFileSize+1); err != syscall.EFBIG {
		t.Fatalf("truncate past the maximum: %v, want EFBIG", err)
	}
	if _, err := h.WriteAt(ctx, []byte("x"), MaxFileSize); err != syscall.EFBIG {
		t.Fatalf("write past the maximum: %v, want EFBIG", err)
	}
	if size, _ := h.Size(); size != 0 {
		t.Fatalf("size %d after refused growth", size)
	}
}

// reopen opens the same vault again with an empty key cache, as a new mount
// would, so the next key use has to reach the KMS.
func (tv *testVol) reopen(t *testing.T) *testVol {
	t.Helper()
	be, err := local.New(tv.dir)
	if err != nil {
		t.Fatal(err)
	}
	ck := &countingKMS{Crypto: tv.ks}
	cache, err := keycache.New(ck, keycache.DefaultLimits(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cache.Close() })
	v, err := Open(context.Background(), unlocked(be), Options{Keys: cache, PrefetchMax: -1})
	if err != nil {
		t.Fatal(err)
	}
	return &testVol{Volume: v, dir: tv.dir, ks: tv.ks, kms: ck, keyID: tv.keyID}
}

// TestInterruptedRequestStillGetsItsKey: the kernel interrupts a FUSE request
// (cancelling its context) whenever the caller gets any signal, and passes an
// EINTR reply straight back to getxattr(2) or read(2). A CI run failed that
// way: a Go test's getxattr of a user xattr on a remote-KMS mount got EINTR
// while the volume's metadata key was being unwrapped under throttling. The
// KMS work for a shared key must therefore finish whatever the request's
// context says, for the metadata key, a new file's key and an existing one's.
func TestInterruptedRequestStillGetsItsKey(t *testing.T) {
	for _, mode := range []envelope.Mode{envelope.ModePerObject, envelope.ModeBucketKey} {
		t.Run(mode.String(), func(t *testing.T) {
			interrupted, cancel := context.WithCancel(context.Background())
			cancel()
			tv := newTestVolume(t, mode)
			stored, err := tv.SealXattr(interrupted, "user.note", []byte("kept"))
			if err != nil {
				t.Fatalf("seal an xattr in an interrupted request: %v (errno %v)", err, Errno(err))
			}
			h := tv.open(t, "f", syscall.O_RDWR|syscall.O_CREAT)
			if _, err := h.WriteAt(interrupted, []byte("data"), 0); err != nil {
				t.Fatalf("first write in an interrupted request: %v (errno %v)", err, Errno(err))
			}
			if err := h.Close(); err != nil {
				t.Fatal(err)
			}

			fresh := tv.reopen(t)
			if got, err := fresh.OpenXattr(interrupted, "user.note", stored); err != nil || string(got) != "kept" {
				t.Fatalf("open an xattr in an interrupted request: %q, %v (errno %v)", got, err, Errno(err))
			}
			h = fresh.open(t, "f", syscall.O_RDONLY)
			defer h.Close()
			buf := make([]byte, 16)
			n, err := h.ReadAt(interrupted, buf, 0)
			if err != nil && !errors.Is(err, io.EOF) || string(buf[:n]) != "data" {
				t.Fatalf("first read in an interrupted request: %q, %v (errno %v)", buf[:n], err, Errno(err))
			}
			if atomic.LoadInt64(&fresh.kms.dec) < 2 {
				t.Fatalf("%d Decrypt calls after reopening; the test did not reach the KMS", fresh.kms.dec)
			}
		})
	}
}

// unlockedBackend hides the backend's volume lock: for tests that open a
// second read-write Volume on one backend in one process, which the lock is
// there to stop between processes.
type unlockedBackend struct {
	backend.Backend
	backend.Intents
}

func unlocked(be backend.Backend) backend.Backend {
	return unlockedBackend{be, be.(backend.Intents)}
}

// TestReadWriteOpenTakesTheVolumeLock: a second read-write opener is refused
// while the first holds the volume; read-only openers are not; closing the
// first lets the next one in.
func TestReadWriteOpenTakesTheVolumeLock(t *testing.T) {
	tv := newTestVolume(t, envelope.ModePerObject)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if v, err := Open(ctx, tv.Backend(), Options{Keys: tv.ks, PrefetchMax: -1}); !errors.Is(err, backend.ErrVolumeBusy) {
		if v != nil {
			v.Close()
		}
		t.Fatalf("second read-write open while the first is open: %v, want ErrVolumeBusy", err)
	}
	ro, err := Open(context.Background(), tv.Backend(), Options{Keys: tv.ks, ReadOnly: true})
	if err != nil {
		t.Fatalf("read-only open beside a read-write one: %v", err)
	}
	ro.Close()
	if err := tv.Close(); err != nil {
		t.Fatal(err)
	}
	v, err := Open(context.Background(), tv.Backend(), Options{Keys: tv.ks, PrefetchMax: -1})
	if err != nil {
		t.Fatalf("read-write open after the first closed: %v", err)
	}
	v.Close()
}
