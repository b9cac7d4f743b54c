// Package fs is the FUSE node tree of a kmsfs mount (go-fuse v2, fs API). It
// translates FUSE operations to the volume and the backend and holds no
// crypto of its own; it never knows which backend it runs on.
//
// Files are named after the FUSE operations they implement, as in gocryptfs:
// node.go (lookup, attributes), dir.go (directory operations), file.go (open
// file handles), xattr.go (extended attributes); boundary.go is the one way
// an error reaches the kernel (tree.fail) and times every request.
package fs

import (
	"context"
	"log/slog"
	"path"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/kmsfs/kmsfs/backend"
	"github.com/kmsfs/kmsfs/volume"
)

// tree is what every node of one mount shares.
type tree struct {
	vol *volume.Volume
	be  backend.Backend
	log *slog.Logger
	// writeback: the kernel caches writes (MountOptions.WritebackCache).
	writeback bool
	// attrTimeout is how long the kernel may keep the attributes we reply.
	attrTimeout time.Duration
	// recorders time the requests, by operation (boundary.go).
	recorders recorders
	// atime is the mount's atime policy, accesser the backend's way to
	// apply it, nil if it has none (atime.go).
	atime    *atimeWatch
	accesser backend.Accesser
	noAccess atomic.Bool // the backend turned out to record no access
}

// Node is one file, directory or symlink of the mount.
type Node struct {
	fusefs.Inode
	t *tree

	// open holds the node's open files, so that the attributes of a file
	// unlinked while open (it has no path any more) can still be read
	// through one of them: the kernel asks for them without a handle, e.g.
	// for lseek(SEEK_HOLE) and fstat.
	openMu sync.Mutex
	open   map[*fileHandle]struct{}

	// noCaps: the backing file is known to have no security.capability
	// attribute, because this mount created it (O_EXCL) and no security.*
	// attribute was set on it since. See Getxattr.
	noCaps atomic.Bool

	// noSetid: the file is known to have no mode bit an unprivileged
	// write drops (killpriv.go); setidMu orders its updates.
	setidMu sync.Mutex
	noSetid atomic.Bool

	// dirAttr is a directory's attributes as last looked up or stat'ed:
	// what fstat of a descriptor on it answers once it was removed or
	// renamed over (it has no path then), with no links, as ext4 does.
	dirAttr atomic.Pointer[fuse.Attr]

	// kernelPages: the kernel may hold pages of the file, because this
	// daemon served a READ or a WRITE of it since the kernel made the
	// inode. Until then every read of it reaches the daemon (atime.go).
	kernelPages atomic.Bool
}

// sawData records that the kernel may now hold pages of the file.
func (n *Node) sawData() {
	if !n.kernelPages.Load() {
		n.kernelPages.Store(true)
	}
}

func (n *Node) addOpen(f *fileHandle) {
	n.openMu.Lock()
	defer n.openMu.Unlock()
	if n.open == nil {
		n.open = map[*fileHandle]struct{}{}
	}
	n.open[f] = struct{}{}
	f.node = n
}

func (n *Node) removeOpen(f *fileHandle) {
	n.openMu.Lock()
	defer n.openMu.Unlock()
	delete(n.open, f)
}

// anyOpen returns one of the node's open files, or nil.
func (n *Node) anyOpen() *fileHandle {
	n.openMu.Lock()
	defer n.openMu.Unlock()
	for f := range n.open {
		return f
	}
	return nil
}

// NewRoot returns the root node of a mount of vol.
func NewRoot(vol *volume.Volume, log *slog.Logger) *Node {
	if log == nil {
		log = slog.Default()
	}
	t := &tree{vol: vol, be: vol.Backend(), log: log, recorders: newRecorders(vol.RequestObserver())}
	t.accesser, _ = t.be.(backend.Accesser)
	return &Node{t: t}
}

var (
	_ fusefs.NodeLookuper  = (*Node)(nil)
	_ fusefs.NodeGetattrer = (*Node)(nil)
	_ fusefs.NodeSetattrer = (*Node)(nil)
	_ fusefs.NodeStatfser  = (*Node)(nil)
)

// path is the node's path relative to the volume root ("" for the root).
// A node that was unlinked while open (or a removed directory someone is
// still in) has no path any more: go-fuse then gives "", the root's path,
// and operating on that would change the root, so it is ENOENT instead.
func (n *Node) path() (string, syscall.Errno) {
	p := n.Path(nil)
	if p == "" && !n.IsRoot() {
		return "", syscall.ENOENT
	}
	return p, 0
}

func (n *Node) child(name string) (string, syscall.Errno) {
	p, errno := n.path()
	return path.Join(p, name), errno
}

