package local

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
)

// The tests below check what the cache of directory descriptors must never
// do: resolve a path through a descriptor of the directory it named before
// a rename or rmdir. Each first puts the directory in the cache (an
// operation on an entry in it), changes the tree through the backend, and
// then checks where operations on the old and new names land, looking at
// the backing tree with plain path calls.

// mustCached fails unless directory p is in b's cache.
func mustCached(t *testing.T, b *Backend, p string) {
	t.Helper()
	b.dirs.mu.Lock()
	defer b.dirs.mu.Unlock()
	if b.dirs.entries[p] == nil {
		t.Fatalf("%s is not cached: the test would not test the cache", p)
	}
}

func mustNotCached(t *testing.T, b *Backend, ps ...string) {
	t.Helper()
	b.dirs.mu.Lock()
	defer b.dirs.mu.Unlock()
	for _, p := range ps {
		if b.dirs.entries[p] != nil {
			t.Errorf("%s is still cached", p)
		}
	}
}

// create makes a file as the kernel asks for one: a lookup (which caches
// the parent), then the create.
func create(t *testing.T, b *Backend, name string) {
	t.Helper()
	var st syscall.Stat_t
	if err := b.Lstat(context.Background(), name, &st); errno(err) != syscall.ENOENT {
		t.Fatalf("lookup %s before create: %v, want ENOENT", name, err)
	}
	f, err := b.Open(context.Background(), name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644, nil)
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	f.Close()
}

func mkdirs(t *testing.T, b *Backend, names ...string) {
	t.Helper()
	for _, n := range names {
		if err := b.Mkdir(context.Background(), n, 0o755, nil); err != nil {
			t.Fatalf("mkdir %s: %v", n, err)
		}
	}
}

// exists reports whether name exists in the backing tree, by path.
func exists(t *testing.T, b *Backend, name string) bool {
	t.Helper()
	_, err := os.Lstat(filepath.Join(b.Root(), name))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return err == nil
}

func TestDirCacheRenameOfACachedDirectory(t *testing.T) {
	ctx := context.Background()
	b := newBackendAt(t, 0)
	mkdirs(t, b, "a", "a/d")
	create(t, b, "a/d/f")
	mustCached(t, b, "a/d")
	if err := b.Rename(ctx, "a/d", "a/e", 0); err != nil {
		t.Fatal(err)
	}
	mustNotCached(t, b, "a/d")
	// The old name is gone: nothing resolves through the moved directory.
	var st syscall.Stat_t
	if err := b.Lstat(ctx, "a/d/f", &st); errno(err) != syscall.ENOENT {
		t.Fatalf("lstat a/d/f after rename: %v, want ENOENT", err)
	}
	if err := b.Mkdir(ctx, "a/d/g", 0o755, nil); errno(err) != syscall.ENOENT {
		t.Fatalf("mkdir a/d/g after rename: %v, want ENOENT", err)
	}
	// A new directory of the old name is the one used, not the moved one.
	mkdirs(t, b, "a/d")
	create(t, b, "a/d/new")
	if !exists(t, b, "a/d/new") || exists(t, b, "a/e/new") {
		t.Fatal("a/d/new landed in the renamed directory")
	}
	if err := b.Lstat(ctx, "a/e/f", &st); err != nil {
		t.Fatalf("lstat a/e/f: %v", err)
	}
	// Cached children on both sides of an exchange, which swaps the names.
	mkdirs(t, b, "a/e/x")
	create(t, b, "a/e/x/in-e")
	mkdirs(t, b, "a/d/x")
	create(t, b, "a/d/x/in-d")
	mustCached(t, b, "a/e/x")
	mustCached(t, b, "a/d/x")
	if err := b.Rename(ctx, "a/d", "a/e", 2 /* RENAME_EXCHANGE */); err != nil {
		t.Fatal(err)
	}
	mustNotCached(t, b, "a/d", "a/d/x", "a/e", "a/e/x")
	create(t, b, "a/e/x/after")
	if !exists(t, b, "a/e/x/in-d") || !exists(t, b, "a/e/x/after") || exists(t, b, "a/d/x/after") {
		t.Fatal("after an exchange, a/e/x/after did not land beside in-d")
	}
}

// A rename onto an empty directory replaces it: its cached descriptor must
// go too, or entries would be created in the removed directory.
func TestDirCacheRenameOverAnEmptyDirectory(t *testing.T) {
	ctx := context.Background()
	b := newBackendAt(t, 0)
	mkdirs(t, b, "src", "dst", "dst/sub")
	create(t, b, "src/f")
	var st syscall.Stat_t
	if err := b.Lstat(ctx, "dst/sub/nothing", &st); errno(err) != syscall.ENOENT {
		t.Fatal(err)
	}
	mustCached(t, b, "dst/sub")
	if err := b.Rmdir(ctx, "dst/sub"); err != nil {
		t.Fatal(err)
	}
	mustNotCached(t, b, "dst/sub")
	if err := b.Lstat(ctx, "dst/nothing", &st); errno(err) != syscall.ENOENT {
		t.Fatal(err)
	}
	mustCached(t, b, "dst")
	if err := b.Rename(ctx, "src", "dst", 0); err != nil {
		t.Fatal(err)
	}
	mustNotCached(t, b, "dst")
	create(t, b, "dst/g")
	if !exists(t, b, "dst/f") || !exists(t, b, "dst/g") {
		t.Fatal("dst/g did not land beside dst/f, in the renamed directory")
	}
}

