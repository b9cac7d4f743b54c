package fs

import (
	"context"
	"syscall"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/kmsfs/kmsfs/volume"
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
	p, errno := n.path()
	if errno != 0 {
		return nil, errno
	}
	ents, err := n.t.be.ReadDir(ctx, p)
	if err != nil {
		return nil, volume.Errno(err)
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
func (n *Node) entry(ctx context.Context, p string, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	var st syscall.Stat_t
	if err := n.t.be.Lstat(ctx, p, &st); err != nil {
		return nil, volume.Errno(err)
	}
	n.t.statToAttr(p, &st, &out.Attr)
	return n.newChild(ctx, &st), 0
}

func (n *Node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	p, errno := n.child(name)
	if errno != 0 {
		return nil, errno
	}
	if err := n.t.be.Mkdir(ctx, p, mode, owner(ctx)); err != nil {
		return nil, volume.Errno(err)
	}
	return n.entry(ctx, p, out)
}

func (n *Node) Mknod(ctx context.Context, name string, mode uint32, dev uint32, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	p, errno := n.child(name)
	if errno != 0 {
		return nil, errno
	}
	if err := n.t.be.Mknod(ctx, p, mode, uint64(dev), owner(ctx)); err != nil {
		return nil, volume.Errno(err)
	}
	return n.entry(ctx, p, out)
}

func (n *Node) Rmdir(ctx context.Context, name string) syscall.Errno {
	p, errno := n.child(name)
	if errno != 0 {
		return errno
	}
	return volume.Errno(n.t.be.Rmdir(ctx, p))
}

func (n *Node) Unlink(ctx context.Context, name string) syscall.Errno {
	p, errno := n.child(name)
	if errno != 0 {
		return errno
	}
	return volume.Errno(n.t.be.Unlink(ctx, p))
}

// Rename passes RENAME_NOREPLACE and RENAME_EXCHANGE through to backends
// that have renameat2; others refuse flags with ENOTSUP. The encryption
// context never names the path, so a rename re-encrypts nothing.
func (n *Node) Rename(ctx context.Context, name string, newParent fusefs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	np, ok := newParent.(*Node)
	if !ok {
		return syscall.EXDEV
	}
	if flags != 0 && !n.t.be.Caps().Rename2 {
		return syscall.ENOTSUP
	}
	from, errno := n.child(name)
	if errno != 0 {
		return errno
	}
	to, errno := np.child(newName)
	if errno != 0 {
		return errno
	}
	return volume.Errno(n.t.be.Rename(ctx, from, to, flags))
}

func (n *Node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	p, errno := n.child(name)
	if errno != 0 {
		return nil, errno
	}
	if err := n.t.be.Symlink(ctx, target, p, owner(ctx)); err != nil {
		return nil, volume.Errno(err)
	}
	return n.entry(ctx, p, out)
}

func (n *Node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	p, errno := n.path()
	if errno != 0 {
		return nil, errno
	}
	target, err := n.t.be.Readlink(ctx, p)
	if err != nil {
		return nil, volume.Errno(err)
	}
	return []byte(target), 0
}

func (n *Node) Link(ctx context.Context, target fusefs.InodeEmbedder, name string, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	tn, ok := target.(*Node)
	if !ok {
		return nil, syscall.EXDEV
	}
	if !n.t.be.Caps().HardLinks {
		return nil, syscall.ENOTSUP
	}
	p, errno := n.child(name)
	if errno != 0 {
		return nil, errno
	}
	from, errno := tn.path()
	if errno != 0 {
		return nil, errno
	}
	if err := n.t.be.Link(ctx, from, p); err != nil {
		return nil, volume.Errno(err)
	}
	return n.entry(ctx, p, out)
}
