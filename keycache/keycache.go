// Package keycache caches plaintext data keys so that re-opening a file costs
// no KMS call. It sits between the volume layer and a kms.Crypto, and is
// itself a kms.Crypto: Decrypt is served from the cache when it can be, the
// other operations go to the KMS and are counted, and GenerateDataKey caches
// the key it returns so that re-opening a file just created is a hit.
//
// Entries are found by the SHA-256 of the wrapped key and the canonical
// encoding of its encryption context (never by plaintext). Limits are those of
// the AWS Encryption SDK caching CMM: max age, max uses (messages), max bytes,
// capacity (LRU). Concurrent misses for one key make one KMS call.
//
// # Ownership of plaintext keys
//
// The cache zeroes (kms.Zero) its copy of a key when the entry is evicted, for
// any reason, and on Purge and Close. So it never hands out its own copy:
// every plaintext returned by Decrypt or GenerateDataKey is a fresh slice that
// belongs to the caller, who must zero it when done with it. Put copies the
// plaintext it is given; the caller still owns and zeroes its own.
//
// This package never imports the FUSE layer, a storage backend or the envelope
// format.
package keycache

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/kmsfs/kmsfs/kms"
)

// ErrClosed is returned by every operation on a Cache after Close.
var ErrClosed = errors.New("keycache: closed")

// maxAcceptedKeyIDs bounds the key identifiers remembered per entry. A file's
// key is asked for under one or two names (its ARN, the name in the volume
// config); the bound only stops a caller cycling names from growing an entry.
const maxAcceptedKeyIDs = 4

// cacheKey is the SHA-256 of the canonical encryption context and the wrapped
// key. Both are public, so the hash is only a fixed-size map key; it keeps the
// map from holding caller-owned slices.
type cacheKey [sha256.Size]byte

func keyFor(wrapped []byte, ec kms.EncryptionContext) cacheKey {
	canon := ec.Canonical()
	// Length-prefix the context so that (context, blob) pairs cannot be
	// shifted into one another. The buffer stays on the stack for the
	// usual sizes (a wrapped AES key under a KMS key is under 256 bytes).
	var buf [512]byte
	b := binary.BigEndian.AppendUint32(buf[:0], uint32(len(canon)))
	b = append(b, canon...)
	b = append(b, wrapped...)
	return sha256.Sum256(b)
}

// entry is one cached plaintext key.
type entry struct {
	key    cacheKey
	plain  []byte // the cache's own copy; zeroed on eviction
	keyARN string // the KMS key that wrapped it, as the KMS reported it
	// accepted are other key identifiers (aliases, key IDs) the KMS accepted
	// for this wrapped key; Decrypt with any other keyID goes to the KMS,
	// which is what checks it, as AWS KMS Decrypt does.
	accepted []string
	expires  time.Time
	inserted time.Time
	uses     uint64
	bytes    uint64
	lru      *list.Element // in Cache.lru, most recently used at the front
	age      *list.Element // in Cache.byAge (Cache.unused if speculative), oldest at the front
	// speculative: filled by Prefetch and not handed out yet. Such an entry
	// lives at most PrefetchMaxAge (see Prefetch).
	speculative bool
}

func (e *entry) accepts(keyID string) bool {
	if keyID == "" || keyID == e.keyARN {
		return true
	}
	for _, id := range e.accepted {
		if id == keyID {
			return true
		}
	}
	return false
}

func (e *entry) accept(keyID string) {
	if e.accepts(keyID) {
		return
	}
	if len(e.accepted) == maxAcceptedKeyIDs {
		e.accepted = append(e.accepted[:0], e.accepted[1:]...)
	}
	e.accepted = append(e.accepted, keyID)
}

// flightKey names one in-flight KMS Decrypt: the same wrapped key asked for
// under different key IDs are different KMS questions.
type flightKey struct {
	key   cacheKey
	keyID string
}

// flight is a KMS Decrypt in progress that other callers wait for.
type flight struct {
	done chan struct{} // closed when the fields below are set
	gen  uint64        // Cache.gen when the call started
	// waiters is the number of callers still to collect the result; guarded
	// by Cache.mu.
	waiters int
	plain   []byte // copy for the waiters, zeroed by the last one out
	keyARN  string
	err     error
	// leaderCanceled: the caller that made the KMS call had its context
	// ended, so err says nothing about the key and waiters retry.
	leaderCanceled bool
	// speculative: the call was made by Prefetch.
	speculative bool
}

