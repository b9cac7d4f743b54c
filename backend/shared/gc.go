package shared

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
)

// DefaultGCGrace is how old an unreferenced chunk must be before GC
// deletes it: a reader that opened a file before its chunk list was
// switched still reads the old chunks, and an upload not yet committed is
// unreferenced until its commit.
const DefaultGCGrace = time.Hour

// GCOptions say what GC collects.
type GCOptions struct {
	Grace time.Duration
	// Sweep also lists every chunk object in the bucket and deletes those
	// no file points to (uploads of a process killed before its commit).
	Sweep bool
}

// GCResult counts what GC did.
type GCResult struct {
	Deleted int // chunk objects deleted
	Kept    int // garbage records of chunks still referenced (dropped)
	Scanned int // chunk objects listed by the sweep
}

const gcBatch = 500

// GC deletes chunk objects no committed file points to and older than the
// grace period: first the ones recorded as garbage when a chunk list was
// switched or a file removed (cheap), then, with Sweep, every one the
// bucket holds that the database does not reference. A chunk is deleted
// only after the database says, at that moment, that no file points to it.
func (b *Backend) GC(ctx context.Context, o GCOptions) (GCResult, error) {
	var r GCResult
	cutoff := time.Now().Add(-o.Grace)
	for {
		g, err := b.store.Garbage(ctx, cutoff, gcBatch)
		if err != nil {
			return r, fmt.Errorf("gc: read garbage: %w", err)
		}
		if len(g) == 0 {
			break
		}
		keys := make([]string, len(g))
		for i, x := range g {
			keys[i] = x.Key
		}
		if err := b.collect(ctx, keys, &r); err != nil {
			return r, err
		}
		if err := b.store.ForgetGarbage(ctx, keys); err != nil {
			return r, fmt.Errorf("gc: forget garbage: %w", err)
		}
		if len(g) < gcBatch {
			break
		}
	}
	if !o.Sweep {
		return r, nil
	}
	in := &awss3.ListObjectsV2Input{Bucket: aws.String(b.bucket), Prefix: aws.String(b.prefix + ChunkDir)}
	p := awss3.NewListObjectsV2Paginator(b.client, in)
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return r, fmt.Errorf("gc: list chunks: %w", err)
		}
		var keys []string
		for _, obj := range page.Contents {
			r.Scanned++
			if obj.LastModified != nil && obj.LastModified.After(cutoff) {
				continue
			}
			keys = append(keys, strings.TrimPrefix(aws.ToString(obj.Key), b.prefix))
		}
		if len(keys) == 0 {
			continue
		}
		if err := b.collect(ctx, keys, &r); err != nil {
			return r, err
		}
		if err := b.store.ForgetGarbage(ctx, keys); err != nil {
			return r, fmt.Errorf("gc: forget garbage: %w", err)
		}
	}
	return r, nil
}

// collect deletes those of keys that no file references.
func (b *Backend) collect(ctx context.Context, keys []string, r *GCResult) error {
	ref, err := b.store.Referenced(ctx, keys)
	if err != nil {
		return fmt.Errorf("gc: check references: %w", err)
	}
	for _, k := range keys {
		if ref[k] {
			r.Kept++
			continue
		}
		if _, err := b.client.DeleteObject(ctx, &awss3.DeleteObjectInput{Bucket: aws.String(b.bucket), Key: aws.String(b.prefix + k)}); err != nil {
			return fmt.Errorf("gc: delete %s: %w", k, err)
		}
		r.Deleted++
	}
	return nil
}
