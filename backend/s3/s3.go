// Package s3 is the backend that keeps a kmsfs volume in an S3 bucket (AWS
// S3 or any S3-compatible server), one object per file.
//
// # Layout
//
// A volume at s3://bucket/prefix maps the file "a/b" to the object
// "prefix/a/b", holding exactly the bytes the volume wrote through File
// (header + encrypted blocks), so `aws s3 cp` of an object followed by an
// offline `kmsfs cat` decrypts it. Mode, uid, gid and the times live in the
// object's user metadata (x-amz-meta-kmsfs-*). A directory is a zero-byte
// marker object "prefix/a/" so that empty directories survive; a directory
// that only shows up as a common prefix (objects written by another tool) is
// served too, with default attributes. A symlink is an object whose body is
// the target and whose mode says S_IFLNK. Volume metadata lives under
// "prefix/.kmsfs/", which the tree never shows.
//
// # Writes and durability
//
// S3 cannot modify part of an object, so a file opened for writing is staged
// in a local file (ciphertext only: the bytes given to File are already
// encrypted) and uploaded on Sync and on Close: one PutObject up to
// PartSize, a parallel multipart upload above it. A file written
// sequentially has its multipart upload started while it is written, each
// completed part going up in the background (stream_upload.go), so Sync
// and Close only send the rest. Both kinds are atomic in S3, so a failed or
// killed upload never leaves a truncated object where the old one was; a
// failed multipart upload is aborted, and CleanupUploads (run by New)
// aborts uploads a killed process left behind. Staging files are unlinked as
// soon as they are created, so a crash leaves nothing on local disk either.
//
// # Reads
//
// Reads are ranged GETs whose bodies are read straight into the caller's
// buffer; a sequential reader keeps a few GETs open ahead (readahead.go).
//
// # One writer
//
// A read-write mount holds the volume's writer lease (lease.go), an object
// kept with conditional writes, so a second read-write mount is refused
// instead of silently overwriting what the first acknowledged.
//
// # Costs the POSIX view hides
//
//   - Renaming a file is a server-side copy plus a delete (multipart copy
//     above 5 GiB); renaming a directory copies and deletes every object under
//     it: O(objects) requests and O(bytes) server-side copying, and not atomic.
//   - chmod, chown, utimens and setxattr on a file that is not being written
//     rewrite the object's metadata with a server-side CopyObject onto itself.
//   - Writing into an existing object first downloads it into the staging file.
//   - Hard links, device nodes, FIFOs, sockets and RENAME_EXCHANGE: ENOTSUP.
package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/kmsfs/kmsfs/backend"
)

// MetaDir is the folder under the volume prefix that holds volume metadata.
// Like backend/local's, it is hidden from the file tree.
const MetaDir = ".kmsfs"

// Defaults and limits.
const (
	DefaultPartSize    = 8 << 20
	DefaultConcurrency = 4
	// MinPartSize is S3's smallest part other than the last one.
	MinPartSize = 5 << 20
	// maxParts is S3's limit on parts per multipart upload.
	maxParts = 10000
	// maxCopySize is the largest object CopyObject copies in one request
	// (AWS: 5 GiB); larger ones go through UploadPartCopy.
	maxCopySize = 5 << 30
	// copyPartSize is the UploadPartCopy part size for larger objects.
	copyPartSize = 512 << 20
	// maxKeyLen is S3's limit on an object key, in bytes.
	maxKeyLen = 1024
	// lookupTTL bounds how long a cached lookup (a miss, or a directory)
	// is trusted; like the kernel's entry timeouts it assumes one writer
	// (this mount) per volume.
	lookupTTL = time.Second
	// maxLookups caps the lookup cache; it is emptied when full.
	maxLookups = 10000
	// retryAttempts: throttling (SlowDown, 503) and 5xx are retried with
	// exponential backoff this many times in all before an error surfaces.
	retryAttempts = 10
	// idleConns is how many idle connections to the server are kept.
	idleConns = 64
)

