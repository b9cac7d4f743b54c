package local

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The standard library's syscall package has no exported fstatat on
// linux/amd64, and the backend interface speaks syscall.Stat_t. Both
// packages' Stat_t are the kernel's struct stat for the architecture's
// fstatat system call, field for field, so the result is written straight
// into the caller's syscall.Stat_t. The array lengths below stop the build
// on an architecture where the two sizes differ.
var (
	_ [unsafe.Sizeof(syscall.Stat_t{}) - unsafe.Sizeof(unix.Stat_t{})]byte
	_ [unsafe.Sizeof(unix.Stat_t{}) - unsafe.Sizeof(syscall.Stat_t{})]byte
)

// fstatat is fstatat(2) into a syscall.Stat_t, retried on EINTR.
func fstatat(dirfd int, p string, st *syscall.Stat_t, flags int) error {
	return retry(func() error {
		return unix.Fstatat(dirfd, p, (*unix.Stat_t)(unsafe.Pointer(st)), flags)
	})
}
