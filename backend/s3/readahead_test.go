package s3

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeObject serves ranged GETs of data from memory, counting them, with
// bodies that can be told to fail after some bytes.
type fakeObject struct {
	data      []byte
	gets      atomic.Int64
	open      atomic.Int64 // bodies not closed yet
	failAfter atomic.Int64 // >0: the next body fails after this many bytes
}

type fakeBody struct {
	r      io.Reader
	o      *fakeObject
	closed atomic.Bool
}

func (b *fakeBody) Read(p []byte) (int, error) { return b.r.Read(p) }
func (b *fakeBody) Close() error {
	if !b.closed.Swap(true) {
		b.o.open.Add(-1)
	}
	return nil
}

type failingReader struct {
	r    io.Reader
	left int64
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.left <= 0 {
		return 0, errors.New("connection reset by peer")
	}
	if int64(len(p)) > f.left {
		p = p[:f.left]
	}
	n, err := f.r.Read(p)
	f.left -= int64(n)
	return n, err
}

func (o *fakeObject) get(_ context.Context, off, n int64) (io.ReadCloser, error) {
	o.gets.Add(1)
	o.open.Add(1)
	var r io.Reader = bytes.NewReader(o.data[off : off+n])
	if k := o.failAfter.Swap(0); k > 0 {
		r = &failingReader{r: r, left: k}
	}
	return &fakeBody{r: r, o: o}, nil
}

// waitClosed checks that every body gets closed (closing is asynchronous).
func (o *fakeObject) waitClosed(t *testing.T) {
	t.Helper()
	for range 500 {
		if o.open.Load() == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("%d response bodies left open after reset", o.open.Load())
}

func checkRead(t *testing.T, ra *readahead, o *fakeObject, off, n int64) {
	t.Helper()
	p := make([]byte, n)
	got, err := ra.readAt(bg, o.get, p, off, int64(len(o.data)))
	want := min(n, max(int64(len(o.data))-off, 0))
	if int64(got) != want || (err != nil && !(err == io.EOF && want < n)) {
		t.Fatalf("readAt(%d, %d) = %d, %v; want %d", off, n, got, err, want)
	}
	if want > 0 && !bytes.Equal(p[:got], o.data[off:off+want]) {
		t.Fatalf("readAt(%d, %d): wrong bytes", off, n)
	}
}

// Sequential reads are served by few GETs; random ones interleaved with them
// get the right bytes too.
func TestReadaheadSequentialAndRandom(t *testing.T) {
	o := &fakeObject{data: randBytes(7, 3*streamWindow+12345)}
	var ra readahead
	ra.seedWith(0, o.data[:firstRange])
	const step = 1 << 20
	for off := int64(0); off < int64(len(o.data)); off += step {
		checkRead(t, &ra, o, off, step)
	}
	// One GET per window past the seed (plus at most aheadStreams opened
	// past the end of what was read, none here: the file ends).
	if g := o.gets.Load(); g > 4 {
		t.Errorf("sequential read of %d bytes took %d GETs", len(o.data), g)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 300 {
		if rng.IntN(3) == 0 {
			off := rng.Int64N(int64(len(o.data)))
			checkRead(t, &ra, o, off, 1+rng.Int64N(300<<10))
			continue
		}
		// A short sequential run from somewhere.
		off := rng.Int64N(int64(len(o.data)))
		for range 1 + rng.IntN(8) {
			n := 1 + rng.Int64N(256<<10)
			checkRead(t, &ra, o, off, n)
			off += n
		}
	}
	checkRead(t, &ra, o, int64(len(o.data))-10, 100) // across the end
	ra.reset()
	o.waitClosed(t)
}

// Concurrent readers of consecutive ranges (FUSE serving the kernel's
// readahead out of order) all get their bytes, from few GETs.
func TestReadaheadConcurrentOutOfOrder(t *testing.T) {
	o := &fakeObject{data: randBytes(8, 40<<20+777)}
	var ra readahead
	const step = 1 << 20
	size := int64(len(o.data))
	for base := int64(0); base < size; base += 4 * step {
		var wg sync.WaitGroup
		errs := make(chan error, 4)
		for _, i := range rand.Perm(4) {
			off := base + int64(i)*step
			if off >= size {
				continue
			}
			wg.Go(func() {
				p := make([]byte, step)
				n, err := ra.readAt(bg, o.get, p, off, size)
				want := min(step, size-off)
				if int64(n) != want || (err != nil && err != io.EOF) || !bytes.Equal(p[:n], o.data[off:off+want]) {
					errs <- errors.New("wrong read")
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("at %d: %v", base, err)
		}
	}
	// Reordering may cost a few extra exact GETs, never one per read.
	if g := o.gets.Load(); g > 20 {
		t.Errorf("%d GETs for a 40 MiB sequential read in 1 MiB requests", g)
	}
	ra.reset()
	o.waitClosed(t)
}

// A body cut mid-way is replaced by a new GET; the read still gets the
// right bytes.
func TestReadaheadBodyFailureRetried(t *testing.T) {
	o := &fakeObject{data: randBytes(9, 20<<20)}
	var ra readahead
	checkRead(t, &ra, o, 0, 1<<20)
	o.failAfter.Store(12345) // the next GET opened (an ahead stream, or this one)
	for off := int64(1 << 20); off < int64(len(o.data)); off += 1 << 20 {
		checkRead(t, &ra, o, off, 1<<20)
	}
	ra.reset()
	o.waitClosed(t)
}
