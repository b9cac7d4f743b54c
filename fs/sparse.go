package fs

import (
	"context"
	"syscall"

	fusefs "github.com/hanwen/go-fuse/v2/fs"

	"github.com/kmsfs/kmsfs/volume"
)

// lseek answers FUSE_LSEEK (SEEK_DATA and SEEK_HOLE; the kernel resolves
// SEEK_SET, SEEK_CUR and SEEK_END itself) from the volume's holes
// (volume.Handle.Seek), in plaintext offsets.
//
// With the writeback cache the kernel holds written pages and the file
// size it computed from them, and it sends FUSE_LSEEK without writing them
// back first (fuse_file_llseek in fs/fuse/file.c). While the file is open
// for writing, such pages may sit in what the volume sees as a hole, or
// past its end; then the whole file is reported as data (SEEK_DATA answers
// off, SEEK_HOLE the largest file size), which is always a correct answer
// for lseek(2), where a hole reported as data only costs a copy its
// sparseness. A file no one has open for writing has had its pages written
// back at its last close (FUSE_FLUSH), so the volume's view is the file.
// Answering ENOSYS instead would switch lseek off for the whole mount.
func (n *Node) lseek(ctx context.Context, f fusefs.FileHandle, off uint64, whence uint32) (uint64, syscall.Errno) {
	fh, ok := f.(*fileHandle)
	if !ok || (whence != volume.SeekData && whence != volume.SeekHole) {
		return 0, syscall.EINVAL
	}
	if n.t.writeback && fh.h.HasWriters() {
		if whence == volume.SeekData {
			return off, 0
		}
		return volume.MaxFileSize, 0
	}
	pos, err := fh.h.Seek(ctx, int64(off), int(whence))
	if err == syscall.ENXIO {
		return 0, syscall.ENXIO // the answer past the end, not a failure
	}
	if err != nil {
		return 0, n.t.fail(opLseek, fh.h.Name(), err)
	}
	return uint64(pos), 0
}
