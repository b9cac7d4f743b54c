package fs

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"time"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
)

var (
	_ fusefs.NodeGetxattrer    = (*Node)(nil)
	_ fusefs.NodeSetxattrer    = (*Node)(nil)
	_ fusefs.NodeListxattrer   = (*Node)(nil)
	_ fusefs.NodeRemovexattrer = (*Node)(nil)
)

// Getxattr returns the decrypted value of a user.* attribute (others are
// stored as they are). A zero-length dest asks for the size only.
//
// The kernel asks for security.capability before every write(2) (to drop
// file capabilities on write, file_remove_privs); FUSE does not cache the
// answer. For a file this mount created and gave no security.* attribute,
// the answer is known without asking the backend.
func (n *Node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	defer n.t.timed(opGetxattr, time.Now())
	if !n.t.be.Caps().Xattrs {
		return 0, n.t.fail(opGetxattr, "", syscall.ENOTSUP)
	}
	if attr == "security.capability" && n.noCaps.Load() {
		return 0, n.t.fail(opGetxattr, "", syscall.ENODATA)
	}
	p, errno := n.path()
	if errno != 0 {
		return 0, n.t.fail(opGetxattr, p, errno)
	}
	stored, err := n.t.be.Getxattr(ctx, p, attr)
	if err != nil {
		return 0, n.t.fail(opGetxattr, p, err)
	}
	val, err := n.t.vol.OpenXattr(ctx, attr, stored)
	if err != nil {
		return 0, n.t.fail(opGetxattr, p, fmt.Errorf("attribute %s: %w", attr, err))
	}
	if len(dest) == 0 {
		return uint32(len(val)), 0
	}
	if len(dest) < len(val) {
		return uint32(len(val)), n.t.fail(opGetxattr, p, syscall.ERANGE)
	}
	return uint32(copy(dest, val)), 0
}

func (n *Node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	defer n.t.timed(opSetxattr, time.Now())
	if !n.t.be.Caps().Xattrs {
		return n.t.fail(opSetxattr, "", syscall.ENOTSUP)
	}
	if n.t.vol.ReadOnly() {
		return n.t.fail(opSetxattr, "", syscall.EROFS)
	}
	p, errno := n.path()
	if errno != 0 {
		return n.t.fail(opSetxattr, p, errno)
	}
	if strings.HasPrefix(attr, "security.") {
		n.noCaps.Store(false)
	}
	stored, err := n.t.vol.SealXattr(ctx, attr, data)
	if err != nil {
		return n.t.fail(opSetxattr, p, fmt.Errorf("attribute %s: %w", attr, err))
	}
	if err := n.t.be.Setxattr(ctx, p, attr, stored, int(flags)); err != nil {
		return n.t.fail(opSetxattr, p, err)
	}
	if attr == aclAccessXattr {
		return n.t.fail(opSetxattr, p, n.aclChanged(ctx, p))
	}
	return 0
}

func (n *Node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	defer n.t.timed(opListxattr, time.Now())
	if !n.t.be.Caps().Xattrs {
		return 0, 0
	}
	p, errno := n.path()
	if errno != 0 {
		return 0, n.t.fail(opListxattr, p, errno)
	}
	names, err := n.t.be.Listxattr(ctx, p)
	if err != nil {
		return 0, n.t.fail(opListxattr, p, err)
	}
	var b strings.Builder
	for _, name := range names {
		b.WriteString(name)
		b.WriteByte(0)
	}
	if len(dest) == 0 {
		return uint32(b.Len()), 0
	}
	if len(dest) < b.Len() {
		return uint32(b.Len()), n.t.fail(opListxattr, p, syscall.ERANGE)
	}
	return uint32(copy(dest, b.String())), 0
}

func (n *Node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	defer n.t.timed(opRemovexattr, time.Now())
	if !n.t.be.Caps().Xattrs {
		return n.t.fail(opRemovexattr, "", syscall.ENOTSUP)
	}
	if n.t.vol.ReadOnly() {
		return n.t.fail(opRemovexattr, "", syscall.EROFS)
	}
	p, errno := n.path()
	if errno != 0 {
		return n.t.fail(opRemovexattr, p, errno)
	}
	if err := n.t.be.Removexattr(ctx, p, attr); err != nil {
		return n.t.fail(opRemovexattr, p, err)
	}
	if attr == aclAccessXattr {
		return n.t.fail(opRemovexattr, p, n.aclChanged(ctx, p))
	}
	return 0
}
