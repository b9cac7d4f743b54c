package kmsmw

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/kms"
)

// fakeKMS answers every call at once; calls counts them.
type fakeKMS struct{ calls atomic.Int64 }

func (f *fakeKMS) GenerateDataKey(ctx context.Context, keyID string, n int, ec kms.EncryptionContext) (kms.DataKey, error) {
	f.calls.Add(1)
	return kms.DataKey{KeyID: "arn", Plaintext: make([]byte, n), CiphertextBlob: []byte("blob")}, nil
}
func (f *fakeKMS) GenerateDataKeyWithoutPlaintext(ctx context.Context, keyID string, n int, ec kms.EncryptionContext) ([]byte, string, error) {
	f.calls.Add(1)
	return []byte("blob"), "arn", nil
}
func (f *fakeKMS) Encrypt(ctx context.Context, keyID string, pt []byte, ec kms.EncryptionContext) ([]byte, string, error) {
	f.calls.Add(1)
	return []byte("blob"), "arn", nil
}
func (f *fakeKMS) Decrypt(ctx context.Context, keyID string, blob []byte, ec kms.EncryptionContext) ([]byte, string, error) {
	f.calls.Add(1)
	return []byte("key"), "arn", nil
}
func (f *fakeKMS) ReEncrypt(ctx context.Context, blob []byte, srcEC kms.EncryptionContext, dest string, destEC kms.EncryptionContext) ([]byte, string, string, error) {
	f.calls.Add(1)
	return []byte("blob"), "arn", "arn", nil
}

func TestSimulateQuotaThrottles(t *testing.T) {
	ctx := context.Background()
	sim := Simulate(&fakeKMS{}, SimulateOptions{RPS: 10, Burst: 5})
	var ok, throttled int
	for i := 0; i < 20; i++ {
		_, _, err := sim.Decrypt(ctx, "", nil, nil)
		switch {
		case err == nil:
			ok++
		case errors.Is(err, kms.ErrThrottling):
			throttled++
		default:
			t.Fatal(err)
		}
	}
	if ok < 5 || ok > 6 || throttled == 0 {
		t.Fatalf("burst of 20 against 5-deep bucket: %d ok, %d throttled", ok, throttled)
	}
}

func TestSimulateLatency(t *testing.T) {
	sim := Simulate(&fakeKMS{}, SimulateOptions{Latency: 20 * time.Millisecond})
	start := time.Now()
	if _, err := sim.GenerateDataKey(context.Background(), "k", 32, nil); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 20*time.Millisecond {
		t.Fatalf("call took %v, less than the injected 20ms", d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := sim.GenerateDataKey(ctx, "k", 32, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled call: %v", err)
	}
}

// Under a quota far below the offered load, every call still succeeds:
// throttling is retried, never surfaced.
func TestRetryHidesThrottling(t *testing.T) {
	fake := &fakeKMS{}
	var retries atomic.Int64
	k := Retry(Simulate(fake, SimulateOptions{RPS: 200, Burst: 1}), RetryOptions{
		OnRetry: func(string, error) { retries.Add(1) },
	})
	var wg sync.WaitGroup
	var failures atomic.Int64
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				if _, err := k.GenerateDataKey(context.Background(), "k", 32, nil); err != nil {
					failures.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if failures.Load() != 0 {
		t.Fatalf("%d calls failed", failures.Load())
	}
	if fake.calls.Load() != 80 || retries.Load() == 0 {
		t.Fatalf("%d calls reached the KMS, %d retries; want 80 and some", fake.calls.Load(), retries.Load())
	}
}

func TestRetryStopsOnRealErrors(t *testing.T) {
	calls := 0
	k := Retry(errKMS{fn: func() error { calls++; return kms.Errorf(kms.CodeDisabled, "key disabled") }}, RetryOptions{})
	if _, _, err := k.Decrypt(context.Background(), "", nil, nil); !errors.Is(err, kms.ErrDisabled) || calls != 1 {
		t.Fatalf("disabled key: %v after %d calls; want DisabledException after 1", err, calls)
	}
}

type errKMS struct {
	kms.Crypto
	fn func() error
}

func (e errKMS) Decrypt(context.Context, string, []byte, kms.EncryptionContext) ([]byte, string, error) {
	return nil, "", e.fn()
}

func TestObserve(t *testing.T) {
	var got []string
	k := Observe(&fakeKMS{}, func(op string, d time.Duration, err error) { got = append(got, op) })
	k.GenerateDataKey(context.Background(), "k", 32, nil)
	k.Decrypt(context.Background(), "k", nil, nil)
	if len(got) != 2 || got[0] != "GenerateDataKey" || got[1] != "Decrypt" {
		t.Fatalf("observed %v", got)
	}
}

// A caller that gives up while throttled gets its cancellation back, not the
// throttling error (which the FUSE layer would turn into EIO).
func TestRetryCancelledReturnsContextError(t *testing.T) {
	k := Retry(errKMS{fn: func() error { return kms.Errorf(kms.CodeThrottling, "rate exceeded") }}, RetryOptions{Base: 50 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, _, err := k.Decrypt(ctx, "", nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) || kms.Code(err) != "" {
		t.Fatalf("got %v (code %q), want the context's error and no KMS code", err, kms.Code(err))
	}
}
