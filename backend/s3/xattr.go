package s3

// Extended attributes and the POSIX ACLs among them.

import (
	"context"
	"slices"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/backend/posixacl"
)

// Extended attributes live in the object's user metadata (one entry each),
// so they cost one metadata rewrite per change and share S3's 2 KB budget
// for user metadata: a set that would exceed it fails with ENOSPC.

func (b *Backend) Getxattr(ctx context.Context, name, attr string) ([]byte, error) {
	a, err := b.attrsOf(ctx, "getxattr", name)
	if err != nil {
		return nil, err
	}
	if posixacl.IsACL(attr) {
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
	if posixacl.IsACL(attr) {
		// Without FUSE_POSIX_ACL the kernel hands ACLs to the filesystem
		// as xattrs; a disk filesystem would fold a mode-equivalent one into
		// the mode (cp -a sets permissions that way). Extended ACLs cannot
		// be enforced here, so they are refused and callers fall back to
		// chmod.
		perm, ok := posixacl.ModePerm(value)
		if attr != posixacl.XattrAccess || !ok {
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
	if posixacl.IsACL(attr) {
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