// Cache is a cache of plaintext data keys in front of a kms.Crypto. It is
// safe for concurrent use. Create it with New; call Close when done.
type Cache struct {
	kms kms.Crypto
	lim Limits
	now func() time.Time

	counters

	mu      sync.Mutex
	entries map[cacheKey]*entry
	lru     *list.List // of *entry
	byAge   *list.List // of *entry, in insertion order, which is expiry order
	// unused are the speculative entries (Prefetch) not handed out yet, in
	// insertion order, which is their expiry order (PrefetchMaxAge).
	unused  *list.List
	flights map[flightKey]*flight
	gen     uint64 // incremented by Purge: in-flight results from before are not cached
	closed  bool

	stopJanitor chan struct{}
	janitorDone chan struct{}
}

var _ kms.Crypto = (*Cache)(nil)

// New returns a cache in front of k. Zero fields of lim take their default
// (DefaultLimits). now is the clock for MaxAge and Grace; nil means time.Now.
//
// New starts a goroutine that evicts expired entries while the cache is idle,
// so that keys do not linger in memory past MaxAge (+ Grace); Close stops it.
func New(k kms.Crypto, lim Limits, now func() time.Time) (*Cache, error) {
	if k == nil {
		return nil, errors.New("keycache: nil KMS")
	}
	lim, err := lim.withDefaults()
	if err != nil {
		return nil, err
	}
	if now == nil {
		now = time.Now
	}
	c := &Cache{
		kms:         k,
		lim:         lim,
		now:         now,
		entries:     make(map[cacheKey]*entry),
		lru:         list.New(),
		byAge:       list.New(),
		unused:      list.New(),
		flights:     make(map[flightKey]*flight),
		stopJanitor: make(chan struct{}),
		janitorDone: make(chan struct{}),
	}
	go c.janitor(janitorInterval(lim))
	return c, nil
}

// Limits returns the limits in force (defaults filled in).
func (c *Cache) Limits() Limits { return c.lim }

// janitorInterval is how often idle expiry runs: a quarter of the time an
// entry may live, so a key outlives its limit by at most 25%, within bounds
// that keep the goroutine cheap.
func janitorInterval(lim Limits) time.Duration {
	d := (lim.MaxAge + lim.Grace) / 4
	return min(max(d, time.Second), 30*time.Second)
}

func (c *Cache) janitor(every time.Duration) {
	defer close(c.janitorDone)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-c.stopJanitor:
			return
		case <-t.C:
			c.mu.Lock()
			c.sweepLocked(c.now())
			c.mu.Unlock()
		}
	}
}

// Decrypt returns the plaintext of the wrapped data key, from the cache if a
// fresh entry holds it, else from the KMS (one call for all concurrent
// callers asking the same question), caching the answer. The returned
// plaintext belongs to the caller, who zeroes it (kms.Zero) when done.
//
// keyID is optional, as for kms.Crypto.Decrypt. When given, a cached entry is
// used only if the KMS has already accepted that keyID for this wrapped key
// (or it is the key ARN the KMS reported); otherwise the KMS is asked, so the
// check AWS KMS makes is never skipped.
//
// KMS errors are returned wrapped and never cached: the next call asks again.
func (c *Cache) Decrypt(ctx context.Context, keyID string, wrapped []byte, ec kms.EncryptionContext) ([]byte, string, error) {
	k := keyFor(wrapped, ec)
	fk := flightKey{key: k, keyID: keyID}
	counted := false
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, "", ErrClosed
		}
		now := c.now()
		c.sweepLocked(now)
		if e := c.entries[k]; e != nil && now.Before(e.expires) && e.accepts(keyID) {
			plain, arn := c.serveLocked(e)
			c.mu.Unlock()
			c.hits.Add(1)
			return plain, arn, nil
		}
		if !counted {
			c.misses.Add(1)
			counted = true
		}

		if f := c.flights[fk]; f != nil {
			f.waiters++
			c.mu.Unlock()
			c.coalesced.Add(1)
			plain, arn, retry, err := c.await(ctx, f)
			if retry {
				continue // the leader gave up, not the KMS: ask again
			}
			if err != nil {
				return c.failed(k, keyID, err)
			}
			return plain, arn, nil
		}

		f := &flight{done: make(chan struct{}), gen: c.gen}
		c.flights[fk] = f
		c.mu.Unlock()

		plain, arn, err := c.kms.Decrypt(ctx, keyID, wrapped, ec)
		c.countCall(opDecrypt, err)

		c.mu.Lock()
		delete(c.flights, fk)
		if err != nil {
			kms.Zero(plain)
			f.err = fmt.Errorf("keycache: %s: %w", describeDecrypt(keyID), err)
			f.leaderCanceled = ctx.Err() != nil
		} else {
			f.keyARN = arn
			if f.waiters > 0 {
				f.plain = clone(plain)
			}
			c.fillLocked(k, f.gen, plain, arn, keyID, uint64(1+f.waiters))
		}
		close(f.done)
		c.mu.Unlock()
		if err != nil {
			return c.failed(k, keyID, f.err)
		}
		return plain, arn, nil
	}
}

