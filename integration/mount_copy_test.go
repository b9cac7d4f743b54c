package integration

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestMountCopyTree is the first thing users do: cp -a and rsync -a a tree
// into the mount, then check that everything came across (content, modes,
// owners, mtimes, symlinks, hard links, xattrs), that rsync finds nothing
// left to do, that a remount reads it all back, and that the backing
// directory holds no plaintext.
func TestMountCopyTree(t *testing.T) { mountCopyTree(t) }

// TestMountCopyTreeCompressed is TestMountCopyTree on a volume that
// compresses (docs/FORMAT.md section 4a).
func TestMountCopyTreeCompressed(t *testing.T) { mountCopyTree(t, "--compress", "zstd") }

func mountCopyTree(t *testing.T, initArgs ...string) {
	mountRequireTool(t, "rsync")
	v := mountNewVolume(t, initArgs...)
	src := filepath.Join(t.TempDir(), "src")
	info := mountMakeTree(t, src, 1)
	t.Logf("source tree: %d files, %d bytes", info.files, info.bytes)
	want := mountSnapshot(t, src)
	v.mount()

	cpDst, rsDst := v.path("cp"), v.path("rs")
	mountExec(t, "cp", "-a", src, cpDst)
	// -H and -X: plain -a preserves neither hard links nor xattrs.
	mountExec(t, "rsync", "-aHX", src+"/", rsDst+"/")

	check := func(stage string) {
		t.Helper()
		mountCheckCopies(t, stage, src, want, cpDst, rsDst)
		// rsync's own view: nothing differs in content, size, times,
		// permissions, owner, links or xattrs.
		for _, dst := range []string{cpDst, rsDst} {
			if out := mountExec(t, "rsync", "-aHX", "--dry-run", "--itemize-changes", src+"/", dst+"/"); strings.TrimSpace(out) != "" {
				t.Errorf("%s %s: rsync --dry-run --itemize-changes wants changes:\n%s", stage, filepath.Base(dst), mountTail(out, 20))
			}
		}
		// A real --checksum run: every file is read and hashed on both
		// sides, nothing may be transferred.
		if out := mountExec(t, "rsync", "-aHX", "--checksum", "--itemize-changes", src+"/", rsDst+"/"); strings.TrimSpace(out) != "" {
			t.Errorf("%s: rsync --checksum no-op transferred:\n%s", stage, mountTail(out, 20))
		}
	}
	check("after copy")

	v.remount()
	check("after remount")

	// The hard link pair is one inode with two names in the mount too.
	var a, b unix.Stat_t
	if err := unix.Lstat(filepath.Join(rsDst, info.hardLinks[0]), &a); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lstat(filepath.Join(rsDst, info.hardLinks[1]), &b); err != nil {
		t.Fatal(err)
	}
	if a.Ino != b.Ino || a.Nlink != 2 {
		t.Errorf("hard links %v: inodes %d/%d, nlink %d; want one inode, nlink 2", info.hardLinks, a.Ino, b.Ino, a.Nlink)
	}

	// Offline decryption agrees with the source.
	wantBytes, err := os.ReadFile(filepath.Join(src, "sizes/f1048589"))
	if err != nil {
		t.Fatal(err)
	}
	v.unmount()
	out, err := v.command("cat", v.vault, "rs/sizes/f1048589").Output()
	if err != nil {
		t.Fatalf("kmsfs cat: %v", err)
	}
	if !bytes.Equal(out, wantBytes) {
		t.Errorf("kmsfs cat: %d bytes differ from the source's %d", len(out), len(wantBytes))
	}

	// No plaintext anywhere in the backing files, nor in the backing xattr.
	mountRequireNoPlaintext(t, v.vault)
	val := make([]byte, 4096)
	n, err := unix.Lgetxattr(filepath.Join(v.vault, "rs", info.xattrFile), "user.kmsfs.comment", val)
	if err != nil {
		t.Fatalf("backing xattr: %v", err)
	}
	if bytes.Contains(val[:n], []byte(mountMarker)) || string(val[:n]) == info.xattrVal {
		t.Errorf("backing xattr value holds the plaintext %q", val[:n])
	}
}

// mountCheckCopies compares each copy of src with the snapshot taken of src
// (modes, owners, times, links, xattrs) and with diff -r.
func mountCheckCopies(t *testing.T, stage, src string, want map[string]mountEntry, dsts ...string) {
	t.Helper()
	for _, dst := range dsts {
		name := stage + " " + filepath.Base(dst)
		mountCompareSnapshots(t, name, want, mountSnapshot(t, dst))
		if out, err := mountExecOut("diff", "-r", "--no-dereference", src, dst); err != nil {
			t.Errorf("%s: diff -r --no-dereference: %v\n%s", name, err, mountTail(out, 20))
		}
	}
}
