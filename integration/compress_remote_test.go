package integration

// Compression on the object backends: the object-per-file S3 volume and the
// shared volume. A compressed file keeps the block layout's stored size,
// its tail a sparse tail that the object (or the chunk list) leaves out
// (docs/FORMAT.md sections 4a, 1 and 12).

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// remoteCompressTree writes a tree of compressible text files, one of
// random bytes and one past the 4 MiB that is stored compressed, and
// returns the plaintext sizes by relative path.
func remoteCompressTree(t *testing.T, src string) map[string]int64 {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(src, "text", "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	sizes := map[string]int64{}
	put := func(rel string, data []byte) {
		if err := os.WriteFile(filepath.Join(src, rel), data, 0o644); err != nil {
			t.Fatal(err)
		}
		sizes[rel] = int64(len(data))
	}
	rng := rand.New(rand.NewPCG(mountSeed(t), 17))
	for i := range 60 {
		dir := "text"
		if i%3 == 0 {
			dir = "text/sub"
		}
		put(fmt.Sprintf("%s/f%02d.txt", dir, i), mountTextFile(uint64(i), 300+rng.IntN(200000)))
	}
	random := make([]byte, 700<<10)
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	put("random", random)
	put("big.txt", mountTextFile(77, 5<<20))
	if err := os.Symlink("text/f01.txt", filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}
	return sizes
}

// remoteCompressLimit is the block layout size of the files of
// remoteCompressTree, and what they may take stored: the block layout of
// the random file (stored as is) and of the one past 4 MiB (never
// compressed), 60% of the text files'. Chunk and object headers are in
// the slack.
func remoteCompressLimit(sizes map[string]int64) (layout, limit int64) {
	for rel, n := range sizes {
		layout += mountCipherSize(n)
		if strings.HasPrefix(rel, "text/") {
			limit += mountCipherSize(n) * 6 / 10
		} else {
			limit += mountCipherSize(n) * 1005 / 1000
		}
	}
	return layout, limit
}

// s3ObjectSizes lists the objects under prefix/ with their sizes.
func s3ObjectSizes(t *testing.T, g *s3Gateway, prefix string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	p := s3.NewListObjectsV2Paginator(g.client, &s3.ListObjectsV2Input{Bucket: aws.String(s3Bucket), Prefix: aws.String(prefix + "/")})
	for p.HasMorePages() {
		page, err := p.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range page.Contents {
			out[aws.ToString(o.Key)] = aws.ToInt64(o.Size)
		}
	}
	return out
}

// TestS3Compressed: cp -a of a tree into a compressing S3 volume (bucket
// keys, encrypted names) reads back after a remount, through `kmsfs cat`
// and after a rewrap; the objects of compressible files hold their packed
// units only, their size in the object metadata; changed in place, cut, or
// with the recorded size changed, a file reads as EIO.
func TestS3Compressed(t *testing.T) {
	const prefix = "zvol"
	g := s3StartGateway(t)
	v := s3NewVolume(t, g, prefix, "--compress", "zstd", "--mode", "bucket-key", "--encrypt-names")
	src := filepath.Join(t.TempDir(), "src")
	sizes := remoteCompressTree(t, src)
	v.mount(g.flags()...)
	mountExec(t, "cp", "-a", src+"/.", v.path(""))
	diff := func(stage string) {
		t.Helper()
		if out, err := mountExecOut("diff", "-r", "--no-dereference", src, v.mnt); err != nil {
			t.Fatalf("%s: diff -r: %v\n%s", stage, err, mountTail(out, 20))
		}
	}
	diff("after copy")
	v.remount(g.flags()...)
	diff("after remount")
	mountCompareSnapshots(t, "after remount", s3Snapshot(t, src), s3Snapshot(t, v.mnt))

	// The bucket: every file object is at most its block layout; together
	// the text files take well under it; objects shorter than their file
	// record its size, and it is the block layout's.
	plainLayout, limit := remoteCompressLimit(sizes)
	var stored int64
	sparse := 0
	for key, n := range s3ObjectSizes(t, g, prefix) {
		if strings.Contains(key, "/.kmsfs/") || strings.HasSuffix(key, "/") {
			continue
		}
		stored += n
		h, err := g.client.HeadObject(context.Background(), &s3.HeadObjectInput{Bucket: aws.String(s3Bucket), Key: aws.String(key)})
		if err != nil {
			t.Fatal(err)
		}
		if v, ok := h.Metadata["kmsfs-size"]; ok {
			size, err := strconv.ParseInt(v, 10, 64)
			if err != nil || size <= n {
				t.Errorf("object %s: %d bytes, kmsfs-size %q", key, n, v)
			}
			sparse++
		}
	}
	t.Logf("block layout %d bytes, stored %d (%.2f), %d objects with a sparse tail", plainLayout, stored, float64(stored)/float64(plainLayout), sparse)
	if stored > limit {
		t.Errorf("the bucket holds %d bytes of file objects, more than %d: the incompressible files' block layout and 60%% of the text files'", stored, limit)
	}
	if sparse < len(sizes)/2 {
		t.Errorf("%d objects with a sparse tail, want most of the %d files", sparse, len(sizes))
	}

	// kmsfs cat decrypts a compressed file from the bucket.
	want, err := os.ReadFile(filepath.Join(src, "text/f04.txt"))
	if err != nil {
		t.Fatal(err)
	}
	v.unmount()
	out, err := v.command(append(append([]string{"cat"}, g.flags()...), v.vault, "text/f04.txt")...).Output()
	if err != nil || !bytes.Equal(out, want) {
		t.Fatalf("kmsfs cat: %d bytes (want %d), %v", len(out), len(want), err)
	}

	// Rewrap to another key, the old key disabled: still the same tree.
	oldKey := s3VolumeKey(t, g, prefix)
	newKey := v.createKey()
	if out := v.run(append(append([]string{"rewrap", "--to-key", newKey}, g.flags()...), v.vault)...); !strings.Contains(out, " 0 failed") {
		t.Fatalf("rewrap:\n%s", out)
	}
	v.run("kms", "disable", oldKey)
	v.mount(g.flags()...)
	diff("after rewrap")

	// Changed in place: appended to and overwritten in the middle.
	p := v.path("text/f07.txt")
	changed, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	changed = append(changed, []byte("appended line\n")...)
	copy(changed[len(changed)/2:], "OVERWRITTEN")
	if err := os.WriteFile(p, changed, 0o644); err != nil {
		t.Fatal(err)
	}
	v.remount(g.flags()...)
	if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, changed) {
		t.Fatalf("changed file after remount: %d bytes, %v", len(got), err)
	}
}

