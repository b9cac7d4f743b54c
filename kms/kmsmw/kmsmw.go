// Package kmsmw holds decorators around a kms.Crypto: Simulate (injected
// latency and a request quota, to benchmark against an embedded KMS that
// behaves like a regional one), Retry (jittered backoff on throttling, so a
// quota never surfaces to the user), and Observe (a hook per
// call, for latency histograms).
package kmsmw

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/kmsfs/kmsfs/kms"
)

// SimulateOptions shape the simulated KMS.
type SimulateOptions struct {
	// Latency is added to every cryptographic call (a regional AWS KMS
	// answers GenerateDataKey in roughly 5–15 ms).
	Latency time.Duration
	// RPS is the request quota for cryptographic operations, shared by
	// all calls (AWS: 5,500 to 100,000 per second by region); 0 = none.
	// Beyond it calls fail at once with ThrottlingException, as AWS does.
	RPS float64
	// Burst is the token bucket depth; 0 means RPS/10 (at least 1).
	Burst int
}

// Simulate wraps inner with latency and a quota.
func Simulate(inner kms.Crypto, o SimulateOptions) kms.Crypto {
	s := &simulated{inner: inner, latency: o.Latency}
	if o.RPS > 0 {
		burst := o.Burst
		if burst <= 0 {
			burst = max(1, int(o.RPS/10))
		}
		s.bucket = &tokenBucket{rate: o.RPS, burst: float64(burst), tokens: float64(burst), last: time.Now()}
	}
	return s
}

type simulated struct {
	inner   kms.Crypto
	latency time.Duration
	bucket  *tokenBucket
}

