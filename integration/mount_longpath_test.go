package integration

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// mountPathMax is Linux's PATH_MAX, NUL included.
const mountPathMax = 4096

// mountDeepDir creates, relative to the directory descriptor at, a chain of
// directories such that dir + "/" + a leafLen-byte name is total bytes
// long (pjdfstest's dirgen_max for total = PATH_MAX-1).
func mountDeepDir(t *testing.T, at int, total, leafLen int) string {
	t.Helper()
	dir := ""
	for i := 0; ; i++ {
		remaining := total - leafLen - 1 - len(dir)
		if dir != "" {
			remaining--
		}
		if remaining <= 0 {
			break
		}
		comp := strings.Repeat(string(rune('a'+i%26)), min(255, remaining))
		if dir != "" {
			comp = dir + "/" + comp
		}
		dir = comp
		if err := unix.Mkdirat(at, dir, 0o755); err != nil {
			t.Fatalf("mkdir at depth %d (%d bytes): %v", i, len(dir), err)
		}
	}
	return dir
}

// Names of PATH_MAX-1 bytes relative to the mount root (what pjdfstest's
// */03.t and rename/02.t make from inside the mount) work on kmsfs although
// the backing path, vault + "/" + name, is past PATH_MAX; a name of
// PATH_MAX bytes is refused with ENAMETOOLONG as on any file system. The
// test works relative to directory descriptors, as a process whose cwd is
// the mount root does: the mount point's own path in front of the name
// would be too long for the test process too.
func TestMountLongPaths(t *testing.T) {
	v := mountNewVolume(t)
	v.mount()
	mnt, err := unix.Open(v.mnt, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(mnt)
	const leafLen = 100
	dir := mountDeepDir(t, mnt, mountPathMax-1, leafLen)
	leaf := func(c string) string { return dir + "/" + strings.Repeat(c, leafLen) }
	name := leaf("f")
	if len(name) != mountPathMax-1 || len(v.vault)+1+len(name) < mountPathMax {
		t.Fatalf("name of %d bytes, backing path %d: not the case under test", len(name), len(v.vault)+1+len(name))
	}

	plain := bytes.Repeat([]byte("long path "), 1000)
	fd, err := unix.Openat(mnt, name, unix.O_CREAT|unix.O_EXCL|unix.O_RDWR|unix.O_CLOEXEC, 0o644)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	f := os.NewFile(uintptr(fd), "long")
	if _, err := f.Write(plain); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Fstatat(mnt, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil || st.Size != int64(len(plain)) {
		t.Fatalf("stat: size %d, %v", st.Size, err)
	}
	// The ciphertext is where the name says, and is not the plaintext.
	vault, err := unix.Open(v.vault, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(vault)
	cfd, err := unix.Openat(vault, name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("backing file: %v", err)
	}
	cipher := make([]byte, 64<<10)
	n, _ := unix.Read(cfd, cipher)
	unix.Close(cfd)
	if n <= len(plain) || bytes.Contains(cipher[:n], []byte("long path long path")) {
		t.Fatalf("backing file: %d bytes, plaintext visible or too short", n)
	}

	if err := unix.Fchmodat(mnt, name, 0o600, 0); err != nil {
		t.Fatalf("chmod: %v", err)
	}
	if err := unix.Fchownat(mnt, name, 65534, 65534, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatalf("chown: %v", err)
	}
	if err := unix.UtimesNanoAt(mnt, name, []unix.Timespec{{Sec: 1}, {Sec: 2}}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatalf("utimens: %v", err)
	}
	if err := unix.Fstatat(mnt, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil ||
		st.Mode&0o7777 != 0o600 || st.Uid != 65534 || st.Gid != 65534 || st.Mtim.Sec != 2 {
		t.Fatalf("after chmod/chown/utimens: mode %o owner %d:%d mtime %d, %v", st.Mode&0o7777, st.Uid, st.Gid, st.Mtim.Sec, err)
	}

	// xattrs: the calls have no *at form; name the entry through a
	// descriptor of its directory.
	dfd, err := unix.Openat(mnt, dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dfd)
	viaDir := "/proc/self/fd/" + strconv.Itoa(dfd) + "/" + strings.Repeat("f", leafLen)
	if err := unix.Lsetxattr(viaDir, "user.k", []byte("v"), 0); err != nil {
		t.Fatalf("setxattr: %v", err)
	}
	val := make([]byte, 8)
	if n, err := unix.Lgetxattr(viaDir, "user.k", val); err != nil || string(val[:n]) != "v" {
		t.Fatalf("getxattr: %q, %v", val[:n], err)
	}
	if err := unix.Lremovexattr(viaDir, "user.k"); err != nil {
		t.Fatalf("removexattr: %v", err)
	}

	renamed := leaf("g")
	if err := unix.Renameat(mnt, name, mnt, renamed); err != nil {
		t.Fatalf("rename to a long name: %v", err)
	}
	if err := unix.Renameat(mnt, renamed, mnt, "short"); err != nil {
		t.Fatalf("rename from a long name: %v", err)
	}
	if err := unix.Renameat(mnt, "short", mnt, name); err != nil {
		t.Fatal(err)
	}
	linked := leaf("h")
	if err := unix.Linkat(mnt, name, mnt, linked, 0); err != nil {
		t.Fatalf("link: %v", err)
	}
	fd, err = unix.Openat(mnt, linked, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open the link: %v", err)
	}
	got := make([]byte, len(plain)+1)
	n, err = unix.Read(fd, got)
	unix.Close(fd)
	if err != nil || !bytes.Equal(got[:n], plain) {
		t.Fatalf("read through the link: %d bytes, %v", n, err)
	}
	link := leaf("s")
	if err := unix.Symlinkat("target", mnt, link); err != nil {
		t.Fatalf("symlink: %v", err)
	}
	buf := make([]byte, 64)
	if n, err := unix.Readlinkat(mnt, link, buf); err != nil || string(buf[:n]) != "target" {
		t.Fatalf("readlink: %q, %v", buf[:n], err)
	}
	fifo := leaf("p")
	if err := unix.Mknodat(mnt, fifo, unix.S_IFIFO|0o644, 0); err != nil {
		t.Fatalf("mkfifo: %v", err)
	}
	sub := leaf("d")
	if err := unix.Mkdirat(mnt, sub, 0o755); err != nil {
		t.Fatalf("mkdir: %v", err)
	}

	lfd, err := unix.Openat(mnt, dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	d := os.NewFile(uintptr(lfd), "deep")
	names, err := d.Readdirnames(-1)
	d.Close()
	slices.Sort(names)
	want := []string{}
	for _, c := range []string{"d", "f", "h", "p", "s"} {
		want = append(want, strings.Repeat(c, leafLen))
	}
	if err != nil || !slices.Equal(names, want) {
		t.Fatalf("readdir: %d names, %v; want %d", len(names), err, len(want))
	}

	// One byte more is PATH_MAX: the kernel refuses it before kmsfs sees it.
	if err := unix.Mkdirat(mnt, dir+"/"+strings.Repeat("x", leafLen+1), 0o755); err != syscall.ENAMETOOLONG {
		t.Fatalf("mkdir of a %d-byte name: %v, want ENAMETOOLONG", len(dir)+leafLen+2, err)
	}

	if err := unix.Unlinkat(mnt, sub, unix.AT_REMOVEDIR); err != nil {
		t.Fatalf("rmdir: %v", err)
	}
	for _, n := range []string{name, linked, link, fifo} {
		if err := unix.Unlinkat(mnt, n, 0); err != nil {
			t.Fatalf("unlink: %v", err)
		}
	}
	if err := unix.Fstatat(vault, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != syscall.ENOENT {
		t.Fatalf("backing file after unlink: %v, want ENOENT", err)
	}
}

// A process whose working directory is deep inside the mount can name
// entries more than PATH_MAX bytes below the mount root: each system call's
// own path is short, only the whole is long. ext4 takes such trees, and so
// does kmsfs (the backend resolves the path in pieces). The test walks down
// by directory descriptors, as such a process does, and reads its file back
// after a remount.
func TestMountPathsDeeperThanPathMax(t *testing.T) {
	v := mountNewVolume(t)
	v.mount()
	const levels, compLen = 25, 200 // 25 × 201 = 5,025 bytes below the root
	comp := func(i int) string { return strings.Repeat(string(rune('a'+i%26)), compLen) }
	// walk opens the directory chain from the mount root, creating it with
	// create, and returns a descriptor of the deepest directory.
	walk := func(create bool) int {
		t.Helper()
		fd, err := unix.Open(v.mnt, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		for i := range levels {
			if create {
				if err := unix.Mkdirat(fd, comp(i), 0o755); err != nil {
					t.Fatalf("mkdir at depth %d (%d bytes below the root): %v", i, (i+1)*(compLen+1), err)
				}
			}
			next, err := unix.Openat(fd, comp(i), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			unix.Close(fd)
			if err != nil {
				t.Fatalf("open at depth %d: %v", i, err)
			}
			fd = next
		}
		return fd
	}
	deep := walk(true)
	plain := bytes.Repeat([]byte("deep below "), 3000)
	fd, err := unix.Openat(deep, "f", unix.O_CREAT|unix.O_EXCL|unix.O_RDWR|unix.O_CLOEXEC, 0o644)
	if err != nil {
		t.Fatalf("create %d bytes below the root: %v", levels*(compLen+1)+1, err)
	}
	f := os.NewFile(uintptr(fd), "deep")
	if _, err := f.Write(plain); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := unix.Renameat(deep, "f", deep, "g"); err != nil {
		t.Fatalf("rename: %v", err)
	}
	if err := unix.Symlinkat("g", deep, "s"); err != nil {
		t.Fatalf("symlink: %v", err)
	}
	if err := unix.Setxattr(fmt.Sprintf("/proc/self/fd/%d/g", deep), "user.k", []byte("v"), 0); err != nil {
		t.Fatalf("setxattr: %v", err)
	}
	var st unix.Stat_t
	if err := unix.Fstatat(deep, "g", &st, unix.AT_SYMLINK_NOFOLLOW); err != nil || st.Size != int64(len(plain)) {
		t.Fatalf("stat: size %d, %v; want %d", st.Size, err, len(plain))
	}
	unix.Close(deep)

	v.remount()
	deep = walk(false)
	defer unix.Close(deep)
	fd, err = unix.Openat(deep, "s", unix.O_RDONLY|unix.O_CLOEXEC, 0) // through the symlink
	if err != nil {
		t.Fatalf("reopen after remount: %v", err)
	}
	rf := os.NewFile(uintptr(fd), "deep")
	got, err := io.ReadAll(rf)
	rf.Close()
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("read back %d bytes, %v; want the %d written", len(got), err, len(plain))
	}
	buf := make([]byte, 8)
	if n, err := unix.Getxattr(fmt.Sprintf("/proc/self/fd/%d/g", deep), "user.k", buf); err != nil || string(buf[:n]) != "v" {
		t.Fatalf("getxattr after remount: %q, %v", buf[:max(n, 0)], err)
	}
	for _, n := range []string{"s", "g"} {
		if err := unix.Unlinkat(deep, n, 0); err != nil {
			t.Fatalf("unlink %s: %v", n, err)
		}
	}
}
