package s3

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sort"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"golang.org/x/sync/errgroup"
)

// abortTimeout bounds the clean-up of a failed multipart upload, which runs
// even when the upload's own context was cancelled.
const abortTimeout = time.Minute

// upload stores size bytes of src as the object key with the given
// metadata: one PutObject up to the part size, else a parallel multipart
// upload. Either way S3 switches to the new object only when it is whole.
// exclusive makes it conditional on the key not existing (EEXIST if it does).
func (b *Backend) upload(ctx context.Context, op, name, key string, src io.ReaderAt, size int64, meta map[string]string, exclusive bool) (string, error) {
	if size <= b.partSize {
		return b.putSmall(ctx, op, name, key, io.NewSectionReader(src, 0, size), meta, exclusive)
	}
	return b.putMultipart(ctx, op, name, key, src, size, meta, exclusive)
}

// putSmall is one PutObject; exclusive adds If-None-Match: * (the object
// must not exist; AWS conditional writes), turning a lost race into EEXIST.
func (b *Backend) putSmall(ctx context.Context, op, name, key string, body io.ReadSeeker, meta map[string]string, exclusive bool) (string, error) {
	if body == nil {
		body = bytes.NewReader(nil)
	}
	size, err := body.Seek(0, io.SeekEnd)
	if err != nil {
		return "", err
	}
	if _, err := body.Seek(0, io.SeekStart); err != nil {
		return "", err
	}
	in := &s3.PutObjectInput{
		Bucket: aws.String(b.bucket), Key: aws.String(key),
		Body: body, ContentLength: aws.Int64(size), Metadata: meta,
	}
	if exclusive {
		in.IfNoneMatch = aws.String("*")
	}
	out, err := b.client.PutObject(ctx, in)
	if err != nil {
		return "", b.fail(op, name, key, err)
	}
	return aws.ToString(out.ETag), nil
}

// partLayout picks the part size for an object: the configured one, grown
// when the object would need more than S3's 10,000 parts.
func partLayout(size, partSize int64) (int64, int) {
	if n := (size + partSize - 1) / partSize; n > maxParts {
		partSize = (size + maxParts - 1) / maxParts
		partSize = (partSize + 1<<20 - 1) &^ (1<<20 - 1) // whole MiB
	}
	return partSize, int((size + partSize - 1) / partSize)
}

// putMultipart uploads parts in parallel and completes the upload; on any
// failure it aborts the upload so that no parts are left behind.
func (b *Backend) putMultipart(ctx context.Context, op, name, key string, src io.ReaderAt, size int64, meta map[string]string, exclusive bool) (string, error) {
	partSize, nparts := partLayout(size, b.partSize)
	return b.multipart(ctx, op, name, key, meta, nparts, func(ctx context.Context, uploadID string, i int) (types.CompletedPart, error) {
		off := int64(i) * partSize
		n := min(partSize, size-off)
		// One read of the part, then the SDK hashes and sends it from
		// memory (see sendPart).
		buf := b.partBufs.get(n)
		defer b.partBufs.put(buf)
		if got, err := src.ReadAt(buf, off); int64(got) < n {
			return types.CompletedPart{}, fmt.Errorf("s3 staging for %s: part %d: %d of %d bytes: %w", name, i+1, got, n, err)
		}
		out, err := b.client.UploadPart(ctx, &s3.UploadPartInput{
			Bucket: aws.String(b.bucket), Key: aws.String(key), UploadId: aws.String(uploadID),
			PartNumber: aws.Int32(int32(i + 1)), ContentLength: aws.Int64(n),
			Body: bytes.NewReader(buf),
		})
		if err != nil {
			return types.CompletedPart{}, err
		}
		return types.CompletedPart{ETag: out.ETag, PartNumber: aws.Int32(int32(i + 1))}, nil
	}, exclusive)
}

// partGroup runs part uploads, b.concurrency at a time. A failure stops
// the parts not started yet but does not cancel those in flight: a
// request the client gives up on may still complete on the server after
// the AbortMultipartUpload that follows, and re-create the upload it
// aborted (AWS: "it might be necessary to abort a given multipart upload
// multiple times"); seen with versitygw as an upload left behind.
func (b *Backend) partGroup() *partGroup {
	g := &partGroup{}
	g.g.SetLimit(b.concurrency)
	return g
}

type partGroup struct {
	g      errgroup.Group
	failed atomic.Bool
}

func (g *partGroup) Go(fn func() error) {
	g.g.Go(func() error {
		if g.failed.Load() {
			return nil
		}
		err := fn()
		if err != nil {
			g.failed.Store(true)
		}
		return err
	})
}

func (g *partGroup) Wait() error { return g.g.Wait() }

