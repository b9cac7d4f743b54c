package fs

import (
	"context"
	"syscall"
	"time"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/kmsfs/kmsfs/backend"
)

var (
	_ fusefs.NodeReaddirer  = (*Node)(nil)
	_ fusefs.NodeMkdirer    = (*Node)(nil)
	_ fusefs.NodeMknoder    = (*Node)(nil)
	_ fusefs.NodeRmdirer    = (*Node)(nil)
	_ fusefs.NodeUnlinker   = (*Node)(nil)
	_ fusefs.NodeRenamer    = (*Node)(nil)
	_ fusefs.NodeSymlinker  = (*Node)(nil)
	_ fusefs.NodeReadlinker = (*Node)(nil)
	_ fusefs.NodeLinker     = (*Node)(nil)
)

func (n *Node) Readdir(ctx context.Context) (fusefs.DirStream, syscall.Errno) {
	defer n.t.timed(opReaddir, time.Now())
	p, errno := n.path()
	if errno != 0 {
		return nil, n.t.fail(opReaddir, p, errno)
	}
	// A listing is an access (atime.go); the kernel keeps no listing, so
	// every one reaches us. The backend records it with the listing.
	var due func(*syscall.Stat_t) bool
	if n.t.atimeMayMove(true) {
		due = n.t.accessDue
	}
	// The kernel drops its cached atime of the directory after every
	// READDIR (fuse_invalidate_atime in fs/fuse/readdir.c), and this
	// listing answers one, so nothing more needs telling.
	ents, _, err := backend.ListAccess(ctx, n.t.be, p, due)
	if err != nil {
		return nil, n.t.fail(opReaddir, p, err)
	}
	// "." and ".." first, as readdir(3) users (ls -a, some backup tools) expect.
	list := make([]fuse.DirEntry, 0, len(ents)+2)
	list = append(list, fuse.DirEntry{Name: ".", Mode: syscall.S_IFDIR}, fuse.DirEntry{Name: "..", Mode: syscall.S_IFDIR})
	for _, e := range ents {
		list = append(list, fuse.DirEntry{Name: e.Name, Mode: e.Mode, Ino: e.Ino})
	}
	return fusefs.NewListDirStream(list), 0
}

// entry looks up a just-created name and makes its inode.
func (n *Node) entry(ctx context.Context, o op, p string, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	var st syscall.Stat_t
	if err := n.t.lstatAttr(ctx, p, &st, &out.Attr); err != nil {
		return nil, n.t.fail(o, p, err)
	}
	return n.newChild(ctx, &st, &out.Attr), 0
}

func (n *Node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	defer n.t.timed(opMkdir, time.Now())
	p, errno := n.child(name)
	if errno != 0 {
		return nil, n.t.fail(opMkdir, p, errno)
	}
	if err := n.t.be.Mkdir(ctx, p, mode, owner(ctx)); err != nil {
		return nil, n.t.fail(opMkdir, p, err)
	}
	return n.entry(ctx, opMkdir, p, out)
}

func (n *Node) Mknod(ctx context.Context, name string, mode uint32, dev uint32, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	defer n.t.timed(opMknod, time.Now())
	p, errno := n.child(name)
	if errno != 0 {
		return nil, n.t.fail(opMknod, p, errno)
	}
	if err := n.t.be.Mknod(ctx, p, mode, uint64(dev), owner(ctx)); err != nil {
		return nil, n.t.fail(opMknod, p, err)
	}
	return n.entry(ctx, opMknod, p, out)
}

func (n *Node) Rmdir(ctx context.Context, name string) syscall.Errno {
	defer n.t.timed(opRmdir, time.Now())
	p, errno := n.child(name)
	if errno != 0 {
		return n.t.fail(opRmdir, p, errno)
	}
	return n.t.fail(opRmdir, p, n.t.be.Rmdir(ctx, p))
}

func (n *Node) Unlink(ctx context.Context, name string) syscall.Errno {
	defer n.t.timed(opUnlink, time.Now())
	p, errno := n.child(name)
	if errno != 0 {
		return n.t.fail(opUnlink, p, errno)
	}
	return n.t.fail(opUnlink, p, n.t.be.Unlink(ctx, p))
}

// Rename passes RENAME_NOREPLACE and RENAME_EXCHANGE through to backends
// that have renameat2; others refuse flags with ENOTSUP. The encryption
// context never names the path, so a rename re-encrypts nothing.
func (n *Node) Rename(ctx context.Context, name string, newParent fusefs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	defer n.t.timed(opRename, time.Now())
	np, ok := newParent.(*Node)
	if !ok {
		return n.t.fail(opRename, name, syscall.EXDEV)
	}
	if flags != 0 && !n.t.be.Caps().Rename2 {
		return n.t.fail(opRename, name, syscall.ENOTSUP)
	}
	from, errno := n.child(name)
	if errno != 0 {
		return n.t.fail(opRename, from, errno)
	}
	to, errno := np.child(newName)
	if errno != 0 {
		return n.t.fail(opRename, to, errno)
	}
	return n.t.fail(opRename, from, n.t.be.Rename(ctx, from, to, flags))
}

func (n *Node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	defer n.t.timed(opSymlink, time.Now())
	p, errno := n.child(name)
	if errno != 0 {
		return nil, n.t.fail(opSymlink, p, errno)
	}
	if err := n.t.be.Symlink(ctx, target, p, owner(ctx)); err != nil {
		return nil, n.t.fail(opSymlink, p, err)
	}
	return n.entry(ctx, opSymlink, p, out)
}

func (n *Node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	defer n.t.timed(opReadlink, time.Now())
	p, errno := n.path()
	if errno != 0 {
		return nil, n.t.fail(opReadlink, p, errno)
	}
	target, err := n.t.be.Readlink(ctx, p)
	if err != nil {
		return nil, n.t.fail(opReadlink, p, err)
	}
	return []byte(target), 0
}

func (n *Node) Link(ctx context.Context, target fusefs.InodeEmbedder, name string, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	defer n.t.timed(opLink, time.Now())
	tn, ok := target.(*Node)
	if !ok {
		return nil, n.t.fail(opLink, name, syscall.EXDEV)
	}
	if !n.t.be.Caps().HardLinks {
		return nil, n.t.fail(opLink, name, syscall.ENOTSUP)
	}
	p, errno := n.child(name)
	if errno != 0 {
		return nil, n.t.fail(opLink, p, errno)
	}
	from, errno := tn.path()
	if errno != 0 {
		return nil, n.t.fail(opLink, from, errno)
	}
	if err := n.t.be.Link(ctx, from, p); err != nil {
		return nil, n.t.fail(opLink, p, err)
	}
	return n.entry(ctx, opLink, p, out)
}
