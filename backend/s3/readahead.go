package s3

import (
	"context"
	"io"
	"slices"
	"sync"
	"time"
)

// Reads of an object are served from ranged GETs whose response bodies are
// read straight into the caller's buffer: a sequential reader consumes one
// GET body after another, and the bytes go from the socket to the volume's
// block buffer, which it decrypts at once while the data is still in the
// CPU cache. (The previous design fetched 8 MiB windows into memory and
// copied them out later: on the 256 MiB cold read through FUSE, the copy
// out of DRAM, zeroing and page faults of those windows were a third of the
// mount's CPU time, and this machine is CPU-bound.)
//
// Readahead is the GETs already open past the one being read: each has its
// response under way, and the kernel's socket buffer holds what the server
// sent ahead (TCP flow control stops the server when it is full, so an
// abandoned stream costs a socket buffer, not the whole range). Against a
// remote S3, where a GET takes tens of milliseconds to its first byte,
// those open streams hide the latency.
const (
	// firstRange is read at open, with the object's metadata: the header
	// and first blocks of most files.
	firstRange = 1 << 20
	// streamWindow is the range of one sequential GET.
	streamWindow = 8 << 20
	// aheadStreams is how many GETs a sequential reader keeps open past the
	// one it is reading.
	aheadStreams = 2
	// seqSlack: a read starting within this distance of the furthest end
	// asked for so far (either way) is sequential. FUSE serves the kernel's
	// readahead requests concurrently (a cold dd through a kmsfs mount has
	// up to 7 reads of 1 MiB under way at once), so they arrive out of
	// order and far apart.
	seqSlack = 16 << 20
	// orderWait is how long a read that arrived ahead of its predecessor
	// waits for it to consume the bytes in between while other reads are
	// under way; soloWait, when none is (the predecessor may still be on
	// its way through FUSE, or may never come: a reader seeking forward).
	// After that it skips them (the predecessor, if it comes, opens a GET
	// of its own).
	orderWait = 20 * time.Millisecond
	soloWait  = 2 * time.Millisecond
	// orderSlack: a read that is not sequential uses a stream only within
	// this distance past the stream's position.
	orderSlack = 1 << 20
	// maxStreams bounds the open GETs of one file (several readers at
	// different offsets each keep a few open).
	maxStreams = 8
	// maxBodyRetries: a response body that fails mid-way (connection
	// reset) is replaced by a new GET this many times per read.
	maxBodyRetries = 3
)

// openFunc starts a GET of n bytes at off of the object version being
// read; the caller reads the body (exactly n bytes) and closes it.
type openFunc func(ctx context.Context, off, n int64) (io.ReadCloser, error)

// stream is one ranged GET: [start, end) requested, pos the next byte its
// body yields.
type stream struct {
	start, end int64
	pos        int64
	ready      chan struct{} // closed once the GET answered: body or err set
	body       io.ReadCloser
	err        error
	busy       bool // a reader is reading the body (without readahead.mu)
	closed     bool // dropped; the busy reader, if any, closes the body
}

// readahead serves reads of one object version.
type readahead struct {
	mu      sync.Mutex
	streams []*stream
	moved   chan struct{} // closed and replaced whenever a stream advances or goes
	seedOff int64         // bytes already fetched (the first range, read at open)
	seed    []byte
	next    int64 // the furthest end a sequential read asked for
	active  int   // readAt calls under way
	moves   int64 // streams advanced so far (notify calls)
}

// seed records bytes already fetched (the first range, read at open).
func (r *readahead) seedWith(off int64, data []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seedOff, r.seed = off, data
}

// reset drops every stream and the seed (the object changed, or the last
// handle closed).
func (r *readahead) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for len(r.streams) > 0 {
		r.close(r.streams[0])
	}
	r.seed, r.seedOff, r.next = nil, 0, 0
	r.notify()
}

// notify wakes the reads waiting for a stream to move. r.mu held.
func (r *readahead) notify() {
	r.moves++
	if r.moved != nil {
		close(r.moved)
		r.moved = nil
	}
}

// changed returns a channel closed at the next notify. r.mu held.
func (r *readahead) changed() <-chan struct{} {
	if r.moved == nil {
		r.moved = make(chan struct{})
	}
	return r.moved
}

// close drops s from the list and closes its body unless a reader holds
// it (that reader closes it). r.mu held.
func (r *readahead) close(s *stream) {
	for i, k := range r.streams {
		if k == s {
			r.streams = slices.Delete(r.streams, i, i+1)
			break
		}
	}
	if s.closed {
		return
	}
	s.closed = true
	if !s.busy {
		go s.closeBody()
	}
}

// closeBody closes the body once the GET has answered. Closing a body not
// read to its end closes the connection (net/http cannot reuse it).
func (s *stream) closeBody() {
	<-s.ready
	if s.body != nil {
		s.body.Close()
	}
}