func TestDirCacheRmdirAndRecreate(t *testing.T) {
	ctx := context.Background()
	b := newBackendAt(t, 0)
	mkdirs(t, b, "p", "p/d")
	create(t, b, "p/d/f")
	mustCached(t, b, "p/d")
	if err := b.Unlink(ctx, "p/d/f"); err != nil {
		t.Fatal(err)
	}
	if err := b.Rmdir(ctx, "p/d"); err != nil {
		t.Fatal(err)
	}
	mustNotCached(t, b, "p/d")
	// Before recreating it: nothing is made in the removed directory.
	if err := b.Symlink(ctx, "x", "p/d/l", nil); errno(err) != syscall.ENOENT {
		t.Fatalf("symlink in a removed directory: %v, want ENOENT", err)
	}
	mkdirs(t, b, "p/d")
	create(t, b, "p/d/g")
	if err := b.Symlink(ctx, "x", "p/d/l", nil); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(filepath.Join(b.Root(), "p/d"))
	if err != nil || len(ents) != 2 {
		t.Fatalf("recreated p/d holds %v, %v; want g and l", ents, err)
	}
	ds, err := b.ReadDir(ctx, "p/d")
	if err != nil || len(ds) != 2 {
		t.Fatalf("backend lists recreated p/d as %v, %v", ds, err)
	}
}

// Renaming an ancestor several levels up drops every cached descriptor
// below it, and only those.
func TestDirCacheRenameOfAnAncestor(t *testing.T) {
	ctx := context.Background()
	b := newBackendAt(t, 0)
	mkdirs(t, b, "top", "top/a", "top/a/b", "top/a/b/c", "top/a/b/c/d", "top/ab", "other")
	for _, d := range []string{"top/a", "top/a/b", "top/a/b/c", "top/a/b/c/d", "top/ab", "other"} {
		create(t, b, d+"/f")
		mustCached(t, b, d)
	}
	if err := b.Rename(ctx, "top/a", "other/moved", 0); err != nil {
		t.Fatal(err)
	}
	mustNotCached(t, b, "top/a", "top/a/b", "top/a/b/c", "top/a/b/c/d")
	// A sibling whose name has the renamed one as a prefix stays.
	mustCached(t, b, "top/ab")
	mustCached(t, b, "other")
	// Recreate the old path and use it at every depth.
	mkdirs(t, b, "top/a", "top/a/b", "top/a/b/c", "top/a/b/c/d")
	create(t, b, "top/a/b/c/d/g")
	if err := b.Chmod(ctx, "top/a/b/c/d/g", 0o600); err != nil {
		t.Fatal(err)
	}
	if !exists(t, b, "top/a/b/c/d/g") || exists(t, b, "other/moved/b/c/d/g") {
		t.Fatal("a file created under the old path landed in the moved tree")
	}
	fi, err := os.Stat(filepath.Join(b.Root(), "other/moved/b/c/d/f"))
	if err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("moved file: %v, %v", fi, err)
	}
}

// A miss that opens a directory while a rename of it runs must not leave
// the descriptor it got in the cache: it may name the moved directory.
func TestDirCacheMissRacingWithARenameIsNotCached(t *testing.T) {
	b := newBackendAt(t, 0)
	mkdirs(t, b, "d")
	open := b.dirs.open
	renamed := false
	b.dirs.open = func(p string) (int, error) {
		fd, err := open(p)
		if !renamed {
			// Between the open and the insert: the rename and its
			// invalidation happen here.
			renamed = true
			if err := b.Rename(context.Background(), "d", "e", 0); err != nil {
				t.Error(err)
			}
		}
		return fd, err
	}
	var st syscall.Stat_t
	if err := b.Lstat(context.Background(), "d/f", &st); errno(err) != syscall.ENOENT {
		t.Fatalf("lstat d/f: %v, want ENOENT", err) // raced: looked in the directory now named e
	}
	if !renamed {
		t.Fatal("the lookup did not open d: the test would not test the race")
	}
	mustNotCached(t, b, "d")
	b.dirs.open = open
	mkdirs(t, b, "d")
	create(t, b, "d/f")
	if !exists(t, b, "d/f") || exists(t, b, "e/f") {
		t.Fatal("d/f landed in the renamed directory")
	}
}

