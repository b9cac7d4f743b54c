package integration

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestMountSetgidOnChmodAndACL: a file's owner who is not in its group
// changes its mode with chmod 2777 or with setfacl: the change happens and
// S_ISGID is dropped, as on a local filesystem (xfstests generic/375); an
// owner in the group, by its primary or a supplementary group, keeps the
// bit; another user gets EPERM. The mode is seen at once and after a
// remount, for a file and a directory; an ACL entry for a named user is
// stored and read back.
func TestMountSetgidOnChmodAndACL(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to act as other users")
	}
	mountRequireTool(t, "setfacl")
	mountRequireTool(t, "getfacl")
	mountRequireTool(t, "setpriv")
	v := mountNewVolume(t)
	v.letOthersReach()
	v.mount("--allow-other")
	// as runs argv as uid with primary group gid and the supplementary
	// groups given (none if empty), and returns its combined output.
	as := func(uid, gid int, groups string, argv ...string) (string, error) {
		args := []string{fmt.Sprintf("--reuid=%d", uid), fmt.Sprintf("--regid=%d", gid)}
		if groups == "" {
			args = append(args, "--clear-groups")
		} else {
			args = append(args, "--groups="+groups)
		}
		out, err := exec.Command("setpriv", append(args, argv...)...).CombinedOutput()
		return string(out), err
	}
	// mode asks for the mode alone, as `stat -c %A` (and generic/375)
	// does: statx with STATX_MODE is answered from the kernel's cached
	// attributes, which a SETXATTR reply does not refresh.
	mode := func(p string) os.FileMode {
		t.Helper()
		var stx unix.Statx_t
		if err := unix.Statx(unix.AT_FDCWD, p, 0, unix.STATX_MODE, &stx); err != nil {
			t.Fatal(err)
		}
		m := os.FileMode(stx.Mode & 0o777)
		if stx.Mode&unix.S_ISGID != 0 {
			m |= os.ModeSetgid
		}
		if stx.Mode&unix.S_ISUID != 0 {
			m |= os.ModeSetuid
		}
		if stx.Mode&unix.S_ISVTX != 0 {
			m |= os.ModeSticky
		}
		return m
	}
	const sgid = os.ModeSetgid
	type step struct {
		what       string
		uid, gid   int
		groups     string
		argv       []string // the file's path is appended
		want       os.FileMode
		wantDenied bool
	}
	chmod := []string{"chmod", "2777"}
	setfacl := []string{"setfacl", "-m", "u::rwx,g::rwx,o::rwx"}
	steps := []step{
		{what: "owner in group: chmod", uid: 100, gid: 100, argv: chmod, want: 0o777 | sgid},
		{what: "owner in group: setfacl", uid: 100, gid: 100, argv: setfacl, want: 0o777 | sgid},
		{what: "owner not in group: chmod", uid: 100, gid: 101, argv: chmod, want: 0o777},
		{what: "owner not in group: setfacl", uid: 100, gid: 101, argv: setfacl, want: 0o777},
		{what: "owner in group by a supplementary group: setfacl", uid: 100, gid: 101, groups: "100", argv: setfacl, want: 0o777 | sgid},
		{what: "not the owner: chmod", uid: 101, gid: 101, argv: chmod, want: 0o755 | sgid, wantDenied: true},
	}
	for _, kind := range []string{"file", "dir"} {
		p := v.path(kind)
		if kind == "file" {
			mountWriteFile(t, p, []byte("content\n"))
		} else if err := os.Mkdir(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, 100, 100); err != nil {
			t.Fatal(err)
		}
		for _, s := range steps {
			// Set by root each time, as generic/375 does.
			if err := os.Chmod(p, 0o755|sgid); err != nil {
				t.Fatal(err)
			}
			out, err := as(s.uid, s.gid, s.groups, append(s.argv, p)...)
			if s.wantDenied {
				if err == nil || !strings.Contains(out, "Operation not permitted") {
					t.Errorf("%s, %s: %v %s; want EPERM", kind, s.what, err, out)
				}
			} else if err != nil {
				t.Errorf("%s, %s: %v: %s", kind, s.what, err, out)
			}
			if got := mode(p); got != s.want {
				t.Errorf("%s, %s: mode %v, want %v", kind, s.what, got, s.want)
			}
		}
	}
	// The last mode change that went through, and a named-user entry,
	// are stored: both survive a remount.
	if err := os.Chmod(v.path("file"), 0o755|sgid); err != nil {
		t.Fatal(err)
	}
	if out, err := as(100, 101, "", "setfacl", "-m", "u:65534:rw,g::rwx,o::r", v.path("file")); err != nil {
		t.Fatalf("setfacl of a named user: %v %s", err, out)
	}
	if got := mode(v.path("file")); got != 0o774 {
		t.Errorf("after setfacl u:65534:rw,g::rwx,o::r by the owner not in the group: %v, want -rwxrwxr-- (mask rwx, no S_ISGID)", got)
	}
	v.remount("--allow-other")
	if got := mode(v.path("file")); got != 0o774 {
		t.Errorf("after a remount: %v, want -rwxrwxr--", got)
	}
	if got := mode(v.path("dir")); got != 0o755|sgid {
		t.Errorf("dir after a remount: %v, want the mode root set last", got)
	}
	out := mountExec(t, "getfacl", "-c", v.path("file"))
	if !strings.Contains(out, "user:nobody:rw-") && !strings.Contains(out, "user:65534:rw-") {
		t.Errorf("getfacl after a remount has no entry for uid 65534:\n%s", out)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(v.backing("file"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&syscall.S_ISGID != 0 {
		t.Errorf("backing file mode %o keeps S_ISGID", st.Mode)
	}
}
