package fs

import (
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"
)

func TestStatusGroups(t *testing.T) {
	status := "Name:\tbash\nUmask:\t0022\nGid:\t100\t100\t100\t100\nFDSize:\t256\nGroups:\t4 24 27 1000 \nNStgid:\t1\n"
	gs, err := statusGroups(strings.NewReader(status))
	if err != nil || !slices.Equal(gs, []uint32{4, 24, 27, 1000}) {
		t.Fatalf("groups %v, %v", gs, err)
	}
	gs, err = statusGroups(strings.NewReader("Name:\tx\nGroups:\t\nPid:\t1\n"))
	if err != nil || len(gs) != 0 {
		t.Fatalf("no supplementary groups: %v, %v", gs, err)
	}
	if _, err := statusGroups(strings.NewReader("Name:\tx\n")); err == nil {
		t.Fatal("status without a Groups line accepted")
	}
}

func TestCallerInGroup(t *testing.T) {
	c := &fuse.Caller{Owner: fuse.Owner{Uid: 100, Gid: 100}}
	if !callerInGroup(c, 100) || callerInGroup(c, 101) {
		t.Fatal("primary group")
	}
	if !callerInGroup(&fuse.Caller{Owner: fuse.Owner{Uid: 0, Gid: 5}}, 101) {
		t.Fatal("root keeps the bit")
	}
	// This process's own supplementary groups, read from /proc.
	groups, err := os.Getgroups()
	if err != nil {
		t.Fatal(err)
	}
	self := &fuse.Caller{Owner: fuse.Owner{Uid: 12345, Gid: 54321}, Pid: uint32(os.Getpid())}
	for _, g := range groups {
		if g != 54321 && !callerInGroup(self, uint32(g)) {
			t.Errorf("supplementary group %d not found", g)
		}
	}
	if callerInGroup(self, 4000000000) {
		t.Error("a group the process is not in")
	}
}
