package s3

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go/middleware"

	"github.com/kmsfs/kmsfs/backend"
)

// The writer lease keeps two kmsfs processes from writing one object-per-file
// volume at once. Such a volume is one object per path, written whole when a
// file is closed, with a lookup cache that assumes nobody else changes the
// prefix: two writers would silently lose each other's acknowledged writes.
// S3 has no flock, so the lease is an object, "prefix/.kmsfs/lease", taken
// and kept with conditional writes (PutObject If-None-Match: * to take a free
// lease, If-Match: ETAG to renew one's own or to take over an expired one),
// which S3 makes atomic: of two processes racing for it, exactly one wins.
//
// Liveness is judged on the server's clock alone: a lease is expired when
// the Date of a response is more than its TTL past the object's
// Last-Modified, which every renewal moves. A holder renews every TTL/4 and
// stops writing (every mutating S3 request fails with EIO, see fence) once
// TTL/2 has passed since it sent its last successful renewal, so it has
// stopped well before anyone may take the lease over, even if its own
// requests are slow or its clock runs at a different rate for a while. A
// holder that finds its lease replaced (a renewal answered 412) has lost it
// for good: it logs that and refuses writes until unmounted.
//
// A process killed without releasing its lease leaves the object behind. On
// the same machine (same boot) a lease whose process is gone is taken over at
// once; elsewhere the TTL has to pass.

// leaseName is the lease object under the volume's metadata folder.
const leaseName = "lease"

// DefaultLeaseTTL is how long a lease outlives its holder's last renewal.
const DefaultLeaseTTL = 60 * time.Second

// leasePoll is how often a process waiting for a busy lease asks again.
const leasePoll = 500 * time.Millisecond

// leaseRecord is the lease object's body (JSON). It says who holds the
// lease, so that the error a refused mount prints can name it, and how long
// the lease lives. Fields are only ever added.
type leaseRecord struct {
	Version  int    `json:"version"`
	Holder   string `json:"holder"` // random per LockVolume call
	Host     string `json:"host"`
	BootID   string `json:"boot_id,omitempty"`
	PID      int    `json:"pid"`
	Command  string `json:"command,omitempty"`
	Acquired string `json:"acquired"` // RFC 3339, the holder's clock
	TTLSec   int    `json:"ttl_seconds"`
}

// leaseCtxKey marks the requests of the lease itself, which the fence lets
// through (renewing a lease must not need a valid lease).
type leaseCtxKey struct{}

// mutatingOps are the S3 operations that change a volume. AbortMultipartUpload
// only throws away an upload that was never completed, and is let through.
var mutatingOps = map[string]bool{
	"PutObject": true, "CopyObject": true, "DeleteObject": true, "DeleteObjects": true,
	"CreateMultipartUpload": true, "UploadPart": true, "UploadPartCopy": true,
	"CompleteMultipartUpload": true,
}

// fence is the writer-side state of the lease: while a lease is held, every
// mutating request checks that it is still valid. Before LockVolume (init,
// cat, a read-only mount) there is nothing to check and requests pass.
type fence struct {
	mu         sync.Mutex
	held       bool
	validUntil time.Time // local clock; writes stop here without a renewal
	lost       string    // why the lease is gone for good; "" while held
	now        func() time.Time
}

// errLeaseNotValid says why a write was refused; it carries EIO, the errno
// the FUSE boundary answers for it.
type errLeaseNotValid struct{ why string }

func (e *errLeaseNotValid) Error() string { return "writer lease not valid: " + e.why }
func (e *errLeaseNotValid) Unwrap() error { return syscall.EIO }

func (f *fence) check() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case !f.held:
		return nil
	case f.lost != "":
		return &errLeaseNotValid{f.lost}
	case f.now().After(f.validUntil):
		return &errLeaseNotValid{"not renewed in time (S3 unreachable?); writes resume after the next renewal"}
	}
	return nil
}

// middleware refuses mutating requests while the lease is not valid. It runs
// once per call, before the SDK's retry loop.
func (f *fence) middleware(stack *middleware.Stack) error {
	return stack.Finalize.Add(middleware.FinalizeMiddlewareFunc("kmsfsWriterLease",
		func(ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler) (middleware.FinalizeOutput, middleware.Metadata, error) {
			if ctx.Value(leaseCtxKey{}) == nil && mutatingOps[awsmiddleware.GetOperationName(ctx)] {
				if err := f.check(); err != nil {
					return middleware.FinalizeOutput{}, middleware.Metadata{}, err
				}
			}
			return next.HandleFinalize(ctx, in)
		}), middleware.Before)
}

var _ backend.Locker = (*Backend)(nil)

