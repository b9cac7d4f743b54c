package fs

import (
	"syscall"
	"time"

	"github.com/kmsfs/kmsfs/volume"
)

// op is a FUSE operation as the mount reports it: in log lines, and as the
// operation label of its latency histogram.
type op uint8

const (
	opLookup op = iota
	opGetattr
	opSetattr
	opStatfs
	opReaddir
	opMkdir
	opMknod
	opRmdir
	opUnlink
	opRename
	opSymlink
	opReadlink
	opLink
	opOpen
	opCreate
	opRead
	opWrite
	opFsync
	opFlush
	opRelease
	opFallocate
	opLseek
	opGetxattr
	opSetxattr
	opListxattr
	opRemovexattr
	numOps
)

// String is the operation's name: FUSE's own, in lower case.
func (o op) String() string {
	switch o {
	case opLookup:
		return "lookup"
	case opGetattr:
		return "getattr"
	case opSetattr:
		return "setattr"
	case opStatfs:
		return "statfs"
	case opReaddir:
		return "readdir"
	case opMkdir:
		return "mkdir"
	case opMknod:
		return "mknod"
	case opRmdir:
		return "rmdir"
	case opUnlink:
		return "unlink"
	case opRename:
		return "rename"
	case opSymlink:
		return "symlink"
	case opReadlink:
		return "readlink"
	case opLink:
		return "link"
	case opOpen:
		return "open"
	case opCreate:
		return "create"
	case opRead:
		return "read"
	case opWrite:
		return "write"
	case opFsync:
		return "fsync"
	case opFlush:
		return "flush"
	case opRelease:
		return "release"
	case opFallocate:
		return "fallocate"
	case opLseek:
		return "lseek"
	case opGetxattr:
		return "getxattr"
	case opSetxattr:
		return "setxattr"
	case opListxattr:
		return "listxattr"
	case opRemovexattr:
		return "removexattr"
	}
	return "unknown"
}

// fail is the one way an error reaches the kernel: every errno the mount
// returns passes here. The classification is the volume's
// (volume.Classify); what an operator must be able to trace to a file
// (tampering, corruption, the KMS refusing a key or out of reach) is logged
// with the path and counted. name is the path in the volume ("" for the
// root). A nil err is success (0).
func (t *tree) fail(o op, name string, err error) syscall.Errno {
	if err == nil {
		return 0
	}
	f := volume.Classify(err)
	if f.Report {
		t.log.Error(o.String()+" failed", "path", "/"+name, "errno", f.Errno.Error(), "err", err)
		t.vol.CountError(f)
	}
	return f.Errno
}

// recorders holds, per operation, where the duration of a request goes:
// resolved once when the mount starts (volume.RequestObserver), so that
// timing a request costs two clock reads and one call.
type recorders [numOps]func(time.Duration)

func newRecorders(o volume.RequestObserver) recorders {
	var r recorders
	if o == nil {
		return r
	}
	for i := range r {
		r[i] = o.RequestRecorder(op(i).String())
	}
	return r
}

// timed records the duration of one request that started at start. Every
// FUSE method of the mount defers it first thing:
//
//	defer n.t.timed(opLookup, time.Now())
func (t *tree) timed(o op, start time.Time) {
	if rec := t.recorders[o]; rec != nil {
		rec(time.Since(start))
	}
}
