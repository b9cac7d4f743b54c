package integration

// Shared volumes mounted for real: PostgreSQL 15 (its own cluster per
// test) for the tree, versitygw for the chunks, and each mount its own
// kmsfs process, as on separate machines.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/backend/shared/pgmeta/pgtest"
)

// sharedVolume is one shared volume: the gateway, the database, and the
// mounts made of it so far.
type sharedVolume struct {
	g      *s3Gateway
	pg     *pgtest.Cluster
	db     string
	meta   string
	vault  string
	prefix string
	first  *mountVolume // carries the keystore; mounts[0]
	mounts []*mountVolume
}

// sharedNew starts PostgreSQL and versitygw and runs `kmsfs init --meta`
// with initArgs.
func sharedNew(t *testing.T, prefix string, initArgs ...string) *sharedVolume {
	t.Helper()
	mountRequireFuse(t)
	pg := pgtest.Start(t)
	g := s3StartGateway(t)
	sv := &sharedVolume{g: g, pg: pg, db: "vol", prefix: prefix, vault: "s3://" + s3Bucket + "/" + prefix}
	sv.meta = pg.CreateDB(sv.db)
	root := t.TempDir()
	v := &mountVolume{t: t, vault: sv.vault, mnt: filepath.Join(root, "mnt"), keystore: filepath.Join(root, "keystore"), logPath: filepath.Join(root, "kmsfs.log")}
	if err := os.Mkdir(v.mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.cleanup)
	v.run(append(append(append([]string{"init"}, g.flags()...), initArgs...), "--meta", sv.meta, sv.vault)...)
	sv.first = v
	return sv
}

// mount makes one more mount of the volume, its own kmsfs process; the
// first uses the --meta recorded in the config.
func (sv *sharedVolume) mount(t *testing.T) *mountVolume {
	t.Helper()
	v := sv.first
	if len(sv.mounts) > 0 {
		v = sv.first.second(t)
	}
	v.mount(sv.g.flags()...)
	sv.mounts = append(sv.mounts, v)
	return v
}

// chunkKeys lists the chunk objects in the bucket.
func (sv *sharedVolume) chunkKeys(t *testing.T) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	p := s3.NewListObjectsV2Paginator(sv.g.client, &s3.ListObjectsV2Input{Bucket: aws.String(s3Bucket), Prefix: aws.String(sv.prefix + "/")})
	for p.HasMorePages() {
		page, err := p.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range page.Contents {
			out[aws.ToString(o.Key)] = nil
		}
	}
	return out
}

