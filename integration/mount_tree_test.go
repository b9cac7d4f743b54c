package integration

// A source tree for copy tests (every kind of entry cp -a and rsync -a have
// to carry over) and a snapshot that compares two trees entry by entry.

import (
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// mountMarker is written into the plaintext of every generated file (and
// into an xattr value): finding it in the backing directory is a leak.
const mountMarker = "KMSFS-PLAINTEXT-MARKER-5c1e9a"

// mountTreeInfo says what mountMakeTree made, for the checks that follow.
type mountTreeInfo struct {
	files     int
	bytes     int64
	hardLinks [2]string // two names of one inode
	xattrFile string    // carries user.kmsfs.comment
	xattrVal  string
}

// mountContent is size bytes of seeded random data with the marker at the
// start and every 64 KiB (and always once when it fits).
func mountContent(rng *rand.Rand, size int) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	for off := 0; off+len(mountMarker) <= size; off += 64 << 10 {
		copy(b[off:], mountMarker)
	}
	return b
}

// mountPastTime is a random instant between 2001 and 2021 with nanoseconds.
func mountPastTime(rng *rand.Rand) time.Time {
	return time.Unix(1_000_000_000+rng.Int64N(620_000_000), rng.Int64N(1_000_000_000))
}

// mountMakeTree writes a few hundred files of varied sizes (0, 1, around a
// block boundary, ~1 MiB, random), nested and empty directories, symlinks
// (relative, absolute, dangling), a hard link pair, modes 0600/0755, a file
// owned by another user, names with spaces and non-ASCII, a user xattr,
// and mtimes in the past on everything (directories last, bottom-up).
func mountMakeTree(t *testing.T, root string, seed uint64) mountTreeInfo {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	info := mountTreeInfo{}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	write := func(rel string, size int, mode os.FileMode) {
		t.Helper()
		p := filepath.Join(root, rel)
		must(os.MkdirAll(filepath.Dir(p), 0o755))
		must(os.WriteFile(p, mountContent(rng, size), mode))
		must(os.Chmod(p, mode)) // WriteFile's mode is masked by the umask
		info.files++
		info.bytes += int64(size)
	}
	must(os.MkdirAll(root, 0o755))
	for _, size := range []int{0, 1, 2, 100, 4095, 4096, 4097, 8191, 8192, 8193, 12288, 65536, 1 << 20, 1<<20 + 13} {
		write(fmt.Sprintf("sizes/f%07d", size), size, 0o644)
	}
	dirs := []string{"a", "a/b", "a/b/c", "a/b/c/d", "e", "e/f", "g", "h/i/j", "k", "with space"}
	for i := 0; i < 300; i++ {
		var size int
		switch r := rng.IntN(10); {
		case r < 1:
			size = rng.IntN(3)
		case r < 5:
			size = rng.IntN(4 << 10)
		case r < 8:
			size = 4<<10 + rng.IntN(60<<10)
		default:
			size = 64<<10 + rng.IntN(192<<10)
		}
		write(fmt.Sprintf("%s/file%03d.dat", dirs[i%len(dirs)], i), size, 0o644)
	}
	write("modes/private", 3000, 0o600)
	write("modes/script.sh", 200, 0o755)
	write("modes/readonly", 5000, 0o444)
	write("names/ünïcode-名前.txt", 777, 0o644)
	write("names/with space and 'quote'.txt", 4321, 0o644)
	write("owned/other", 1234, 0o640)
	must(os.Lchown(filepath.Join(root, "owned/other"), 1234, 5678))
	must(os.MkdirAll(filepath.Join(root, "empty/dir"), 0o755))
	must(os.Mkdir(filepath.Join(root, "modes/private-dir"), 0o700))

	write("links/target.txt", 5000, 0o644)
	must(os.Symlink("target.txt", filepath.Join(root, "links/rel")))
	must(os.Symlink("../sizes/f0004097", filepath.Join(root, "links/up")))
	must(os.Symlink("/etc/hostname", filepath.Join(root, "links/abs")))
	must(os.Symlink("does/not/exist", filepath.Join(root, "links/dangling")))
	write("hard/one", 9000, 0o644)
	must(os.MkdirAll(filepath.Join(root, "hard2"), 0o755))
	must(os.Link(filepath.Join(root, "hard/one"), filepath.Join(root, "hard2/two")))
	info.hardLinks = [2]string{"hard/one", "hard2/two"}

	info.xattrFile, info.xattrVal = "a/file000.dat", "comment "+mountMarker
	must(unix.Lsetxattr(filepath.Join(root, info.xattrFile), "user.kmsfs.comment", []byte(info.xattrVal), 0))

	// Past mtimes (and atimes), deepest entries first so that setting a
	// directory's times is the last thing that touches it.
	var all []string
	must(filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && p != root {
			all = append(all, p)
		}
		return err
	}))
	sort.Slice(all, func(i, j int) bool { return strings.Count(all[i], "/") > strings.Count(all[j], "/") })
	for _, p := range all {
		at, mt := mountPastTime(rng), mountPastTime(rng)
		ts := []unix.Timespec{unix.NsecToTimespec(at.UnixNano()), unix.NsecToTimespec(mt.UnixNano())}
		must(unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW))
	}
	return info
}

