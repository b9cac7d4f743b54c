package server

import (
	"sync"
	"time"
)

// rateLimiter is a token bucket per account: each account may make rate
// requests per second on average, with bursts up to burst. AWS KMS counts its
// cryptographic-operation quota the same way (per account and region, per
// second), and answers ThrottlingException above it.
type rateLimiter struct {
	rate  float64 // tokens per second
	burst float64

	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newRateLimiter(rate float64, burst int) *rateLimiter {
	if burst <= 0 {
		burst = max(int(rate), 1)
	}
	return &rateLimiter{rate: rate, burst: float64(burst), buckets: make(map[string]*bucket)}
}

// allow takes one token from account's bucket, or reports false when empty.
func (l *rateLimiter) allow(account string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[account]
	if !ok {
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[account] = b
	}
	if d := now.Sub(b.last); d > 0 {
		b.tokens = min(l.burst, b.tokens+d.Seconds()*l.rate)
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