// Config says where the volume lives and how to talk to the server.
type Config struct {
	Bucket, Prefix string // from s3://bucket/prefix
	Endpoint       string // e.g. http://127.0.0.1:7070; "" is AWS
	Region         string // "" takes the AWS chain's region, else us-east-1
	PathStyle      bool   // bucket in the path rather than the host name
	// StagingDir holds staged ciphertext of files being written; default
	// os.TempDir()/kmsfs-staging-<pid>.
	StagingDir string
	// PartSize is the multipart part size and the largest single PutObject;
	// default 8 MiB, at least 5 MiB.
	PartSize int64
	// Concurrency is the number of parts uploaded (and ranges downloaded) in
	// parallel for one file; default 4.
	Concurrency int
	// StaleUploadAge: New aborts multipart uploads under the prefix started
	// more than this long ago. 0 means this process owns the prefix (a
	// read-write mount): every upload present is a crashed writer's
	// leftover, aborted once LockVolume holds the writer lease, never before
	// (a second mount being refused must not cut the first one's uploads).
	StaleUploadAge time.Duration
	// LeaseTTL is how long the writer lease (lease.go) outlives its
	// holder's last renewal; default DefaultLeaseTTL, at least 2 s.
	LeaseTTL time.Duration
	// Now is the clock the lookup cache expires by and the lease's local
	// deadlines are kept on; nil means time.Now.
	Now func() time.Time
}

// ParseURL splits "s3://bucket/some/prefix" into bucket and prefix (without
// leading or trailing slashes; "" for the bucket root).
func ParseURL(u string) (bucket, prefix string, err error) {
	rest, ok := strings.CutPrefix(u, "s3://")
	if !ok {
		return "", "", fmt.Errorf("%q: not an s3:// URL", u)
	}
	bucket, prefix, _ = strings.Cut(rest, "/")
	if bucket == "" {
		return "", "", fmt.Errorf("%q: no bucket name", u)
	}
	prefix = strings.Trim(prefix, "/")
	if prefix != "" {
		for _, seg := range strings.Split(prefix, "/") {
			if seg == "" || seg == "." || seg == ".." {
				return "", "", fmt.Errorf("%q: bad prefix segment %q", u, seg)
			}
		}
	}
	return bucket, prefix, nil
}

// Backend is a kmsfs volume in an S3 bucket.
type Backend struct {
	client      *s3.Client
	bucket      string
	prefix      string // "" or "some/prefix/" (with the trailing slash)
	stagingDir  string
	ownStaging  bool // we created stagingDir and remove it on Close
	partSize    int64
	concurrency int
	// copyLimit is the largest object copied with one CopyObject; larger
	// ones are copied in copyPartSize parts (fields so tests can shrink them).
	copyLimit    int64
	copyPartSize int64
	// ctx is the context of File operations, whose interface carries none.
	ctx    context.Context
	cancel context.CancelFunc
	// partBufs holds the parts of streamed uploads being sent.
	partBufs *bufferPool
	uid      uint32
	gid      uint32
	started  time.Time
	log      *slog.Logger
	now      func() time.Time // Config.Now

	mu   sync.Mutex
	open map[string]*openFile // files open by path, shared by their handles
	// lookups remembers, for lookupTTL, names a lookup found missing and
	// directories found: the kernel looks a name up again right before
	// creating it (cp does stat, then open O_CREAT|O_EXCL), and looks up or
	// stats the parent directory around each create; a miss costs two
	// requests, a directory three. Every change made here invalidates the
	// names it touches; lookupGen counts invalidations, so that a lookup
	// racing a change does not store a stale answer.
	lookups   map[string]cachedLookup
	lookupGen uint64
	// missDirs holds the directories whose last name lookup was a miss:
	// the next lookup there sends its LIST beside its HEAD.
	missDirs map[string]bool

	// The writer lease (lease.go): fence refuses writes while it is not
	// valid; ownsPrefix defers the abort of every pending upload to the
	// moment the lease is taken.
	fence      *fence
	leaseTTL   time.Duration
	ownsPrefix bool
}