// lstatAttr stats name in the backend into st and fills a FUSE attribute
// from it, with the plaintext size of a regular file.
func (t *tree) lstatAttr(ctx context.Context, name string, st *syscall.Stat_t, out *fuse.Attr) error {
	writeOuts := t.vol.WriteOuts()
	if err := t.be.Lstat(ctx, name, st); err != nil {
		return err
	}
	if st.Mode&syscall.S_IFMT == syscall.S_IFREG {
		if n, ok := t.vol.StagedSize(st.Ino); ok {
			// Held in memory while it is written (a compressing
			// volume): the stored file does not have it yet.
			st.Size = n
		} else {
			if t.vol.WriteOuts() != writeOuts {
				// The stat may predate a write-out that has finished
				// since (volume/compress.go): then the stored file has
				// the size the stage had.
				var again syscall.Stat_t
				if err := t.be.Lstat(ctx, name, &again); err == nil && again.Ino == st.Ino {
					st.Size = again.Size
				}
			}
			st.Size = t.vol.PlainSize(name, st.Size)
		}
	}
	out.FromStat(st)
	return nil
}

// newChild makes (or finds) the inode of a child just looked up or created,
// whose attributes are out.
func (n *Node) newChild(ctx context.Context, st *syscall.Stat_t, out *fuse.Attr) *fusefs.Inode {
	ch := n.NewInode(ctx, &Node{t: n.t}, fusefs.StableAttr{Mode: st.Mode & syscall.S_IFMT, Ino: st.Ino})
	if cn, ok := ch.Operations().(*Node); ok {
		cn.rememberDir(out)
	}
	return ch
}

// rememberDir keeps a directory's attributes for its removal (dirAttr).
func (n *Node) rememberDir(a *fuse.Attr) {
	if a.Mode&syscall.S_IFMT == syscall.S_IFDIR {
		c := *a
		n.dirAttr.Store(&c)
	}
}

func (n *Node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	defer n.t.timed(opLookup, time.Now())
	p, errno := n.child(name)
	if errno != 0 {
		return nil, n.t.fail(opLookup, p, errno)
	}
	var st syscall.Stat_t
	if err := n.t.lstatAttr(ctx, p, &st, &out.Attr); err != nil {
		return nil, n.t.fail(opLookup, p, err)
	}
	return n.newChild(ctx, &st, &out.Attr), 0
}

func (n *Node) Getattr(ctx context.Context, f fusefs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	defer n.t.timed(opGetattr, time.Now())
	return n.getattr(ctx, opGetattr, f, out)
}

// getattr answers a GETATTR, and the attributes a SETATTR returns (o).
func (n *Node) getattr(ctx context.Context, o op, f fusefs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if fh, ok := f.(*fileHandle); ok {
		var st syscall.Stat_t
		if err := fh.h.Stat(&st); err != nil {
			return n.t.fail(o, fh.h.Name(), err)
		}
		out.FromStat(&st)
		return 0
	}
	p, errno := n.path()
	if errno != 0 {
		if fh := n.anyOpen(); fh != nil {
			return n.getattr(ctx, o, fh, out)
		}
		if a := n.dirAttr.Load(); a != nil {
			out.Attr = *a
			out.Attr.Nlink = 0 // removed, or renamed over
			return 0
		}
		return n.t.fail(o, p, errno)
	}
	var st syscall.Stat_t
	if err := n.t.lstatAttr(ctx, p, &st, &out.Attr); err != nil {
		return n.t.fail(o, p, err)
	}
	n.rememberDir(&out.Attr)
	return 0
}