// open starts a GET of [off, off+n) and adds its stream. r.mu held.
func (r *readahead) open(ctx context.Context, get openFunc, off, n int64) *stream {
	s := &stream{start: off, end: off + n, pos: off, ready: make(chan struct{})}
	r.streams = append(r.streams, s)
	go func() {
		s.body, s.err = get(ctx, off, n)
		close(s.ready)
	}()
	// Too many open: close the one whose position is farthest behind.
	for len(r.streams) > maxStreams {
		var oldest *stream
		for _, k := range r.streams {
			if !k.busy && k != s && (oldest == nil || k.pos < oldest.pos) {
				oldest = k
			}
		}
		if oldest == nil {
			break
		}
		r.close(oldest)
	}
	return s
}

// find returns the stream that will yield off soonest: one at off, or one
// before it within reach (its whole range for a sequential read, else
// orderSlack). r.mu held.
func (r *readahead) find(off int64, sequential bool) *stream {
	var best *stream
	for _, s := range r.streams {
		if off < s.pos || off >= s.end || (!sequential && off-s.pos > orderSlack) {
			continue
		}
		if best == nil || s.pos > best.pos {
			best = s
		}
	}
	return best
}

// passed says whether a stream has gone past off. r.mu held.
func (r *readahead) passed(off int64) bool {
	for _, s := range r.streams {
		if s.pos > off {
			return true
		}
	}
	return false
}

// readAt fills p from offset off of an object of the given size.
func (r *readahead) readAt(ctx context.Context, get openFunc, p []byte, off, size int64) (int, error) {
	if off >= size {
		return 0, io.EOF
	}
	want := min(int64(len(p)), size-off)
	r.mu.Lock()
	r.active++
	sequential := off >= r.next-seqSlack && off <= r.next+seqSlack
	if !sequential || off+want > r.next {
		// Furthest so far, or a jump (a new pass from elsewhere).
		r.next = off + want
	}
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.active--
		r.mu.Unlock()
	}()
	var total int64
	retries := 0
	var waitSince time.Time
	var waitMoves int64
	for total < want {
		o := off + total
		r.mu.Lock()
		if o >= r.seedOff && o < r.seedOff+int64(len(r.seed)) {
			total += int64(copy(p[total:want], r.seed[o-r.seedOff:]))
			r.mu.Unlock()
			continue
		}
		s := r.find(o, sequential)
		if s != nil && (s.busy || s.pos < o) {
			// A read of the bytes before ours is under way or (FUSE
			// reordering) about to be: wait for the stream to get here, as
			// long as the reads of this file make progress (the one before
			// ours may be finishing the previous stream).
			if waitSince.IsZero() || r.moves != waitMoves {
				waitSince, waitMoves = time.Now(), r.moves
			}
			limit := soloWait
			if r.active > 1 {
				limit = orderWait
			}
			if left := limit - time.Since(waitSince); s.busy || left > 0 {
				ch := r.changed()
				r.mu.Unlock()
				t := time.NewTimer(max(left, time.Millisecond))
				select {
				case <-ch:
				case <-t.C:
				case <-ctx.Done():
				}
				t.Stop()
				if err := ctx.Err(); err != nil {
					return int(total), err
				}
				continue
			}
			// Waited long enough: skip the bytes in between.
		}
		ahead := sequential
		if s == nil {
			n := want - total
			if sequential && !r.passed(o) {
				n = max(n, streamWindow)
			} else {
				// Random, or a read that arrived after its successors
				// and found its bytes skipped: only what it needs.
				ahead = false
			}
			s = r.open(ctx, get, o, min(n, size-o))
		}
		s.busy = true
		if ahead {
			// Keep aheadStreams GETs open past this one.
			end := s.end
			for i := 0; i < aheadStreams && end < size; i++ {
				next := r.find(end, true)
				if next == nil {
					next = r.open(ctx, get, end, min(streamWindow, size-end))
				}
				end = next.end
			}
		}
		r.mu.Unlock()

		n, err, retry := s.read(p[total:min(want, total+s.end-o)], o)
		total += int64(n)

		r.mu.Lock()
		s.busy = false
		s.pos = o + int64(n)
		if s.closed {
			go s.closeBody()
		} else if err != nil || s.pos == s.end {
			r.close(s)
		}
		r.notify()
		r.mu.Unlock()
		waitSince = time.Time{}
		if err != nil {
			if !retry || ctx.Err() != nil || retries >= maxBodyRetries {
				return int(total), err
			}
			retries++ // a body cut mid-way: the next turn opens a new GET
		}
	}
	if total < int64(len(p)) {
		return int(total), io.EOF
	}
	return int(total), nil
}

// read reads len(p) bytes at off from the stream, which the caller holds
// (busy), first discarding the bytes between its position and off. retry
// says whether the error is of the response body (cut mid-way: a new GET
// may succeed) rather than of the GET itself (already retried by the SDK,
// or final, like a changed object).
func (s *stream) read(p []byte, off int64) (n int, err error, retry bool) {
	<-s.ready
	if s.err != nil {
		return 0, s.err, false
	}
	if gap := off - s.pos; gap > 0 {
		if _, err := io.CopyN(io.Discard, s.body, gap); err != nil {
			return 0, bodyErr(err), true
		}
	}
	n, err = io.ReadFull(s.body, p)
	if err != nil {
		return n, bodyErr(err), true
	}
	return n, nil, false
}

// bodyErr: a body that ends early is an unexpected EOF, never the EOF that
// readAt returns at the end of the object.
func bodyErr(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
