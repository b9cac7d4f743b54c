package volume

import (
	"context"
	"errors"
	"io/fs"
	"syscall"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/kms"
)

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
