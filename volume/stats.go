package volume

import (
	"sync/atomic"
	"time"
)

// counters are the volume's own counters; KMS and cache counters live in
// the key cache.
type counters struct {
	bytesRead, bytesWritten atomic.Uint64
	filesCreated            atomic.Uint64 // headers (data keys) created
	filesOpened             atomic.Uint64
	errors                  atomic.Uint64 // failures reported to applications (EIO, EACCES from the KMS)
	authFailures            atomic.Uint64 // blocks, headers or xattr values that failed authentication
}

// Stats is a snapshot of the volume counters.
type Stats struct {
	BytesRead, BytesWritten uint64
	FilesCreated            uint64
	FilesOpened             uint64
	Errors                  uint64
	AuthFailures            uint64
	PrefetchedKeys          int // data keys waiting in the per-object prefetch pool
}

// Stats returns a snapshot of the counters.
func (v *Volume) Stats() Stats {
	return Stats{
		BytesRead: v.stats.bytesRead.Load(), BytesWritten: v.stats.bytesWritten.Load(),
		FilesCreated: v.stats.filesCreated.Load(), FilesOpened: v.stats.filesOpened.Load(),
		Errors: v.stats.errors.Load(), AuthFailures: v.stats.authFailures.Load(),
		PrefetchedKeys: v.pool.ready(),
	}
}

// CountError records a failure reported to an application (one that
// Classify marks Report); fs calls it at the FUSE boundary.
func (v *Volume) CountError(f Failure) {
	v.stats.errors.Add(1)
	if f.Auth {
		v.stats.authFailures.Add(1)
	}
}

// RequestObserver records how long the requests of a mount of the volume
// take, by operation (metrics implements it with histograms). The mount asks
// it once per operation, when it starts, for the function that records that
// operation, so that recording a request costs no lookup and no allocation.
type RequestObserver interface {
	RequestRecorder(op string) func(time.Duration)
}

// ObserveRequests makes o the observer of the requests of the volume's
// mounts: they report to it through the volume, as they report the errors
// they count, so whoever reads the volume's counters can time its requests
// too. Call it before mounting; a mount asks once, when it starts.
func (v *Volume) ObserveRequests(o RequestObserver) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.requests = o
}

// RequestObserver returns what ObserveRequests set, or nil.
func (v *Volume) RequestObserver() RequestObserver {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.requests
}
