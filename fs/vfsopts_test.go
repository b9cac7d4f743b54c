package fs

import (
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

func TestVFSFlags(t *testing.T) {
	parse := func(opts ...string) VFSFlags {
		t.Helper()
		var f VFSFlags
		for _, o := range opts {
			if !f.Parse(o) {
				t.Fatalf("%q not taken as a generic option", o)
			}
		}
		return f
	}
	const base = unix.MS_NOSUID | unix.MS_NODEV
	for _, c := range []struct {
		opts []string
		want uintptr
		ro   bool
	}{
		{nil, base, false},
		{[]string{"noatime"}, base | unix.MS_NOATIME, false},
		{[]string{"noatime", "relatime"}, base | unix.MS_RELATIME, false},
		{[]string{"relatime", "strictatime"}, base | unix.MS_STRICTATIME, false},
		{[]string{"strictatime", "noatime", "nodiratime"}, base | unix.MS_NOATIME | unix.MS_NODIRATIME, false},
		{[]string{"suid", "dev"}, 0, false},
		{[]string{"suid", "nosuid"}, base, false},
		{[]string{"noexec", "sync", "dirsync", "lazytime"}, base | unix.MS_NOEXEC | unix.MS_SYNCHRONOUS | unix.MS_DIRSYNC | unix.MS_LAZYTIME, false},
		{[]string{"sync", "async"}, base, false},
		{[]string{"ro"}, base | unix.MS_RDONLY, true},
		{[]string{"ro", "rw"}, base, false},
		{[]string{"rw", "ro", "exec"}, base | unix.MS_RDONLY, true},
	} {
		f := parse(c.opts...)
		if got := f.MountFlags(); got != c.want {
			t.Errorf("%v: flags %#x, want %#x", c.opts, got, c.want)
		}
		if f.ReadOnly() != c.ro {
			t.Errorf("%v: read-only %v", c.opts, f.ReadOnly())
		}
		if !slices.Equal(f.fusermountOptions(), c.opts) {
			t.Errorf("%v: fusermount3 options %v", c.opts, f.fusermountOptions())
		}
	}
	var f VFSFlags
	for _, o := range []string{"allow_other", "keystore", "default_permissions", "user_id", "remount", "mand", ""} {
		if f.Parse(o) {
			t.Errorf("%q taken as a generic option", o)
		}
	}
}

// What mount(8) hands the helper for `mount -o remount,ro,noatime MNT`:
// the mount's options from the mount table with the new ones merged in.
func TestRemountFlags(t *testing.T) {
	opts := "ro,nosuid,nodev,relatime,remount,noatime,user_id=0,group_id=0,max_read=1048576,allow_other"
	if !IsRemount(opts) || IsRemount("rw,noatime,keystore=/k") || IsRemount("remounted") {
		t.Fatal("IsRemount")
	}
	want := uintptr(unix.MS_REMOUNT | unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOATIME)
	if got := remountFlags(opts, []string{"rw", "nosuid", "nodev", "relatime"}); got != want {
		t.Errorf("flags %#x, want %#x", got, want)
	}
	if got := remountFlags("rw,remount", nil); got != unix.MS_REMOUNT|unix.MS_NOSUID|unix.MS_NODEV {
		t.Errorf("remount,rw: flags %#x", got)
	}
	// suid and dev asked for on a remount: granted only where the mount
	// has them already (the backend's limits cannot be checked here).
	if got := remountFlags("remount,suid,dev", []string{"rw", "relatime"}); got != unix.MS_REMOUNT {
		t.Errorf("remount,suid,dev of a suid,dev mount: flags %#x", got)
	}
	if got := remountFlags("remount,suid,dev", []string{"rw", "nosuid", "nodev"}); got != unix.MS_REMOUNT|unix.MS_NOSUID|unix.MS_NODEV {
		t.Errorf("remount,suid,dev of a nosuid,nodev mount: flags %#x", got)
	}
}