// multipart runs one multipart upload whose parts come from part(i).
func (b *Backend) multipart(ctx context.Context, op, name, key string, meta map[string]string, nparts int,
	part func(ctx context.Context, uploadID string, i int) (types.CompletedPart, error), exclusive bool) (string, error) {
	created, err := b.client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{
		Bucket: aws.String(b.bucket), Key: aws.String(key), Metadata: meta,
	})
	if err != nil {
		return "", b.fail(op, name, key, err)
	}
	uploadID := aws.ToString(created.UploadId)
	abort := func(cause error) error {
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
		defer cancel()
		_, aerr := b.client.AbortMultipartUpload(actx, &s3.AbortMultipartUploadInput{
			Bucket: aws.String(b.bucket), Key: aws.String(key), UploadId: aws.String(uploadID),
		})
		if aerr != nil {
			// CleanupUploads at the next mount removes it.
			b.log.Warn("s3: aborting multipart upload failed", "key", key, "upload_id", uploadID, "code", errorCode(aerr), "err", aerr)
		}
		return b.fail(op, name, key, cause)
	}
	parts := make([]types.CompletedPart, nparts)
	g := b.partGroup()
	for i := range nparts {
		g.Go(func() error {
			p, err := part(ctx, uploadID, i)
			parts[i] = p
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return "", abort(err)
	}
	sort.Slice(parts, func(i, j int) bool { return *parts[i].PartNumber < *parts[j].PartNumber })
	in := &s3.CompleteMultipartUploadInput{
		Bucket: aws.String(b.bucket), Key: aws.String(key), UploadId: aws.String(uploadID),
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
	}
	if exclusive {
		in.IfNoneMatch = aws.String("*")
	}
	out, err := b.client.CompleteMultipartUpload(ctx, in)
	if err != nil {
		return "", abort(err)
	}
	return aws.ToString(out.ETag), nil
}

// copyObject copies src to dst server-side. meta nil keeps the source's
// metadata, else replaces it (a copy onto itself with new metadata is how S3
// changes metadata). srcETag, if set, pins the source version; exclusive
// makes the copy fail with EEXIST when dst exists. Objects above the
// CopyObject limit (5 GiB) are copied with UploadPartCopy.
func (b *Backend) copyObject(ctx context.Context, op, name, src, dst string, size int64, meta map[string]string, srcETag string, exclusive bool) (string, error) {
	if size > b.copyLimit {
		if meta == nil {
			h, err := b.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(b.bucket), Key: aws.String(src)})
			if err != nil {
				return "", b.fail(op, name, src, err)
			}
			meta = h.Metadata
		}
		partSize, nparts := partLayout(size, b.copyPartSize)
		return b.multipart(ctx, op, name, dst, meta, nparts, func(ctx context.Context, uploadID string, i int) (types.CompletedPart, error) {
			off := int64(i) * partSize
			n := min(partSize, size-off)
			in := &s3.UploadPartCopyInput{
				Bucket: aws.String(b.bucket), Key: aws.String(dst), UploadId: aws.String(uploadID),
				PartNumber: aws.Int32(int32(i + 1)), CopySource: aws.String(b.copySource(src)),
				CopySourceRange: aws.String("bytes=" + itoa(off) + "-" + itoa(off+n-1)),
			}
			if srcETag != "" {
				in.CopySourceIfMatch = aws.String(srcETag)
			}
			out, err := b.client.UploadPartCopy(ctx, in)
			if err != nil {
				return types.CompletedPart{}, err
			}
			return types.CompletedPart{ETag: out.CopyPartResult.ETag, PartNumber: aws.Int32(int32(i + 1))}, nil
		}, exclusive)
	}
	in := &s3.CopyObjectInput{
		Bucket: aws.String(b.bucket), Key: aws.String(dst), CopySource: aws.String(b.copySource(src)),
		MetadataDirective: types.MetadataDirectiveCopy,
	}
	if meta != nil {
		in.MetadataDirective = types.MetadataDirectiveReplace
		in.Metadata = meta
	}
	if srcETag != "" {
		in.CopySourceIfMatch = aws.String(srcETag)
	}
	if exclusive {
		in.IfNoneMatch = aws.String("*")
	}
	out, err := b.client.CopyObject(ctx, in)
	if err != nil {
		if !exclusive && isPreconditionFailed(err) {
			// The source is no longer the version we looked at.
			return "", pathErr(op, name, syscall.ESTALE)
		}
		return "", b.fail(op, name, dst, err)
	}
	if out.CopyObjectResult != nil {
		return aws.ToString(out.CopyObjectResult.ETag), nil
	}
	return "", nil
}
