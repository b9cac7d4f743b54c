package volume

import (
	"context"
	"fmt"
	"io/fs"
	"syscall"
	"testing"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/kms"
)

func TestClassify(t *testing.T) {
	for _, c := range []struct {
		name string
		err  error
		want Failure
	}{
		{"success", nil, Failure{}},
		{"block auth", fmt.Errorf("block 3: %w", envelope.ErrBlockAuth), Failure{Errno: syscall.EIO, Report: true, Auth: true}},
		{"header auth", fmt.Errorf("header: %w", envelope.ErrAuth), Failure{Errno: syscall.EIO, Report: true, Auth: true}},
		{"xattr auth", fmt.Errorf("user.a: %w", ErrXattrAuth), Failure{Errno: syscall.EIO, Report: true, Auth: true}},
		{"name auth", nameErr("readlink", "d/link", fmt.Errorf("target: %w", envelope.ErrAuth)), Failure{Errno: syscall.EIO, Report: true, Auth: true}},
		{"corrupt", fmt.Errorf("size: %w", envelope.ErrCorrupt), Failure{Errno: syscall.EIO, Report: true}},
		{"kms denied", fmt.Errorf("unwrap data key: %w", kms.Errorf(kms.CodeAccessDenied, "no grant")), Failure{Errno: syscall.EACCES, Report: true}},
		{"kms disabled", kms.ErrDisabled, Failure{Errno: syscall.EACCES, Report: true}},
		{"kms unreachable", fmt.Errorf("generate data key: %w", kms.Errorf(kms.CodeUnavailable, "dial tcp: refused")), Failure{Errno: syscall.EIO, Report: true}},
		{"backend EACCES", &fs.PathError{Op: "open", Path: "/a", Err: syscall.EACCES}, Failure{Errno: syscall.EACCES}},
		{"backend ENOENT", &fs.PathError{Op: "lstat", Path: "/a", Err: syscall.ENOENT}, Failure{Errno: syscall.ENOENT}},
		{"bare ENOTSUP", syscall.ENOTSUP, Failure{Errno: syscall.ENOTSUP}},
		{"backend EIO", &fs.PathError{Op: "read", Path: "/a", Err: syscall.EIO}, Failure{Errno: syscall.EIO, Report: true}},
		{"wrapped errno", fmt.Errorf("rename: %w", syscall.EXDEV), Failure{Errno: syscall.EXDEV}},
		{"not exist", fmt.Errorf("x: %w", fs.ErrNotExist), Failure{Errno: syscall.ENOENT}},
		{"cancelled", fmt.Errorf("x: %w", context.Canceled), Failure{Errno: syscall.EINTR}},
		{"unknown", fmt.Errorf("something else"), Failure{Errno: syscall.EIO, Report: true}},
	} {
		if got := Classify(c.err); got != c.want {
			t.Errorf("%s: Classify(%v) = %+v, want %+v", c.name, c.err, got, c.want)
		}
		if got := Errno(c.err); got != c.want.Errno {
			t.Errorf("%s: Errno = %v, want %v (Classify and Errno disagree)", c.name, got, c.want.Errno)
		}
	}
}
