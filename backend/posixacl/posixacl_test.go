package posixacl

import (
	"encoding/binary"
	"testing"
)

func acl(entries ...[3]uint32) []byte {
	b := binary.LittleEndian.AppendUint32(nil, version)
	for _, e := range entries {
		b = binary.LittleEndian.AppendUint16(b, uint16(e[0]))
		b = binary.LittleEndian.AppendUint16(b, uint16(e[1]))
		b = binary.LittleEndian.AppendUint32(b, e[2])
	}
	return b
}

func TestModePerm(t *testing.T) {
	minimal := acl([3]uint32{userObj, 7, 0}, [3]uint32{groupObj, 5, 0}, [3]uint32{other, 4, 0})
	if perm, ok := ModePerm(minimal); !ok || perm != 0o754 {
		t.Fatalf("minimal ACL: %o %v, want 754", perm, ok)
	}
	named := acl([3]uint32{userObj, 7, 0}, [3]uint32{0x02, 6, 1000}, [3]uint32{groupObj, 5, 0}, [3]uint32{0x10, 7, 0}, [3]uint32{other, 0, 0})
	if _, ok := ModePerm(named); ok {
		t.Fatal("an ACL with a named user passed as mode-equivalent")
	}
	if _, ok := ModePerm(acl([3]uint32{userObj, 7, 0}, [3]uint32{other, 4, 0})); ok {
		t.Fatal("an ACL without a group entry passed")
	}
	for _, bad := range [][]byte{nil, {1, 0, 0, 0}, minimal[:len(minimal)-1]} {
		if _, ok := ModePerm(bad); ok {
			t.Fatalf("malformed %x passed", bad)
		}
	}
	if !IsACL(XattrAccess) || !IsACL(XattrDefault) || IsACL("user.x") {
		t.Fatal("IsACL")
	}
}