// LockVolume takes the volume's writer lease, waiting while ctx allows for a
// holder to release it or for its lease to expire; then it keeps the lease
// renewed until the returned release func is called. A backend configured to
// own its prefix (StaleUploadAge 0) aborts the multipart uploads a crashed
// writer left only now, once the lease proves nobody else is writing.
func (b *Backend) LockVolume(wait context.Context) (func() error, error) {
	// wait bounds the waiting; each request runs to its end (opContext).
	ctx := context.WithValue(opContext(wait), leaseCtxKey{}, true)
	holder := make([]byte, 16)
	if _, err := rand.Read(holder); err != nil {
		return nil, err
	}
	rec := leaseRecord{
		Version: 1, Holder: hex.EncodeToString(holder), BootID: bootID(), PID: os.Getpid(),
		Command: filepath.Base(os.Args[0]), Acquired: time.Now().UTC().Format(time.RFC3339),
		TTLSec: int(b.leaseTTL / time.Second),
	}
	rec.Host, _ = os.Hostname()
	if len(os.Args) > 1 {
		rec.Command += " " + os.Args[1]
	}
	body, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	k := b.metaKey(leaseName)
	for {
		sent := b.now()
		etag, held, err := b.tryLease(ctx, k, body)
		if err != nil {
			return nil, err
		}
		if held == nil {
			b.fence.mu.Lock()
			b.fence.held, b.fence.lost = true, ""
			b.fence.validUntil = sent.Add(b.leaseTTL / 2)
			b.fence.mu.Unlock()
			if b.ownsPrefix {
				b.cleanupAfterLease(ctx)
			}
			return b.keepLease(k, body, etag), nil
		}
		select {
		case <-wait.Done():
			return nil, fmt.Errorf("s3://%s/%s: %w: writer lease held by %s", b.bucket, strings.TrimSuffix(b.prefix, "/"), backend.ErrVolumeBusy, held)
		case <-time.After(leasePoll):
		}
	}
}

// heldLease describes a live lease of another process, for the error.
type heldLease struct {
	rec     leaseRecord
	renewed time.Duration
}

func (h *heldLease) String() string {
	s := fmt.Sprintf("%q on host %s pid %d", h.rec.Command, h.rec.Host, h.rec.PID)
	if h.rec.Acquired != "" {
		s += " since " + h.rec.Acquired
	}
	return s + fmt.Sprintf(", renewed %s ago (expires %s after its last renewal)", h.renewed.Round(time.Second), time.Duration(h.rec.TTLSec)*time.Second)
}

// tryLease makes one attempt: it creates the lease if there is none, takes
// over an expired or orphaned one, and otherwise says who holds it.
func (b *Backend) tryLease(ctx context.Context, k string, body []byte) (etag string, held *heldLease, err error) {
	put, err := b.client.PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String(b.bucket), Key: aws.String(k), IfNoneMatch: aws.String("*"),
		Body: bytes.NewReader(body), ContentLength: aws.Int64(int64(len(body))),
	})
	if err == nil {
		return aws.ToString(put.ETag), nil, nil
	}
	if !isPreconditionFailed(err) && !isCode(err, "ConditionalRequestConflict") {
		return "", nil, fmt.Errorf("take writer lease %s: %w", k, b.fail("lease", "", k, err))
	}
	got, err := b.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(b.bucket), Key: aws.String(k)})
	if isNotFound(err) {
		return "", &heldLease{}, nil // released in between: try again at once
	}
	if err != nil {
		return "", nil, fmt.Errorf("read writer lease %s: %w", k, b.fail("lease", "", k, err))
	}
	data, err := io.ReadAll(io.LimitReader(got.Body, 64<<10))
	got.Body.Close()
	if err != nil {
		return "", nil, fmt.Errorf("read writer lease %s: %w", k, b.fail("lease", "", k, err))
	}
	var other leaseRecord
	if err := json.Unmarshal(data, &other); err != nil || other.Version < 1 {
		// Not a lease this kmsfs wrote: never take over what it cannot read.
		return "", nil, fmt.Errorf("writer lease %s: unreadable lease object (%d bytes): refusing to take it over; remove it if no kmsfs is writing this volume", k, len(data))
	}
	if other.Version > 1 {
		return "", nil, fmt.Errorf("writer lease %s: version %d written by a newer kmsfs", k, other.Version)
	}
	serverNow, ok := awsmiddleware.GetServerTime(got.ResultMetadata)
	if !ok {
		serverNow = b.now()
	}
	age := serverNow.Sub(aws.ToTime(got.LastModified))
	ttl := time.Duration(other.TTLSec) * time.Second
	orphan := other.BootID != "" && other.BootID == bootID() && other.Host == hostname() && !processAlive(other.PID)
	if age <= ttl && !orphan {
		return "", &heldLease{rec: other, renewed: max(age, 0)}, nil
	}
	put, err = b.client.PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String(b.bucket), Key: aws.String(k), IfMatch: got.ETag,
		Body: bytes.NewReader(body), ContentLength: aws.Int64(int64(len(body))),
	})
	if isPreconditionFailed(err) || isCode(err, "ConditionalRequestConflict") || isNotFound(err) {
		return "", &heldLease{rec: other}, nil // someone else moved first: look again
	}
	if err != nil {
		return "", nil, fmt.Errorf("take over writer lease %s: %w", k, b.fail("lease", "", k, err))
	}
	why := "expired"
	if orphan {
		why = "its process is gone"
	}
	b.log.Warn("s3: took over the volume's writer lease", "bucket", b.bucket, "prefix", b.prefix,
		"previous_host", other.Host, "previous_pid", other.PID, "reason", why)
	return aws.ToString(put.ETag), nil, nil
}