var _ backend.Backend = (*Backend)(nil)

// New connects to the bucket with credentials from the standard AWS chain
// (environment, shared config and credentials files, profiles, IMDS), checks
// that the bucket is reachable, and aborts stale multipart uploads.
func New(ctx context.Context, cfg Config) (*Backend, error) {
	return newBackend(ctx, cfg)
}

// newBackend is New with extra client options (tests inject faults).
func newBackend(ctx context.Context, cfg Config, optFns ...func(*s3.Options)) (*Backend, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("s3 backend: no bucket")
	}
	if cfg.PartSize == 0 {
		cfg.PartSize = DefaultPartSize
	}
	if cfg.PartSize < MinPartSize {
		return nil, fmt.Errorf("s3 backend: part size %d below the S3 minimum %d", cfg.PartSize, MinPartSize)
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	if cfg.LeaseTTL < 2*time.Second {
		return nil, fmt.Errorf("s3 backend: writer lease TTL %s below 2s", cfg.LeaseTTL)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	fence := &fence{now: cfg.Now}
	loadOpts := []func(*config.LoadOptions) error{
		config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = retryAttempts
				o.MaxBackoff = 20 * time.Second
				// The default client-side retry quota gives up early when many
				// requests fail at once (a throttled burst); the server's
				// SlowDown is the rate limit that matters.
				o.RateLimiter = ratelimit.None
			})
		}),
	}
	if cfg.Region != "" {
		loadOpts = append(loadOpts, config.WithRegion(cfg.Region))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, loadOpts...)
	if err != nil {
		return nil, fmt.Errorf("s3 backend: AWS config: %w", err)
	}
	if awsCfg.Region == "" {
		awsCfg.Region = "us-east-1"
	}
	if hc, ok := awsCfg.HTTPClient.(*awshttp.BuildableClient); ok {
		// One file read sequentially keeps 1+aheadStreams GETs open and
		// one being written sends Concurrency parts; several files at once
		// need more idle connections than the SDK's 10 per host, or each
		// request beyond them pays a new TCP (and TLS) handshake.
		awsCfg.HTTPClient = hc.WithTransportOptions(func(tr *http.Transport) {
			tr.MaxIdleConnsPerHost = idleConns
			tr.MaxIdleConns = max(tr.MaxIdleConns, idleConns)
		})
	}
	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		o.UsePathStyle = cfg.PathStyle
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
			// Since s3 v1.73 the SDK adds CRC32 checksums to every request
			// and validates them on responses; S3-compatible servers vary
			// in support, so only send them where the API requires them.
			o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
			o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
		}
		o.APIOptions = append(o.APIOptions, fence.middleware)
	}, func(o *s3.Options) {
		for _, fn := range optFns {
			fn(o)
		}
	})

	b := &Backend{
		client:       client,
		bucket:       cfg.Bucket,
		partSize:     cfg.PartSize,
		concurrency:  cfg.Concurrency,
		copyLimit:    maxCopySize,
		copyPartSize: copyPartSize,
		uid:          uint32(os.Getuid()),
		gid:          uint32(os.Getgid()),
		log:          slog.Default(),
		open:         make(map[string]*openFile),
		partBufs:     newBufferPool(cfg.PartSize, cfg.Concurrency),
		lookups:      make(map[string]cachedLookup),
		missDirs:     make(map[string]bool),
		fence:        fence,
		leaseTTL:     cfg.LeaseTTL,
		ownsPrefix:   cfg.StaleUploadAge == 0,
		now:          cfg.Now,
	}
	if p := strings.Trim(cfg.Prefix, "/"); p != "" {
		b.prefix = p + "/"
	}
	if _, err := client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(b.bucket)}); err != nil {
		return nil, fmt.Errorf("s3 backend: bucket %s: %w", b.bucket, b.fail("headbucket", "", b.prefix, err))
	}
	b.stagingDir = cfg.StagingDir
	if b.stagingDir == "" {
		removeDeadStaging(os.TempDir())
		b.stagingDir = filepath.Join(os.TempDir(), fmt.Sprintf("%s%d", stagingPrefix, os.Getpid()))
		b.ownStaging = true
	}
	if err := os.MkdirAll(b.stagingDir, 0o700); err != nil {
		return nil, fmt.Errorf("s3 backend: staging dir: %w", err)
	}
	b.ctx, b.cancel = context.WithCancel(context.WithoutCancel(ctx))
	if !b.ownsPrefix {
		if n, err := b.CleanupUploads(ctx, cfg.StaleUploadAge); err != nil {
			b.log.Warn("s3: cleaning up stale multipart uploads failed", "bucket", b.bucket, "prefix", b.prefix, "err", err)
		} else if n > 0 {
			b.log.Info("s3: aborted stale multipart uploads", "bucket", b.bucket, "prefix", b.prefix, "count", n)
		}
	}
	return b, nil
}

