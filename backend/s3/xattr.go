package s3

// Extended attributes and the POSIX ACLs among them.

import (
	"context"
	"encoding/binary"
	"slices"
	"syscall"

	"golang.org/x/sys/unix"
)

// Extended attributes live in the object's user metadata (one entry each),
// so they cost one metadata rewrite per change and share S3's 2 KB budget
// for user metadata: a set that would exceed it fails with ENOSPC.

func (b *Backend) Getxattr(ctx context.Context, name, attr string) ([]byte, error) {
	a, err := b.attrsOf(ctx, "getxattr", name)
	if err != nil {
		return nil, err
	}
	if isACL(attr) {
		// Only mode-equivalent ACLs are accepted, and those are the mode.
		return nil, pathErr("getxattr", name, syscall.ENODATA)
	}
	v, ok := a.xattrs[attr]
	if !ok {
		return nil, pathErr("getxattr", name, syscall.ENODATA)
	}
	return v, nil
}

func (b *Backend) Listxattr(ctx context.Context, name string) ([]string, error) {
	a, err := b.attrsOf(ctx, "listxattr", name)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(a.xattrs))
	for n := range a.xattrs {
		names = append(names, n)
	}
	slices.Sort(names)
	return names, nil
}

func (b *Backend) Setxattr(ctx context.Context, name, attr string, value []byte, flags int) error {
	if attr == "" {
		return pathErr("setxattr", name, syscall.EINVAL)
	}
	if isACL(attr) {
		// Without FUSE_POSIX_ACL the kernel hands ACLs to the filesystem
		// as xattrs; a disk filesystem would fold a mode-equivalent one into
		// the mode (cp -a sets permissions that way). Extended ACLs cannot
		// be enforced here, so they are refused and callers fall back to
		// chmod.
		perm, ok := aclPerm(value)
		if attr != xattrACLAccess || !ok {
			return pathErr("setxattr", name, syscall.ENOTSUP)
		}
		return b.setAttrs(ctx, "setxattr", name, func(a *attrs) error {
			a.mode = a.mode&^0o777 | perm
			return nil
		})
	}
	return b.setAttrs(ctx, "setxattr", name, func(a *attrs) error {
		_, exists := a.xattrs[attr]
		if flags&unix.XATTR_CREATE != 0 && exists {
			return pathErr("setxattr", name, syscall.EEXIST)
		}
		if flags&unix.XATTR_REPLACE != 0 && !exists {
			return pathErr("setxattr", name, syscall.ENODATA)
		}
		if a.xattrs == nil {
			a.xattrs = make(map[string][]byte)
		}
		a.xattrs[attr] = slices.Clone(value)
		return nil
	})
}

func (b *Backend) Removexattr(ctx context.Context, name, attr string) error {
	if isACL(attr) {
		return pathErr("removexattr", name, syscall.ENODATA)
	}
	return b.setAttrs(ctx, "removexattr", name, func(a *attrs) error {
		if _, ok := a.xattrs[attr]; !ok {
			return pathErr("removexattr", name, syscall.ENODATA)
		}
		delete(a.xattrs, attr)
		return nil
	})
}

// POSIX ACL xattrs (linux/posix_acl_xattr.h): a little-endian version 2
// header, then {tag u16, perm u16, id u32} entries.
const (
	xattrACLAccess  = "system.posix_acl_access"
	xattrACLDefault = "system.posix_acl_default"
	aclVersion      = 2
	aclUserObj      = 0x01
	aclGroupObj     = 0x04
	aclOther        = 0x20
)

func isACL(attr string) bool { return attr == xattrACLAccess || attr == xattrACLDefault }

// aclPerm returns the permission bits of an ACL that has only the owner,
// group and other entries (one the mode expresses exactly).
func aclPerm(v []byte) (uint32, bool) {
	if len(v) < 4 || (len(v)-4)%8 != 0 || binary.LittleEndian.Uint32(v) != aclVersion {
		return 0, false
	}
	var perm uint32
	seen := 0
	for e := v[4:]; len(e) > 0; e = e[8:] {
		tag, p := binary.LittleEndian.Uint16(e), uint32(binary.LittleEndian.Uint16(e[2:])&7)
		switch tag {
		case aclUserObj:
			perm |= p << 6
		case aclGroupObj:
			perm |= p << 3
		case aclOther:
			perm |= p
		default:
			return 0, false
		}
		seen |= int(tag)
	}
	return perm, seen == aclUserObj|aclGroupObj|aclOther
}
