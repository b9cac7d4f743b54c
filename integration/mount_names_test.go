package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestMountEncryptedNames: a volume made with `kmsfs init --encrypt-names`
// takes cp -a and rsync -aHX of the standard tree (unicode, spaces, quotes,
// symlinks absolute, relative and dangling, hard links, xattrs, modes,
// owners) and gives it back identical, also after a remount and a directory
// rename; the backing directory holds no plaintext name and no plaintext
// symlink target; rm -rf leaves it empty; kmsfs rewrap works on it.
func TestMountEncryptedNames(t *testing.T) {
	mountRequireTool(t, "rsync")
	v := mountNewVolume(t, "--encrypt-names")
	src := filepath.Join(t.TempDir(), "src")
	mountMakeTree(t, src, 21)
	// Names too long for a stored name of their own (over 175 bytes).
	longDir := filepath.Join(src, strings.Repeat("Long directory name ", 10))
	if err := os.Mkdir(longDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(longDir, strings.Repeat("ü", 127)+"x"), []byte("long"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(strings.Repeat("ü", 127)+"x", filepath.Join(longDir, strings.Repeat("s", 255))); err != nil {
		t.Fatal(err)
	}
	// Past times, as for the rest of the tree: rsync leaves alone a time
	// that is in the same second as the copy's own (a flake before this).
	past := []unix.Timespec{unix.NsecToTimespec(1_500_000_000_123_456_789), unix.NsecToTimespec(1_500_000_000_987_654_321)}
	for _, p := range []string{filepath.Join(longDir, strings.Repeat("s", 255)), filepath.Join(longDir, strings.Repeat("ü", 127)+"x"), longDir} {
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, past, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatal(err)
		}
	}
	want := mountSnapshot(t, src)
	v.mount()
	cpDst, rsDst := v.path("cp"), v.path("rs")
	mountExec(t, "cp", "-a", src, cpDst)
	mountExec(t, "rsync", "-aHX", src+"/", rsDst+"/")
	mountCheckCopies(t, "encrypted names", src, want, cpDst, rsDst)
	v.remount()
	mountCheckCopies(t, "encrypted names after remount", src, want, cpDst, rsDst)
	if out := mountExec(t, "rsync", "-aHX", "--dry-run", "--itemize-changes", src+"/", rsDst+"/"); strings.TrimSpace(out) != "" {
		t.Errorf("rsync --dry-run wants changes:\n%s", mountTail(out, 20))
	}

	// No stored name is a plaintext name; no stored symlink target shows one.
	plain := map[string]bool{}
	filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err == nil && p != src {
			plain[d.Name()] = true
		}
		return err
	})
	plain["cp"], plain["rs"] = true, true
	stored := 0
	filepath.WalkDir(v.vault, func(p string, d os.DirEntry, err error) error {
		if err != nil || p == v.vault {
			return err
		}
		if d.Name() == ".kmsfs" && filepath.Dir(p) == v.vault {
			return filepath.SkipDir
		}
		stored++
		if plain[d.Name()] {
			t.Errorf("backing path %s is a plaintext name", p)
		}
		if d.Type()&os.ModeSymlink != 0 {
			target, err := os.Readlink(p)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(target, "target.txt") || strings.Contains(target, "hostname") || strings.Contains(target, "does/not") {
				t.Errorf("backing symlink %s points at plaintext %q", p, target)
			}
		}
		return nil
	})
	if stored < 600 {
		t.Fatalf("only %d entries in the backing directory", stored)
	}

	mountExec(t, "mv", v.path("cp"), v.path("moved"))
	if out, err := mountExecOut("diff", "-r", "--no-dereference", src, v.path("moved")); err != nil {
		t.Errorf("after renaming the top directory: %v\n%s", err, mountTail(out, 20))
	}
	v.unmount()
	if out := v.run("rewrap", v.vault); !strings.Contains(out, " 0 failed") {
		t.Fatalf("rewrap of a volume with encrypted names:\n%s", out)
	}
	v.mount()
	mountCheckCopies(t, "encrypted names after rewrap", src, want, v.path("moved"), rsDst)
	mountExec(t, "rm", "-rf", v.path("moved"), rsDst)
	ents, err := os.ReadDir(v.vault)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() != ".kmsfs" {
			t.Errorf("%s left in the backing directory after rm -rf", e.Name())
		}
	}
	mountRequireNoPlaintext(t, v.vault)
}

// TestS3EncryptedNames: the same on an S3 volume (versitygw): object keys
// listed by awscli show no plaintext name, and the tree reads back after a
// remount and a directory rename (a copy of every object on S3).
func TestS3EncryptedNames(t *testing.T) {
	const prefix = "names"
	g, v, src, want := s3MountedVolume(t, prefix, "--encrypt-names")
	dst := v.path("cp")
	mountExec(t, "cp", "-a", src, dst)
	v.remount(g.flags()...)
	mountCompareSnapshots(t, "S3 encrypted names", want, s3Snapshot(t, dst))

	plain := map[string]bool{"cp": true}
	filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err == nil && p != src {
			plain[d.Name()] = true
		}
		return err
	})
	listing := g.aws(t, "s3", "ls", "--recursive", "s3://"+s3Bucket+"/"+prefix+"/")
	keys := 0
	for _, line := range strings.Split(strings.TrimSpace(listing), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 {
			continue
		}
		key := strings.TrimPrefix(strings.Join(f[3:], " "), prefix+"/")
		if strings.HasPrefix(key, ".kmsfs/") {
			continue
		}
		keys++
		for _, comp := range strings.Split(key, "/") {
			if plain[comp] {
				t.Errorf("object key %q shows the plaintext name %q", key, comp)
			}
		}
	}
	if keys < 300 {
		t.Fatalf("only %d objects listed", keys)
	}
	mountExec(t, "mv", dst, v.path("moved"))
	if out, err := mountExecOut("diff", "-r", "--no-dereference", src, v.path("moved")); err != nil {
		t.Errorf("after renaming the top directory: %v\n%s", err, mountTail(out, 20))
	}
}
