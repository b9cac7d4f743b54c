package volume

import (
	"context"
	"path"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/kms"
)

// KeyPrefetcher is what read-ahead of keys needs from the key source (the
// key cache implements it): a speculative Decrypt, and whether a Decrypt
// would be answered without a KMS call of its own.
type KeyPrefetcher interface {
	// Prefetch unwraps a key ahead of need, reporting whether it made a KMS
	// call (none when the key is known already).
	Prefetch(ctx context.Context, keyID string, wrapped []byte, ec kms.EncryptionContext) (bool, error)
	// KeyState: known when cached or in flight; speculative when that
	// comes from Prefetch and has not been used yet.
	KeyState(keyID string, wrapped []byte, ec kms.EncryptionContext) (known, speculative bool)
}

// Read-ahead of keys. Every file has its own data key in per-object mode,
// so a reader of many files waits for one KMS Decrypt per file, in series:
// at 10 ms per call, 100 files per second whatever the disk does. Readers of
// trees (diff -r, rsync --checksum, cp -a, tar, a backup) open the regular
// files of a directory one after the other, in name order (the ones that
// sort) or in readdir order (the ones that do not). So when a file's key
// has to come from the KMS, the keys of the files that follow it in its
// directory are unwrapped ahead of the reader, in parallel, as the kernel
// reads pages ahead of a sequential reader:
//
//   - The window starts at keyWindowMin files and doubles each time the
//     reader opens a file whose key was prefetched, up to keyWindowMax; an
//     open whose key was not prefetched, outside the window, starts again
//     from keyWindowMin.
//   - At most keyPrefetchParallel prefetches are out at once.
//   - The budget: a prefetch starts only while the prefetched keys not yet
//     used (in flight, waiting in the cache, or dropped unused) number
//     fewer than keyBudgetSlack plus one tenth of the keys readers needed
//     (opens that found no key cached, prefetched or not). So however the
//     mount is used, the speculative Decrypts nobody needed stay under
//     keyBudgetSlack + 10% of the keys needed: at most 1.1 KMS calls per
//     file read, plus a constant. The budget grows back as readers open
//     files, so a mount that wasted it once prefetches again later.
//
// Prefetching never makes a file readable that would not be otherwise: the
// key is unwrapped by the same KMS, under the same key ID and context, as
// the reader's own Decrypt would be, and a refused prefetch caches nothing.
// An unused prefetched key stays cached only for the key cache's
// PrefetchMaxAge (15 s), not MaxAge; see docs/ARCHITECTURE.md.
const (
	keyWindowMin        = 4
	keyWindowMax        = 64
	keyPrefetchParallel = 32
	keyBudgetSlack      = 32
	// keyStreamIdle: a directory nobody opened a file of for this long is
	// forgotten (its listing is taken again next time).
	keyStreamIdle = 5 * time.Second
	keyStreams    = 16 // directories followed at once
	keyQueueMax   = 4 * keyWindowMax
	// keyPrefetchTimeout bounds one prefetch (header read and Decrypt).
	keyPrefetchTimeout = 30 * time.Second
)

// keyReadAhead follows the directories whose files are being opened and
// prefetches the keys of the files to come.
type keyReadAhead struct {
	v  *Volume
	kp KeyPrefetcher

	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	streams map[string]*keyStream // by directory
	queue   []string              // files whose key to prefetch, in order
	running int
	closed  bool
	// issued counts prefetches that made a KMS call; used counts opens that
	// found their key prefetched, needed those that found no key cached
	// (hits included).
	issued, used, needed uint64
	wg                   sync.WaitGroup
}

// keyStream is one directory being read: its regular files in both orders
// a reader may follow, and how far ahead keys were asked for.
type keyStream struct {
	dir     string
	listing bool // the listing is being taken
	orders  [2]keyOrder
	window  int
	last    time.Time
	// pending is the open that arrived while the listing was taken.
	pending    string
	pendingHit bool
	prevName   string
}