func (n *Node) Setattr(ctx context.Context, f fusefs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	defer n.t.timed(opSetattr, time.Now())
	be := n.t.be
	if n.t.vol.ReadOnly() {
		return n.t.fail(opSetattr, "", syscall.EROFS)
	}
	p, errno := n.path()
	if errno != 0 {
		// Unlinked but open: only the size can still change, through the
		// open file; metadata went with the name (as in gocryptfs). Times
		// are accepted and dropped: with the writeback cache the kernel
		// sends the mtime of written pages after the writes, unlinked or
		// not, and keeps showing its own copy.
		//
		// FATTR_KILL_SUIDGID is dropped too: the mode went with the name.
		const orphanOK = fuse.FATTR_SIZE | fuse.FATTR_FH | fuse.FATTR_LOCKOWNER |
			fuse.FATTR_ATIME | fuse.FATTR_MTIME | fuse.FATTR_ATIME_NOW | fuse.FATTR_MTIME_NOW | fuse.FATTR_CTIME |
			fuse.FATTR_KILL_SUIDGID
		fh, ok := f.(*fileHandle)
		if !ok {
			fh = n.anyOpen()
		}
		if in.Valid&^orphanOK != 0 {
			return n.t.fail(opSetattr, p, errno)
		}
		if fh == nil {
			// Unlinked and closed: the kernel still writes back the
			// mtime of pages it cached (syncfs, inode eviction). There is
			// nothing left to set or to stat; answering ENOENT would fail
			// sync(1) -f on the whole mount.
			if _, ok := in.GetSize(); ok {
				return n.t.fail(opSetattr, p, errno)
			}
			out.Attr.Mode = n.Mode()
			if mtime, ok := in.GetMTime(); ok {
				out.Attr.SetTimes(nil, &mtime, nil)
			}
			return 0
		}
		if size, ok := in.GetSize(); ok {
			if err := fh.h.Truncate(ctx, int64(size)); err != nil {
				return n.t.fail(opSetattr, fh.h.Name(), err)
			}
		}
		return n.getattr(ctx, opSetattr, fh, out)
	}
	// Set-id bits first, as the VFS drops them before a truncate or write
	// goes ahead (killpriv.go).
	if in.Valid&fuse.FATTR_KILL_SUIDGID != 0 {
		if errno := n.killSetid(ctx, f, p); errno != 0 {
			return errno
		}
	}
	if mode, ok := in.GetMode(); ok {
		n.setidMu.Lock()
		err := be.Chmod(ctx, p, mode&07777)
		if err == nil {
			n.knowMode(mode)
		} else {
			n.noSetid.Store(false) // unknown: stat at the next kill
		}
		n.setidMu.Unlock()
		if err != nil {
			return n.t.fail(opSetattr, p, err)
		}
	}
	uid, uok := in.GetUID()
	gid, gok := in.GetGID()
	if uok || gok {
		u, g := -1, -1
		if uok {
			u = int(uid)
		}
		if gok {
			g = int(gid)
		}
		if err := be.Lchown(ctx, p, u, g); err != nil {
			return n.t.fail(opSetattr, p, err)
		}
	}
	if size, ok := in.GetSize(); ok {
		if errno := n.truncate(ctx, f, p, int64(size)); errno != 0 {
			return errno
		}
	}
	// Times last: truncation itself updates mtime.
	atime, aok := in.GetATime()
	mtime, mok := in.GetMTime()
	if aok || mok {
		var ap, mp = &atime, &mtime
		if !aok {
			ap = nil
		}
		if !mok {
			mp = nil
		}
		if err := n.t.vol.SerializeTimes(n.StableAttr().Ino, func() error { return be.Utimens(ctx, p, ap, mp) }); err != nil {
			return n.t.fail(opSetattr, p, err)
		}
	}
	if errno := n.getattr(ctx, opSetattr, f, out); errno != 0 {
		return errno
	}
	// go-fuse's bridge gives GETATTR and LOOKUP replies the attribute
	// timeout, but not SETATTR's: a reply valid for 0 s made the kernel ask
	// GETATTR right after every chmod, chown and utimes (rsync -a: two per
	// file).
	out.SetTimeout(n.t.attrTimeout)
	return 0
}

func (n *Node) truncate(ctx context.Context, f fusefs.FileHandle, p string, size int64) syscall.Errno {
	if fh, ok := f.(*fileHandle); ok {
		if err := fh.h.Truncate(ctx, size); err != nil {
			return n.t.fail(opSetattr, p, err)
		}
		return 0
	}
	h, err := n.t.vol.OpenFile(ctx, p, syscall.O_WRONLY, 0, nil)
	if err != nil {
		return n.t.fail(opSetattr, p, err)
	}
	err = h.Truncate(ctx, size)
	if cerr := h.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return n.t.fail(opSetattr, p, err)
	}
	return 0
}

func (n *Node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	defer n.t.timed(opStatfs, time.Now())
	// Plaintext capacity (the backend's, less the encryption overhead), so
	// that a program that fills what statfs reports free does not hit
	// ENOSPC.
	var st syscall.Statfs_t
	if err := n.t.vol.Statfs(ctx, &st); err != nil {
		return n.t.fail(opStatfs, "", err)
	}
	out.FromStatfsT(&st)
	return 0
}

// owner is the caller's uid/gid, so that files created through a mount run
// by root belong to the user who created them.
func owner(ctx context.Context) *backend.Owner {
	if c, ok := fuse.FromContext(ctx); ok {
		return &backend.Owner{Uid: c.Uid, Gid: c.Gid}
	}
	return nil
}
