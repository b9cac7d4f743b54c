package fs

import (
	"context"
	"errors"
	"io"
	"sync/atomic"
	"syscall"
	"time"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/kmsfs/kmsfs/volume"
)

var (
	_ fusefs.NodeOpener  = (*Node)(nil)
	_ fusefs.NodeCreater = (*Node)(nil)
	_ fusefs.NodeLseeker = (*Node)(nil)

	_ fusefs.FileReader    = (*fileHandle)(nil)
	_ fusefs.FileWriter    = (*fileHandle)(nil)
	_ fusefs.FileFsyncer   = (*fileHandle)(nil)
	_ fusefs.FileFlusher   = (*fileHandle)(nil)
	_ fusefs.FileReleaser  = (*fileHandle)(nil)
	_ fusefs.FileAllocater = (*fileHandle)(nil)
)

// fileHandle is an open file of the mount.
type fileHandle struct {
	t    *tree
	h    *volume.Handle
	node *Node // the node it was opened on (set by addOpen)
	// readAccess: the handle's first READ is an access (atime.go);
	// readDue: and it moves atime, as decided at the open (O_RDONLY).
	readAccess atomic.Bool
	readDue    bool
}

// openFlags turns the flags of a FUSE OPEN or CREATE into volume open
// flags. With the writeback cache the kernel resolves O_APPEND itself: it
// sends every write, appends included, at the offset it computed from its
// own file size, and writes back cached pages at their own offsets. Applying
// O_APPEND again here would move those pages to the end of the file.
func (t *tree) openFlags(flags uint32) int {
	f := int(flags) &^ fuse.FMODE_EXEC
	if t.writeback {
		f &^= syscall.O_APPEND
	}
	return f
}

func (n *Node) Open(ctx context.Context, flags uint32) (fusefs.FileHandle, uint32, syscall.Errno) {
	defer n.t.timed(opOpen, time.Now())
	p, errno := n.path()
	if errno != 0 {
		return nil, 0, n.t.fail(opOpen, p, errno)
	}
	h, err := n.t.vol.OpenFile(ctx, p, n.t.openFlags(flags), 0, nil)
	if err != nil {
		return nil, 0, n.t.fail(opOpen, p, err)
	}
	// FOPEN_KEEP_CACHE: only this mount writes the backing files, so the
	// kernel's page cache of a file stays valid across opens; a warm re-read
	// is then served without decrypting again.
	keep := uint32(fuse.FOPEN_KEEP_CACHE)
	fh := &fileHandle{t: n.t, h: h}
	n.addOpen(fh)
	// A read is an access (atime.go), recorded at the first READ through
	// the handle; the kernel drops its cached atime after every READ it
	// sends (fuse_invalidate_atime in fs/fuse/file.c), so no attributes
	// need dropping. An open that reads nothing is no access, as on Linux
	// (rsync opens every file it wrote, to set its attributes).
	switch int(flags) & syscall.O_ACCMODE {
	case syscall.O_RDONLY:
		st := h.OpenStat()
		switch {
		case n.t.vol.PlainSize(p, st.Size) == 0:
			// No READ comes for an empty file: its open is the access.
			n.t.access(ctx, n, p, st, h, true)
		case n.t.accessDue(st):
			fh.readDue = true
			fh.readAccess.Store(true)
			if n.kernelPages.Load() {
				// The kernel would serve the read from its pages, unseen:
				// let it drop them, so that the read reaches us. Only when
				// the read moves atime (relatime: the first after a change).
				keep = 0
			}
		}
	case syscall.O_RDWR:
		// Mostly opened to write: its first READ that reaches us counts.
		fh.readAccess.Store(true)
	}
	return fh, keep, 0
}

func (n *Node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fusefs.Inode, fusefs.FileHandle, uint32, syscall.Errno) {
	defer n.t.timed(opCreate, time.Now())
	p, errno := n.child(name)
	if errno != 0 {
		return nil, nil, 0, n.t.fail(opCreate, p, errno)
	}
	h, err := n.t.vol.OpenFile(ctx, p, n.t.openFlags(flags)|syscall.O_CREAT, mode, owner(ctx))
	if err != nil {
		return nil, nil, 0, n.t.fail(opCreate, p, err)
	}
	var st syscall.Stat_t
	if err := h.Stat(&st); err != nil {
		h.Close()
		return nil, nil, 0, n.t.fail(opCreate, p, err)
	}
	out.Attr.FromStat(&st)
	ch := n.newChild(ctx, &st, &out.Attr)
	fh := &fileHandle{t: n.t, h: h}
	fh.readAccess.Store(int(flags)&syscall.O_ACCMODE == syscall.O_RDWR)
	if cn, ok := ch.Operations().(*Node); ok {
		cn.addOpen(fh)
		if flags&syscall.O_EXCL != 0 {
			cn.noCaps.Store(true)
		}
		cn.setidMu.Lock()
		cn.knowMode(st.Mode)
		cn.setidMu.Unlock()
	}
	return ch, fh, 0, 0
}