// stagingPrefix names default staging directories: kmsfs-staging-<pid>.
const stagingPrefix = "kmsfs-staging-"

// removeDeadStaging removes the default staging directories of processes
// that are gone (killed: Close never ran). Staging files are unlinked when
// created, so such a directory is empty and os.Remove, which only removes
// empty directories, is enough.
func removeDeadStaging(tmp string) {
	ents, err := os.ReadDir(tmp)
	if err != nil {
		return
	}
	for _, e := range ents {
		pid, ok := strings.CutPrefix(e.Name(), stagingPrefix)
		if !ok || !e.IsDir() {
			continue
		}
		if n, err := strconv.Atoi(pid); err != nil || n == os.Getpid() {
			continue
		}
		if _, err := os.Stat(filepath.Join("/proc", pid)); errors.Is(err, os.ErrNotExist) {
			os.Remove(filepath.Join(tmp, e.Name()))
		}
	}
}

// Client is the S3 client the backend uses (for tools and tests).
func (b *Backend) Client() *s3.Client { return b.client }

// Bucket and Prefix say where the volume is; Prefix is "" or ends in "/".
func (b *Backend) Bucket() string { return b.bucket }
func (b *Backend) Prefix() string { return b.prefix }

// Caps: an object store has no hard links, device nodes or atomic exchange.
// Extended attributes are kept in object metadata.
func (b *Backend) Caps() backend.Caps {
	return backend.Caps{HardLinks: false, Xattrs: true, Rename2: false, Mknod: false}
}