// tokenBucket is a request quota: rate tokens per second, up to burst.
type tokenBucket struct {
	mu     sync.Mutex
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

func (b *tokenBucket) take(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

func (s *simulated) admit(ctx context.Context, op string) error {
	if s.bucket != nil && !s.bucket.take(time.Now()) {
		return kms.Errorf(kms.CodeThrottling, "%s: rate exceeded (simulated quota)", op)
	}
	if s.latency > 0 {
		t := time.NewTimer(s.latency)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func (s *simulated) GenerateDataKey(ctx context.Context, keyID string, n int, ec kms.EncryptionContext) (kms.DataKey, error) {
	if err := s.admit(ctx, "GenerateDataKey"); err != nil {
		return kms.DataKey{}, err
	}
	return s.inner.GenerateDataKey(ctx, keyID, n, ec)
}

func (s *simulated) GenerateDataKeyWithoutPlaintext(ctx context.Context, keyID string, n int, ec kms.EncryptionContext) ([]byte, string, error) {
	if err := s.admit(ctx, "GenerateDataKeyWithoutPlaintext"); err != nil {
		return nil, "", err
	}
	return s.inner.GenerateDataKeyWithoutPlaintext(ctx, keyID, n, ec)
}

func (s *simulated) Encrypt(ctx context.Context, keyID string, pt []byte, ec kms.EncryptionContext) ([]byte, string, error) {
	if err := s.admit(ctx, "Encrypt"); err != nil {
		return nil, "", err
	}
	return s.inner.Encrypt(ctx, keyID, pt, ec)
}

func (s *simulated) Decrypt(ctx context.Context, keyID string, blob []byte, ec kms.EncryptionContext) ([]byte, string, error) {
	if err := s.admit(ctx, "Decrypt"); err != nil {
		return nil, "", err
	}
	return s.inner.Decrypt(ctx, keyID, blob, ec)
}

func (s *simulated) ReEncrypt(ctx context.Context, blob []byte, srcEC kms.EncryptionContext, dest string, destEC kms.EncryptionContext) ([]byte, string, string, error) {
	if err := s.admit(ctx, "ReEncrypt"); err != nil {
		return nil, "", "", err
	}
	return s.inner.ReEncrypt(ctx, blob, srcEC, dest, destEC)
}

// RetryOptions shape the backoff.
type RetryOptions struct {
	// MaxElapsed bounds the total time spent retrying one call (default 30s).
	MaxElapsed time.Duration
	// Base and Max shape full-jitter exponential backoff: attempt i sleeps a
	// uniform random time in [0, min(Max, Base*2^i)) (default 5ms, 1s).
	Base, Max time.Duration
	// OnRetry, if set, is called before each sleep (for counters).
	OnRetry func(op string, err error)
}

// Retry wraps inner so that ThrottlingException is retried with jittered
// backoff until MaxElapsed, as the AWS SDKs do, instead of failing the file
// operation: a request quota slows kmsfs down, never breaks it. An
// unreachable KMS is not retried here: the remote client's SDK already
// retries it, and beyond that the key cache's grace period (or a clear
// error) is the answer, not a longer wait.
func Retry(inner kms.Crypto, o RetryOptions) kms.Crypto {
	if o.MaxElapsed <= 0 {
		o.MaxElapsed = 30 * time.Second
	}
	if o.Base <= 0 {
		o.Base = 5 * time.Millisecond
	}
	if o.Max <= 0 {
		o.Max = time.Second
	}
	return &retrying{inner: inner, o: o}
}

type retrying struct {
	inner kms.Crypto
	o     RetryOptions
}

func retryable(err error) bool { return errors.Is(err, kms.ErrThrottling) }

// do runs fn until it succeeds, fails for good, or the budget runs out.
func (r *retrying) do(ctx context.Context, op string, fn func() error) error {
	deadline := time.Now().Add(r.o.MaxElapsed)
	for attempt := 0; ; attempt++ {
		err := fn()
		if err == nil || !retryable(err) || time.Now().After(deadline) {
			return err
		}
		if r.o.OnRetry != nil {
			r.o.OnRetry(op, err)
		}
		ceiling := min(r.o.Max, r.o.Base<<min(attempt, 20))
		t := time.NewTimer(time.Duration(rand.Int64N(int64(ceiling) + 1)))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			// The caller gave up: report that (EINTR at the FUSE boundary),
			// not the throttling it gave up on (which would map to EIO).
			return fmt.Errorf("%s abandoned while retrying (%v): %w", op, err, ctx.Err())
		}
	}
}

func (r *retrying) GenerateDataKey(ctx context.Context, keyID string, n int, ec kms.EncryptionContext) (dk kms.DataKey, err error) {
	err = r.do(ctx, "GenerateDataKey", func() error { dk, err = r.inner.GenerateDataKey(ctx, keyID, n, ec); return err })
	return dk, err
}

func (r *retrying) GenerateDataKeyWithoutPlaintext(ctx context.Context, keyID string, n int, ec kms.EncryptionContext) (blob []byte, arn string, err error) {
	err = r.do(ctx, "GenerateDataKeyWithoutPlaintext", func() error {
		blob, arn, err = r.inner.GenerateDataKeyWithoutPlaintext(ctx, keyID, n, ec)
		return err
	})
	return blob, arn, err
}

func (r *retrying) Encrypt(ctx context.Context, keyID string, pt []byte, ec kms.EncryptionContext) (blob []byte, arn string, err error) {
	err = r.do(ctx, "Encrypt", func() error { blob, arn, err = r.inner.Encrypt(ctx, keyID, pt, ec); return err })
	return blob, arn, err
}

func (r *retrying) Decrypt(ctx context.Context, keyID string, blob []byte, ec kms.EncryptionContext) (pt []byte, arn string, err error) {
	err = r.do(ctx, "Decrypt", func() error { pt, arn, err = r.inner.Decrypt(ctx, keyID, blob, ec); return err })
	return pt, arn, err
}

func (r *retrying) ReEncrypt(ctx context.Context, blob []byte, srcEC kms.EncryptionContext, dest string, destEC kms.EncryptionContext) (out []byte, src, dst string, err error) {
	err = r.do(ctx, "ReEncrypt", func() error {
		out, src, dst, err = r.inner.ReEncrypt(ctx, blob, srcEC, dest, destEC)
		return err
	})
	return out, src, dst, err
}

// Observe wraps inner so that every call reports its operation, duration
// and error to fn (for latency histograms and per-result counters).
func Observe(inner kms.Crypto, fn func(op string, d time.Duration, err error)) kms.Crypto {
	return &observed{inner: inner, fn: fn}
}

type observed struct {
	inner kms.Crypto
	fn    func(op string, d time.Duration, err error)
}

func (o *observed) GenerateDataKey(ctx context.Context, keyID string, n int, ec kms.EncryptionContext) (kms.DataKey, error) {
	t := time.Now()
	dk, err := o.inner.GenerateDataKey(ctx, keyID, n, ec)
	o.fn("GenerateDataKey", time.Since(t), err)
	return dk, err
}

func (o *observed) GenerateDataKeyWithoutPlaintext(ctx context.Context, keyID string, n int, ec kms.EncryptionContext) ([]byte, string, error) {
	t := time.Now()
	b, a, err := o.inner.GenerateDataKeyWithoutPlaintext(ctx, keyID, n, ec)
	o.fn("GenerateDataKeyWithoutPlaintext", time.Since(t), err)
	return b, a, err
}

func (o *observed) Encrypt(ctx context.Context, keyID string, pt []byte, ec kms.EncryptionContext) ([]byte, string, error) {
	t := time.Now()
	b, a, err := o.inner.Encrypt(ctx, keyID, pt, ec)
	o.fn("Encrypt", time.Since(t), err)
	return b, a, err
}

func (o *observed) Decrypt(ctx context.Context, keyID string, blob []byte, ec kms.EncryptionContext) ([]byte, string, error) {
	t := time.Now()
	p, a, err := o.inner.Decrypt(ctx, keyID, blob, ec)
	o.fn("Decrypt", time.Since(t), err)
	return p, a, err
}

func (o *observed) ReEncrypt(ctx context.Context, blob []byte, srcEC kms.EncryptionContext, dest string, destEC kms.EncryptionContext) ([]byte, string, string, error) {
	t := time.Now()
	b, s, d, err := o.inner.ReEncrypt(ctx, blob, srcEC, dest, destEC)
	o.fn("ReEncrypt", time.Since(t), err)
	return b, s, d, err
}