// TestS3CompressedTamper: an object cut short, or whose recorded size is
// changed (awscli, as anyone with the bucket could), reads as EIO and the
// log names the file.
func TestS3CompressedTamper(t *testing.T) {
	const prefix = "ztamper"
	g := s3StartGateway(t)
	v := s3NewVolume(t, g, prefix, "--compress", "zstd")
	v.mount(g.flags()...)
	content := mountTextFile(5, 300000)
	cases := []string{"cut", "size-up", "size-down", "size-gone"}
	for _, name := range cases {
		if err := os.WriteFile(v.path(name), content, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	v.unmount()
	dir := t.TempDir()
	for _, name := range cases {
		key := prefix + "/" + name
		h, err := g.client.HeadObject(context.Background(), &s3.HeadObjectInput{Bucket: aws.String(s3Bucket), Key: aws.String(key)})
		if err != nil {
			t.Fatal(err)
		}
		size, err := strconv.ParseInt(h.Metadata["kmsfs-size"], 10, 64)
		if err != nil || size != mountCipherSize(int64(len(content))) {
			t.Fatalf("%s: kmsfs-size %q, want %d", name, h.Metadata["kmsfs-size"], mountCipherSize(int64(len(content))))
		}
		body := g.get(t, key)
		meta := map[string]string{}
		for k, v := range h.Metadata {
			meta[k] = v
		}
		switch name {
		case "cut":
			body = body[:len(body)-100]
		case "size-up":
			meta["kmsfs-size"] = strconv.FormatInt(size+mountCipherBlockSize, 10)
		case "size-down":
			meta["kmsfs-size"] = strconv.FormatInt(size-mountCipherBlockSize, 10)
		case "size-gone":
			delete(meta, "kmsfs-size")
		}
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, body, 0o600); err != nil {
			t.Fatal(err)
		}
		var pairs []string
		for k, v := range meta {
			pairs = append(pairs, k+"="+v)
		}
		g.aws(t, "s3api", "put-object", "--bucket", s3Bucket, "--key", key, "--body", f, "--metadata", strings.Join(pairs, ","))
	}
	v.mount(g.flags()...)
	for _, name := range cases {
		if _, err := os.ReadFile(v.path(name)); mountErrno(err) != syscall.EIO {
			t.Errorf("%s: read gave %v, want EIO", name, err)
		}
	}
	log := v.log()
	for _, name := range cases {
		if !strings.Contains(log, "/"+name) {
			t.Errorf("the log does not name /%s:\n%s", name, mountTail(log, 20))
		}
	}
}

// TestSharedCompressed: two mounts of a compressing shared volume. A tree
// copied on one reads whole on the other at once (the write-out happens at
// close); chunk objects hold the packed units only; a file changed on the
// second reads back on the first; `kmsfs cat` decrypts; with the database
// gone, `kmsfs salvage` rebuilds compressed files from the bucket alone.
func TestSharedCompressed(t *testing.T) {
	sv := sharedNew(t, "zvol", "--compress", "zstd")
	a := sv.mount(t)
	b := sv.mount(t)
	src := filepath.Join(t.TempDir(), "src")
	sizes := remoteCompressTree(t, src)
	mountExec(t, "cp", "-a", src+"/.", a.path(""))
	if out, err := mountExecOut("diff", "-r", "--no-dereference", src, b.mnt); err != nil {
		t.Fatalf("on the second mount: diff -r: %v\n%s", err, mountTail(out, 20))
	}
	plainLayout, limit := remoteCompressLimit(sizes)
	var stored int64
	for key, n := range s3ObjectSizes(t, sv.g, sv.prefix) {
		if strings.Contains(key, "/chunks/") {
			stored += n
		}
	}
	t.Logf("block layout %d bytes, chunk objects %d (%.2f)", plainLayout, stored, float64(stored)/float64(plainLayout))
	if stored > limit {
		t.Errorf("chunk objects hold %d bytes, more than %d: the incompressible files' block layout and 60%% of the text files'", stored, limit)
	}

	// Changed on b, read on a.
	changed, err := os.ReadFile(b.path("text/f05.txt"))
	if err != nil {
		t.Fatal(err)
	}
	changed = append(changed[:len(changed)/3], []byte("cut here and appended\n")...)
	if err := os.WriteFile(b.path("text/f05.txt"), changed, 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(a.path("text/f05.txt")); err != nil || !bytes.Equal(got, changed) {
		t.Fatalf("changed on the second mount, read on the first: %d bytes (want %d), %v", len(got), len(changed), err)
	}
	want := map[string][]byte{}
	inode := map[string]uint64{}
	for _, rel := range []string{"text/f05.txt", "text/sub/f03.txt", "random", "big.txt"} {
		data, err := os.ReadFile(a.path(rel))
		if err != nil {
			t.Fatal(err)
		}
		want[rel] = data
		st, err := os.Stat(a.path(rel))
		if err != nil {
			t.Fatal(err)
		}
		inode[rel] = st.Sys().(*syscall.Stat_t).Ino
	}
	out, err := a.command(append(append([]string{"cat"}, sv.g.flags()...), sv.vault, "text/sub/f03.txt")...).Output()
	if err != nil || !bytes.Equal(out, want["text/sub/f03.txt"]) {
		t.Fatalf("kmsfs cat: %d bytes, %v", len(out), err)
	}

	b.unmount()
	a.unmount()
	sv.pg.Psql("postgres", "DROP DATABASE "+sv.db)
	dir := filepath.Join(t.TempDir(), "salvaged")
	if out := a.run(append(append([]string{"salvage"}, sv.g.flags()...), sv.vault, dir)...); !strings.Contains(out, "0 failed") {
		t.Fatalf("salvage output:\n%s", out)
	}
	for rel, data := range want {
		got, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("inode-%d", inode[rel])))
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("salvaged %s (inode %d): %d bytes (want %d), %v", rel, inode[rel], len(got), len(data), err)
		}
	}
}

// remoteCompressFio runs fio --verify (a file held in memory and one that
// outgrows it, data that compresses by half) in dir of mount a, then reads
// every file back through b (a remount, or another mount) byte for byte.
func remoteCompressFio(t *testing.T, dir string, reread func() string) {
	t.Helper()
	mountRunFio(t, mountFioCompressed, dir)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]byte{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		want[e.Name()] = b
	}
	other := reread()
	for name, data := range want {
		got, err := os.ReadFile(filepath.Join(other, name))
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s read back: %d bytes (want %d), %v", name, len(got), len(data), err)
		}
	}
}

func TestS3CompressedFio(t *testing.T) {
	mountRequireTool(t, "fio")
	g := s3StartGateway(t)
	v := s3NewVolume(t, g, "zfio", "--compress", "zstd")
	v.mount(g.flags()...)
	if err := os.Mkdir(v.path("fio"), 0o755); err != nil {
		t.Fatal(err)
	}
	remoteCompressFio(t, v.path("fio"), func() string {
		v.remount(g.flags()...)
		return v.path("fio")
	})
}

func TestSharedCompressedFio(t *testing.T) {
	mountRequireTool(t, "fio")
	sv := sharedNew(t, "zfio", "--compress", "zstd")
	a, b := sv.mount(t), sv.mount(t)
	if err := os.Mkdir(a.path("fio"), 0o755); err != nil {
		t.Fatal(err)
	}
	remoteCompressFio(t, a.path("fio"), func() string { return b.path("fio") })
}