// mountEntry is what a copy must preserve of one tree entry.
type mountEntry struct {
	mode    uint32 // st_mode: type and permission bits
	size    int64
	mtimeNs int64
	nlink   uint64
	uid     uint32
	gid     uint32
	target  string   // symlink target
	sum     [32]byte // SHA-256 of a regular file's content
	xattrs  string   // sorted "name=value" lines
	ino     uint64   // only to group hard links within one tree
}

func (e mountEntry) String() string {
	return fmt.Sprintf("mode=%o size=%d mtime=%s nlink=%d uid=%d gid=%d target=%q sum=%x xattrs=%q",
		e.mode, e.size, time.Unix(0, e.mtimeNs).UTC().Format(time.RFC3339Nano), e.nlink, e.uid, e.gid, e.target, e.sum[:6], e.xattrs)
}

// mountSnapshot reads every entry below root (root itself excluded) without
// following symlinks; regular files are read in full, so that a snapshot
// of a mount also checks that every byte decrypts.
func mountSnapshot(t *testing.T, root string) map[string]mountEntry {
	t.Helper()
	snap := map[string]mountEntry{}
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			return err
		}
		e := mountEntry{mode: st.Mode, size: st.Size, mtimeNs: st.Mtim.Nano(), nlink: uint64(st.Nlink),
			uid: st.Uid, gid: st.Gid, ino: st.Ino}
		switch st.Mode & syscall.S_IFMT {
		case syscall.S_IFLNK:
			e.target, err = os.Readlink(p)
			if err != nil {
				return err
			}
			e.size = 0 // a symlink's size is its target's length, checked via target
		case syscall.S_IFDIR:
			e.size = 0 // directory sizes are the backing fs's business
		case syscall.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return fmt.Errorf("read %s: %w", p, err)
			}
			if int64(len(b)) != st.Size {
				return fmt.Errorf("%s: stat size %d, read %d bytes", p, st.Size, len(b))
			}
			e.sum = sha256.Sum256(b)
		}
		if st.Mode&syscall.S_IFMT != syscall.S_IFLNK {
			e.xattrs, err = mountUserXattrs(p)
			if err != nil {
				return err
			}
		}
		snap[rel] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

// mountUserXattrs lists p's user.* attributes as sorted name=value lines.
func mountUserXattrs(p string) (string, error) {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		return "", fmt.Errorf("listxattr %s: %w", p, err)
	}
	var lines []string
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if !strings.HasPrefix(name, "user.") {
			continue
		}
		val := make([]byte, 64<<10)
		m, err := unix.Lgetxattr(p, name, val)
		if err != nil {
			return "", fmt.Errorf("getxattr %s %s: %w", p, name, err)
		}
		lines = append(lines, name+"="+string(val[:m]))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n"), nil
}

// mountCompareSnapshots reports every difference between two trees: missing
// or extra entries, any field of mountEntry, and hard-link grouping (names
// sharing an inode in want must share one in got, and only those).
func mountCompareSnapshots(t *testing.T, what string, want, got map[string]mountEntry) {
	t.Helper()
	var diffs []string
	for rel, w := range want {
		g, ok := got[rel]
		if !ok {
			diffs = append(diffs, "missing "+rel)
			continue
		}
		wi, gi := w.ino, g.ino
		w.ino, g.ino = 0, 0
		if w != g {
			diffs = append(diffs, fmt.Sprintf("%s:\n\twant %v\n\tgot  %v", rel, w, g))
		}
		if w.mode&syscall.S_IFMT != syscall.S_IFREG {
			continue
		}
		for rel2, w2 := range want {
			if rel2 == rel {
				continue
			}
			g2, ok := got[rel2]
			if ok && (w2.ino == wi) != (g2.ino == gi) {
				diffs = append(diffs, fmt.Sprintf("hard links: %s and %s share an inode in the source: %v, in the copy: %v", rel, rel2, w2.ino == wi, g2.ino == gi))
			}
		}
	}
	for rel := range got {
		if _, ok := want[rel]; !ok {
			diffs = append(diffs, "extra "+rel)
		}
	}
	if len(diffs) > 0 {
		sort.Strings(diffs)
		if len(diffs) > 40 {
			diffs = append(diffs[:40], fmt.Sprintf("... and %d more", len(diffs)-40))
		}
		t.Errorf("%s: %d differences:\n%s", what, len(diffs), strings.Join(diffs, "\n"))
	}
}

// mountRequireNoPlaintext fails if the marker (or any other needle) shows
// up in any backing file.
func mountRequireNoPlaintext(t *testing.T, vault string, needles ...string) {
	t.Helper()
	for _, n := range append([]string{mountMarker}, needles...) {
		if hits := mountGrepBacking(t, vault, []byte(n)); len(hits) > 0 {
			t.Errorf("plaintext %q found in %d backing files, e.g. %s", n, len(hits), hits[0])
		}
	}
	// The same check with grep(1), as an operator would run it.
	if out, err := mountExecOut("grep", "-r", "-a", "-F", "-l", mountMarker, vault); err == nil || strings.TrimSpace(out) != "" {
		t.Errorf("grep -r %s %s found plaintext (or failed: %v):\n%s", mountMarker, vault, err, mountTail(out, 10))
	}
}