// Prefetch unwraps a data key ahead of need: a Decrypt made speculatively,
// before the caller that will use it asks, so that the KMS latency is out
// of that caller's way. It makes no KMS call when the key is cached or a
// Decrypt for it is in flight already, and reports whether it made one.
//
// The call is counted as a Decrypt like any other (Stats.KMSCalls) and also
// in Stats.Prefetches, and is made with kms.WithSpeculative, so an audit log
// tells it apart. The key it yields is cached for at most PrefetchMaxAge
// (bounded by MaxAge) until a Decrypt uses it; Stats.PrefetchUnused counts
// the ones that left unused. A Decrypt that arrives while the Prefetch is in
// flight waits for it instead of asking again. Once used, the entry is an
// ordinary one whose MaxAge counts from the Prefetch. The KMS error, if
// any, is returned and never cached.
func (c *Cache) Prefetch(ctx context.Context, keyID string, wrapped []byte, ec kms.EncryptionContext) (bool, error) {
	k := keyFor(wrapped, ec)
	fk := flightKey{key: k, keyID: keyID}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return false, ErrClosed
	}
	now := c.now()
	c.sweepLocked(now)
	if e := c.entries[k]; (e != nil && now.Before(e.expires) && e.accepts(keyID)) || c.flights[fk] != nil {
		c.mu.Unlock()
		return false, nil
	}
	f := &flight{done: make(chan struct{}), gen: c.gen, speculative: true}
	c.flights[fk] = f
	c.mu.Unlock()

	c.prefetches.Add(1)
	plain, arn, err := c.kms.Decrypt(kms.WithSpeculative(ctx), keyID, wrapped, ec)
	c.countCall(opDecrypt, err)

	c.mu.Lock()
	delete(c.flights, fk)
	if err != nil {
		kms.Zero(plain)
		f.err = fmt.Errorf("keycache: prefetch: %s: %w", describeDecrypt(keyID), err)
		f.leaderCanceled = ctx.Err() != nil
	} else {
		f.keyARN = arn
		if f.waiters > 0 {
			// Used already: callers were waiting for it.
			f.plain = clone(plain)
			c.prefetchUsed.Add(1)
			c.fill(k, f.gen, plain, arn, keyID, uint64(f.waiters), false)
		} else {
			c.fill(k, f.gen, plain, arn, keyID, 0, true)
		}
	}
	close(f.done)
	c.mu.Unlock()
	kms.Zero(plain)
	if err != nil {
		return true, f.err
	}
	return true, nil
}

// KeyState says whether a Decrypt of the wrapped key would be answered
// without a KMS call of its own: known is true when a fresh entry holds it
// or a Decrypt for it is in flight; speculative when that entry or call
// comes from Prefetch and no Decrypt has used it yet. It counts nothing.
func (c *Cache) KeyState(keyID string, wrapped []byte, ec kms.EncryptionContext) (known, speculative bool) {
	k := keyFor(wrapped, ec)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false, false
	}
	if e := c.entries[k]; e != nil && c.now().Before(e.expires) && e.accepts(keyID) {
		return true, e.speculative
	}
	if f := c.flights[flightKey{key: k, keyID: keyID}]; f != nil {
		return true, f.speculative
	}
	return false, false
}

