package fs

import (
	"context"
	"syscall"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Dropping suid/sgid on write (FUSE_HANDLE_KILLPRIV_V2).
//
// Without this capability the kernel asks for security.capability before
// every WRITE request (file_remove_privs): FUSE does not mark its inodes
// S_NOSEC, so a 512 MiB dd made 512 GETXATTR round trips besides its 512
// WRITEs. With it the kernel sets SB_NOSEC, checks an inode once and marks it
// S_NOSEC until a security attribute or a set-id mode is set on it again
// (fs/fuse/inode.c process_init_reply; fs/inode.c __file_remove_privs). File
// capabilities are still dropped by the kernel at that one check; what the
// capability hands to the filesystem is clearing S_ISUID, and S_ISGID on a
// group-executable file, when a caller without CAP_FSETID writes to a file
// (FUSE_WRITE_KILL_SUIDGID), opens it with O_TRUNC (FUSE_OPEN_KILL_SUIDGID)
// or truncates it (FATTR_KILL_SUIDGID), the rules of should_remove_suid. The
// backend cannot do it by itself: the daemon writes the backing file with
// CAP_FSETID. chown needs nothing here: chown(2) on the backing file clears
// both bits, whoever calls it.

// killPrivFS hands the kill flags of WRITE, OPEN and CREATE, which go-fuse's
// node API does not pass on, to Node.Setattr as a FATTR_KILL_SUIDGID request
// (the flag the kernel itself sends with a truncate).
type killPrivFS struct {
	fuse.RawFileSystem
}

// Writev is what go-fuse calls for WRITE; Write only if Writev says ENOSYS.
func (k killPrivFS) Writev(cancel <-chan struct{}, in *fuse.WriteIn, data [][]byte) (uint32, fuse.Status) {
	if st := k.killForWrite(cancel, in); !st.Ok() {
		return 0, st
	}
	return k.RawFileSystem.Writev(cancel, in, data)
}

func (k killPrivFS) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	if st := k.killForWrite(cancel, in); !st.Ok() {
		return 0, st
	}
	return k.RawFileSystem.Write(cancel, in, data)
}

// killForWrite runs before the data is written, as in the VFS: there is no
// moment where the new content runs with the old privileges.
func (k killPrivFS) killForWrite(cancel <-chan struct{}, in *fuse.WriteIn) fuse.Status {
	if in.WriteFlags&fuse.WRITE_KILL_SUIDGID == 0 {
		return fuse.OK
	}
	return k.kill(cancel, in.InHeader, in.NodeId, in.Fh)
}

func (k killPrivFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if in.Mode&fuse.OPEN_KILL_SUIDGID != 0 {
		if st := k.kill(cancel, in.InHeader, in.NodeId, 0); !st.Ok() {
			return st
		}
	}
	return k.RawFileSystem.Open(cancel, in, out)
}

// Create sees the flag when O_TRUNC meets a file that exists after all (the
// kernel had no dentry for it). The kill follows the create, which made the
// node; if it fails, the new handle and lookup are given back.
func (k killPrivFS) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	st := k.RawFileSystem.Create(cancel, in, name, out)
	if !st.Ok() || in.OpenFlags&fuse.OPEN_KILL_SUIDGID == 0 {
		return st
	}
	if kst := k.kill(cancel, in.InHeader, out.NodeId, out.Fh); !kst.Ok() {
		k.RawFileSystem.Release(cancel, &fuse.ReleaseIn{InHeader: fuse.InHeader{NodeId: out.NodeId, Caller: in.Caller}, Fh: out.Fh})
		k.RawFileSystem.Forget(out.NodeId, 1)
		return kst
	}
	return st
}

func (k killPrivFS) kill(cancel <-chan struct{}, hdr fuse.InHeader, node, fh uint64) fuse.Status {
	hdr.NodeId = node
	in := &fuse.SetAttrIn{SetAttrInCommon: fuse.SetAttrInCommon{InHeader: hdr, Valid: fuse.FATTR_KILL_SUIDGID}}
	if fh != 0 {
		in.Valid |= fuse.FATTR_FH
		in.Fh = fh
	}
	var out fuse.AttrOut
	return k.RawFileSystem.SetAttr(cancel, in, &out)
}

// setidBits is what a write by a caller without CAP_FSETID drops from mode:
// S_ISUID, and S_ISGID when the file is group-executable or the caller is
// not in the file's group (setattr_should_drop_sgid in fs/attr.c, Linux
// 6.2 and later; before, S_ISGID went with group execute only).
func setidBits(mode uint32, inGroup bool) uint32 {
	kill := mode & syscall.S_ISUID
	if mode&syscall.S_ISGID != 0 && (mode&syscall.S_IXGRP != 0 || !inGroup) {
		kill |= syscall.S_ISGID
	}
	return kill
}

// setidMask is every bit setidBits may drop, for some caller.
const setidMask = syscall.S_ISUID | syscall.S_ISGID

// knowMode records whether mode has bits a write would drop, so that the
// writes of an unprivileged caller cost no stat. Called with the mode just
// set or read, under setidMu unless the node is new.
func (n *Node) knowMode(mode uint32) {
	n.noSetid.Store(mode&setidMask == 0)
}

// killSetid clears S_ISUID and S_ISGID (see setidBits) for a write, truncate
// or O_TRUNC open by a caller without CAP_FSETID.
func (n *Node) killSetid(ctx context.Context, f fusefs.FileHandle, p string) syscall.Errno {
	if n.noSetid.Load() {
		return 0
	}
	// Held across stat, chmod and the cache update, so that a chmod u+s
	// racing with it cannot be followed by a stale "no set-id bits".
	n.setidMu.Lock()
	defer n.setidMu.Unlock()
	var st syscall.Stat_t
	var err error
	if fh, ok := f.(*fileHandle); ok {
		err = fh.h.Stat(&st)
	} else {
		err = n.t.be.Lstat(ctx, p, &st)
	}
	if err != nil {
		return n.t.fail(opSetattr, p, err)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return 0
	}
	c, ok := fuse.FromContext(ctx)
	kill := setidBits(st.Mode, !ok || callerInGroup(c, st.Gid))
	if kill != 0 {
		if err := n.t.be.Chmod(ctx, p, st.Mode&07777&^kill); err != nil {
			return n.t.fail(opSetattr, p, err)
		}
		// The kernel drops only the size and times it cached after a
		// write (fuse_write_update_attr); the mode must be dropped too.
		n.NotifyContent(-1, 0)
	}
	n.knowMode(st.Mode &^ kill)
	return 0
}
