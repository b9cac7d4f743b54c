// Package posixacl reads the POSIX ACL extended attributes the kernel hands
// a filesystem that does not negotiate FUSE_POSIX_ACL: cp -a and rsync -A set
// permissions through them. A backend that cannot store or enforce ACLs (an
// object store) folds an ACL the mode expresses exactly into the mode, as a
// disk filesystem does.
package posixacl

import "encoding/binary"

// The ACL xattrs (linux/posix_acl_xattr.h): a little-endian version 2
// header, then {tag u16, perm u16, id u32} entries.
const (
	XattrAccess  = "system.posix_acl_access"
	XattrDefault = "system.posix_acl_default"

	version  = 2
	userObj  = 0x01
	groupObj = 0x04
	other    = 0x20
)

// IsACL reports whether attr is one of the ACL xattrs.
func IsACL(attr string) bool { return attr == XattrAccess || attr == XattrDefault }

// ModePerm returns the permission bits of an ACL that has only the owner,
// group and other entries (one the mode expresses exactly); ok is false for
// any other ACL or a malformed value.
func ModePerm(v []byte) (perm uint32, ok bool) {
	if len(v) < 4 || (len(v)-4)%8 != 0 || binary.LittleEndian.Uint32(v) != version {
		return 0, false
	}
	seen := 0
	for e := v[4:]; len(e) > 0; e = e[8:] {
		tag, p := binary.LittleEndian.Uint16(e), uint32(binary.LittleEndian.Uint16(e[2:])&7)
		switch tag {
		case userObj:
			perm |= p << 6
		case groupObj:
			perm |= p << 3
		case other:
			perm |= p
		default:
			return 0, false
		}
		seen |= int(tag)
	}
	return perm, seen == userObj|groupObj|other
}
