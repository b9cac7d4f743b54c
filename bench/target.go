package bench

import (
	"context"
	"time"

	"github.com/kmsfs/kmsfs/metrics"
)

// Target is one opened kmsfs volume under test: a FUSE mount driven through
// the kernel, or the volume library driven in-process (--direct).
type Target interface {
	// Mkdir creates directory name (slash-separated, relative to the root).
	Mkdir(ctx context.Context, name string) error
	// WriteFile creates name and writes size bytes in pieces of at most
	// len(buf), each filled by fill(piece, offset), then closes it.
	WriteFile(ctx context.Context, name string, size int64, buf []byte, fill func(p []byte, off int64)) error
	// ReadFile reads name to its end in pieces of at most len(buf), hands
	// each to check(piece, offset) and returns the number of bytes read.
	ReadFile(ctx context.Context, name string, buf []byte, check func(p []byte, off int64) error) (int64, error)
	// Stats is a snapshot of the volume's counters (KMS calls, key cache).
	Stats(ctx context.Context) (metrics.Snapshot, error)
	// Close unmounts (or closes) the volume, dropping every cached key.
	Close(ctx context.Context) error
}

// OpenSpec says which volume to open and how its KMS behaves.
type OpenSpec struct {
	// Backend is the volume's backend: a directory or an s3:// URL.
	Backend string
	// WorkDir is a scratch directory of this run (mount point, logs).
	WorkDir string
	// KMSLatency and KMSRPS shape the simulated regional KMS (kmsmw).
	KMSLatency time.Duration
	KMSRPS     float64
}

// Harness creates volumes and opens them.
type Harness interface {
	// Init creates a volume of mode ("per-object" or "bucket-key") at backend.
	Init(ctx context.Context, backend, mode string) error
	// Open opens (mounts) the volume.
	Open(ctx context.Context, spec OpenSpec) (Target, error)
	// Path is "mount" or "direct", for the report.
	Path() string
}