func (f *fileHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	defer f.t.timed(opRead, time.Now())
	if f.node != nil {
		f.node.sawData()
	}
	if f.readAccess.Load() && f.readAccess.Swap(false) {
		f.accessed(ctx)
	}
	n, err := f.h.ReadAt(ctx, dest, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, f.t.fail(opRead, f.h.Name(), err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

// accessed records the first READ of the handle as an access (atime.go):
// decided at the open for a file opened for reading only (nothing it
// does changes the file), else with the file's times now, since the
// handle may have written since it was opened. The kernel drops its
// cached atime when the READ ends.
func (f *fileHandle) accessed(ctx context.Context) {
	if f.node == nil || !f.t.atimeMayMove(false) {
		return // (for a read-only handle: remounted noatime or ro since the open)
	}
	p, errno := f.node.path()
	if errno != 0 {
		return
	}
	if f.readDue {
		f.t.record(ctx, f.node, p, f.h.OpenStat(), f.h, false)
		return
	}
	var st syscall.Stat_t
	if err := f.h.Stat(&st); err != nil {
		return
	}
	f.t.access(ctx, f.node, p, &st, f.h, false)
}

func (f *fileHandle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	defer f.t.timed(opWrite, time.Now())
	if f.node != nil {
		f.node.sawData()
	}
	n, err := f.h.WriteAt(ctx, data, off)
	if err != nil {
		return 0, f.t.fail(opWrite, f.h.Name(), err)
	}
	return uint32(n), 0
}

func (f *fileHandle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	defer f.t.timed(opFsync, time.Now())
	return f.t.fail(opFsync, f.h.Name(), f.h.Sync(ctx))
}

// Flush runs on every close(2) of a descriptor. Backends that upload on
// close (S3) do it here so that close reports upload errors. On a backend
// with nothing to do at close (local), ENOSYS tells the kernel to stop
// sending FLUSH for the whole mount (fuse_flush sets fc->no_flush): one
// round trip less per file closed, which cp -a and rsync do 10,000 times.
// The kernel still writes back cached pages at close without it.
func (f *fileHandle) Flush(ctx context.Context) syscall.Errno {
	defer f.t.timed(opFlush, time.Now())
	if !f.h.NeedsFlush() {
		return f.t.fail(opFlush, f.h.Name(), syscall.ENOSYS)
	}
	return f.t.fail(opFlush, f.h.Name(), f.h.Flush(ctx))
}

func (f *fileHandle) Release(ctx context.Context) syscall.Errno {
	defer f.t.timed(opRelease, time.Now())
	if f.node != nil {
		f.node.removeOpen(f)
	}
	return f.t.fail(opRelease, f.h.Name(), f.h.Close())
}

func (f *fileHandle) Allocate(ctx context.Context, off, size uint64, mode uint32) syscall.Errno {
	defer f.t.timed(opFallocate, time.Now())
	// Filesystems drop set-id bits on fallocate as on a write (ext4 and
	// xfs call file_modified), but FUSE_FALLOCATE carries no kill flag and,
	// with FUSE_HANDLE_KILLPRIV_V2, the kernel leaves the bits to us
	// (killpriv.go). Root stands for CAP_FSETID, as in callerInGroup.
	if c, ok := fuse.FromContext(ctx); ok && c.Uid != 0 && f.node != nil {
		if p, errno := f.node.path(); errno == 0 {
			if errno := f.node.killSetid(ctx, f, p); errno != 0 {
				return errno
			}
		}
	}
	return f.t.fail(opFallocate, f.h.Name(), f.h.Allocate(ctx, int64(off), int64(size), mode))
}

// Lseek answers SEEK_DATA and SEEK_HOLE from the file's holes (sparse.go).
func (n *Node) Lseek(ctx context.Context, f fusefs.FileHandle, off uint64, whence uint32) (uint64, syscall.Errno) {
	defer n.t.timed(opLseek, time.Now())
	return n.lseek(ctx, f, off, whence)
}