func TestSharedTwoMountsCopyAndRead(t *testing.T) {
	sv := sharedNew(t, "vol")
	a, b := sv.mount(t), sv.mount(t)
	src := filepath.Join(t.TempDir(), "src")
	info := mountMakeTree(t, src, 11)
	mountExec(t, "cp", "-a", src, a.path("tree"))
	if out, err := mountExecOut("diff", "-r", "--no-dereference", src, b.path("tree")); err != nil {
		t.Fatalf("diff -r of the tree copied on A, read on B: %v\n%s", err, mountTail(out, 20))
	}
	// Attributes as cp -a left them, read through the other mount.
	mountCompareSnapshots(t, "B after cp -a on A", mountSnapshot(t, src), mountSnapshot(t, b.path("tree")))
	// The hard link pair is one inode on B too.
	var s1, s2 syscall.Stat_t
	if err := syscall.Lstat(b.path("tree/"+info.hardLinks[0]), &s1); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Lstat(b.path("tree/"+info.hardLinks[1]), &s2); err != nil {
		t.Fatal(err)
	}
	if s1.Ino != s2.Ino || s1.Nlink != 2 {
		t.Errorf("hard links on B: inodes %d and %d, nlink %d", s1.Ino, s2.Ino, s1.Nlink)
	}
	if tgt, err := os.Readlink(b.path("tree/links/dangling")); err != nil || tgt != "does/not/exist" {
		t.Errorf("symlink on B: %q, %v", tgt, err)
	}

	// A file written and closed on A, then opened on B: byte for byte,
	// across several chunks and after an overwrite in the middle.
	data := mountContent(rand.New(rand.NewPCG(3, 3)), 9<<20+12345)
	if err := os.WriteFile(a.path("big.bin"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(b.path("big.bin")); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("B read %d bytes (%v), want A's %d", len(got), err, len(data))
	}
	f, err := os.OpenFile(a.path("big.bin"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	patch := bytes.Repeat([]byte("patched!"), 1000)
	if _, err := f.WriteAt(patch, 5<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	copy(data[5<<20:], patch)
	if got, err := os.ReadFile(b.path("big.bin")); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("B after A's overwrite: %d bytes, equal %v, %v", len(got), bytes.Equal(got, data), err)
	}

	// Nothing plaintext in the database nor in the bucket.
	dump := sv.pg.Dump(sv.db)
	for _, s := range []string{"target.txt", "does/not/exist", "hard2", "big.bin", "sizes", info.xattrVal, mountMarker} {
		if strings.Contains(dump, s) {
			t.Errorf("pg_dump shows %q", s)
		}
	}
	if !strings.Contains(dump, "kmsfs_dentries") {
		t.Errorf("pg_dump has no directory entries table:\n%s", mountTail(dump, 20))
	}
	listing := sv.g.aws(t, "s3", "ls", "--recursive", "s3://"+s3Bucket+"/"+sv.prefix+"/")
	chunks := 0
	for _, line := range strings.Split(strings.TrimSpace(listing), "\n") {
		fields := strings.Fields(line)
		key := fields[len(fields)-1]
		if strings.Contains(key, "/chunks/") {
			chunks++
		} else if !strings.HasSuffix(key, "/.kmsfs/volume.json") {
			t.Errorf("unexpected object %q", key)
		}
		if body := sv.g.get(t, key); bytes.Contains(body, []byte(mountMarker)) {
			t.Errorf("object %s holds plaintext", key)
		}
	}
	if chunks < info.files/2 {
		t.Errorf("%d chunk objects for %d files", chunks, info.files)
	}
}

func TestSharedConcurrentCreates(t *testing.T) {
	sv := sharedNew(t, "vol")
	ms := []*mountVolume{sv.mount(t), sv.mount(t)}
	if err := os.Mkdir(ms[0].path("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	const per = 40
	var wg sync.WaitGroup
	errs := make(chan error, 2*per)
	for i, m := range ms {
		for w := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := w; j < per; j += 2 {
					name := m.path(fmt.Sprintf("d/m%d-%03d", i, j))
					if err := os.WriteFile(name, []byte(name), 0o644); err != nil {
						errs <- err
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	time.Sleep(1100 * time.Millisecond) // the kernel's entry timeout
	for _, m := range ms {
		ents, err := os.ReadDir(m.path("d"))
		if err != nil {
			t.Fatal(err)
		}
		if len(ents) != 2*per {
			t.Errorf("%s lists %d entries, want %d", m.mnt, len(ents), 2*per)
		}
		for _, e := range ents {
			got, err := os.ReadFile(m.path("d/" + e.Name()))
			if err != nil || !strings.HasSuffix(string(got), "/d/"+e.Name()) {
				t.Errorf("%s: %q, %v", e.Name(), got, err)
			}
		}
	}
}

func TestSharedRenameWhileWriting(t *testing.T) {
	sv := sharedNew(t, "vol")
	a, b := sv.mount(t), sv.mount(t)
	if err := os.MkdirAll(a.path("old/sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond)
	// B opens files below the directory and keeps writing them while A
	// renames it.
	var files []*os.File
	for i := range 8 {
		f, err := os.Create(b.path(fmt.Sprintf("old/sub/f%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	content := func(i int) []byte { return bytes.Repeat([]byte{byte('a' + i)}, 100_000+i) }
	for i, f := range files {
		if _, err := f.Write(content(i)[:50_000]); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Rename(a.path("old"), a.path("new")); err != nil {
		t.Fatal(err)
	}
	for i, f := range files {
		if _, err := f.Write(content(i)[50_000:]); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatalf("close on B after the rename on A: %v", err)
		}
	}
	time.Sleep(1100 * time.Millisecond)
	for _, m := range []*mountVolume{a, b} {
		if _, err := os.Stat(m.path("old")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: old still there: %v", m.mnt, err)
		}
		for i := range files {
			got, err := os.ReadFile(m.path(fmt.Sprintf("new/sub/f%d", i)))
			if err != nil || !bytes.Equal(got, content(i)) {
				t.Errorf("%s: new/sub/f%d: %d bytes, %v", m.mnt, i, len(got), err)
			}
		}
	}
}

func TestSharedTwoWritersOneFile(t *testing.T) {
	sv := sharedNew(t, "vol")
	a, b := sv.mount(t), sv.mount(t)
	if err := os.WriteFile(a.path("f"), []byte("original"), 0o644); err != nil {
		t.Fatal(err)
	}
	fa, err := os.OpenFile(a.path("f"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	fb, err := os.OpenFile(b.path("f"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	wa := bytes.Repeat([]byte("A"), 300_000)
	wb := bytes.Repeat([]byte("B"), 200_000)
	if _, err := fa.WriteAt(wa, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := fb.WriteAt(wb, 0); err != nil {
		t.Fatal(err)
	}
	if err := fa.Close(); err != nil {
		t.Fatalf("first close: %v", err)
	}
	if err := fb.Close(); err == nil {
		t.Fatal("the second writer's close succeeded: its data would be lost silently")
	} else {
		t.Logf("second writer: %v", err)
	}
	time.Sleep(1100 * time.Millisecond)
	for _, m := range []*mountVolume{a, b} {
		got, err := os.ReadFile(m.path("f"))
		if err != nil || !bytes.Equal(got, wa) {
			t.Errorf("%s: %d bytes (%v), want A's complete content", m.mnt, len(got), err)
		}
	}
	if !strings.Contains(b.log(), "another writer") {
		t.Errorf("B's log does not name the lost race:\n%s", mountTail(b.log(), 10))
	}
}

func TestSharedGC(t *testing.T) {
	sv := sharedNew(t, "vol")
	a := sv.mount(t)
	keep := mountContent(rand.New(rand.NewPCG(5, 5)), 300_000)
	if err := os.WriteFile(a.path("keep"), keep, 0o644); err != nil {
		t.Fatal(err)
	}
	// Overwritten and removed data leave garbage records; an object no
	// file ever pointed to (a writer killed before its commit) is found
	// only by the sweep.
	if err := os.WriteFile(a.path("gone"), keep, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(a.path("gone"), []byte("second"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(a.path("gone")); err != nil {
		t.Fatal(err)
	}
	orphan := sv.prefix + "/chunks/00000000000000000000000000000000"
	if _, err := sv.g.client.PutObject(context.Background(), &s3.PutObjectInput{Bucket: aws.String(s3Bucket), Key: aws.String(orphan), Body: strings.NewReader("orphan")}); err != nil {
		t.Fatal(err)
	}
	before := sv.chunkKeys(t)
	if n := sv.pg.Psql(sv.db, "SELECT count(*) FROM kmsfs_garbage"); n == "0" {
		t.Fatal("no garbage recorded after an overwrite and an unlink")
	}
	out := a.run(append(append([]string{"gc"}, sv.g.flags()...), "--grace", "0s", "--sweep", sv.vault)...)
	t.Log(strings.TrimSpace(out))
	after := sv.chunkKeys(t)
	if _, ok := after[orphan]; ok {
		t.Error("gc --sweep kept the orphaned chunk")
	}
	if len(after) >= len(before)-1 {
		t.Errorf("gc deleted %d objects; the overwritten and removed chunks are still there", len(before)-len(after))
	}
	refs := sv.pg.Psql(sv.db, "SELECT count(*) FROM kmsfs_chunks")
	if got := fmt.Sprint(len(after) - 1); got != refs { // - volume.json
		t.Errorf("%s objects left besides the config, %s referenced", got, refs)
	}
	if n := sv.pg.Psql(sv.db, "SELECT count(*) FROM kmsfs_garbage"); n != "0" {
		t.Errorf("%s garbage records left", n)
	}
	a.remount(sv.g.flags()...)
	if got, err := os.ReadFile(a.path("keep")); err != nil || !bytes.Equal(got, keep) {
		t.Fatalf("a referenced file after gc: %d bytes, %v", len(got), err)
	}
}

func TestSharedBadMeta(t *testing.T) {
	sv := sharedNew(t, "vol")
	oneLine := func(what, out string) {
		t.Helper()
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 1 || !strings.HasPrefix(lines[0], "kmsfs: ") {
			t.Errorf("%s: want a one-line error, got:\n%s", what, out)
		}
		t.Logf("%s: %s", what, strings.TrimSpace(out))
	}
	v := sv.first
	mnt := v.mnt
	// Unreachable database.
	bad := fmt.Sprintf("postgres://postgres@127.0.0.1:1/vol?sslmode=disable")
	out, err := v.tryRun(append(append([]string{"mount"}, sv.g.flags()...), "--meta", bad, sv.vault, mnt)...)
	if err == nil {
		t.Fatal("mount with an unreachable database succeeded")
	}
	oneLine("unreachable --meta", out)
	// A malformed URL.
	out, err = v.tryRun(append(append([]string{"mount"}, sv.g.flags()...), "--meta", "postgres://[::1", sv.vault, mnt)...)
	if err == nil {
		t.Fatal("mount with a malformed --meta succeeded")
	}
	oneLine("malformed --meta", out)
	// The database of another volume.
	other := &sharedVolume{g: sv.g, pg: sv.pg, db: "other", prefix: "other", vault: "s3://" + s3Bucket + "/other"}
	other.meta = sv.pg.CreateDB("other")
	v.run(append(append([]string{"init"}, sv.g.flags()...), "--meta", other.meta, other.vault)...)
	dumpBefore := sv.pg.Dump("other")
	out, err = v.tryRun(append(append([]string{"mount"}, sv.g.flags()...), "--meta", other.meta, sv.vault, mnt)...)
	if err == nil || !strings.Contains(out, "belongs to volume") {
		t.Fatalf("mount with another volume's database: %v\n%s", err, out)
	}
	oneLine("other volume's database", out)
	// init over a database that holds a volume already.
	out, err = v.tryRun(append(append([]string{"init"}, sv.g.flags()...), "--meta", other.meta, "s3://"+s3Bucket+"/third")...)
	if err == nil {
		t.Fatal("init into a database holding a volume succeeded")
	}
	oneLine("init into a used database", out)
	// A schema from a newer kmsfs.
	sv.pg.Psql("vol", "UPDATE kmsfs_volume SET schema_version = schema_version + 1")
	out, err = v.tryRun(append(append([]string{"mount"}, sv.g.flags()...), sv.vault, mnt)...)
	if err == nil || !strings.Contains(out, "newer") {
		t.Fatalf("mount of a newer schema: %v\n%s", err, out)
	}
	oneLine("newer schema", out)
	sv.pg.Psql("vol", "UPDATE kmsfs_volume SET schema_version = schema_version - 1")
	if after := sv.pg.Dump("other"); after != dumpBefore {
		out, _ := mountExecOut("diff", writeTemp(t, dumpBefore), writeTemp(t, after))
		t.Errorf("a refused mount changed the other volume's database:\n%s", out)
	}
	if mountIsMounted(mnt) {
		t.Fatal("a refused mount is mounted")
	}
	// And the volume mounts with the URL its config records.
	sv.mount(t)
	if err := os.WriteFile(sv.first.path("ok"), []byte("ok"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func writeTemp(t *testing.T, s string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// A directory removed and made again under its name on one mount: the
// other mount, which had used the old one, creates in the new one (its
// names encrypted under the new directory's ID) once the kernel's entry
// timeout has passed.
func TestSharedDirReplacedElsewhere(t *testing.T) {
	sv := sharedNew(t, "vol")
	a, b := sv.mount(t), sv.mount(t)
	if err := os.Mkdir(a.path("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond)
	if err := os.WriteFile(b.path("d/first"), []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(a.path("d"), a.path("old")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(a.path("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond)
	if err := os.WriteFile(b.path("d/second"), []byte("2"), 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond)
	for _, m := range []*mountVolume{a, b} {
		for name, want := range map[string]string{"old/first": "1", "d/second": "2"} {
			if got, err := os.ReadFile(m.path(name)); err != nil || string(got) != want {
				t.Errorf("%s: %s: %q, %v", m.mnt, name, got, err)
			}
		}
		if ents, _ := os.ReadDir(m.path("d")); len(ents) != 1 {
			t.Errorf("%s: d lists %d entries, want 1", m.mnt, len(ents))
		}
	}
}

// One mount killed with SIGKILL in the middle of writing a large file: the
// other mount keeps working, the file is either as it was or whole, and
// gc --sweep collects what the killed process had uploaded.
func TestSharedKillMidWrite(t *testing.T) {
	sv := sharedNew(t, "vol")
	b := sv.mount(t)
	root := t.TempDir()
	a := &mountVolume{t: t, vault: sv.vault, mnt: filepath.Join(root, "mnt"), keystore: sv.first.keystore, logPath: filepath.Join(root, "kmsfs.log")}
	if err := os.Mkdir(a.mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.cleanup)
	proc := a.mountForeground(sv.g.flags()...)
	before := len(sv.chunkKeys(t))
	// A large file, fsynced: its chunks go up at the fsync; the process
	// is killed once the first of them are in the bucket.
	writer := exec.Command("dd", "if=/dev/urandom", "of="+a.path("big"), "bs=1M", "count=96", "conv=fsync")
	if err := writer.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for len(sv.chunkKeys(t)) < before+3 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if err := proc.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	proc.wait(10 * time.Second)
	writer.Wait()
	exec.Command("umount", "-l", a.mnt).Run()

	// The other mount works on, and sees the file untorn.
	time.Sleep(1100 * time.Millisecond)
	if err := os.WriteFile(b.path("after"), []byte("after"), 0o644); err != nil {
		t.Fatalf("the surviving mount: %v", err)
	}
	if got, err := os.ReadFile(b.path("after")); err != nil || string(got) != "after" {
		t.Fatalf("the surviving mount reads %q, %v", got, err)
	}
	st, err := os.Stat(b.path("big"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != 0 && st.Size() != 96<<20 {
		t.Fatalf("the killed writer's file is %d bytes: torn", st.Size())
	}
	if _, err := os.ReadFile(b.path("big")); err != nil {
		t.Fatalf("reading the killed writer's file: %v", err)
	}
	t.Logf("killed writer's file: %d bytes; %d objects in the bucket", st.Size(), len(sv.chunkKeys(t)))
	// Orphans collected, nothing referenced lost.
	b.run(append(append([]string{"gc"}, sv.g.flags()...), "--grace", "0s", "--sweep", sv.vault)...)
	refs := sv.pg.Psql(sv.db, "SELECT count(*) FROM kmsfs_chunks")
	if got := fmt.Sprint(len(sv.chunkKeys(t)) - 1); got != refs {
		t.Errorf("after gc: %s chunk objects, %s referenced", got, refs)
	}
	if got, err := os.ReadFile(b.path("after")); err != nil || string(got) != "after" {
		t.Fatalf("after gc: %q, %v", got, err)
	}
}

// PostgreSQL restarted under a mount: operations fail with EIO while it
// is down and work again once it is back; nothing committed is lost.
func TestSharedDatabaseRestart(t *testing.T) {
	sv := sharedNew(t, "vol")
	a := sv.mount(t)
	if err := os.WriteFile(a.path("before"), []byte("committed"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := sv.pg.Stop(); err != nil {
		t.Fatal(err)
	}
	err := os.WriteFile(a.path("during"), []byte("x"), 0o644)
	if !errors.Is(err, syscall.EIO) {
		t.Errorf("create while the database is down: %v, want EIO", err)
	}
	if err := sv.pg.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond)
	if err := os.WriteFile(a.path("after"), []byte("again"), 0o644); err != nil {
		t.Fatalf("create after the restart: %v", err)
	}
	for name, want := range map[string]string{"before": "committed", "after": "again"} {
		if got, err := os.ReadFile(a.path(name)); err != nil || string(got) != want {
			t.Errorf("%s: %q, %v", name, got, err)
		}
	}
}

// Four mounts copy four trees with rsync at once; each tree reads back
// whole, attributes included, through another mount.
func TestSharedFourMountsRsync(t *testing.T) {
	mountRequireTool(t, "rsync")
	sv := sharedNew(t, "vol")
	var ms []*mountVolume
	for range 4 {
		ms = append(ms, sv.mount(t))
	}
	srcs := make([]string, len(ms))
	for i := range ms {
		srcs[i] = filepath.Join(t.TempDir(), "src")
		mountMakeTree(t, srcs[i], uint64(20+i))
	}
	var wg sync.WaitGroup
	outs := make([]string, len(ms))
	errs := make([]error, len(ms))
	for i, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i], errs[i] = mountExecOut("rsync", "-aHX", srcs[i]+"/", m.path(fmt.Sprintf("t%d", i))+"/")
		}()
	}
	wg.Wait()
	for i := range ms {
		if errs[i] != nil {
			t.Fatalf("rsync on mount %d: %v\n%s", i, errs[i], mountTail(outs[i], 20))
		}
	}
	for i := range ms {
		other := ms[(i+1)%len(ms)]
		dst := other.path(fmt.Sprintf("t%d", i))
		if out, err := mountExecOut("diff", "-r", "--no-dereference", srcs[i], dst); err != nil {
			t.Errorf("tree %d through mount %d: diff -r: %v\n%s", i, (i+1)%len(ms), err, mountTail(out, 20))
		}
		mountCompareSnapshots(t, fmt.Sprintf("tree %d", i), mountSnapshot(t, srcs[i]), mountSnapshot(t, dst))
	}
}

// fio --verify on one mount, then fio --verify_only of the same data
// through another mount (another process: the data comes from the bucket).
func TestSharedFio(t *testing.T) {
	mountRequireTool(t, "fio")
	sv := sharedNew(t, "vol")
	a, b := sv.mount(t), sv.mount(t)
	if err := os.Mkdir(a.path("fio"), 0o755); err != nil {
		t.Fatal(err)
	}
	mountRunFio(t, mountFioRandom, a.path("fio"))
	time.Sleep(1100 * time.Millisecond)
	out := mountRunFio(t, mountFioRandom, b.path("fio"), "--verify_only")
	if !strings.Contains(out, "READ:") {
		t.Errorf("fio --verify_only on the other mount read nothing:\n%s", mountTail(out, 30))
	}
	mountRunFio(t, mountFioTruncate, b.path("fio"))
}

// kmsfs cat decrypts a file of a shared volume without mounting it.
func TestSharedCat(t *testing.T) {
	sv := sharedNew(t, "vol")
	a := sv.mount(t)
	data := mountContent(rand.New(rand.NewPCG(9, 9)), 5<<20+3)
	if err := os.MkdirAll(a.path("x/y"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(a.path("x/y/z"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := a.command(append(append([]string{"cat"}, sv.g.flags()...), sv.vault, "x/y/z")...).Output()
	if err != nil || !bytes.Equal(out, data) {
		t.Fatalf("kmsfs cat: %d bytes, %v", len(out), err)
	}
}

// Rewrap of a shared volume: refused while a read-write mount holds the
// volume lock (it would go on wrapping new files' keys under the old key),
// then every file moves to the new key: with the old key disabled, a cold
// mount reads the tree back whole.
func TestSharedRewrap(t *testing.T) {
	mountRequireTool(t, "rsync")
	sv := sharedNew(t, "vol")
	a := sv.mount(t)
	src := filepath.Join(t.TempDir(), "src")
	mountMakeTree(t, src, 21)
	want := mountSnapshot(t, src)
	mountExec(t, "cp", "-a", src, a.path("tree"))
	oldKey := s3VolumeKey(t, sv.g, sv.prefix)
	newKey := a.createKey()
	rewrap := append(append([]string{"rewrap", "--to-key", newKey}, sv.g.flags()...), sv.vault)
	if out, err := a.tryRun(rewrap...); err == nil || !strings.Contains(out, "a read-write mount holds it") {
		t.Fatalf("rewrap beside a read-write mount: %v\n%s", err, out)
	}
	a.unmount()
	if out := a.run(rewrap...); !strings.Contains(out, " 0 failed") {
		t.Fatalf("rewrap:\n%s", out)
	}
	a.run("kms", "disable", oldKey)
	a.mount(sv.g.flags()...)
	mountCompareSnapshots(t, "after rewrap, old key disabled", want, mountSnapshot(t, a.path("tree")))
	if out, err := mountExecOut("diff", "-r", "--no-dereference", src, a.path("tree")); err != nil {
		t.Errorf("after rewrap: diff -r: %v\n%s", err, mountTail(out, 20))
	}
	// New files after the rewrap are under the new key as well.
	if err := os.WriteFile(a.path("new"), []byte("after"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// The database is lost: `kmsfs salvage` rebuilds every file's current
// content from the bucket and the KMS alone, by inode number; an
// file cut short comes back at its new length, one truncated to 0 and
// written again without its old chunks, and one with holes spanning whole
// chunks (not stored) with those chunks read as zeros, noted.
func TestSharedSalvage(t *testing.T) {
	sv := sharedNew(t, "vol")
	a := sv.mount(t)
	rng := rand.New(rand.NewPCG(5, 5))
	want := map[string][]byte{
		"small": []byte("a small file"),
		"big":   mountContent(rng, 9<<20+5), // three chunks
		"over":  mountContent(rng, 6<<20),
		"again": mountContent(rng, 5<<20),
	}
	for name, data := range want {
		if err := os.WriteFile(a.path(name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Cut short in place (same header): the newest generation ends in a
	// partial chunk, and the old second chunk is left out.
	if err := os.Truncate(a.path("over"), 1<<20+100); err != nil {
		t.Fatal(err)
	}
	want["over"] = want["over"][:1<<20+100]
	// Cut to 0 and written again: a new header, every chunk new.
	want["again"] = []byte("second life")
	if err := os.WriteFile(a.path("again"), want["again"], 0o644); err != nil {
		t.Fatal(err)
	}
	// Grown to 30 MiB by truncate, then written at 13 MiB and at the end:
	// stream chunks 1-2 and 4-6 are holes, never stored.
	sparse := make([]byte, 30<<20)
	copy(sparse, "the start")
	copy(sparse[13<<20:], mountContent(rng, 1<<20))
	copy(sparse[len(sparse)-5:], "end!!")
	want["sparse"] = sparse
	f, err := os.Create(a.path("sparse"))
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []func() error{
		func() error { _, err := f.Write(sparse[:9]); return err },
		func() error { return f.Truncate(int64(len(sparse))) },
		func() error { _, err := f.WriteAt(sparse[13<<20:14<<20], 13<<20); return err },
		func() error { _, err := f.WriteAt(sparse[len(sparse)-5:], int64(len(sparse)-5)); return err },
		f.Close,
	} {
		if err := w(); err != nil {
			t.Fatal(err)
		}
	}
	inode := map[string]uint64{}
	for name := range want {
		st, err := os.Stat(a.path(name))
		if err != nil {
			t.Fatal(err)
		}
		inode[name] = st.Sys().(*syscall.Stat_t).Ino
	}
	a.unmount()
	sv.pg.Psql("postgres", "DROP DATABASE "+sv.db)

	dir := filepath.Join(t.TempDir(), "salvaged")
	out := a.run(append(append([]string{"salvage"}, sv.g.flags()...), sv.vault, dir)...)
	if !strings.Contains(out, "salvage: 5 files") || !strings.Contains(out, "0 failed") {
		t.Fatalf("salvage output:\n%s", out)
	}
	for _, run := range []string{"1-2", "4-6"} {
		if note := fmt.Sprintf("note: inode %d: no chunk %s ", inode["sparse"], run); !strings.Contains(out, note) {
			t.Errorf("salvage output does not say %q:\n%s", note, out)
		}
	}
	for name, data := range want {
		got, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("inode-%d", inode[name])))
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s (inode %d): %d bytes back (want %d), %v", name, inode[name], len(got), len(data), err)
		}
	}
}

// A seeded random sequence of whole operations (each closes what it
// opens), each on a random one of two mounts whose kernel caches expire at
// once, checked against an in-memory model: close-to-open makes every
// operation see all earlier ones, whichever mount made them.
// $KMSFS_TEST_SEED replays a run.
func TestSharedModelTwoMounts(t *testing.T) { sharedModelRun(t, false) }

// The same on a compressing volume, with contents that compress: files up
// to 4 MiB are written out compressed at each close and read back whole.
func TestSharedModelTwoMountsCompressed(t *testing.T) { sharedModelRun(t, true, "--compress", "zstd") }

func sharedModelRun(t *testing.T, compressible bool, initArgs ...string) {
	sv := sharedNew(t, "vol", initArgs...)
	var ms []*mountVolume
	for range 2 {
		v := sv.first
		if len(sv.mounts) > 0 {
			root := t.TempDir()
			v = &mountVolume{t: t, vault: sv.vault, mnt: filepath.Join(root, "mnt"), keystore: sv.first.keystore, logPath: filepath.Join(root, "kmsfs.log")}
			if err := os.Mkdir(v.mnt, 0o755); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(v.cleanup)
		}
		v.mount(append(sv.g.flags(), "--attr-timeout", "0", "--entry-timeout", "0")...)
		sv.mounts = append(sv.mounts, v)
		ms = append(ms, v)
	}
	seed := mountSeed(t)
	rng := rand.New(rand.NewPCG(seed, seed^7))
	model := map[string][]byte{}
	names := []string{"a", "b", "c", "d", "e", "f"}
	pick := func() string { return names[rng.IntN(len(names))] }
	content := func() []byte {
		n := []int{0, 1, 100, 4095, 4096, 5000, 70_000, 4<<20 + 17}[rng.IntN(8)]
		b := make([]byte, n)
		for i := range b {
			if compressible {
				b[i] = "ab \n"[rng.IntN(4)]
			} else {
				b[i] = byte(rng.Uint32())
			}
		}
		return b
	}
	const ops = 300
	for op := range ops {
		m := ms[rng.IntN(len(ms))]
		name := pick()
		p := m.path(name)
		_, exists := model[name]
		switch r := rng.IntN(100); {
		case r < 25:
			data := content()
			if err := os.WriteFile(p, data, 0o644); err != nil {
				t.Fatalf("op %d: write %s on %s: %v", op, name, m.mnt, err)
			}
			model[name] = data
		case r < 40 && exists:
			// Overwrite a range inside or past the end.
			cur := model[name]
			off := rng.IntN(len(cur) + 1)
			patch := content()
			if len(patch) > 100_000 {
				patch = patch[:100_000]
			}
			f, err := os.OpenFile(p, os.O_WRONLY, 0)
			if err != nil {
				t.Fatalf("op %d: open %s: %v", op, name, err)
			}
			if _, err := f.WriteAt(patch, int64(off)); err != nil {
				t.Fatalf("op %d: pwrite %s: %v", op, name, err)
			}
			if err := f.Close(); err != nil {
				t.Fatalf("op %d: close %s: %v", op, name, err)
			}
			if end := off + len(patch); end > len(cur) {
				cur = append(cur, make([]byte, end-len(cur))...)
			}
			copy(cur[off:], patch)
			model[name] = cur
		case r < 50 && exists:
			size := rng.IntN(len(model[name]) + 5000)
			if err := os.Truncate(p, int64(size)); err != nil {
				t.Fatalf("op %d: truncate %s: %v", op, name, err)
			}
			cur := model[name]
			if size <= len(cur) {
				cur = cur[:size]
			} else {
				cur = append(cur, make([]byte, size-len(cur))...)
			}
			model[name] = cur
		case r < 60 && exists:
			to := pick()
			if err := os.Rename(p, m.path(to)); err != nil {
				t.Fatalf("op %d: rename %s %s: %v", op, name, to, err)
			}
			data := model[name]
			delete(model, name)
			model[to] = data
		case r < 65 && exists:
			if err := os.Remove(p); err != nil {
				t.Fatalf("op %d: unlink %s: %v", op, name, err)
			}
			delete(model, name)
		case r < 90:
			got, err := os.ReadFile(p)
			if !exists {
				if !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("op %d: read of removed %s on %s: %v", op, name, m.mnt, err)
				}
				continue
			}
			if err != nil || !bytes.Equal(got, model[name]) {
				t.Fatalf("op %d (seed %d): %s on %s: %d bytes (%v), want %d", op, seed, name, m.mnt, len(got), err, len(model[name]))
			}
		default:
			ents, err := os.ReadDir(m.mnt)
			if err != nil {
				t.Fatal(err)
			}
			if len(ents) != len(model) {
				t.Fatalf("op %d: %s lists %d names, the model %d", op, m.mnt, len(ents), len(model))
			}
			for _, e := range ents {
				info, err := e.Info()
				if err != nil || info.Size() != int64(len(model[e.Name()])) {
					t.Fatalf("op %d: %s/%s: size %v (%v), want %d", op, m.mnt, e.Name(), info, err, len(model[e.Name()]))
				}
			}
		}
	}
	for _, m := range ms {
		for name, want := range model {
			if got, err := os.ReadFile(m.path(name)); err != nil || !bytes.Equal(got, want) {
				t.Errorf("end: %s on %s: %d bytes, %v", name, m.mnt, len(got), err)
			}
		}
	}
}

// sharedProxy forwards TCP connections to an S3 endpoint and can be
// switched off (every connection cut, new ones reset) and on again: S3
// unreachable for a while.
type sharedProxy struct {
	l      net.Listener
	target string
	mu     sync.Mutex
	down   bool
	conns  map[net.Conn]struct{}
}

func sharedStartProxy(t *testing.T, target string) *sharedProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &sharedProxy{l: l, target: target, conns: map[net.Conn]struct{}{}}
	t.Cleanup(func() { l.Close(); p.setDown(true) })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	return p
}

func (p *sharedProxy) endpoint() string { return "http://" + p.l.Addr().String() }

func (p *sharedProxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.down {
		return false
	}
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
	return true
}

func (p *sharedProxy) serve(c net.Conn) {
	u, err := net.Dial("tcp", p.target)
	if err != nil || !p.track(c, u) {
		c.Close()
		if u != nil {
			u.Close()
		}
		return
	}
	go func() { io.Copy(u, c); u.Close() }()
	io.Copy(c, u)
	c.Close()
}

func (p *sharedProxy) setDown(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
	if down {
		for c := range p.conns {
			c.Close()
		}
		clear(p.conns)
	}
}

// S3 unreachable for a few seconds under a mount: the tree (lookups,
// listings, renames) keeps working from the database; a close that has to
// upload waits for S3 and then succeeds; nothing committed is lost.
func TestSharedS3Outage(t *testing.T) {
	sv := sharedNew(t, "vol")
	proxy := sharedStartProxy(t, strings.TrimPrefix(sv.g.endpoint, "http://"))
	flags := []string{"--s3-endpoint", proxy.endpoint(), "--s3-path-style"}
	a := sv.first
	a.mount(flags...)
	data := mountContent(rand.New(rand.NewPCG(4, 4)), 1<<20)
	if err := os.WriteFile(a.path("before"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(a.path("dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	proxy.setDown(true)
	// The tree only: no S3 request (directory IDs, small chunks read
	// before, come from memory).
	if err := os.Rename(a.path("before"), a.path("dir/moved")); err != nil {
		t.Fatalf("rename while S3 is down: %v", err)
	}
	time.Sleep(1100 * time.Millisecond) // past the kernel's and the directory IDs' caches
	if st, err := os.Stat(a.path("dir/moved")); err != nil || st.Size() != int64(len(data)) {
		t.Fatalf("stat while S3 is down: %v, %v", st, err)
	}
	if ents, err := os.ReadDir(a.path("dir")); err != nil || len(ents) != 1 {
		t.Fatalf("listing while S3 is down: %v, %v", ents, err)
	}
	// A write whose close needs S3: it waits, and succeeds once S3 is back.
	done := make(chan error, 1)
	go func() { done <- os.WriteFile(a.path("during"), data, 0o644) }()
	time.Sleep(3 * time.Second)
	select {
	case err := <-done:
		t.Logf("write while S3 was down returned early: %v", err)
		if err == nil {
			t.Fatal("a write needing S3 succeeded while S3 was unreachable")
		}
	default:
	}
	proxy.setDown(false)
	select {
	case err := <-done:
		if err != nil && !errors.Is(err, syscall.EIO) {
			t.Fatalf("write across the outage: %v", err)
		}
		if err != nil {
			t.Logf("write across the outage failed with EIO (reported to the writer): %v", err)
		}
	case <-time.After(120 * time.Second):
		t.Fatal("a write did not finish two minutes after S3 came back")
	}
	for _, name := range []string{"dir/moved"} {
		if got, err := os.ReadFile(a.path(name)); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s after the outage: %d bytes, %v", name, len(got), err)
		}
	}
	if err := os.WriteFile(a.path("after"), data, 0o644); err != nil {
		t.Fatalf("write after the outage: %v", err)
	}
}

// TestSharedDeferredAttrs: the attributes set on a new file before its first
// close reach other mounts with its content; those of a file with committed
// content reach them within the second, the file still open.
func TestSharedDeferredAttrs(t *testing.T) {
	sv := sharedNew(t, "vol")
	a, b := sv.mount(t), sv.mount(t)
	stat := func(p string) syscall.Stat_t {
		t.Helper()
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	when := time.Date(2024, 3, 4, 5, 6, 7, 890, time.UTC)
	ts := []unix.Timespec{unix.NsecToTimespec(when.UnixNano()), unix.NsecToTimespec(when.UnixNano())}

	data := []byte("content that arrives with its attributes\n")
	// created makes name on A and writes data into it, leaving it open.
	created := func(name string) *os.File {
		t.Helper()
		f, err := os.OpenFile(a.path(name), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(data); err != nil {
			f.Close()
			t.Fatal(err)
		}
		return f
	}
	// committedOnB waits for B to see name whole, with mode.
	committedOnB := func(what, name string, mode uint32) {
		t.Helper()
		mountWaitFor(t, 2*time.Second, what, func() bool {
			var st syscall.Stat_t
			return syscall.Lstat(b.path(name), &st) == nil && st.Mode&0o7777 == mode && st.Size == int64(len(data))
		})
	}

	// A new file: data, then what cp -a sends through the descriptor
	// (owner, mode with set-user-ID, times), then a chown that clears it.
	f := created("new")
	fd := int(f.Fd())
	for _, step := range []func() error{
		func() error { return unix.Fchmod(fd, 0o4751) },
		func() error { return unix.Fchown(fd, 1234, 5678) },
		func() error { return unix.UtimesNanoAt(unix.AT_FDCWD, a.path("new"), ts, 0) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	check := func(who string, st syscall.Stat_t) {
		t.Helper()
		if st.Mode&0o7777 != 0o751 || st.Uid != 1234 || st.Gid != 5678 || st.Mtim.Nano() != when.UnixNano() {
			t.Errorf("%s: mode %o uid %d gid %d mtime %v, want 751 (chown clears set-user-ID) 1234 5678 %v",
				who, st.Mode&0o7777, st.Uid, st.Gid, time.Unix(0, st.Mtim.Nano()).UTC(), when)
		}
	}
	check("A, open", stat(a.path("new")))
	var fst syscall.Stat_t
	if err := syscall.Fstat(fd, &fst); err != nil {
		t.Fatal(err)
	}
	check("A, fstat", fst)
	// B sees the file as created, empty, until the close.
	mountWaitFor(t, 2*time.Second, "B to see the new file", func() bool { return syscall.Lstat(b.path("new"), new(syscall.Stat_t)) == nil })
	if st := stat(b.path("new")); st.Size != 0 || st.Mode&0o7777 != 0o600 || st.Uid != 0 {
		t.Errorf("B before the close: size %d mode %o uid %d, want the file as created (0, 600, 0)", st.Size, st.Mode&0o7777, st.Uid)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	mountWaitFor(t, 2*time.Second, "B to see the closed file's size", func() bool { return stat(b.path("new")).Size == int64(len(data)) })
	check("B, after the close", stat(b.path("new")))
	if got, err := os.ReadFile(b.path("new")); err != nil || !bytes.Equal(got, data) {
		t.Errorf("B reads %q, %v", got, err)
	}

	// A file with committed content, open for writing: a chmod reaches B
	// while it stays open.
	g, err := os.OpenFile(a.path("new"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if _, err := g.Write([]byte("more\n")); err != nil {
		t.Fatal(err)
	}
	if err := g.Chmod(0o600); err != nil {
		t.Fatal(err)
	}
	mountWaitFor(t, 2*time.Second, "B to see the chmod of an open file with committed content", func() bool { return stat(b.path("new")).Mode&0o7777 == 0o600 })

	// Renamed while its attributes wait: they follow the file; the old
	// name is gone on A, and a chmod by the new name joins the commit.
	h := created("moving")
	if err := h.Chmod(0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(a.path("moving"), a.path("moved")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(a.path("moved"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(a.path("moving"), 0o600); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("chmod of the old name: %v, want ENOENT", err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	committedOnB("B to see the renamed file's mode", "moved", 0o644)

	// A hard link made before the first close: a chmod by the link reaches
	// the store at once and is not undone by the one waiting for the
	// commit.
	k := created("linked")
	if err := k.Chmod(0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(a.path("linked"), a.path("link2")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(a.path("link2"), 0o604); err != nil {
		t.Fatal(err)
	}
	if m := stat(a.path("linked")).Mode & 0o7777; m != 0o604 {
		t.Errorf("A after a chmod by the hard link: mode %o, want 604", m)
	}
	if err := k.Close(); err != nil {
		t.Fatal(err)
	}
	committedOnB("B to see the hard-linked file with the link's chmod", "linked", 0o604)

	// Replaced on B while A writes it: a chmod by the name on A, once A
	// sees the new file there, changes B's file, not A's.
	w := created("replaced")
	defer w.Close()
	mountWaitFor(t, 2*time.Second, "B to see the file A writes", func() bool { return syscall.Lstat(b.path("replaced"), new(syscall.Stat_t)) == nil })
	old := stat(a.path("replaced")).Ino
	if err := os.Remove(b.path("replaced")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(b.path("replaced"), []byte("B's\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	mountWaitFor(t, 2*time.Second, "A to see B's file", func() bool {
		var st syscall.Stat_t
		return syscall.Lstat(a.path("replaced"), &st) == nil && st.Ino != old
	})
	if err := os.Chmod(a.path("replaced"), 0o604); err != nil {
		t.Fatal(err)
	}
	mountWaitFor(t, 2*time.Second, "B to see A's chmod of B's file", func() bool { return stat(b.path("replaced")).Mode&0o7777 == 0o604 })
}