// The bound holds; an evicted descriptor still held by an operation stays
// open until it is released, and is closed then.
func TestDirCacheEvictionKeepsHeldDescriptors(t *testing.T) {
	b := newBackendAt(t, 0)
	b.dirs.max = 4
	for i := range 10 {
		mkdirs(t, b, "d"+strconv.Itoa(i))
	}
	held, err := b.dirs.get("d0")
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < 10; i++ {
		e, err := b.dirs.get("d" + strconv.Itoa(i))
		if err != nil {
			t.Fatal(err)
		}
		b.dirs.put(e)
	}
	if n := b.dirs.len(); n != 4 {
		t.Fatalf("%d entries cached, bound 4", n)
	}
	mustNotCached(t, b, "d0")
	// Still open, and still d0.
	var st, want syscall.Stat_t
	if err := syscall.Fstat(held.fd, &st); err != nil {
		t.Fatalf("evicted descriptor in use: %v", err)
	}
	if err := syscall.Stat(filepath.Join(b.Root(), "d0"), &want); err != nil || st.Ino != want.Ino {
		t.Fatalf("evicted descriptor names inode %d, d0 is %d (%v)", st.Ino, want.Ino, err)
	}
	fd := held.fd
	b.dirs.put(held)
	if err := syscall.Fstat(fd, &st); err != syscall.EBADF {
		// The number may have been reused already only if something
		// opened a file since: nothing here does.
		t.Fatalf("released evicted descriptor: fstat %v, want EBADF", err)
	}
}

// Many goroutines creating, renaming and removing directories and files in
// them: under -race, and every file must end up where its directory's
// name at the time said.
func TestDirCacheConcurrency(t *testing.T) {
	ctx := context.Background()
	b := newBackendAt(t, 0)
	b.dirs.max = 8 // evictions as well as invalidations
	const workers, rounds = 8, 60
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			base := fmt.Sprintf("w%d", w)
			if err := b.Mkdir(ctx, base, 0o755, nil); err != nil {
				t.Error(err)
				return
			}
			for r := range rounds {
				d := fmt.Sprintf("%s/d%d", base, r%3)
				if err := b.Mkdir(ctx, d, 0o755, nil); err != nil {
					t.Errorf("mkdir %s: %v", d, err)
					return
				}
				sub := d + "/s"
				if err := b.Mkdir(ctx, sub, 0o755, nil); err != nil {
					t.Errorf("mkdir %s: %v", sub, err)
					return
				}
				f := fmt.Sprintf("%s/f%d", sub, r)
				f2, err := b.Open(ctx, f, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644, nil)
				if err != nil {
					t.Errorf("create %s: %v", f, err)
					return
				}
				f2.Close()
				var st syscall.Stat_t
				if err := b.Lstat(ctx, f, &st); err != nil {
					t.Errorf("lstat %s: %v", f, err)
					return
				}
				moved := fmt.Sprintf("%s/m%d", base, r)
				if err := b.Rename(ctx, d, moved, 0); err != nil {
					t.Errorf("rename %s: %v", d, err)
					return
				}
				// The old name is free and empty of the moved tree.
				if err := b.Lstat(ctx, f, &st); errno(err) != syscall.ENOENT {
					t.Errorf("lstat %s after renaming %s: %v, want ENOENT", f, d, err)
					return
				}
				mf := fmt.Sprintf("%s/s/f%d", moved, r)
				if err := b.Unlink(ctx, mf); err != nil {
					t.Errorf("unlink %s: %v", mf, err)
					return
				}
				if err := b.Rmdir(ctx, moved+"/s"); err != nil {
					t.Errorf("rmdir %s/s: %v", moved, err)
					return
				}
				if err := b.Rmdir(ctx, moved); err != nil {
					t.Errorf("rmdir %s: %v", moved, err)
					return
				}
			}
		})
	}
	wg.Wait()
	for w := range workers {
		ents, err := os.ReadDir(filepath.Join(b.Root(), fmt.Sprintf("w%d", w)))
		if err != nil || len(ents) != 0 {
			t.Errorf("w%d left %v, %v", w, ents, err)
		}
	}
	// Every descriptor is released.
	b.dirs.mu.Lock()
	for p, e := range b.dirs.entries {
		if e.refs != 0 {
			t.Errorf("%s still held %d times", p, e.refs)
		}
	}
	b.dirs.mu.Unlock()
}

// The cost of an operation on a file below the root with and without the
// cache: an lstat, as the kernel's LOOKUP of each new name in cp -a.
func BenchmarkLstatBelowADirectory(b *testing.B) {
	for _, bc := range []struct {
		name string
		max  int
	}{{"cached", defaultDirCacheSize}, {"uncached", 0}} {
		b.Run(bc.name, func(b *testing.B) {
			ctx := context.Background()
			be, err := New(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			defer be.Close()
			be.dirs.max = bc.max
			for _, d := range []string{"src", "src/pkg", "src/pkg/sub"} {
				if err := be.Mkdir(ctx, d, 0o755, nil); err != nil {
					b.Fatal(err)
				}
			}
			f, err := be.Open(ctx, "src/pkg/sub/f", os.O_RDWR|os.O_CREATE, 0o644, nil)
			if err != nil {
				b.Fatal(err)
			}
			f.Close()
			var st syscall.Stat_t
			for b.Loop() {
				if err := be.Lstat(ctx, "src/pkg/sub/f", &st); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
