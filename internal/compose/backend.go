package compose

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/kmsfs/kmsfs/backend"
	"github.com/kmsfs/kmsfs/backend/local"
	"github.com/kmsfs/kmsfs/backend/s3"
)

// BackendOptions carry the settings of the S3 backend.
type BackendOptions struct {
	S3Endpoint  string
	S3Region    string
	S3PathStyle bool
	// S3LeaseTTL is the writer lease's TTL (0: s3.DefaultLeaseTTL).
	S3LeaseTTL time.Duration
	StagingDir string
	// Meta is the metadata database URL of a shared volume ("": the one
	// the volume config names, if it is shared).
	Meta string
	// OwnsPrefix: this process is the volume's mount, so multipart uploads
	// found under the prefix are leftovers of a crash and are aborted.
	OwnsPrefix bool
	// Salvage opens a shared volume's bucket without its database: the
	// read-only backend/shared.Salvage, which rebuilds the files from the
	// chunk objects.
	Salvage bool
}

// DefaultS3LeaseTTL is the S3 writer lease's TTL when none is given.
const DefaultS3LeaseTTL = s3.DefaultLeaseTTL

// IsS3 reports whether spec names an S3 backend (s3://bucket/prefix).
func IsS3(spec string) bool { return strings.HasPrefix(spec, "s3://") }

// OpenBackend opens a local directory, or an s3://bucket/prefix URL.
func OpenBackend(ctx context.Context, spec string, o BackendOptions) (backend.Backend, error) {
	if IsS3(spec) {
		return openS3Volume(ctx, spec, o)
	}
	if strings.Contains(spec, "://") {
		return nil, fmt.Errorf("backend %q: unknown scheme (want a directory or s3://bucket/prefix)", spec)
	}
	st, err := os.Stat(spec)
	if err != nil {
		return nil, fmt.Errorf("backend %s: %w", spec, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("backend %s: not a directory", spec)
	}
	return local.New(spec)
}

// openS3 opens an s3://bucket/prefix backend. A mount owns the prefix and,
// once it holds the writer lease, aborts every multipart upload left by a
// crashed kmsfs; other commands
// (init, cat) only abort uploads older than a day, so they never cut the
// upload of a mount running at the same time.
func openS3(ctx context.Context, spec string, o BackendOptions) (backend.Backend, error) {
	bucket, prefix, err := s3.ParseURL(spec)
	if err != nil {
		return nil, err
	}
	stale := 24 * time.Hour
	if o.OwnsPrefix {
		stale = 0
	}
	return s3.New(ctx, s3.Config{
		Bucket: bucket, Prefix: prefix, Endpoint: o.S3Endpoint, Region: o.S3Region,
		PathStyle: o.S3PathStyle, StagingDir: o.StagingDir, StaleUploadAge: stale,
		LeaseTTL: o.S3LeaseTTL,
	})
}
