package volume

import (
	"context"
	"time"

	"github.com/kmsfs/kmsfs/backend"
	"github.com/kmsfs/kmsfs/backend/s3"
)

// openS3 opens an s3://bucket/prefix backend. A mount owns the prefix and
// aborts every multipart upload left by a crashed kmsfs; other commands
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
