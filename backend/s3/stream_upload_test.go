package s3

import (
	"bytes"
	"context"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go/middleware"

	"github.com/kmsfs/kmsfs/backend"
)

const testPart = MinPartSize

// writeSeq writes data at off in 1 MiB writes, as FUSE delivers a dd.
func writeSeq(t *testing.T, f backend.File, data []byte, off int64) {
	t.Helper()
	for i := 0; i < len(data); i += 1 << 20 {
		if _, err := f.WriteAt(data[i:min(i+1<<20, len(data))], off+int64(i)); err != nil {
			t.Fatal(err)
		}
	}
}

// uploadedParts returns the parts the one pending upload under the
// backend's prefix has received so far, waiting up to a few seconds for at
// least min of them.
func uploadedParts(t *testing.T, b *Backend, min int) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := b.client.ListMultipartUploads(bg, &s3.ListMultipartUploadsInput{
			Bucket: aws.String(b.bucket), Prefix: aws.String(b.prefix),
		})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		if len(out.Uploads) == 1 {
			u := out.Uploads[0]
			parts, err := b.client.ListParts(bg, &s3.ListPartsInput{Bucket: aws.String(b.bucket), Key: u.Key, UploadId: u.UploadId})
			if err != nil {
				t.Fatal(err)
			}
			n = len(parts.Parts)
		} else if len(out.Uploads) > 1 {
			t.Fatalf("%d pending uploads, want 1", len(out.Uploads))
		}
		if n >= min || time.Now().After(deadline) {
			return n
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A file written sequentially goes up while it is written: parts are in S3
// before Sync, the old object stays in place until the upload completes,
// parts rewritten after they were sent are sent again, and the object ends
// with the final content and attributes.
func TestStreamedUpload(t *testing.T) {
	cfg := testConfig(t)
	cfg.PartSize = testPart
	b := newTestBackend(t, cfg)
	old := randBytes(20, 1000)
	create(t, b, "f", old)

	data := randBytes(21, 6*testPart+777)
	f, err := b.Open(bg, "f", syscall.O_RDWR|syscall.O_TRUNC, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	writeSeq(t, f, data, 0)
	if n := uploadedParts(t, b, 3); n < 3 {
		t.Fatalf("%d parts uploaded before sync, want at least 3", n)
	}
	if got := rawGet(t, b, b.prefix+"f"); !bytes.Equal(got, old) {
		t.Fatal("the object changed before the upload completed")
	}
	// Rewrite bytes of the first part (sent already) and grow the file.
	patch := randBytes(22, 5000)
	copy(data[100:], patch)
	if _, err := f.WriteAt(patch, 100); err != nil {
		t.Fatal(err)
	}
	more := randBytes(23, 2<<20)
	writeSeq(t, f, more, int64(len(data)))
	data = append(data, more...)
	when := time.Unix(1700000000, 0)
	if err := b.Utimens(bg, "f", &when, &when); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := rawGet(t, b, b.prefix+"f"); !bytes.Equal(got, data) {
		t.Fatal("object content differs after sync")
	}
	if ups := pendingUploads(t, b); len(ups) != 0 {
		t.Fatalf("uploads left after sync: %v", ups)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	// Attributes set after the upload started are on the object.
	other := newTestBackend(t, cfg)
	var st syscall.Stat_t
	if err := other.Lstat(bg, "f", &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != int64(len(data)) || st.Mtim.Sec != when.Unix() {
		t.Fatalf("after sync: size %d mtime %d, want %d, %d", st.Size, st.Mtim.Sec, len(data), when.Unix())
	}
	if got := readFile(t, other, "f"); !bytes.Equal(got, data) {
		t.Fatal("file reads back different")
	}
}

// Truncating and rewriting while parts are in flight ends with the right
// bytes; a file cut to one part goes up with one PutObject and leaves no
// upload behind.
func TestStreamedUploadTruncate(t *testing.T) {
	cfg := testConfig(t)
	cfg.PartSize = testPart
	b := newTestBackend(t, cfg)
	f, err := b.Open(bg, "t", syscall.O_RDWR|syscall.O_CREAT|syscall.O_EXCL, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	data := randBytes(30, 4*testPart)
	writeSeq(t, f, data, 0)
	uploadedParts(t, b, 2)
	if err := f.Truncate(testPart + testPart/2); err != nil {
		t.Fatal(err)
	}
	data = data[:testPart+testPart/2]
	tail := randBytes(31, 3*testPart)
	writeSeq(t, f, tail, int64(len(data)))
	data = append(data, tail...)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := rawGet(t, b, b.prefix+"t"); !bytes.Equal(got, data) {
		t.Fatal("content differs after truncate + rewrite")
	}
	// Now shrink below one part: the streamed upload (if a new one started)
	// is abandoned for a PutObject.
	writeSeq(t, f, randBytes(32, 3*testPart), 0)
	if err := f.Truncate(1000); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if got := rawGet(t, b, b.prefix+"t"); len(got) != 1000 {
		t.Fatalf("object is %d bytes, want 1000", len(got))
	}
	if ups := pendingUploads(t, b); len(ups) != 0 {
		t.Fatalf("uploads left: %v", ups)
	}
}

// A file unlinked while its parts are going up leaves neither an object
// nor an upload.
func TestStreamedUploadUnlinked(t *testing.T) {
	cfg := testConfig(t)
	cfg.PartSize = testPart
	b := newTestBackend(t, cfg)
	f, err := b.Open(bg, "u", syscall.O_RDWR|syscall.O_CREAT|syscall.O_EXCL, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	writeSeq(t, f, randBytes(40, 4*testPart), 0)
	uploadedParts(t, b, 1)
	if err := b.Unlink(bg, "u"); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if ups := pendingUploads(t, b); len(ups) != 0 {
		t.Fatalf("uploads left: %v", ups)
	}
	if keys := rawKeys(t, b); len(keys) != 0 {
		t.Fatalf("objects left: %v", keys)
	}
}

// A process killed in the middle of a streamed upload (here: the backend
// dropped without closing the file) leaves the old object whole; the next
// mount aborts the upload it left.
func TestStreamedUploadKilled(t *testing.T) {
	cfg := testConfig(t)
	cfg.PartSize = testPart
	good := newTestBackend(t, cfg)
	old := randBytes(50, 3*testPart+1)
	create(t, good, "k", old)

	b, err := newBackend(bg, cfg)
	if err != nil {
		t.Fatal(err)
	}
	f, err := b.Open(bg, "k", syscall.O_RDWR|syscall.O_TRUNC, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Two whole parts and a tail: the two go up in the background, and
	// nothing else is in flight when the process dies (a request the
	// server has received may complete after the next mount's clean-up;
	// real restarts are not that quick).
	writeSeq(t, f, randBytes(51, 2*testPart+100), 0)
	if n := uploadedParts(t, good, 2); n < 2 {
		t.Fatalf("%d parts uploaded, want 2", n)
	}
	b.Close() // killed: no Sync, no Close of the file
	if got := rawGet(t, good, good.prefix+"k"); !bytes.Equal(got, old) {
		t.Fatal("the old object changed")
	}
	if len(pendingUploads(t, good)) != 1 {
		t.Fatal("no pending upload after the kill")
	}
	release, err := newTestBackend(t, cfg).LockVolume(bg) // the next mount
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if ups := pendingUploads(t, good); len(ups) != 0 {
		t.Fatalf("the next mount left %v", ups)
	}
	if got := readFile(t, good, "k"); !bytes.Equal(got, old) {
		t.Fatal("the old file reads back different")
	}
}

// countOps counts the S3 operations a client makes, by name.
type countOps struct {
	mu  sync.Mutex
	ops map[string]int
}

func (c *countOps) option(o *s3.Options) {
	o.APIOptions = append(o.APIOptions, func(stack *middleware.Stack) error {
		return stack.Initialize.Add(middleware.InitializeMiddlewareFunc("countOps",
			func(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
				c.mu.Lock()
				c.ops[awsmiddleware.GetOperationName(ctx)]++
				c.mu.Unlock()
				return next.HandleInitialize(ctx, in)
			}), middleware.After)
	})
}

// waitFor waits until op has been called n times since the last take.
func (c *countOps) waitFor(t *testing.T, op string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.mu.Lock()
		got := c.ops[op]
		c.mu.Unlock()
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s called %d times in 10s, want %d", op, got, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func (c *countOps) take() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.ops
	c.ops = map[string]int{}
	return m
}

// cp -a creates a file as stat (a miss: HEAD + LIST), then open with
// O_CREAT|O_EXCL, which trusts that miss for a second instead of asking
// again, and close (one PutObject).
func TestExclusiveCreateUsesCachedMiss(t *testing.T) {
	ops := &countOps{ops: map[string]int{}}
	b := newTestBackend(t, testConfig(t), ops.option)
	var st syscall.Stat_t
	wantErrno(t, b.Lstat(bg, "new", &st), syscall.ENOENT)
	if got := ops.take(); got["HeadObject"] != 1 || got["ListObjectsV2"] != 1 {
		t.Fatalf("lookup of a missing name: %v", got)
	}
	f, err := b.Open(bg, "new", syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL, 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("content"), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if got := ops.take(); len(got) != 1 || got["PutObject"] != 1 {
		t.Fatalf("create + write + close: %v, want one PutObject", got)
	}
	// The miss is forgotten: the name is found, and a second exclusive
	// create fails.
	if err := b.Lstat(bg, "new", &st); err != nil || st.Size != 7 {
		t.Fatalf("Lstat after create: size %d, %v", st.Size, err)
	}
	_, err = b.Open(bg, "new", syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL, 0o644, nil)
	wantErrno(t, err, syscall.EEXIST)
}

// The client keeps enough idle connections for several files' streams
// and parts (the SDK's default is 10 per host).
func TestIdleConnections(t *testing.T) {
	b := newTestBackend(t, testConfig(t))
	hc, ok := b.client.Options().HTTPClient.(*awshttp.BuildableClient)
	if !ok {
		t.Fatalf("HTTP client is %T", b.client.Options().HTTPClient)
	}
	if n := hc.GetTransport().MaxIdleConnsPerHost; n != idleConns {
		t.Fatalf("MaxIdleConnsPerHost = %d, want %d", n, idleConns)
	}
}

// A file renamed while its parts are going up lands whole under its new
// name; the upload begun under the old one is aborted.
func TestStreamedUploadRenamed(t *testing.T) {
	cfg := testConfig(t)
	cfg.PartSize = testPart
	b := newTestBackend(t, cfg)
	f, err := b.Open(bg, "before", syscall.O_RDWR|syscall.O_CREAT|syscall.O_EXCL, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	data := randBytes(60, 3*testPart+5)
	writeSeq(t, f, data, 0)
	uploadedParts(t, b, 1)
	if err := b.Rename(bg, "before", "after", 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if got := rawGet(t, b, b.prefix+"after"); !bytes.Equal(got, data) {
		t.Fatal("renamed file's object differs")
	}
	if keys := rawKeys(t, b); len(keys) != 1 {
		t.Fatalf("objects: %v, want only after", keys)
	}
	if ups := pendingUploads(t, b); len(ups) != 0 {
		t.Fatalf("uploads left: %v", ups)
	}
}

// After a miss in a directory the next lookup there sends its LIST beside
// its HEAD; the answers are the same, and a hit stops the speculation.
func TestLookupAfterMiss(t *testing.T) {
	ops := &countOps{ops: map[string]int{}}
	b := newTestBackend(t, testConfig(t), ops.option)
	if err := b.Mkdir(bg, "d", 0o755, nil); err != nil {
		t.Fatal(err)
	}
	create(t, b, "d/file", []byte("x"))
	if err := b.Mkdir(bg, "d/sub", 0o750, nil); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	for _, n := range []string{"d/m1", "d/m2"} {
		wantErrno(t, b.Lstat(bg, n, &st), syscall.ENOENT)
	}
	if err := b.Lstat(bg, "d/sub", &st); err != nil || st.Mode != syscall.S_IFDIR|0o750 {
		t.Fatalf("Lstat(d/sub) after misses: mode %o, %v", st.Mode, err)
	}
	wantErrno(t, b.Lstat(bg, "d/m3", &st), syscall.ENOENT)
	ops.take()
	if err := b.Lstat(bg, "d/file", &st); err != nil || st.Mode != syscall.S_IFREG|0o644 || st.Size != 1 {
		t.Fatalf("Lstat(d/file) after a miss: %+v, %v", st, err)
	}
	// The HEAD answered; the LIST sent beside it may not have started yet.
	ops.waitFor(t, "ListObjectsV2", 1)
	ops.take()
	if err := b.Lstat(bg, "d/file", &st); err != nil {
		t.Fatal(err)
	}
	if got := ops.take(); got["HeadObject"] != 1 || got["ListObjectsV2"] != 0 {
		t.Fatalf("lookup of a file after a hit: %v, want one HEAD", got)
	}
}
