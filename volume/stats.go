package volume

import "sync/atomic"

// counters are the volume's own counters; KMS and cache counters live in
// the key cache.
type counters struct {
	bytesRead, bytesWritten atomic.Uint64
	filesCreated            atomic.Uint64 // headers (data keys) created
	filesOpened             atomic.Uint64
	errors                  atomic.Uint64 // failures reported to applications (EIO, EACCES from the KMS)
	authFailures            atomic.Uint64 // blocks or headers that failed authentication
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

// CountError records a failure reported to an application; fs calls it at
// the FUSE boundary.
func (v *Volume) CountError(errno int, auth bool) {
	v.stats.errors.Add(1)
	if auth {
		v.stats.authFailures.Add(1)
	}
}
