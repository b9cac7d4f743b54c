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
// past its end. So the kernel is first told to drop the file's cached pages
// (FUSE_NOTIFY_INVAL_INODE), which writes the dirty ones back to us
// (invalidate_inode_pages2_range launders them) before the notification
// returns; a file no one has open for writing had its pages written back
// at its last close (FUSE_FLUSH). If the kernel refuses the notification,
// the whole file is reported as data (SEEK_DATA answers off, SEEK_HOLE the
// largest file size): a hole reported as data only costs a copy its
// sparseness. Answering ENOSYS instead would switch lseek off for the
// whole mount.
func (n *Node) lseek(ctx context.Context, f fusefs.FileHandle, off uint64, whence uint32) (uint64, syscall.Errno) {
	fh, ok := f.(*fileHandle)
	if !ok || (whence != volume.SeekData && whence != volume.SeekHole) {
		return 0, syscall.EINVAL
	}
	if n.t.writeback && fh.h.HasWriters() {
		if errno := n.NotifyContent(0, 0); errno != 0 {
			if whence == volume.SeekData {
				return off, 0
			}
			return volume.MaxFileSize, 0
		}
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
