package shared

import (
	"context"
	"encoding/binary"
	"syscall"

	"github.com/kmsfs/kmsfs/backend/shared/meta"
)

// POSIX ACL xattrs (linux/posix_acl_xattr.h): a little-endian version 2
// header, then {tag u16, perm u16, id u32} entries. Without FUSE_POSIX_ACL
// the kernel hands ACLs to the filesystem as xattrs, and cp -a sets
// permissions that way: an ACL the mode expresses exactly is folded into
// the mode, as a disk filesystem does; extended ACLs cannot be enforced
// here, so they are refused and callers fall back to chmod.
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
// group and other entries.
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

// setACL folds a mode-equivalent access ACL into the mode.
func (b *Backend) setACL(ctx context.Context, name, attr string, value []byte) error {
	perm, ok := aclPerm(value)
	if attr != xattrACLAccess || !ok {
		return b.fail("setxattr", name, syscall.ENOTSUP)
	}
	a, err := b.store.Lookup(opCtx(ctx), split(name))
	if err != nil {
		return b.fail("setxattr", name, err)
	}
	mode := a.Mode&0o7000 | perm
	return b.setattr(ctx, "setxattr", name, meta.SetAttr{Mode: &mode})
}
