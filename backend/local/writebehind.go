package local

import "golang.org/x/sys/unix"

// WriteBehind starts writeback of [off, off+n) of the backing file and
// returns without waiting for it (sync_file_range(2) with
// SYNC_FILE_RANGE_WRITE only). It does not make anything durable; it moves
// the disk writes of a long sequential write from the final fsync to the
// time the data arrives, where they overlap with encryption.
func (f *file) WriteBehind(off, n int64) error {
	return unix.SyncFileRange(f.fd, off, n, unix.SYNC_FILE_RANGE_WRITE)
}