func describeDecrypt(keyID string) string {
	if keyID == "" {
		return "Decrypt data key"
	}
	return fmt.Sprintf("Decrypt data key under %q", keyID)
}

// await waits for the flight f that the caller joined (f.waiters counts it)
// and returns the caller's own copy of its result. A caller whose context
// ends first leaves; if the result arrived meanwhile it takes it anyway.
// retry is true when the flight failed only because the caller that made the
// KMS call gave up, and this caller has not: it should ask again.
func (c *Cache) await(ctx context.Context, f *flight) (plain []byte, keyARN string, retry bool, err error) {
	select {
	case <-f.done:
	case <-ctx.Done():
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	f.waiters--
	select {
	case <-f.done:
	default:
		return nil, "", false, fmt.Errorf("keycache: waiting for KMS Decrypt: %w", context.Cause(ctx))
	}
	if f.err != nil {
		return nil, "", f.leaderCanceled && ctx.Err() == nil, f.err
	}
	plain = clone(f.plain)
	if f.waiters == 0 {
		kms.Zero(f.plain)
	}
	return plain, f.keyARN, false, nil
}

// failed handles a KMS error for a Decrypt: if the KMS was unreachable and an
// expired entry is within Limits.Grace, the entry is served; else err.
func (c *Cache) failed(k cacheKey, keyID string, err error) ([]byte, string, error) {
	if c.lim.Grace <= 0 || !unavailable(err) {
		return nil, "", err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, "", err
	}
	e := c.entries[k]
	// A key prefetched and never used is not one the mount was reading
	// with: grace does not make a file readable that nobody opened before
	// the KMS went away.
	if e == nil || e.speculative || !e.accepts(keyID) || !c.now().Before(e.expires.Add(c.lim.Grace)) {
		return nil, "", err
	}
	plain, arn := c.serveLocked(e)
	c.graceHits.Add(1)
	return plain, arn, nil
}

// unavailable reports whether err says the KMS could not answer (as opposed
// to answering no): the only failures Limits.Grace covers.
func unavailable(err error) bool {
	if errors.Is(err, kms.ErrUnavailable) || kms.Code(err) == kms.CodeDependencyTimeout ||
		errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}

// serveLocked counts one use of e and returns a copy of its key, evicting the
// entry if that was its last permitted use.
func (c *Cache) serveLocked(e *entry) ([]byte, string) {
	plain := clone(e.plain)
	c.promoteLocked(e)
	c.lru.MoveToFront(e.lru)
	e.uses++
	if e.uses >= c.lim.MaxUses {
		c.evictLocked(e, reasonUses)
	}
	return plain, e.keyARN
}

// fillLocked caches plain (copied) for key k after a KMS call that started in
// generation gen and has already been handed out uses times. keyIDs are the
// identifiers the KMS accepted for this wrapped key.
func (c *Cache) fillLocked(k cacheKey, gen uint64, plain []byte, keyARN string, keyID string, uses uint64) {
	c.fill(k, gen, plain, keyARN, keyID, uses, false)
}

// fill is fillLocked; speculative fills a new entry as Prefetch does.
func (c *Cache) fill(k cacheKey, gen uint64, plain []byte, keyARN string, keyID string, uses uint64, speculative bool) {
	if c.closed || gen != c.gen {
		return // purged while the KMS call was out: do not resurrect
	}
	now := c.now()
	if e := c.entries[k]; e != nil {
		if now.Before(e.expires) {
			// Same wrapped key, same plaintext: keep the entry and its
			// accounting, learn the new name.
			if e.keyARN == "" {
				e.keyARN = keyARN
			}
			e.accept(keyID)
			c.lru.MoveToFront(e.lru)
			if uses > 0 {
				c.promoteLocked(e)
			}
			e.uses += uses
			if e.uses >= c.lim.MaxUses {
				c.evictLocked(e, reasonUses)
			}
			return
		}
		c.evictLocked(e, reasonAge) // expired (perhaps kept for Grace): replace
	}
	e := &entry{
		key:         k,
		plain:       clone(plain),
		keyARN:      keyARN,
		inserted:    now,
		expires:     now.Add(c.lim.MaxAge),
		uses:        uses,
		speculative: speculative,
	}
	e.accept(keyID)
	e.lru = c.lru.PushFront(e)
	if speculative {
		e.expires = now.Add(min(c.lim.MaxAge, c.lim.PrefetchMaxAge))
		e.age = c.unused.PushBack(e)
	} else {
		e.age = c.byAge.PushBack(e)
	}
	c.entries[k] = e
	c.counters.entries.Add(1)
	if e.uses >= c.lim.MaxUses {
		c.evictLocked(e, reasonUses)
		return
	}
	c.sweepLocked(now)
	for len(c.entries) > c.lim.Capacity {
		c.evictLocked(c.lru.Back().Value.(*entry), reasonCapacity)
	}
}

// promoteLocked makes a speculative entry an ordinary one as it is handed
// out for the first time: it then lives MaxAge from when it was filled, as
// if it had been filled by the Decrypt that uses it.
func (c *Cache) promoteLocked(e *entry) {
	if !e.speculative {
		return
	}
	c.unused.Remove(e.age)
	e.speculative = false
	e.expires = e.inserted.Add(c.lim.MaxAge)
	// byAge stays in expiry order up to PrefetchMaxAge: the sweep may find
	// this entry that much late, and Decrypt never serves it past expires.
	e.age = c.byAge.PushBack(e)
	c.prefetchUsed.Add(1)
}

// sweepLocked evicts the entries past MaxAge + Grace. Entries are in byAge in
// insertion order and MaxAge is the same for all, so the expired ones are a
// prefix of the list.
func (c *Cache) sweepLocked(now time.Time) {
	for _, l := range []*list.List{c.byAge, c.unused} {
		for el := l.Front(); el != nil; el = l.Front() {
			e := el.Value.(*entry)
			if now.Before(e.expires.Add(c.lim.Grace)) {
				break
			}
			c.evictLocked(e, reasonAge)
		}
	}
}

// evictLocked removes e and zeroes its key.
func (c *Cache) evictLocked(e *entry, reason int) {
	kms.Zero(e.plain)
	c.lru.Remove(e.lru)
	if e.speculative {
		c.unused.Remove(e.age)
		c.prefetchUnused.Add(1)
	} else {
		c.byAge.Remove(e.age)
	}
	delete(c.entries, e.key)
	c.counters.entries.Add(-1)
	c.evictions[reason].Add(1)
}

// Put caches the data key dk (as returned by GenerateDataKey) for encryption
// context ec, so that the first Decrypt of dk.CiphertextBlob is a hit. It
// copies dk.Plaintext; the caller still owns and zeroes dk. dk.KeyID, the key
// ARN, is remembered as the key Decrypt may name. Put does not count as a use.
// A DataKey without plaintext or wrapped key is ignored.
func (c *Cache) Put(dk kms.DataKey, ec kms.EncryptionContext) {
	c.put(dk, ec, "")
}

func (c *Cache) put(dk kms.DataKey, ec kms.EncryptionContext, alsoKeyID string) {
	if len(dk.Plaintext) == 0 || len(dk.CiphertextBlob) == 0 {
		return // nothing a later Decrypt could be answered with
	}
	k := keyFor(dk.CiphertextBlob, ec)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.fillLocked(k, c.gen, dk.Plaintext, dk.KeyID, alsoKeyID, 0)
}

// ReportBytes adds n to the bytes processed under the key wrapped (with
// context ec), and evicts the entry once the total exceeds Limits.MaxBytes.
// It does nothing if the key is not cached.
func (c *Cache) ReportBytes(wrapped []byte, ec kms.EncryptionContext, n uint64) {
	k := keyFor(wrapped, ec)
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[k]
	if e == nil {
		return
	}
	if e.bytes+n < e.bytes { // saturate rather than wrap
		e.bytes = ^uint64(0)
	} else {
		e.bytes += n
	}
	if e.bytes > c.lim.MaxBytes {
		c.evictLocked(e, reasonBytes)
	}
}

// Evict removes the key wrapped (with context ec) from the cache and zeroes
// it; the next Decrypt asks the KMS. It reports whether the key was cached.
func (c *Cache) Evict(wrapped []byte, ec kms.EncryptionContext) bool {
	k := keyFor(wrapped, ec)
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[k]
	if e == nil {
		return false
	}
	c.evictLocked(e, reasonExplicit)
	return true
}

// Purge evicts and zeroes every entry. KMS calls in flight still answer their
// callers but their result is not cached. Call it at unmount.
func (c *Cache) Purge() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.purgeLocked()
}

