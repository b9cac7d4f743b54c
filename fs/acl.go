package fs

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// POSIX access ACLs travel as the system.posix_acl_access attribute: we do
// not negotiate FUSE_POSIX_ACL (that would make the daemon apply umask and
// default ACLs on create), so the kernel hands the attribute to us as
// setxattr(2) and we store it on the backing file, whose filesystem turns it
// into mode bits. Two things the kernel does for a local filesystem are then
// ours to do (fs/fuse/acl.c leaves them to daemons without FUSE_POSIX_ACL):
//   - posix_acl_update_mode drops S_ISGID when the caller is neither in the
//     file's group nor privileged. The backing filesystem sees the daemon
//     (root) as the caller and keeps the bit.
//   - The mode the ACL set must be seen at once, but the kernel keeps its
//     cached attributes: the reply to SETXATTR carries none.
const aclAccessXattr = "system.posix_acl_access"

// aclChanged runs after the access ACL of the node at p was set or removed.
func (n *Node) aclChanged(ctx context.Context, p string) error {
	n.setidMu.Lock()
	defer n.setidMu.Unlock()
	// The ACL rewrote the mode; what knowMode recorded is stale.
	n.noSetid.Store(false)
	defer n.NotifyContent(-1, 0) // attributes only, not the page cache
	var st syscall.Stat_t
	if err := n.t.be.Lstat(ctx, p, &st); err != nil {
		return err
	}
	if st.Mode&syscall.S_ISGID == 0 {
		return nil
	}
	c, ok := fuse.FromContext(ctx)
	if !ok || callerInGroup(c, st.Gid) {
		return nil
	}
	return n.t.be.Chmod(ctx, p, st.Mode&07777&^syscall.S_ISGID)
}

// callerInGroup reports whether the caller may keep a file's set-group-ID
// bit when it changes the file's ACL: root (CAP_FSETID is root's in the
// mounts we serve), a caller whose group is gid, or one with gid among its
// supplementary groups (from /proc/PID/status; FUSE passes only the
// primary group).
func callerInGroup(c *fuse.Caller, gid uint32) bool {
	if c.Uid == 0 || c.Gid == gid {
		return true
	}
	if c.Pid == 0 { // a caller in another PID namespace: no groups to read
		return false
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", c.Pid))
	if err != nil {
		return false
	}
	defer f.Close()
	groups, err := statusGroups(f)
	if err != nil {
		return false
	}
	for _, g := range groups {
		if g == gid {
			return true
		}
	}
	return false
}

// statusGroups reads the supplementary groups ("Groups:" line) of a
// /proc/PID/status file.
func statusGroups(r io.Reader) ([]uint32, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "Groups:")
		if !ok {
			continue
		}
		var gs []uint32
		for _, f := range strings.Fields(rest) {
			g, err := strconv.ParseUint(f, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("groups %q: %w", rest, err)
			}
			gs = append(gs, uint32(g))
		}
		return gs, nil
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("no Groups line")
}
