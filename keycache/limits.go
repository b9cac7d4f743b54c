package keycache

import (
	"fmt"
	"math"
	"time"
)

// Limits bound how long and how much a cached plaintext key may be used
// before the KMS must be asked again. They are the limits of the AWS
// Encryption SDK caching cryptographic materials manager (max age, max
// messages, max bytes, capacity), and every one is enforced.
//
// A zero field takes its value from DefaultLimits, so Limits{} is the default
// configuration; Grace is the exception: zero means off.
type Limits struct {
	// MaxAge is how long after it entered the cache an entry may be served.
	// As in the ESDK it is measured from insertion, not from last use, so a
	// key that is read constantly still goes back to the KMS every MaxAge
	// (which is what makes a disabled KMS key take effect).
	MaxAge time.Duration

	// MaxUses is how many times an entry may be handed out (each Decrypt
	// served from it, including the callers that shared the KMS call that
	// filled it). The entry is evicted when it reaches this count. The ESDK
	// calls this "max messages encrypted".
	MaxUses uint64

	// MaxBytes is how many bytes callers may process under an entry, as
	// reported through ReportBytes; the entry is evicted once the total
	// exceeds it. The ESDK calls this "max bytes encrypted".
	MaxBytes uint64

	// Capacity is the maximum number of entries; beyond it the least
	// recently used entry is evicted.
	Capacity int

	// PrefetchMaxAge is how long a key unwrapped ahead of need (Prefetch)
	// stays cached if nothing uses it; MaxAge bounds it too. A reader that
	// was meant to use it does so within a few KMS round trips; a key
	// nobody asks for should not stay in memory, nor keep a file readable,
	// for a whole MaxAge.
	PrefetchMaxAge time.Duration

	// Grace, when non-zero, lets an entry that expired by MaxAge less than
	// Grace ago be served when the KMS call that should refresh it fails
	// because the KMS is unreachable or timed out (kms.ErrUnavailable,
	// DependencyTimeoutException, a network timeout, context.DeadlineExceeded).
	// Any other KMS answer (a disabled key, access denied, throttling) is a
	// real answer and is never papered over. Zero turns grace off.
	Grace time.Duration
}

// DefaultLimits returns the defaults:
//
//   - MaxAge 5 minutes: the value the AWS Encryption SDK examples use, short
//     enough that disabling a KMS key stops reads within minutes, long enough
//     that a file re-opened in a burst (cp, rsync, a build) costs one KMS call.
//   - MaxUses 2^32: the ESDK default (and maximum) for messages per cached
//     key; effectively unbounded, MaxAge is the limit that matters.
//   - MaxBytes 2^63-1: the ESDK default for bytes per cached key; effectively
//     unbounded, since every file has its own key and AES-GCM block nonces are
//     bounded by the envelope format, not here.
//   - Capacity 10000 entries: about 1.5 MB of entries and keys, enough for the
//     working set of a large tree walk; an LRU beyond that.
//   - PrefetchMaxAge 15 seconds: far longer than a reader takes to reach a
//     key prefetched for it (the lookahead covers a few KMS round trips).
//   - Grace 0 (off): serving expired keys is a policy decision the mount
//     must opt into.
func DefaultLimits() Limits {
	return Limits{
		MaxAge:         5 * time.Minute,
		MaxUses:        1 << 32,
		MaxBytes:       math.MaxInt64,
		Capacity:       10000,
		PrefetchMaxAge: 15 * time.Second,
	}
}

// withDefaults validates l and fills its zero fields from DefaultLimits.
func (l Limits) withDefaults() (Limits, error) {
	if l.MaxAge < 0 {
		return l, fmt.Errorf("keycache: negative MaxAge %v", l.MaxAge)
	}
	if l.Grace < 0 {
		return l, fmt.Errorf("keycache: negative Grace %v", l.Grace)
	}
	if l.PrefetchMaxAge < 0 {
		return l, fmt.Errorf("keycache: negative PrefetchMaxAge %v", l.PrefetchMaxAge)
	}
	if l.Capacity < 0 {
		return l, fmt.Errorf("keycache: negative Capacity %d", l.Capacity)
	}
	d := DefaultLimits()
	if l.MaxAge == 0 {
		l.MaxAge = d.MaxAge
	}
	if l.MaxUses == 0 {
		l.MaxUses = d.MaxUses
	}
	if l.MaxBytes == 0 {
		l.MaxBytes = d.MaxBytes
	}
	if l.Capacity == 0 {
		l.Capacity = d.Capacity
	}
	if l.PrefetchMaxAge == 0 {
		l.PrefetchMaxAge = d.PrefetchMaxAge
	}
	return l, nil
}