// Close aborts nothing: every File must have been closed (and so uploaded)
// before. It stops background reads and removes the staging directory.
func (b *Backend) Close() error {
	b.cancel()
	if b.ownStaging {
		// Staging files are unlinked at creation, so the directory is empty.
		if err := os.Remove(b.stagingDir); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// key maps a volume path to its object key, refusing the metadata folder.
func (b *Backend) key(op, name string) (string, error) {
	if name == MetaDir || strings.HasPrefix(name, MetaDir+"/") {
		return "", &os.PathError{Op: op, Path: name, Err: syscall.EPERM}
	}
	if strings.HasPrefix(name, "/") || strings.HasSuffix(name, "/") {
		return "", &os.PathError{Op: op, Path: name, Err: syscall.EINVAL}
	}
	k := b.prefix + name
	// The marker of a directory is one byte longer.
	if len(k)+1 > maxKeyLen {
		return "", &os.PathError{Op: op, Path: name, Err: syscall.ENAMETOOLONG}
	}
	return k, nil
}

// dirPrefix is the listing prefix of a directory: "prefix/a/b/" ("prefix/" or
// "" for the root).
func (b *Backend) dirPrefix(name string) string {
	if name == "" {
		return b.prefix
	}
	return b.prefix + name + "/"
}

func (b *Backend) metaKey(name string) string { return b.prefix + MetaDir + "/" + name }

// rootKey holds the root directory's attributes: the root has no marker of
// its own (with an empty prefix it could not have one).
func (b *Backend) rootKey() string { return b.metaKey("root") }

// copySource is the x-amz-copy-source value: bucket/key, URL-encoded.
func (b *Backend) copySource(key string) string {
	segs := strings.Split(key, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return url.PathEscape(b.bucket) + "/" + strings.Join(segs, "/")
}

// Statfs: a bucket has no capacity to report; say "plenty" so that tools
// checking free space proceed.
func (b *Backend) Statfs(_ context.Context, st *syscall.Statfs_t) error {
	*st = syscall.Statfs_t{
		Bsize:   4096,
		Frsize:  4096,
		Blocks:  1 << 40,
		Bfree:   1 << 40,
		Bavail:  1 << 40,
		Files:   1 << 40,
		Ffree:   1 << 40,
		Namelen: 255,
	}
	return nil
}

// ReadMeta reads a volume metadata object; a missing one is ENOENT (so
// errors.Is(err, fs.ErrNotExist)).
func (b *Backend) ReadMeta(ctx context.Context, name string) ([]byte, error) {
	ctx = opContext(ctx)
	k := b.metaKey(name)
	out, err := b.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(b.bucket), Key: aws.String(k)})
	if err != nil {
		return nil, b.fail("readmeta", name, k, err)
	}
	defer out.Body.Close()
	data, err := io.ReadAll(out.Body)
	if err != nil {
		return nil, b.fail("readmeta", name, k, err)
	}
	return data, nil
}

// WriteMeta replaces a metadata object; PutObject is atomic, so readers see
// the old or the new content, never a mix.
func (b *Backend) WriteMeta(ctx context.Context, name string, data []byte) error {
	ctx = opContext(ctx)
	k := b.metaKey(name)
	_, err := b.client.PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String(b.bucket), Key: aws.String(k),
		Body: bytes.NewReader(data), ContentLength: aws.Int64(int64(len(data))),
	})
	if err != nil {
		return b.fail("writemeta", name, k, err)
	}
	return nil
}

// CleanupUploads aborts the multipart uploads under the volume prefix that
// were started more than olderThan ago, and returns how many it aborted. A
// process killed during an upload leaves its parts on the server (billed,
// invisible); nothing else would ever remove them.
func (b *Backend) CleanupUploads(ctx context.Context, olderThan time.Duration) (int, error) {
	cutoff := time.Now().Add(-olderThan)
	in := &s3.ListMultipartUploadsInput{Bucket: aws.String(b.bucket)}
	if b.prefix != "" {
		in.Prefix = aws.String(b.prefix)
	}
	aborted := 0
	for {
		out, err := b.client.ListMultipartUploads(ctx, in)
		if err != nil {
			return aborted, b.fail("listuploads", "", b.prefix, err)
		}
		for _, u := range out.Uploads {
			if u.Initiated != nil && u.Initiated.After(cutoff) {
				continue
			}
			_, err := b.client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{
				Bucket: aws.String(b.bucket), Key: u.Key, UploadId: u.UploadId,
			})
			if err != nil && !isCode(err, "NoSuchUpload") {
				return aborted, b.fail("abortupload", "", aws.ToString(u.Key), err)
			}
			aborted++
		}
		if !aws.ToBool(out.IsTruncated) {
			return aborted, nil
		}
		in.KeyMarker, in.UploadIdMarker = out.NextKeyMarker, out.NextUploadIdMarker
	}
}

// listAll calls fn for every object whose key starts with prefix (no
// delimiter), page by page.
func (b *Backend) listAll(ctx context.Context, prefix string, fn func(types.Object) error) error {
	in := &s3.ListObjectsV2Input{Bucket: aws.String(b.bucket), Prefix: aws.String(prefix)}
	p := s3.NewListObjectsV2Paginator(b.client, in)
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return err
		}
		for _, o := range page.Contents {
			if err := fn(o); err != nil {
				return err
			}
		}
	}
	return nil
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }
