package pgmeta

import (
	"context"
	"errors"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/backend/shared/meta"
	"github.com/kmsfs/kmsfs/backend/shared/pgmeta/pgtest"
)

// openStore starts a cluster and opens a store on a new database "vol".
func openStore(t *testing.T) (*Store, *pgtest.Cluster) {
	t.Helper()
	c := pgtest.Start(t)
	s, err := Open(context.Background(), c.CreateDB("vol"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s, c
}

func TestStoreAgainstPostgres(t *testing.T) {
	ctx := context.Background()
	s, c := openStore(t)
	if _, err := s.Volume(ctx); !errors.Is(err, meta.ErrNoVolume) {
		t.Fatalf("empty database: %v, want ErrNoVolume", err)
	}
	if err := s.CreateVolume(ctx, meta.Volume{ID: "00112233445566778899aabbccddeeff", ChunkSize: 1 << 20}, meta.New{Mode: 0o755}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateVolume(ctx, meta.Volume{ID: "ff", ChunkSize: 1}, meta.New{}); err == nil {
		t.Fatal("a second CreateVolume succeeded")
	}
	v, err := s.Volume(ctx)
	if err != nil || v.ID != "00112233445566778899aabbccddeeff" || v.SchemaVersion != meta.SchemaVersion || v.ChunkSize != 1<<20 {
		t.Fatalf("Volume = %+v, %v", v, err)
	}
	mk := func(path []string, mode uint32) meta.Attr {
		t.Helper()
		a, err := s.Create(ctx, path, meta.New{Mode: mode}, true)
		if err != nil {
			t.Fatalf("create %v: %v", path, err)
		}
		return a
	}
	mk([]string{"a"}, syscall.S_IFDIR|0o755)
	mk([]string{"a", "b"}, syscall.S_IFDIR|0o755)
	f := mk([]string{"a", "b", "f"}, syscall.S_IFREG|0o644)
	if _, err := s.Create(ctx, []string{"a", "b", "f"}, meta.New{Mode: syscall.S_IFREG}, true); !errors.Is(err, syscall.EEXIST) {
		t.Fatalf("O_EXCL create of an existing name: %v", err)
	}
	if a, err := s.Create(ctx, []string{"a", "b", "f"}, meta.New{Mode: syscall.S_IFREG}, false); err != nil || a.Ino != f.Ino {
		t.Fatalf("O_CREAT of an existing file: %+v, %v", a, err)
	}
	if _, err := s.Lookup(ctx, []string{"a", "b", "f", "x"}); !errors.Is(err, syscall.ENOTDIR) {
		t.Fatalf("lookup below a file: %v", err)
	}
	if a, _ := s.Lookup(ctx, []string{"a"}); a.Nlink != 3 {
		t.Fatalf("directory with one subdirectory has nlink %d", a.Nlink)
	}
	// A directory rename moves everything below it with one row.
	if err := s.Rename(ctx, []string{"a"}, []string{"z"}, 0); err != nil {
		t.Fatal(err)
	}
	if a, err := s.Lookup(ctx, []string{"z", "b", "f"}); err != nil || a.Ino != f.Ino {
		t.Fatalf("after rename: %+v, %v", a, err)
	}
	if err := s.Rename(ctx, []string{"z"}, []string{"z", "b", "in"}, 0); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("rename into own subtree: %v", err)
	}
	if err := s.Remove(ctx, []string{"z"}, true); !errors.Is(err, syscall.ENOTEMPTY) {
		t.Fatalf("rmdir of a non-empty directory: %v", err)
	}
	// Hard links.
	if a, err := s.Link(ctx, []string{"z", "b", "f"}, []string{"g"}); err != nil || a.Nlink != 2 {
		t.Fatalf("link: %+v, %v", a, err)
	}
	// Exchange.
	mk([]string{"h"}, syscall.S_IFREG|0o600)
	if err := s.Rename(ctx, []string{"g"}, []string{"h"}, unix.RENAME_NOREPLACE); !errors.Is(err, syscall.EEXIST) {
		t.Fatalf("RENAME_NOREPLACE onto a name: %v", err)
	}
	h, _ := s.Lookup(ctx, []string{"h"})
	if err := s.Rename(ctx, []string{"g"}, []string{"h"}, unix.RENAME_EXCHANGE); err != nil {
		t.Fatal(err)
	}
	if a, _ := s.Lookup(ctx, []string{"g"}); a.Ino != h.Ino {
		t.Fatalf("after exchange g is %d, want %d", a.Ino, h.Ino)
	}
	// Chunk lists: a commit from a stale generation is refused.
	g1, err := s.CommitChunks(ctx, meta.Commit{Ino: f.Ino, BaseGen: 0, Size: 10, Set: []meta.Chunk{{Index: 0, Key: "chunks/a", Len: 10}}, Keep: 1, Touch: true})
	if err != nil || g1 != 1 {
		t.Fatalf("first commit: %d, %v", g1, err)
	}
	if _, err := s.CommitChunks(ctx, meta.Commit{Ino: f.Ino, BaseGen: 0, Size: 5, Set: []meta.Chunk{{Index: 0, Key: "chunks/b", Len: 5}}, Keep: 1}); !errors.Is(err, meta.ErrConflict) {
		t.Fatalf("stale commit: %v", err)
	}
	if _, err := s.CommitChunks(ctx, meta.Commit{Ino: f.Ino, BaseGen: 1, Size: 5, Set: []meta.Chunk{{Index: 0, Key: "chunks/c", Len: 5}}, Keep: 1}); err != nil {
		t.Fatal(err)
	}
	a, chunks, err := s.File(ctx, f.Ino)
	if err != nil || a.Size != 5 || len(chunks) != 1 || chunks[0].Key != "chunks/c" {
		t.Fatalf("File = %+v %+v %v", a, chunks, err)
	}
	ref, _ := s.Referenced(ctx, []string{"chunks/a", "chunks/c"})
	if ref["chunks/a"] || !ref["chunks/c"] {
		t.Fatalf("Referenced = %v", ref)
	}
	// Removing the last name makes the chunks garbage.
	if err := s.Remove(ctx, []string{"z", "b", "f"}, false); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(ctx, []string{"h"}, false); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.File(ctx, f.Ino); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("inode after its last unlink: %v", err)
	}
	gb, err := s.Garbage(ctx, a.Mtime.AddDate(1, 0, 0), 100)
	if err != nil || len(gb) != 2 {
		t.Fatalf("garbage = %+v, %v (want chunks/a and chunks/c)", gb, err)
	}
	// Xattrs.
	if err := s.SetXattr(ctx, []string{"g"}, "user.x", []byte{1, 2}, unix.XATTR_CREATE); err != nil {
		t.Fatal(err)
	}
	if err := s.SetXattr(ctx, []string{"g"}, "user.x", []byte{3}, unix.XATTR_CREATE); !errors.Is(err, syscall.EEXIST) {
		t.Fatalf("XATTR_CREATE twice: %v", err)
	}
	if v, err := s.GetXattr(ctx, []string{"g"}, "user.x"); err != nil || string(v) != "\x01\x02" {
		t.Fatalf("getxattr: %v %v", v, err)
	}
	// Attributes.
	mode := uint32(0o4711)
	mt := time.Unix(1_300_000_000, 123456789)
	if a, err := s.SetAttr(ctx, []string{"g"}, meta.SetAttr{Mode: &mode, Mtime: &mt}); err != nil || a.Mode != syscall.S_IFREG|0o4711 {
		t.Fatalf("SetAttr = %+v, %v", a, err)
	}
	if a, err := s.Lookup(ctx, []string{"g"}); err != nil || a.Mode != syscall.S_IFREG|0o4711 || !a.Mtime.Equal(mt) {
		t.Fatalf("after chmod and utimens: mode %o mtime %v, %v", a.Mode, a.Mtime, err)
	}
	// Perm (a mode-equivalent ACL) keeps the set-ID and sticky bits.
	perm := uint32(0o640)
	if a, err := s.SetAttr(ctx, []string{"g"}, meta.SetAttr{Perm: &perm}); err != nil || a.Mode != syscall.S_IFREG|0o4640 {
		t.Fatalf("SetAttr Perm = %o, %v; want %o", a.Mode, err, syscall.S_IFREG|0o4640)
	}
	// A newer schema is reported as such.
	c.Psql("vol", "UPDATE kmsfs_volume SET schema_version = 99")
	if v, err := s.Volume(ctx); err != nil || v.SchemaVersion != 99 {
		t.Fatalf("Volume of a newer schema = %+v, %v", v, err)
	}
}

func TestOpenBadURL(t *testing.T) {
	_, err := Open(context.Background(), "postgres://nobody@127.0.0.1:1/none?sslmode=disable&connect_timeout=2")
	if err == nil {
		t.Fatal("Open of an unreachable database succeeded")
	}
	t.Log(err)
}

// TestCommitChunksReplaceAndShrink: a commit replaces chunks in place, drops
// those past the new end, and records exactly the replaced and dropped keys
// as garbage; one from a stale generation or of a removed file changes
// nothing.
func TestCommitChunksReplaceAndShrink(t *testing.T) {
	ctx := context.Background()
	s, _ := openVolume(t)
	f, err := s.Create(ctx, []string{"f"}, meta.New{Mode: syscall.S_IFREG | 0o644}, true)
	if err != nil {
		t.Fatal(err)
	}
	three := []meta.Chunk{{Index: 0, Key: "chunks/0", Len: 10}, {Index: 1, Key: "chunks/1", Len: 10}, {Index: 2, Key: "chunks/2", Len: 5}}
	if g, err := s.CommitChunks(ctx, meta.Commit{Ino: f.Ino, BaseGen: 0, Size: 25, Set: three, Keep: 3}); err != nil || g != 1 {
		t.Fatalf("first commit: %d, %v", g, err)
	}
	// Rewrite chunk 1 and cut the file to 15 bytes: chunk 2 goes.
	g, err := s.CommitChunks(ctx, meta.Commit{Ino: f.Ino, BaseGen: 1, Size: 15, Set: []meta.Chunk{{Index: 1, Key: "chunks/1b", Len: 5}}, Keep: 2})
	if err != nil || g != 2 {
		t.Fatalf("second commit: %d, %v", g, err)
	}
	a, chunks, err := s.File(ctx, f.Ino)
	if err != nil || a.Size != 15 || a.Gen != 2 || len(chunks) != 2 || chunks[0].Key != "chunks/0" || chunks[1].Key != "chunks/1b" || chunks[1].Len != 5 {
		t.Fatalf("File = %+v %+v %v", a, chunks, err)
	}
	gb, err := s.Garbage(ctx, time.Now().Add(time.Hour), 100)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, x := range gb {
		got[x.Key] = true
	}
	if len(got) != 2 || !got["chunks/1"] || !got["chunks/2"] {
		t.Fatalf("garbage = %v, want chunks/1 and chunks/2", got)
	}
	// A stale writer changes nothing, not even the garbage.
	if _, err := s.CommitChunks(ctx, meta.Commit{Ino: f.Ino, BaseGen: 1, Size: 1, Set: []meta.Chunk{{Index: 0, Key: "chunks/x", Len: 1}}, Keep: 1}); !errors.Is(err, meta.ErrConflict) {
		t.Fatalf("stale commit: %v", err)
	}
	if _, chunks, _ := s.File(ctx, f.Ino); len(chunks) != 2 || chunks[0].Key != "chunks/0" {
		t.Fatalf("after a stale commit: %+v", chunks)
	}
	if gb, _ := s.Garbage(ctx, time.Now().Add(time.Hour), 100); len(gb) != 2 {
		t.Fatalf("a stale commit recorded garbage: %+v", gb)
	}
	if _, err := s.CommitChunks(ctx, meta.Commit{Ino: 999999, BaseGen: 0, Size: 1, Keep: 1}); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("commit of a missing inode: %v", err)
	}
}

// TestCommitChunksDrop: chunks dropped as holes lose their rows, and their
// keys are recorded as garbage, in the same statement as the chunks set;
// an index dropped that has no row is no error; an index both set and
// dropped is refused, and a stale commit drops nothing.
func TestCommitChunksDrop(t *testing.T) {
	ctx := context.Background()
	s, _ := openVolume(t)
	f, err := s.Create(ctx, []string{"f"}, meta.New{Mode: syscall.S_IFREG | 0o644}, true)
	if err != nil {
		t.Fatal(err)
	}
	four := []meta.Chunk{{Index: 0, Key: "chunks/0", Len: 10}, {Index: 1, Key: "chunks/1", Len: 10}, {Index: 2, Key: "chunks/2", Len: 10}, {Index: 3, Key: "chunks/3", Len: 10}}
	if g, err := s.CommitChunks(ctx, meta.Commit{Ino: f.Ino, BaseGen: 0, Size: 40, Set: four, Keep: 4}); err != nil || g != 1 {
		t.Fatalf("first commit: %d, %v", g, err)
	}
	garbage := func() map[string]bool {
		t.Helper()
		gb, err := s.Garbage(ctx, time.Now().Add(time.Hour), 100)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		for _, x := range gb {
			got[x.Key] = true
		}
		return got
	}
	if _, err := s.CommitChunks(ctx, meta.Commit{Ino: f.Ino, BaseGen: 1, Size: 40, Set: []meta.Chunk{{Index: 1, Key: "chunks/1b", Len: 10}}, Drop: []int64{1}, Keep: 4}); err == nil {
		t.Fatal("a chunk both set and dropped was committed")
	}
	if _, err := s.CommitChunks(ctx, meta.Commit{Ino: f.Ino, BaseGen: 0, Size: 40, Drop: []int64{1, 2}, Keep: 4}); !errors.Is(err, meta.ErrConflict) {
		t.Fatalf("stale commit: %v", err)
	}
	if _, chunks, _ := s.File(ctx, f.Ino); len(chunks) != 4 || len(garbage()) != 0 {
		t.Fatalf("after refused commits: %+v, garbage %v", chunks, garbage())
	}
	// Chunks 1 and 2 become holes, chunk 3 is rewritten; 7 never had a
	// row (an index past the rows, below the size).
	g, err := s.CommitChunks(ctx, meta.Commit{Ino: f.Ino, BaseGen: 1, Size: 80, Set: []meta.Chunk{{Index: 3, Key: "chunks/3b", Len: 4}}, Drop: []int64{1, 2, 7}, Keep: 8})
	if err != nil || g != 2 {
		t.Fatalf("commit with holes: %d, %v", g, err)
	}
	a, chunks, err := s.File(ctx, f.Ino)
	if err != nil || a.Size != 80 || a.Gen != 2 || len(chunks) != 2 || chunks[0].Key != "chunks/0" || chunks[1].Key != "chunks/3b" || chunks[1].Index != 3 {
		t.Fatalf("File = %+v %+v %v", a, chunks, err)
	}
	if got := garbage(); len(got) != 3 || !got["chunks/1"] || !got["chunks/2"] || !got["chunks/3"] {
		t.Fatalf("garbage = %v, want chunks/1, chunks/2 and chunks/3", got)
	}
	if refs, err := s.Referenced(ctx, []string{"chunks/1", "chunks/2", "chunks/3b"}); err != nil || len(refs) != 1 || !refs["chunks/3b"] {
		t.Fatalf("referenced = %v, %v", refs, err)
	}
}

// TestCommitChunksAttrs: attribute changes joined to a commit apply as
// SetAttr would (a permission change keeps the set-ID bits, ctime moves),
// an explicit mtime yields to Touch, and a stale commit applies none.
func TestCommitChunksAttrs(t *testing.T) {
	ctx := context.Background()
	s, _ := openVolume(t)
	f, err := s.Create(ctx, []string{"f"}, meta.New{Mode: syscall.S_IFREG | 0o4644}, true)
	if err != nil {
		t.Fatal(err)
	}
	perm, uid, gid := uint32(0o750), uint32(1234), uint32(5678)
	when := time.Date(2024, 3, 4, 5, 6, 7, 8, time.UTC)
	one := []meta.Chunk{{Index: 0, Key: "chunks/0", Len: 3}}
	if _, err := s.CommitChunks(ctx, meta.Commit{Ino: f.Ino, BaseGen: 0, Size: 3, Set: one, Keep: 1,
		Attrs: &meta.SetAttr{Perm: &perm, Uid: &uid, Gid: &gid, Atime: &when, Mtime: &when}}); err != nil {
		t.Fatal(err)
	}
	a, _, err := s.File(ctx, f.Ino)
	if err != nil || a.Mode != syscall.S_IFREG|0o4750 || a.Uid != uid || a.Gid != gid || !a.Mtime.Equal(when) || !a.Atime.Equal(when) || !a.Ctime.After(f.Ctime) || a.Size != 3 {
		t.Fatalf("after a commit with attributes: %+v, %v", a, err)
	}
	// A full mode replaces the set-ID bits; data written after the utimens
	// (Touch) wins over its mtime.
	mode := uint32(0o640)
	if _, err := s.CommitChunks(ctx, meta.Commit{Ino: f.Ino, BaseGen: 1, Size: 3, Keep: 1, Touch: true,
		Attrs: &meta.SetAttr{Mode: &mode, Mtime: &when}}); err != nil {
		t.Fatal(err)
	}
	if b, _, err := s.File(ctx, f.Ino); err != nil || b.Mode != syscall.S_IFREG|0o640 || b.Uid != uid || b.Mtime.Equal(when) {
		t.Fatalf("after a touching commit with a mode: %+v, %v", b, err)
	}
	// A stale commit changes no attribute.
	other := uint32(0o600)
	if _, err := s.CommitChunks(ctx, meta.Commit{Ino: f.Ino, BaseGen: 1, Size: 3, Keep: 1, Attrs: &meta.SetAttr{Mode: &other, Uid: &other}}); !errors.Is(err, meta.ErrConflict) {
		t.Fatalf("stale commit: %v", err)
	}
	if c, _, err := s.File(ctx, f.Ino); err != nil || c.Mode != syscall.S_IFREG|0o640 || c.Uid != uid {
		t.Fatalf("after a stale commit with attributes: %+v, %v", c, err)
	}
}

