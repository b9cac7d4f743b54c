package volume

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/kmsfs/kmsfs/backend"
	"github.com/kmsfs/kmsfs/envelope"
)

// newNamesVolume makes a volume with encrypted names and returns it with
// its backing directory.
func newNamesVolume(t *testing.T) (*Volume, string) {
	t.Helper()
	tv := newTestVolumeInit(t, InitOptions{EncryptNames: true}, Options{PrefetchMax: -1})
	t.Cleanup(func() { tv.Close() })
	return tv.Volume, tv.dir
}

func listNames(t *testing.T, be backend.Backend, dir string) []string {
	t.Helper()
	ents, err := be.ReadDir(context.Background(), dir)
	if err != nil {
		t.Fatalf("readdir /%s: %v", dir, err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name)
	}
	sort.Strings(names)
	return names
}

// backingNames lists every path below the backing directory except the
// volume metadata.
func backingNames(t *testing.T, vault string) []string {
	t.Helper()
	var all []string
	filepath.WalkDir(vault, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(vault, p)
		if rel == ".kmsfs" {
			return filepath.SkipDir
		}
		all = append(all, rel)
		return nil
	})
	return all
}

// TestEncryptedNamesThroughTheBackend drives every path operation through
// a volume with encrypted names and checks what is stored: no plaintext
// name or symlink target anywhere, one ID file per directory; renames of
// directories keep their contents readable; rmdir of a non-empty directory
// changes nothing.
func TestEncryptedNamesThroughTheBackend(t *testing.T) {
	ctx := context.Background()
	v, vault := newNamesVolume(t)
	be := v.Backend()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(be.Mkdir(ctx, "projects", 0o755, nil))
	must(be.Mkdir(ctx, "projects/secret plan", 0o555, nil))
	h, err := v.OpenFile(ctx, "projects/budget.xlsx", syscall.O_RDWR|syscall.O_CREAT, 0o644, nil)
	must(err)
	_, err = h.WriteAt(ctx, []byte("numbers"), 0)
	must(err)
	must(h.Close())
	must(be.Symlink(ctx, "../projects/budget.xlsx", "shortcut", nil))
	must(be.Link(ctx, "projects/budget.xlsx", "projects/budget-link.xlsx"))

	if got := listNames(t, be, "projects"); strings.Join(got, ",") != "budget-link.xlsx,budget.xlsx,secret plan" {
		t.Fatalf("readdir /projects: %v", got)
	}
	if target, err := be.Readlink(ctx, "shortcut"); err != nil || target != "../projects/budget.xlsx" {
		t.Fatalf("readlink: %q, %v", target, err)
	}
	var st syscall.Stat_t
	must(be.Lstat(ctx, "shortcut", &st))
	if st.Size != int64(len("../projects/budget.xlsx")) {
		t.Fatalf("symlink size %d, want the plaintext target's length", st.Size)
	}
	must(be.Lstat(ctx, "projects/secret plan", &st))
	if st.Mode&0o777 != 0o555 {
		t.Fatalf("mkdir -m 0555 made mode %o", st.Mode&0o777)
	}
	for _, p := range backingNames(t, vault) {
		for _, plain := range []string{"projects", "secret", "budget", "shortcut", "xlsx"} {
			if strings.Contains(p, plain) {
				t.Fatalf("backing path %q shows the name %q", p, plain)
			}
		}
	}
	raw, _ := os.ReadDir(vault)
	for _, e := range raw {
		if e.Type()&os.ModeSymlink != 0 {
			target, _ := os.Readlink(filepath.Join(vault, e.Name()))
			if strings.Contains(target, "budget") {
				t.Fatalf("stored symlink target %q", target)
			}
		}
	}

	// Rename the directory: its entries keep their stored names (the ID
	// moves with it) and stay readable under the new path.
	must(be.Rename(ctx, "projects", "archive", 0))
	h, err = v.OpenFile(ctx, "archive/budget.xlsx", syscall.O_RDONLY, 0, nil)
	must(err)
	if got := readAll(t, h); string(got) != "numbers" {
		t.Fatalf("after the rename: %q", got)
	}
	h.Close()
	if err := be.Lstat(ctx, "projects/budget.xlsx", &st); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("old path after the rename: %v", err)
	}

	// mv onto an empty directory replaces it, as rename(2) does.
	must(be.Mkdir(ctx, "empty", 0o755, nil))
	must(be.Mkdir(ctx, "moving", 0o755, nil))
	must(be.Symlink(ctx, "x", "moving/inside", nil))
	must(be.Rename(ctx, "moving", "empty", 0))
	if got := listNames(t, be, "empty"); strings.Join(got, ",") != "inside" {
		t.Fatalf("after replacing an empty directory: %v", got)
	}
	must(be.Mkdir(ctx, "full", 0o755, nil))
	must(be.Symlink(ctx, "y", "full/keep", nil))
	if err := be.Rename(ctx, "empty", "full", 0); !errors.Is(err, syscall.ENOTEMPTY) && !errors.Is(err, syscall.EEXIST) {
		t.Fatalf("rename onto a non-empty directory: %v", err)
	}
	if got := listNames(t, be, "full"); strings.Join(got, ",") != "keep" {
		t.Fatalf("a refused rename changed the target: %v", got)
	}

	// rmdir of a non-empty directory fails and loses nothing.
	if err := be.Rmdir(ctx, "archive"); !errors.Is(err, syscall.ENOTEMPTY) {
		t.Fatalf("rmdir of a non-empty directory: %v", err)
	}
	if got := listNames(t, be, "archive"); len(got) != 3 {
		t.Fatalf("after a refused rmdir: %v", got)
	}
	must(be.Rmdir(ctx, "archive/secret plan"))
	if got := listNames(t, be, "archive"); strings.Join(got, ",") != "budget-link.xlsx,budget.xlsx" {
		t.Fatalf("after rmdir: %v", got)
	}

	// Names too long for a stored name of their own are stored under their
	// long name, with a side file holding the whole stored form.
	longDir, longFile, longLink := strings.Repeat("D", 200), strings.Repeat("é", 127), strings.Repeat("L", 255)
	must(be.Mkdir(ctx, longDir, 0o755, nil))
	h, err = v.OpenFile(ctx, longDir+"/"+longFile, syscall.O_RDWR|syscall.O_CREAT, 0o644, nil)
	must(err)
	_, err = h.WriteAt(ctx, []byte("long"), 0)
	must(err)
	must(h.Close())
	must(be.Symlink(ctx, longFile, longDir+"/"+longLink, nil))
	if got := listNames(t, be, longDir); strings.Join(got, ",") != longLink+","+longFile {
		t.Fatalf("readdir of long names: %v", got)
	}
	for _, p := range backingNames(t, vault) {
		for _, comp := range strings.Split(p, "/") {
			if len(comp) > envelope.MaxStoredName {
				t.Fatalf("stored component of %d bytes", len(comp))
			}
		}
	}
	must(be.Rename(ctx, longDir+"/"+longFile, longDir+"/short", 0))
	must(be.Rename(ctx, longDir+"/"+longLink, longDir+"/"+strings.Repeat("M", 250), 0))
	if got := listNames(t, be, longDir); strings.Join(got, ",") != strings.Repeat("M", 250)+",short" {
		t.Fatalf("after renames of long names: %v", got)
	}
	if target, err := be.Readlink(ctx, longDir+"/"+strings.Repeat("M", 250)); err != nil || target != longFile {
		t.Fatalf("readlink of a long name: %q, %v", target, err)
	}
	must(be.Unlink(ctx, longDir+"/"+strings.Repeat("M", 250)))
	must(be.Unlink(ctx, longDir+"/short"))
	must(be.Rmdir(ctx, longDir))
	for _, p := range backingNames(t, vault) {
		if strings.Contains(p, envelope.LongNameSuffix) {
			t.Fatalf("side file %s left after its entries were removed", p)
		}
	}
	if err := be.Mkdir(ctx, strings.Repeat("x", 256), 0o755, nil); !errors.Is(err, syscall.ENAMETOOLONG) {
		t.Fatalf("mkdir of a 256-byte name: %v", err)
	}
	var sfs syscall.Statfs_t
	must(be.Statfs(ctx, &sfs))
	if sfs.Namelen != envelope.MaxPlainName {
		t.Fatalf("statfs namelen %d, want %d", sfs.Namelen, envelope.MaxPlainName)
	}
}

func TestDirectoryWithoutIDFile(t *testing.T) {
	ctx := context.Background()
	v, vault := newNamesVolume(t)
	be := v.Backend()
	if err := be.Mkdir(ctx, "d", 0o755, nil); err != nil {
		t.Fatal(err)
	}
	var stored string
	ents, _ := os.ReadDir(vault)
	for _, e := range ents {
		if e.Name() != ".kmsfs" {
			stored = e.Name()
		}
	}
	if err := os.Remove(filepath.Join(vault, stored, DirIDName)); err != nil {
		t.Fatal(err)
	}
	fresh, err := Open(ctx, unlocked(v.be.(nameBackendIntents).nameBackend.Backend), Options{Keys: v.keys, PrefetchMax: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	h, err := fresh.OpenFile(ctx, "d/new", syscall.O_RDWR|syscall.O_CREAT, 0o644, nil)
	if err != nil {
		t.Fatalf("create in a directory that lost its ID file while empty: %v", err)
	}
	h.Close()
	if got := listNames(t, fresh.Backend(), "d"); strings.Join(got, ",") != "new" {
		t.Fatalf("readdir: %v", got)
	}
}