func (c *Cache) purgeLocked() {
	c.gen++
	for _, l := range []*list.List{c.byAge, c.unused} {
		for el := l.Front(); el != nil; el = l.Front() {
			c.evictLocked(el.Value.(*entry), reasonExplicit)
		}
	}
}

// Close purges the cache and stops its janitor. Every later call returns
// ErrClosed (Put, ReportBytes and Evict do nothing). Close is idempotent.
func (c *Cache) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.purgeLocked()
	c.mu.Unlock()
	close(c.stopJanitor)
	<-c.janitorDone
	return nil
}

// Stats returns a snapshot of the counters.
func (c *Cache) Stats() Stats { return c.counters.snapshot() }

func (c *Cache) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// GenerateDataKey asks the KMS for a new data key, counts the call, and
// caches the key (as Put) so that re-opening the file it protects is a hit.
// Each call makes a KMS call: every file has its own key. The returned
// plaintext belongs to the caller, who zeroes it.
func (c *Cache) GenerateDataKey(ctx context.Context, keyID string, numBytes int, ec kms.EncryptionContext) (kms.DataKey, error) {
	if c.isClosed() {
		return kms.DataKey{}, ErrClosed
	}
	dk, err := c.kms.GenerateDataKey(ctx, keyID, numBytes, ec)
	c.countCall(opGenerateDataKey, err)
	if err != nil {
		dk.Zero()
		return kms.DataKey{}, fmt.Errorf("keycache: GenerateDataKey under %q: %w", keyID, err)
	}
	c.put(dk, ec, keyID)
	return dk, nil
}

