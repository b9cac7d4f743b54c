package local

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/backend"
)

// pathMax is Linux's PATH_MAX: a path argument of this many bytes, NUL
// included, is refused with ENAMETOOLONG.
const pathMax = 4096

// newBackendAt makes a backing root whose absolute path is about rootLen
// bytes (at least the temp dir's), so that the tests can put root + "/" +
// name past PATH_MAX with a name that is legal on its own.
func newBackendAt(t *testing.T, rootLen int) *Backend {
	t.Helper()
	root := t.TempDir()
	for len(root) < rootLen-1 {
		n := min(200, rootLen-1-len(root))
		root = filepath.Join(root, strings.Repeat("r", n))
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return b
}

// makeDeepDir creates directories through the backend so that
// dir + "/" + a name of leafLen bytes is exactly total bytes long, as
// pjdfstest's dirgen_max does for total = PATH_MAX-1.
func makeDeepDir(t *testing.T, b *Backend, total, leafLen int) string {
	t.Helper()
	ctx := context.Background()
	dir := ""
	for i := 0; ; i++ {
		remaining := total - leafLen - 1 - len(dir) // bytes left for the directory part
		if dir != "" {
			remaining-- // its separating slash
		}
		if remaining <= 0 {
			break
		}
		comp := strings.Repeat(string(rune('a'+i%26)), min(255, remaining))
		if dir == "" {
			dir = comp
		} else {
			dir += "/" + comp
		}
		if err := b.Mkdir(ctx, dir, 0o755, nil); err != nil {
			t.Fatalf("mkdir at depth %d (%d bytes): %v", i, len(dir), errno(err))
		}
	}
	if got := len(dir) + 1 + leafLen; got != total {
		t.Fatalf("deep dir: %d bytes with the leaf, want %d", got, total)
	}
	return dir
}

func errno(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return 0
}

// A name of PATH_MAX-1 bytes relative to the volume root is legal on the
// mount; with the backing root in front of it, it is far past PATH_MAX.
// Every operation must still work on it.
func TestNamesPastPathMaxBelowTheRoot(t *testing.T) {
	checkEveryOperation(t, pathMax-1)
}

// A process whose working directory is deep inside the mount can name
// entries more than PATH_MAX bytes below its root (ext4 takes them: only
// each system call's own path argument is limited). The backend resolves
// such a path in pieces; every operation works there too.
func TestNamesLongerThanPathMax(t *testing.T) {
	checkEveryOperation(t, 2*pathMax+1000)
}

// checkEveryOperation runs every backend operation on entries whose volume
// paths are total bytes long, below a backing root of 1,000 bytes.
func checkEveryOperation(t *testing.T, total int) {
	ctx := context.Background()
	b := newBackendAt(t, 1000)
	const leafLen = 100
	dir := makeDeepDir(t, b, total, leafLen)
	leaf := func(c string) string { return dir + "/" + strings.Repeat(c, leafLen) }
	name := leaf("f")

	// The test only means something if the joined path is too long for
	// the kernel.
	abs := filepath.Join(b.Root(), name)
	if len(abs) < pathMax {
		t.Fatalf("joined path is only %d bytes", len(abs))
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(abs, &st); err != syscall.ENAMETOOLONG {
		t.Fatalf("lstat of the joined %d-byte path: %v, want ENAMETOOLONG", len(abs), err)
	}

	f, err := b.Open(ctx, name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o640, &backend.Owner{Uid: 65534, Gid: 65534})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if _, err := f.WriteAt([]byte("ciphertext"), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Lstat(ctx, name, &st); err != nil {
		t.Fatalf("lstat: %v", err)
	}
	if st.Size != int64(len("ciphertext")) || st.Mode != syscall.S_IFREG|0o640 {
		t.Fatalf("lstat: size %d mode %o, want 10 and %o", st.Size, st.Mode, syscall.S_IFREG|0o640)
	}
	if os.Getuid() == 0 && (st.Uid != 65534 || st.Gid != 65534) {
		t.Fatalf("created as %d:%d, want the creator 65534:65534", st.Uid, st.Gid)
	}
	f, err = b.Open(ctx, name, os.O_RDONLY, 0, nil)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	buf := make([]byte, 10)
	if _, err := f.ReadAt(buf, 0); err != nil || string(buf) != "ciphertext" {
		t.Fatalf("read back %q, %v", buf, err)
	}
	f.Close()

	if err := b.Chmod(ctx, name, 0o4600); err != nil {
		t.Fatalf("chmod: %v", err)
	}
	uid, gid := os.Getuid(), os.Getgid()
	if uid == 0 {
		uid, gid = 1234, 5678
	}
	if err := b.Lchown(ctx, name, uid, gid); err != nil {
		t.Fatalf("chown: %v", err)
	}
	mtime := time.Unix(1_000_000_000, 123_456_789)
	if err := b.Utimens(ctx, name, nil, &mtime); err != nil {
		t.Fatalf("utimens: %v", err)
	}
	if err := b.Lstat(ctx, name, &st); err != nil {
		t.Fatal(err)
	}
	// chown clears setuid on a regular file, for root too; chmod again to
	// see that the mode bits land.
	if int(st.Uid) != uid || int(st.Gid) != gid || st.Mtim != syscall.NsecToTimespec(mtime.UnixNano()) {
		t.Fatalf("after chown/utimens: %d:%d mtime %v, want %d:%d %v", st.Uid, st.Gid, st.Mtim, uid, gid, mtime)
	}
	if err := b.Chmod(ctx, name, 0o4600); err != nil {
		t.Fatal(err)
	}
	if err := b.Lstat(ctx, name, &st); err != nil || st.Mode&0o7777 != 0o4600 {
		t.Fatalf("after chmod 4600: mode %o, %v", st.Mode&0o7777, err)
	}

	if err := b.Setxattr(ctx, name, "user.k", []byte("wrapped"), 0); err != nil {
		t.Fatalf("setxattr: %v", err)
	}
	if v, err := b.Getxattr(ctx, name, "user.k"); err != nil || string(v) != "wrapped" {
		t.Fatalf("getxattr: %q, %v", v, err)
	}
	big := bytes.Repeat([]byte("x"), 1000) // past Getxattr's first buffer
	if err := b.Setxattr(ctx, name, "user.big", big, 0); err != nil {
		t.Fatal(err)
	}
	if v, err := b.Getxattr(ctx, name, "user.big"); err != nil || !bytes.Equal(v, big) {
		t.Fatalf("getxattr of 1000 bytes: %d bytes, %v", len(v), err)
	}
	if l, err := b.Listxattr(ctx, name); err != nil || !slices.Equal(sorted(l), []string{"user.big", "user.k"}) {
		t.Fatalf("listxattr: %q, %v", l, err)
	}
	if err := b.Removexattr(ctx, name, "user.k"); err != nil {
		t.Fatalf("removexattr: %v", err)
	}
	if _, err := b.Getxattr(ctx, name, "user.k"); errno(err) != syscall.ENODATA {
		t.Fatalf("getxattr after remove: %v, want ENODATA", err)
	}
	if err := b.Setxattr(ctx, name, "user.big", []byte("x"), unix.XATTR_CREATE); errno(err) != syscall.EEXIST {
		t.Fatalf("setxattr XATTR_CREATE of an existing attribute: %v, want EEXIST", err)
	}

	renamed := leaf("g")
	if err := b.Rename(ctx, name, renamed, 0); err != nil {
		t.Fatalf("rename: %v", err)
	}
	if err := b.Lstat(ctx, name, &st); errno(err) != syscall.ENOENT {
		t.Fatalf("old name after rename: %v, want ENOENT", err)
	}
	// Back to the short root, and down again with RENAME_NOREPLACE.
	if err := b.Rename(ctx, renamed, "short", 0); err != nil {
		t.Fatalf("rename out of the deep dir: %v", err)
	}
	if err := b.Rename(ctx, "short", name, unix.RENAME_NOREPLACE); err != nil {
		t.Fatalf("rename into the deep dir: %v", err)
	}

	linked := leaf("h")
	if err := b.Link(ctx, name, linked); err != nil {
		t.Fatalf("link: %v", err)
	}
	if err := b.Lstat(ctx, name, &st); err != nil || st.Nlink != 2 {
		t.Fatalf("nlink after link: %d, %v", st.Nlink, err)
	}
	if err := b.Rename(ctx, name, linked, unix.RENAME_NOREPLACE); errno(err) != syscall.EEXIST {
		t.Fatalf("RENAME_NOREPLACE onto an existing name: %v, want EEXIST", err)
	}

	link := leaf("s")
	target := strings.Repeat("t/", (pathMax-2)/2) + "t" // a 4095-byte target
	if err := b.Symlink(ctx, target, link, nil); err != nil {
		t.Fatalf("symlink: %v", err)
	}
	if got, err := b.Readlink(ctx, link); err != nil || got != target {
		t.Fatalf("readlink: %d bytes, %v; want the %d-byte target", len(got), err, len(target))
	}
	if err := b.Lstat(ctx, link, &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFLNK {
		t.Fatalf("lstat of the symlink: mode %o, %v", st.Mode, err)
	}
	mtime2 := time.Unix(2_000_000_000, 0)
	if err := b.Utimens(ctx, link, nil, &mtime2); err != nil {
		t.Fatalf("utimens of the symlink: %v", err)
	}
	if err := b.Lstat(ctx, link, &st); err != nil || st.Mtim.Sec != mtime2.Unix() {
		t.Fatalf("symlink mtime %d, %v: utimens followed it?", st.Mtim.Sec, err)
	}

	fifo := leaf("p")
	if err := b.Mknod(ctx, fifo, syscall.S_IFIFO|0o644, 0, nil); err != nil {
		t.Fatalf("mknod: %v", err)
	}
	sub := leaf("d")
	if err := b.Mkdir(ctx, sub, 0o700, nil); err != nil {
		t.Fatalf("mkdir: %v", err)
	}

	ents, err := b.ReadDir(ctx, dir)
	if err != nil {
		t.Fatalf("readdir: %v", err)
	}
	want := map[string]uint32{
		strings.Repeat("f", leafLen): syscall.S_IFREG, strings.Repeat("h", leafLen): syscall.S_IFREG,
		strings.Repeat("s", leafLen): syscall.S_IFLNK, strings.Repeat("p", leafLen): syscall.S_IFIFO,
		strings.Repeat("d", leafLen): syscall.S_IFDIR,
	}
	if len(ents) != len(want) {
		t.Fatalf("readdir: %d entries, want %d", len(ents), len(want))
	}
	for _, e := range ents {
		if want[e.Name] != e.Mode {
			t.Errorf("readdir entry %.10s...: mode %o, want %o", e.Name, e.Mode, want[e.Name])
		}
		if err := b.Lstat(ctx, dir+"/"+e.Name, &st); err != nil || st.Ino != e.Ino {
			t.Errorf("readdir entry %.10s...: ino %d, lstat says %d (%v)", e.Name, e.Ino, st.Ino, err)
		}
	}

	if err := b.Rmdir(ctx, sub); err != nil {
		t.Fatalf("rmdir: %v", err)
	}
	for _, n := range []string{name, linked, link, fifo} {
		if err := b.Unlink(ctx, n); err != nil {
			t.Fatalf("unlink %.10s...: %v", filepath.Base(n), err)
		}
	}
	if ents, err := b.ReadDir(ctx, dir); err != nil || len(ents) != 0 {
		t.Fatalf("readdir after removing everything: %v, %v", ents, err)
	}
}

func sorted(s []string) []string { slices.Sort(s); return s }

// Names the backend must not resolve: the metadata directory, and anything
// that would leave the root through the *at calls.
func TestNamesOutsideTheTreeAreRefused(t *testing.T) {
	ctx := context.Background()
	b := newBackendAt(t, 0)
	if err := b.WriteMeta(ctx, "config", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(filepath.Dir(b.Root()), "outside")
	if err := os.WriteFile(outside, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	for _, name := range []string{MetaDir, MetaDir + "/config", "../outside", "a/../../outside", outside, ".."} {
		if err := b.Lstat(ctx, name, &st); err == nil {
			t.Errorf("lstat %q: found", name)
		}
		if err := b.Unlink(ctx, name); err == nil {
			t.Errorf("unlink %q: succeeded", name)
		}
		if err := b.Chmod(ctx, name, 0o777); err == nil {
			t.Errorf("chmod %q: succeeded", name)
		}
		if _, err := b.Open(ctx, name, os.O_RDONLY, 0, nil); err == nil {
			t.Errorf("open %q: succeeded", name)
		}
		if _, err := b.Getxattr(ctx, name, "user.x"); errno(err) == syscall.ENODATA {
			t.Errorf("getxattr %q: reached a file", name)
		}
	}
	if err := b.Lstat(ctx, MetaDir, &st); errno(err) != syscall.ENOENT {
		t.Errorf("lstat of the metadata dir: %v, want ENOENT", err)
	}
	if err := b.Mkdir(ctx, MetaDir+"/x", 0o755, nil); errno(err) != syscall.EPERM {
		t.Errorf("mkdir in the metadata dir: %v, want EPERM", err)
	}
	if _, err := os.Stat(outside); err != nil {
		t.Errorf("file outside the root: %v", err)
	}
	if data, err := b.ReadMeta(ctx, "config"); err != nil || string(data) != "{}" {
		t.Errorf("config after the attempts: %q, %v", data, err)
	}
	ents, err := b.ReadDir(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name == MetaDir {
			t.Error("the root's listing shows the metadata dir")
		}
	}
}

// The volume root is "": it can be stat'ed, listed, chmod'ed and carry
// xattrs, and cannot be removed.
func TestRootEntry(t *testing.T) {
	ctx := context.Background()
	b := newBackendAt(t, 0)
	var st syscall.Stat_t
	if err := b.Lstat(ctx, "", &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		t.Fatalf("lstat of the root: mode %o, %v", st.Mode, err)
	}
	if err := b.Chmod(ctx, "", 0o711); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(b.Root()); err != nil || fi.Mode().Perm() != 0o711 {
		t.Fatalf("backing root after chmod 711: %v, %v", fi.Mode(), err)
	}
	if err := b.Setxattr(ctx, "", "user.root", []byte("r"), 0); err != nil {
		t.Fatalf("setxattr on the root: %v", err)
	}
	if v, err := unix.Getxattr(b.Root(), "user.root", make([]byte, 8)); err != nil || v != 1 {
		t.Fatalf("the root's xattr is not on the backing root: %d, %v", v, err)
	}
	if l, err := b.Listxattr(ctx, ""); err != nil || !slices.Contains(l, "user.root") {
		t.Fatalf("listxattr of the root: %q, %v", l, err)
	}
	if err := b.Removexattr(ctx, "", "user.root"); err != nil {
		t.Fatal(err)
	}
	// A top-level entry's xattrs go through the root descriptor's link.
	if err := b.Mkdir(ctx, "top", 0o755, nil); err != nil {
		t.Fatal(err)
	}
	if err := b.Setxattr(ctx, "top", "user.t", []byte("t"), 0); err != nil {
		t.Fatal(err)
	}
	if v, err := unix.Getxattr(filepath.Join(b.Root(), "top"), "user.t", make([]byte, 8)); err != nil || v != 1 {
		t.Fatalf("top-level xattr: %d, %v", v, err)
	}
	if err := b.Rmdir(ctx, ""); err == nil {
		t.Fatal("rmdir of the root succeeded")
	}
	if err := b.Unlink(ctx, ""); err == nil {
		t.Fatal("unlink of the root succeeded")
	}
	var sfs syscall.Statfs_t
	if err := b.Statfs(ctx, &sfs); err != nil || sfs.Blocks == 0 {
		t.Fatalf("statfs: %+v, %v", sfs, err)
	}
}

// The backend keeps working on the directory it opened: the root
// descriptor, not the path, names it.
func TestRootRenamedWhileOpen(t *testing.T) {
	ctx := context.Background()
	b := newBackendAt(t, 0)
	if err := b.Mkdir(ctx, "d", 0o755, nil); err != nil {
		t.Fatal(err)
	}
	moved := b.Root() + ".moved"
	if err := os.Rename(b.Root(), moved); err != nil {
		t.Fatal(err)
	}
	defer os.Rename(moved, b.Root())
	if err := os.Mkdir(b.Root(), 0o755); err != nil { // an impostor at the old path
		t.Fatal(err)
	}
	defer os.Remove(b.Root())
	if err := b.Mkdir(ctx, "d/e", 0o755, nil); err != nil {
		t.Fatalf("mkdir after the root was renamed: %v", err)
	}
	if _, err := os.Stat(filepath.Join(moved, "d", "e")); err != nil {
		t.Fatalf("new entry is not in the opened directory: %v", err)
	}
}

// Metadata and intents go through the root descriptor too: they work under
// a backing root so long that root + "/.kmsfs/intents/<id>" is past PATH_MAX.
func TestMetaAndIntentsUnderALongRoot(t *testing.T) {
	ctx := context.Background()
	b := newBackendAt(t, pathMax-20)
	id := strings.Repeat("0123456789abcdef", 2)
	if abs := b.show(intentsDir + "/" + id); len(abs) < pathMax {
		t.Fatalf("intent path is only %d bytes", len(abs))
	}
	if _, err := b.ReadMeta(ctx, "config"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("read of a missing config: %v, want ErrNotExist", err)
	}
	for _, content := range []string{"first", "second, longer"} {
		if err := b.WriteMeta(ctx, "config", []byte(content)); err != nil {
			t.Fatalf("write meta: %v", err)
		}
		if got, err := b.ReadMeta(ctx, "config"); err != nil || string(got) != content {
			t.Fatalf("read meta: %q, %v; want %q", got, err, content)
		}
	}
	if _, err := b.ReadIntent(ctx, id); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("read of a missing intent: %v, want ErrNotExist", err)
	}
	for _, rec := range []string{"a long record of an overwrite", "short"} {
		if err := b.WriteIntent(ctx, id, []byte(rec)); err != nil {
			t.Fatalf("write intent: %v", err)
		}
		if got, err := b.ReadIntent(ctx, id); err != nil || string(got) != rec {
			t.Fatalf("read intent: %q, %v; want %q", got, err, rec)
		}
	}
	if err := b.ClearIntent(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := b.ClearIntent(ctx, id); err != nil {
		t.Fatalf("clearing a cleared intent: %v", err)
	}
	if _, err := b.ReadIntent(ctx, id); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("intent after clear: %v", err)
	}
	// Nothing but the config and the (empty) intents directory is left:
	// no temp files.
	ents, err := os.ReadDir(procFd(b.rootFd) + "/" + MetaDir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"config", "intents"}) {
		t.Fatalf("metadata dir holds %q", names)
	}
	for _, bad := range []string{"", "..", "a/b", "../config"} {
		if err := b.WriteIntent(ctx, bad, nil); err == nil {
			t.Errorf("write intent %q: succeeded", bad)
		}
		if _, err := b.ReadMeta(ctx, bad); err == nil {
			t.Errorf("read meta %q: succeeded", bad)
		}
	}
}

func TestNewRefusesAFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(p); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("New on a file: %v", err)
	}
	if _, err := New(p + "-missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("New on a missing dir: %v", err)
	}
}
