package s3

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"syscall"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"
)

// opContext keeps the values of a request's context but not its
// cancellation. FUSE turns any signal the calling process receives into an
// INTERRUPT, and Go programs receive one every few milliseconds (SIGURG,
// asynchronous preemption): abandoning the S3 request would answer EINTR,
// which callers of raw syscalls do not retry, for an operation that was
// about to succeed, and could leave a rename half done. Stuck requests are
// bounded by the SDK's retries instead.
func opContext(ctx context.Context) context.Context { return context.WithoutCancel(ctx) }

// errorCode is the S3 error code of err ("NoSuchKey", "SlowDown", ...), or
// the HTTP status text for bodiless responses (HEAD), or "".
func errorCode(err error) string {
	var api smithy.APIError
	if errors.As(err, &api) {
		return api.ErrorCode()
	}
	return ""
}

func httpStatus(err error) int {
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

func isCode(err error, codes ...string) bool {
	c := errorCode(err)
	for _, want := range codes {
		if c == want {
			return true
		}
	}
	return false
}

func isNotFound(err error) bool {
	return isCode(err, "NoSuchKey", "NotFound") || httpStatus(err) == http.StatusNotFound
}

func isPreconditionFailed(err error) bool {
	return isCode(err, "PreconditionFailed") || httpStatus(err) == http.StatusPreconditionFailed
}

// errno maps an S3 error to the errno a POSIX caller expects.
func errno(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	switch errorCode(err) {
	case "NoSuchKey", "NotFound", "NoSuchBucket", "NoSuchUpload":
		return syscall.ENOENT
	case "AccessDenied", "Forbidden", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch":
		return syscall.EACCES
	case "PreconditionFailed", "ConditionalRequestConflict":
		return syscall.EEXIST
	case "ExistingObjectIsDirectory": // versitygw posix: key names a directory
		return syscall.EISDIR
	case "ObjectParentIsFile": // versitygw posix: a parent is a file
		return syscall.ENOTDIR
	case "KeyTooLongError":
		return syscall.ENAMETOOLONG
	case "EntityTooLarge":
		return syscall.EFBIG
	case "NotImplemented":
		return syscall.ENOTSUP
	}
	switch httpStatus(err) {
	case http.StatusNotFound:
		return syscall.ENOENT
	case http.StatusForbidden:
		return syscall.EACCES
	case http.StatusPreconditionFailed:
		return syscall.EEXIST
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return syscall.EINTR
	}
	return syscall.EIO
}

// fail turns an S3 error into *os.PathError{Op, Path: name, Err: errno} and
// logs it with the key and the S3 error code. Not-found is the normal answer
// to a lookup, so it is logged at debug level only.
func (b *Backend) fail(op, name, key string, err error) error {
	if err == nil {
		return nil
	}
	var pe *os.PathError
	if errors.As(err, &pe) {
		return err
	}
	en := errno(err)
	level := slog.LevelWarn
	if en == syscall.ENOENT || en == syscall.EEXIST {
		level = slog.LevelDebug
	}
	b.log.Log(context.Background(), level, "s3 request failed",
		"op", op, "bucket", b.bucket, "key", key, "code", errorCode(err), "status", httpStatus(err), "errno", en.Error(), "err", err)
	return &os.PathError{Op: op, Path: name, Err: en}
}

// pathErr builds the error for a condition the backend detects itself.
func pathErr(op, name string, en syscall.Errno) error {
	return &os.PathError{Op: op, Path: name, Err: en}
}
