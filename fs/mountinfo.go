package fs

import (
	"os"
	"slices"
	"strconv"
	"strings"
)

// mountInfo is one line of /proc/self/mountinfo (proc(5)):
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//
// the device, the mount point, the per-mount options, and after the "-"
// the filesystem type, the source and the superblock options.
type mountInfo struct {
	dev, mountpoint string
	mountOpts       []string
	fstype, source  string
	superOpts       []string
}

func (m mountInfo) readOnly() bool { return slices.Contains(m.mountOpts, "ro") }

// parseMountinfo parses the text of /proc/self/mountinfo, in its order
// (mounts stacked on one mount point: the last is on top).
func parseMountinfo(data string) []mountInfo {
	var out []mountInfo
	for line := range strings.SplitSeq(data, "\n") {
		f := strings.Fields(line)
		if len(f) < 6 {
			continue
		}
		sep := slices.Index(f[6:], "-")
		if sep < 0 || 6+sep+2 >= len(f) {
			continue
		}
		rest := f[6+sep+1:]
		m := mountInfo{dev: f[2], mountpoint: unescapeMountinfo(f[4]), mountOpts: strings.Split(f[5], ","),
			fstype: rest[0], source: unescapeMountinfo(rest[1])}
		if len(rest) > 2 {
			m.superOpts = strings.Split(rest[2], ",")
		}
		out = append(out, m)
	}
	return out
}

// readMountinfo reads and parses /proc/self/mountinfo.
func readMountinfo() ([]mountInfo, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	return parseMountinfo(string(data)), nil
}

// topMount is the mount on top at mountpoint (an absolute path), and with
// dev != "" of that device only.
func topMount(ms []mountInfo, mountpoint, dev string) (mountInfo, bool) {
	var top mountInfo
	ok := false
	for _, m := range ms {
		if m.mountpoint == mountpoint && (dev == "" || m.dev == dev) {
			top, ok = m, true
		}
	}
	return top, ok
}

// unescapeMountinfo undoes the octal escapes (\040 for a space, ...) the
// kernel writes in mountinfo paths.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