// keyOrder is the files of a directory in one order, and the first index
// not yet queued.
type keyOrder struct {
	names []string
	index map[string]int
	next  int
}

func newKeyReadAhead(v *Volume, kp KeyPrefetcher) *keyReadAhead {
	ctx, cancel := context.WithCancel(context.Background())
	return &keyReadAhead{v: v, kp: kp, ctx: ctx, cancel: cancel, streams: map[string]*keyStream{}}
}

// openingKey carries the name of the file whose header is being opened.
type openingKey struct{}

// withOpening names the file whose key a Decrypt made with ctx is for.
func withOpening(ctx context.Context, name string) context.Context {
	return context.WithValue(ctx, openingKey{}, name)
}

// readAheadKeys is the volume's key source with read-ahead: a Decrypt of
// a file's key, for a file being opened (withOpening), tells the read-ahead
// whether the key was prefetched (a hit) or has to come from the KMS now.
type readAheadKeys struct {
	kms.Crypto
	ra *keyReadAhead
}

func (k readAheadKeys) Decrypt(ctx context.Context, keyID string, wrapped []byte, ec kms.EncryptionContext) ([]byte, string, error) {
	if name, ok := ctx.Value(openingKey{}).(string); ok && ec[ctxFile] != "" {
		known, speculative := k.ra.kp.KeyState(keyID, wrapped, ec)
		if !known || speculative {
			k.ra.opened(name, speculative)
		}
	}
	return k.Crypto.Decrypt(ctx, keyID, wrapped, ec)
}

// opened is told that the reader opened name, whose key was prefetched
// (hit) or was not known at all.
func (r *keyReadAhead) opened(name string, hit bool) {
	dir, base := path.Split(name)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	r.needed++
	if hit {
		r.used++
	}
	now := time.Now()
	s := r.streams[dir]
	if s != nil && !s.listing && now.Sub(s.last) > keyStreamIdle {
		s = nil // stale listing: take it again
	}
	if s == nil {
		r.forgetIdleLocked(now)
		s = &keyStream{dir: dir, listing: true, window: keyWindowMin}
		r.streams[dir] = s
		r.wg.Add(1)
		go r.list(s)
	}
	s.last = now
	if s.listing {
		s.pending, s.pendingHit = base, hit
		return
	}
	r.advanceLocked(s, base, hit)
	r.pumpLocked()
}

// forgetIdleLocked drops idle streams, and the least recently used one if
// keyStreams are still followed.
func (r *keyReadAhead) forgetIdleLocked(now time.Time) {
	var oldest *keyStream
	for d, s := range r.streams {
		if s.listing {
			continue
		}
		if now.Sub(s.last) > keyStreamIdle {
			delete(r.streams, d)
		} else if oldest == nil || s.last.Before(oldest.last) {
			oldest = s
		}
	}
	if len(r.streams) >= keyStreams && oldest != nil {
		delete(r.streams, oldest.dir)
	}
}

// list takes the listing of s's directory: its regular files in readdir
// order and in name order.
func (r *keyReadAhead) list(s *keyStream) {
	defer r.wg.Done()
	ctx, cancel := context.WithTimeout(r.ctx, keyPrefetchTimeout)
	defer cancel()
	ents, err := r.v.be.ReadDir(ctx, path.Clean("/" + s.dir)[1:])
	var listed []string
	if err == nil {
		for _, e := range ents {
			// Mode 0: the backend does not know the type without a stat.
			if m := e.Mode & syscall.S_IFMT; m == syscall.S_IFREG || m == 0 {
				listed = append(listed, e.Name)
			}
		}
	}
	sorted := append([]string(nil), listed...)
	sort.Strings(sorted)
	r.mu.Lock()
	defer r.mu.Unlock()
	s.listing = false
	for i, names := range [][]string{sorted, listed} {
		o := &s.orders[i]
		o.names, o.index = names, make(map[string]int, len(names))
		for j, n := range names {
			o.index[n] = j
		}
	}
	if s.pending != "" && !r.closed {
		r.advanceLocked(s, s.pending, s.pendingHit)
		r.pumpLocked()
	}
	s.pending = ""
}

