package volume

import (
	"context"
	"errors"
	"io/fs"
	"syscall"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/kms"
)

// Failure is how the FUSE boundary answers an error: what the kernel gets,
// and whether an operator must be able to trace it to a file.
type Failure struct {
	// Errno is the error number returned to the kernel (0: success).
	Errno syscall.Errno
	// Report marks the failures that are logged with their path and
	// counted: EIO (tampering, corruption, an unreachable KMS, a backend
	// I/O error) and the KMS refusing a key. The everyday answers (ENOENT,
	// EEXIST, ENODATA, ...) are neither: they are how programs probe.
	Report bool
	// Auth marks a block, header or xattr value that failed
	// authentication: tampering or corruption, counted on its own.
	Auth bool
}

// Classify maps an error from the volume, the KMS or the backend to the
// answer of the FUSE boundary (see Errno for the mapping).
func Classify(err error) Failure {
	if err == nil {
		return Failure{}
	}
	// The common failures are the backend's own errnos (ENOENT on lookup,
	// ENODATA on getxattr), bare or in a PathError: none of the checks
	// below can match them.
	if e, ok := backendErrno(err); ok {
		return Failure{Errno: e, Report: e == syscall.EIO}
	}
	e := Errno(err)
	return Failure{
		Errno:  e,
		Report: e == syscall.EIO || (e == syscall.EACCES && kms.Code(err) != ""),
		Auth:   errors.Is(err, envelope.ErrAuth) || errors.Is(err, envelope.ErrBlockAuth) || errors.Is(err, ErrXattrAuth),
	}
}

// backendErrno returns the errno of a bare syscall.Errno or of one wrapped
// directly in an *fs.PathError.
func backendErrno(err error) (syscall.Errno, bool) {
	switch e := err.(type) {
	case syscall.Errno:
		return e, true
	case *fs.PathError:
		errno, ok := e.Err.(syscall.Errno)
		return errno, ok
	}
	return 0, false
}

// Errno maps an error from the volume, the KMS or the backend to the errno
// the FUSE layer returns:
//   - authentication failures and corrupt files: EIO (never garbage data);
//   - the KMS refusing the key (access denied, key disabled or pending
//     deletion): EACCES;
//   - a KMS that cannot be reached, or any other KMS failure: EIO;
//   - errnos from the backend pass through (ENOTSUP for what it cannot do).
func Errno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var errno syscall.Errno
	switch {
	case errors.Is(err, envelope.ErrAuth), errors.Is(err, envelope.ErrBlockAuth),
		errors.Is(err, envelope.ErrCorrupt), errors.Is(err, envelope.ErrNotEncrypted),
		errors.Is(err, envelope.ErrVersion), errors.Is(err, ErrXattrAuth):
		return syscall.EIO
	case errors.Is(err, kms.ErrAccessDenied), errors.Is(err, kms.ErrDisabled), errors.Is(err, kms.ErrInvalidState):
		return syscall.EACCES
	case kms.Code(err) != "":
		return syscall.EIO
	case errors.As(err, &errno):
		return errno
	case errors.Is(err, fs.ErrNotExist):
		return syscall.ENOENT
	case errors.Is(err, fs.ErrExist):
		return syscall.EEXIST
	case errors.Is(err, fs.ErrPermission):
		return syscall.EACCES
	case errors.Is(err, context.Canceled):
		return syscall.EINTR
	}
	return syscall.EIO
}
