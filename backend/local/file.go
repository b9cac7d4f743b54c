package local

import (
	"io"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// file is an open backing file on a raw descriptor. Its methods retry
// EINTR and complete short transfers, as *os.File's do.
type file struct {
	fd    int
	setfl int // the file status flags as opened (openNoAtime)
}

func (f *file) ReadAt(p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) {
		m, err := syscall.Pread(f.fd, p[n:], off+int64(n))
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		if m == 0 {
			return n, io.EOF
		}
		n += m
	}
	return n, nil
}

func (f *file) WriteAt(p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) {
		m, err := syscall.Pwrite(f.fd, p[n:], off+int64(n))
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		n += m
	}
	return n, nil
}

// WriteAtQuiet writes p and puts back the modification time the file had
// (backend.QuietWriter); the change time moves, as for any write.
func (f *file) WriteAtQuiet(p []byte, off int64) (int, error) {
	var st syscall.Stat_t
	if err := f.Stat(&st); err != nil {
		return 0, err
	}
	n, err := f.WriteAt(p, off)
	if err != nil {
		return n, err
	}
	ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Sec: st.Mtim.Sec, Nsec: st.Mtim.Nsec}}
	return n, retry(func() error { return unix.UtimesNanoAt(f.fd, "", ts, unix.AT_EMPTY_PATH) })
}

// SetTimes sets the access and modification times (backend.TimeSetter).
func (f *file) SetTimes(atime, mtime time.Time) error {
	ts := []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
	return retry(func() error { return unix.UtimesNanoAt(f.fd, "", ts, unix.AT_EMPTY_PATH) })
}

func (f *file) Truncate(size int64) error {
	return retry(func() error { return syscall.Ftruncate(f.fd, size) })
}

// SetSparseTail cuts the file at dataEnd and extends it to size with
// ftruncate(2), which leaves the added range a hole (backend.SparseTail).
// Both move the modification time: the volume restores it with SetTimes.
func (f *file) SetSparseTail(dataEnd, size int64) error {
	if err := f.Truncate(dataEnd); err != nil {
		return err
	}
	return f.Truncate(size)
}
func (f *file) Sync() error  { return retry(func() error { return syscall.Fsync(f.fd) }) }
func (f *file) Close() error { return syscall.Close(f.fd) }
func (f *file) Stat(st *syscall.Stat_t) error {
	return retry(func() error { return syscall.Fstat(f.fd, st) })
}

// SeekData is lseek(2) SEEK_DATA (backend.SparseFile); ENXIO (no data at or
// after off) is io.EOF.
func (f *file) SeekData(off int64) (int64, error) { return f.seek(off, unix.SEEK_DATA) }

// SeekHole is lseek(2) SEEK_HOLE (backend.SparseFile).
func (f *file) SeekHole(off int64) (int64, error) { return f.seek(off, unix.SEEK_HOLE) }

func (f *file) seek(off int64, whence int) (int64, error) {
	var pos int64
	err := retry(func() (err error) { pos, err = unix.Seek(f.fd, off, whence); return err })
	if err == unix.ENXIO {
		return 0, io.EOF
	}
	return pos, err
}

// PunchHole frees [off, off+n) with fallocate(2) FALLOC_FL_PUNCH_HOLE, which
// Linux accepts only together with FALLOC_FL_KEEP_SIZE (fallocate(2)).
func (f *file) PunchHole(off, n int64) error {
	return retry(func() error {
		return unix.Fallocate(f.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	})
}