// advanceLocked moves s on to base, just opened: it picks the order the
// reader follows (the one in which base comes shortly after the file
// opened before it; name order unless readdir order fits better), resizes
// the window and queues the files up to the window's end.
func (r *keyReadAhead) advanceLocked(s *keyStream, base string, hit bool) {
	pick := 0
	if prev := s.prevName; prev != "" {
		best := -1
		for i := range s.orders {
			o := &s.orders[i]
			a, okA := o.index[prev]
			b, okB := o.index[base]
			if okA && okB && b > a && (best < 0 || b-a < best) {
				pick, best = i, b-a
			}
		}
	}
	s.prevName = base
	o := &s.orders[pick]
	i, ok := o.index[base]
	if !ok {
		return // not in the listing (created since): nothing to follow
	}
	switch {
	case hit:
		s.window = min(2*s.window, keyWindowMax)
	case i >= o.next:
		s.window = keyWindowMin // a jump: start small again
	}
	end := min(i+1+s.window, len(o.names))
	for j := max(o.next, i+1); j < end; j++ {
		if len(r.queue) == keyQueueMax {
			r.queue = r.queue[1:] // oldest first out: its reader has moved on
		}
		r.queue = append(r.queue, path.Join(s.dir, o.names[j]))
	}
	o.next = max(o.next, end)
}

// pumpLocked starts queued prefetches while the parallel bound and the
// budget allow.
func (r *keyReadAhead) pumpLocked() {
	for len(r.queue) > 0 && r.running < keyPrefetchParallel && !r.closed {
		if r.issued+uint64(r.running) >= keyBudgetSlack+r.used+r.needed/10 {
			return // over budget: wait for the reader to use what it has
		}
		name := r.queue[0]
		r.queue = r.queue[1:]
		r.running++
		r.wg.Add(1)
		go r.prefetch(name)
	}
}

// prefetch reads name's header and unwraps its key ahead of the reader.
func (r *keyReadAhead) prefetch(name string) {
	defer r.wg.Done()
	issued := r.prefetchKey(name)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.running--
	if issued {
		r.issued++
	}
	r.pumpLocked()
}

func (r *keyReadAhead) prefetchKey(name string) bool {
	ctx, cancel := context.WithTimeout(r.ctx, keyPrefetchTimeout)
	defer cancel()
	f, err := r.v.be.Open(ctx, name, syscall.O_RDONLY, 0, nil)
	if err != nil {
		return false
	}
	defer f.Close()
	region := make([]byte, r.v.layout.HeaderSize)
	if n, _ := f.ReadAt(region, 0); n < len(region) {
		return false // empty (no key) or short: the reader will say why
	}
	p, err := envelope.ParseHeader(region)
	if err != nil || p.VolumeID != r.v.id {
		return false
	}
	ec := fileContext(r.v.cfg.VolumeID, p.FileID)
	if p.Mode == envelope.ModeBucketKey {
		ec = bucketContext(r.v.cfg.VolumeID)
	}
	issued, err := r.kp.Prefetch(ctx, p.KeyID, p.WrappedKey, ec)
	if err != nil {
		r.v.log.Debug("key prefetch failed", "path", "/"+name, "err", err)
	}
	return issued
}

// close stops the read-ahead and waits for prefetches in flight.
func (r *keyReadAhead) close() {
	if r == nil {
		return
	}
	r.mu.Lock()
	r.closed = true
	r.queue = nil
	r.mu.Unlock()
	r.cancel()
	r.wg.Wait()
}

// KeyReadAheadStats are the read-ahead's counts.
type KeyReadAheadStats struct {
	Issued, Used, Needed uint64
}

func (r *keyReadAhead) stats() KeyReadAheadStats {
	if r == nil {
		return KeyReadAheadStats{}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return KeyReadAheadStats{Issued: r.issued, Used: r.used, Needed: r.needed}
}