// GenerateDataKeyWithoutPlaintext passes through to the KMS, counted.
func (c *Cache) GenerateDataKeyWithoutPlaintext(ctx context.Context, keyID string, numBytes int, ec kms.EncryptionContext) ([]byte, string, error) {
	if c.isClosed() {
		return nil, "", ErrClosed
	}
	blob, arn, err := c.kms.GenerateDataKeyWithoutPlaintext(ctx, keyID, numBytes, ec)
	c.countCall(opGenerateDataKeyWithoutPlaintext, err)
	if err != nil {
		return nil, "", fmt.Errorf("keycache: GenerateDataKeyWithoutPlaintext under %q: %w", keyID, err)
	}
	return blob, arn, nil
}

// Encrypt passes through to the KMS, counted. Nothing is cached: Encrypt
// protects small secrets, not data keys read back through this cache.
func (c *Cache) Encrypt(ctx context.Context, keyID string, plaintext []byte, ec kms.EncryptionContext) ([]byte, string, error) {
	if c.isClosed() {
		return nil, "", ErrClosed
	}
	blob, arn, err := c.kms.Encrypt(ctx, keyID, plaintext, ec)
	c.countCall(opEncrypt, err)
	if err != nil {
		return nil, "", fmt.Errorf("keycache: Encrypt under %q: %w", keyID, err)
	}
	return blob, arn, nil
}

// ReEncrypt passes through to the KMS, counted. The cache entry for the old
// wrapped key, if any, stays until its limits end it; the new wrapped key is
// cached on its first Decrypt.
func (c *Cache) ReEncrypt(ctx context.Context, ciphertext []byte, srcEC kms.EncryptionContext, destKeyID string, destEC kms.EncryptionContext) ([]byte, string, string, error) {
	if c.isClosed() {
		return nil, "", "", ErrClosed
	}
	blob, src, dst, err := c.kms.ReEncrypt(ctx, ciphertext, srcEC, destKeyID, destEC)
	c.countCall(opReEncrypt, err)
	if err != nil {
		return nil, "", "", fmt.Errorf("keycache: ReEncrypt to %q: %w", destKeyID, err)
	}
	return blob, src, dst, nil
}

func clone(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append(make([]byte, 0, len(b)), b...)
}
