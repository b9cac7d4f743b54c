package keycache

import (
	"context"
	"errors"
	"sync/atomic"

	"github.com/kmsfs/kmsfs/kms"
)

// KMS operation names used as keys of Stats.KMSCalls: the AWS API names.
const (
	OpGenerateDataKey                 = "GenerateDataKey"
	OpGenerateDataKeyWithoutPlaintext = "GenerateDataKeyWithoutPlaintext"
	OpEncrypt                         = "Encrypt"
	OpDecrypt                         = "Decrypt"
	OpReEncrypt                       = "ReEncrypt"
)

// Result names used as keys of Stats.KMSCalls[op]: ResultOK, an AWS error code
// (kms.CodeDisabled, ...), ResultCanceled, ResultDeadlineExceeded or
// ResultOther for an error that carries no code we know.
const (
	ResultOK               = "ok"
	ResultCanceled         = "Canceled"
	ResultDeadlineExceeded = "DeadlineExceeded"
	ResultOther            = "Other"
)

// ops and results index the counter array; order is not significant.
var ops = [...]string{OpGenerateDataKey, OpGenerateDataKeyWithoutPlaintext, OpEncrypt, OpDecrypt, OpReEncrypt}

const (
	opGenerateDataKey = iota
	opGenerateDataKeyWithoutPlaintext
	opEncrypt
	opDecrypt
	opReEncrypt
	numOps
)

var results = [...]string{
	ResultOK,
	kms.CodeNotFound, kms.CodeDisabled, kms.CodeInvalidState, kms.CodeInvalidCiphertext,
	kms.CodeIncorrectKey, kms.CodeValidation, kms.CodeAccessDenied, kms.CodeThrottling,
	kms.CodeInternal, kms.CodeDependencyTimeout, kms.CodeAlreadyExists, kms.CodeInvalidAliasName,
	kms.CodeInvalidGrantToken, kms.CodeInvalidGrantID, kms.CodeMalformedPolicy,
	kms.CodeUnrecognizedClient, kms.CodeInvalidSignature, kms.CodeUnavailable,
	ResultCanceled, ResultDeadlineExceeded, ResultOther,
}

const numResults = len(results)

// resultIndex maps a KMS call's error to its slot in results.
func resultIndex(err error) int {
	if err == nil {
		return 0
	}
	if code := kms.Code(err); code != "" {
		for i, r := range results {
			if r == code {
				return i
			}
		}
		return numResults - 1
	}
	switch {
	case errors.Is(err, context.Canceled):
		return numResults - 3
	case errors.Is(err, context.DeadlineExceeded):
		return numResults - 2
	}
	return numResults - 1
}

// eviction reasons, indexes into counters.evictions.
const (
	reasonAge = iota
	reasonUses
	reasonBytes
	reasonCapacity
	reasonExplicit
	numReasons
)

// counters are updated without the cache lock, so Stats never waits for it.
type counters struct {
	hits, misses, coalesced, graceHits atomic.Uint64
	prefetches, prefetchUsed           atomic.Uint64
	prefetchUnused                     atomic.Uint64
	entries                            atomic.Int64
	evictions                          [numReasons]atomic.Uint64
	calls                              [numOps][numResults]atomic.Uint64
}

// Evictions counts evicted entries by the reason they left the cache.
type Evictions struct {
	Age      uint64 // expired by MaxAge (and past Grace, if any)
	Uses     uint64 // reached MaxUses
	Bytes    uint64 // exceeded MaxBytes
	Capacity uint64 // least recently used when the cache was full
	Explicit uint64 // Evict, Purge or Close
}

// Total is the number of evictions for any reason.
func (e Evictions) Total() uint64 {
	return e.Age + e.Uses + e.Bytes + e.Capacity + e.Explicit
}

// Stats is a snapshot of the cache counters. Counters are read one by one,
// so a snapshot taken under load is not an atomic cut across all of them.
type Stats struct {
	// Hits counts Decrypt calls served from a fresh entry without a KMS call.
	Hits uint64
	// Misses counts Decrypt calls that needed the KMS, including those that
	// shared another caller's in-flight call (Coalesced) and those finally
	// served from an expired entry (GraceHits).
	Misses uint64
	// Coalesced counts misses that waited for another caller's KMS call
	// instead of making their own.
	Coalesced uint64
	// GraceHits counts misses served from an expired entry because the KMS
	// was unreachable (Limits.Grace).
	GraceHits uint64
	// Prefetches counts the speculative Decrypt calls Prefetch made (they
	// are in KMSCalls too); PrefetchUsed the keys they yielded that a
	// Decrypt then used, PrefetchUnused those evicted before any did.
	Prefetches, PrefetchUsed, PrefetchUnused uint64
	// Entries is the number of keys cached now.
	Entries int
	// Evictions counts entries that left the cache, by reason.
	Evictions Evictions
	// KMSCalls counts the calls made to the KMS, by operation (OpDecrypt,
	// ...) then by result (ResultOK or an error code). Only non-zero counts
	// are present.
	KMSCalls map[string]map[string]uint64
}

// KMSCallCount is the number of calls of operation op, whatever their result.
func (s Stats) KMSCallCount(op string) uint64 {
	var n uint64
	for _, v := range s.KMSCalls[op] {
		n += v
	}
	return n
}

// HitRate is Hits / (Hits + Misses), or 0 before the first lookup.
func (s Stats) HitRate() float64 {
	if s.Hits+s.Misses == 0 {
		return 0
	}
	return float64(s.Hits) / float64(s.Hits+s.Misses)
}

func (c *counters) snapshot() Stats {
	s := Stats{
		Hits:       c.hits.Load(),
		Misses:     c.misses.Load(),
		Coalesced:  c.coalesced.Load(),
		GraceHits:  c.graceHits.Load(),
		Prefetches: c.prefetches.Load(), PrefetchUsed: c.prefetchUsed.Load(),
		PrefetchUnused: c.prefetchUnused.Load(),
		Entries:        int(c.entries.Load()),
		Evictions: Evictions{
			Age:      c.evictions[reasonAge].Load(),
			Uses:     c.evictions[reasonUses].Load(),
			Bytes:    c.evictions[reasonBytes].Load(),
			Capacity: c.evictions[reasonCapacity].Load(),
			Explicit: c.evictions[reasonExplicit].Load(),
		},
		KMSCalls: make(map[string]map[string]uint64),
	}
	for o := range c.calls {
		for r := range c.calls[o] {
			n := c.calls[o][r].Load()
			if n == 0 {
				continue
			}
			m := s.KMSCalls[ops[o]]
			if m == nil {
				m = make(map[string]uint64)
				s.KMSCalls[ops[o]] = m
			}
			m[results[r]] = n
		}
	}
	return s
}

// countCall records one KMS call of operation op that returned err.
func (c *counters) countCall(op int, err error) {
	c.calls[op][resultIndex(err)].Add(1)
}
