package volume

// The background write-out of compressed files (compress.go). A file held
// in memory is stored when its last writer closes it, but compressing it
// is most of the work of storing it: done in the close, it would hold up
// the application (cp -a closes one file and creates the next). So the
// release hands the file to a few workers and returns; the workers
// compress, encrypt and write while the application goes on, and fsync
// writes out a file itself. The kernel sends RELEASE after close(2) has
// returned, so nothing an application sees waits for it.
//
// What this gives up (docs/ARCHITECTURE.md): a write-out that fails after
// close, which only a full disk can make fail on the local backend, is
// logged and its data is lost, as data the kernel's writeback cache fails
// to write is; fsync reports it. Pending bytes are bounded: past
// writeOutPendingMax a close writes out by itself.

import (
	"context"
	"runtime"
	"sync"
)

// WriteOuts counts the files held in memory that have been stored
// (compress.go). A stat of a stored file taken before the count moved may
// predate a write-out that has finished since, and so the file's size:
// take the count, stat, look at StagedSize, and stat again if the count
// moved.
func (v *Volume) WriteOuts() uint64 { return v.writeOuts.Load() }

// writeOutPendingMax bounds the memory of files waiting to be written out.
const writeOutPendingMax = 256 << 20

type writeOutQueue struct {
	v    *Volume
	jobs chan writeOutJob
	wg   sync.WaitGroup

	mu      sync.Mutex
	pending int64 // bytes of the files queued
	jobsOut int   // jobs queued or running
	idle    sync.Cond
	closed  bool
}

type writeOutJob struct {
	h *Handle
	n int64
}

func newWriteOutQueue(v *Volume) *writeOutQueue {
	q := &writeOutQueue{v: v, jobs: make(chan writeOutJob, 4096)}
	q.idle.L = &q.mu
	// Half the Ps: the workers must not starve the goroutines that answer
	// the kernel, whose latency is what a cp -a waits for. With every P
	// (2 here) cp -a of a source tree took 1.17x as long as without
	// compression; with one, 0.97x (docs/BENCHMARKS.md, compression).
	for range max(1, runtime.GOMAXPROCS(0)/2) {
		q.wg.Add(1)
		go func() {
			defer q.wg.Done()
			for j := range q.jobs {
				q.finish(j)
			}
		}()
	}
	return q
}

// offer queues the close of h, whose file is staged and dirty; false: the
// queue is full or closed, and the caller writes out itself. The content
// lock is held.
func (q *writeOutQueue) offer(h *Handle, n int64) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed || q.pending+n > writeOutPendingMax {
		return false
	}
	select {
	case q.jobs <- writeOutJob{h, n}:
		q.pending += n
		q.jobsOut++
		return true
	default:
		return false
	}
}

// finish writes the file out (unless something else did meanwhile) and
// completes the handle's close.
func (q *writeOutQueue) finish(j writeOutJob) {
	h := j.h
	h.st.content.Lock()
	h.closeStage(context.Background())
	h.st.content.Unlock()
	q.mu.Lock()
	q.pending -= j.n
	q.mu.Unlock()
	h.v.release(h.st)
	if err := h.f.Close(); err != nil {
		h.v.log.Error("close: the backing file did not close cleanly", "path", "/"+h.name, "err", err)
	}
	q.mu.Lock()
	if q.jobsOut--; q.jobsOut == 0 {
		q.idle.Broadcast()
	}
	q.mu.Unlock()
}

// wait returns once every close queued so far is complete.
func (q *writeOutQueue) wait() {
	if q == nil {
		return
	}
	q.mu.Lock()
	for q.jobsOut > 0 {
		q.idle.Wait()
	}
	q.mu.Unlock()
}

// close writes out everything queued and stops the workers.
func (q *writeOutQueue) close() {
	if q == nil {
		return
	}
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return
	}
	q.closed = true
	close(q.jobs)
	q.mu.Unlock()
	q.wg.Wait()
}

// closeStage writes out the file's stage, if dirty, as the close of h: a
// failure is logged (the close already returned to the application) and
// the stage stops naming h. The content lock is held.
func (h *Handle) closeStage(ctx context.Context) {
	s := h.st.stage
	if s == nil || !s.dirty {
		return
	}
	if err := h.writeOut(ctx, false); err != nil {
		h.v.log.Error("close: the file could not be written out; its changes since the last fsync are lost", "path", "/"+h.name, "err", err)
		h.v.stats.errors.Add(1)
	}
	if s.writer == h {
		s.dirty, s.writer = false, nil
	}
}

// writeOutOpen writes out the files still held in memory by handles never
// closed: at unmount the kernel drops RELEASE requests it has not yet
// handed over (fuse_abort_conn), so a file closed just before may never be
// released here.
func (v *Volume) writeOutOpen() {
	v.mu.Lock()
	var open []*fileState
	for _, st := range v.files {
		open = append(open, st)
	}
	v.mu.Unlock()
	for _, st := range open {
		st.content.Lock()
		if s := st.stage; s != nil && s.dirty && s.writer != nil {
			s.writer.closeStage(context.Background())
		}
		st.content.Unlock()
	}
}