// TestVolumeLock: mounts share the lock, a rewrap holds it alone, and a
// holder whose connection the server ends learns that it lost it.
func TestVolumeLock(t *testing.T) {
	ctx := context.Background()
	s, c := openStore(t)
	short := func() context.Context {
		ctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		t.Cleanup(cancel)
		return ctx
	}
	m1, err := s.LockVolume(short(), false)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := s.LockVolume(short(), false)
	if err != nil {
		t.Fatalf("a second mount: %v", err)
	}
	if _, err := s.LockVolume(short(), true); !errors.Is(err, meta.ErrLockBusy) {
		t.Fatalf("exclusive beside two mounts: %v, want ErrLockBusy", err)
	}
	m1.Release()
	m2.Release()
	rw, err := s.LockVolume(short(), true)
	if err != nil {
		t.Fatalf("exclusive after the mounts released: %v", err)
	}
	if _, err := s.LockVolume(short(), false); !errors.Is(err, meta.ErrLockBusy) {
		t.Fatalf("a mount beside a rewrap: %v, want ErrLockBusy", err)
	}
	// The server ends the holder's session: the lock is gone, and the
	// holder is told.
	c.Psql("vol", "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND pid <> pg_backend_pid()")
	select {
	case <-rw.Lost():
	case <-time.After(10 * time.Second):
		t.Fatal("the holder was not told that its session ended")
	}
	m3, err := s.LockVolume(short(), false)
	if err != nil {
		t.Fatalf("a mount after the rewrap's session ended: %v", err)
	}
	m3.Release()
	rw.Release()
}

// RaiseSchema raises a version 1 store and never lowers a newer one.
func TestRaiseSchema(t *testing.T) {
	ctx := context.Background()
	s, c := openVolume(t)
	version := func() int {
		t.Helper()
		v, err := s.Volume(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return v.SchemaVersion
	}
	c.Psql("vol", "UPDATE kmsfs_volume SET schema_version = 1")
	if err := s.RaiseSchema(ctx, 2); err != nil || version() != 2 {
		t.Fatalf("raise 1 to 2: %v, now %d", err, version())
	}
	if err := s.RaiseSchema(ctx, 1); err != nil || version() != 2 {
		t.Fatalf("raise 2 to 1: %v, now %d (want it left at 2)", err, version())
	}
}

// openVolume is openStore with a volume of 10-byte chunks created in it.
func openVolume(t *testing.T) (*Store, *pgtest.Cluster) {
	t.Helper()
	s, c := openStore(t)
	if err := s.CreateVolume(context.Background(), meta.Volume{ID: "00112233445566778899aabbccddeeff", ChunkSize: 10}, meta.New{Mode: 0o755}); err != nil {
		t.Fatal(err)
	}
	return s, c
}