// keepLease renews the lease every TTL/4 until release, which stops the
// renewals and deletes the lease if it is still this process's.
func (b *Backend) keepLease(k string, body []byte, etag string) func() error {
	ctx := context.WithValue(context.WithoutCancel(b.ctx), leaseCtxKey{}, true)
	stop := make(chan struct{})
	done := make(chan struct{})
	var mu sync.Mutex // guards etag between the renewer and release
	go func() {
		defer close(done)
		interval := b.leaseTTL / 4
		for {
			select {
			case <-stop:
				return
			case <-time.After(interval):
			}
			mu.Lock()
			cur := etag
			mu.Unlock()
			sent := b.now()
			put, err := b.client.PutObject(ctx, &s3.PutObjectInput{
				Bucket: aws.String(b.bucket), Key: aws.String(k), IfMatch: aws.String(cur),
				Body: bytes.NewReader(body), ContentLength: aws.Int64(int64(len(body))),
			})
			switch {
			case err == nil:
				mu.Lock()
				etag = aws.ToString(put.ETag)
				mu.Unlock()
				b.fence.mu.Lock()
				if b.fence.lost == "" {
					b.fence.validUntil = sent.Add(b.leaseTTL / 2)
				}
				b.fence.mu.Unlock()
			case isPreconditionFailed(err) || isNotFound(err):
				why := "another process took the volume's writer lease over (this mount could not renew it in time); unmount and mount again"
				b.fence.mu.Lock()
				b.fence.lost = why
				b.fence.mu.Unlock()
				b.log.Error("s3: writer lease lost: refusing every further write", "bucket", b.bucket, "prefix", b.prefix, "reason", why)
				return
			default:
				b.log.Warn("s3: renewing the writer lease failed; retrying", "bucket", b.bucket, "prefix", b.prefix, "err", err)
			}
		}
	}()
	var once sync.Once
	return func() error {
		var rerr error
		once.Do(func() {
			close(stop)
			<-done
			b.fence.mu.Lock()
			lost := b.fence.lost != ""
			b.fence.held = false
			b.fence.mu.Unlock()
			if lost {
				return
			}
			mu.Lock()
			cur := etag
			mu.Unlock()
			// Delete only our own lease: If-Match where the server honours it,
			// and a HEAD first where it does not.
			head, err := b.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(b.bucket), Key: aws.String(k)})
			if err != nil {
				if !isNotFound(err) {
					rerr = fmt.Errorf("release writer lease %s: %w", k, b.fail("lease", "", k, err))
				}
				return
			}
			if aws.ToString(head.ETag) != cur {
				return
			}
			_, err = b.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(b.bucket), Key: aws.String(k), IfMatch: aws.String(cur)})
			if err != nil && !isNotFound(err) && !isPreconditionFailed(err) {
				rerr = fmt.Errorf("release writer lease %s: %w", k, b.fail("lease", "", k, err))
			}
		})
		return rerr
	}
}

// cleanupAfterLease aborts every multipart upload under the prefix: with the
// lease held they can only be leftovers of a writer that died.
func (b *Backend) cleanupAfterLease(ctx context.Context) {
	if n, err := b.CleanupUploads(ctx, 0); err != nil {
		b.log.Warn("s3: cleaning up stale multipart uploads failed", "bucket", b.bucket, "prefix", b.prefix, "err", err)
	} else if n > 0 {
		b.log.Info("s3: aborted stale multipart uploads", "bucket", b.bucket, "prefix", b.prefix, "count", n)
	}
}

// bootID identifies this boot of this machine: a PID names a process only
// within one boot.
func bootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}

// processAlive says whether a process with this PID exists on this machine.
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	_, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid)))
	return !errors.Is(err, os.ErrNotExist)
}
