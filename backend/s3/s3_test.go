package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go/middleware"
	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/backend"
	"github.com/kmsfs/kmsfs/backend/posixacl"
)

var bg = context.Background()

func readAll(r io.Reader) ([]byte, error) { return io.ReadAll(r) }

func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(r.Uint32())
	}
	return p
}

func wantErrno(t *testing.T, err error, want syscall.Errno) {
	t.Helper()
	var pe *os.PathError
	if !errors.As(err, &pe) {
		t.Fatalf("got %v (%T), want *os.PathError with %v", err, err, want)
	}
	if !errors.Is(err, want) {
		t.Fatalf("got %v, want %v", err, want)
	}
}

func create(t *testing.T, b *Backend, name string, data []byte) {
	t.Helper()
	f, err := b.Open(bg, name, syscall.O_RDWR|syscall.O_CREAT|syscall.O_TRUNC, 0o644, nil)
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	if len(data) > 0 {
		if _, err := f.WriteAt(data, 0); err != nil {
			t.Fatalf("write %s: %v", name, err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatalf("close %s: %v", name, err)
	}
}

func readFile(t *testing.T, b *Backend, name string) []byte {
	t.Helper()
	f, err := b.Open(bg, name, syscall.O_RDONLY, 0, nil)
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	defer f.Close()
	var st syscall.Stat_t
	if err := f.Stat(&st); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, st.Size)
	n, err := f.ReadAt(buf, 0)
	if err != nil && err != io.EOF {
		t.Fatalf("read %s: %v", name, err)
	}
	if int64(n) != st.Size {
		t.Fatalf("read %s: %d of %d bytes", name, n, st.Size)
	}
	return buf
}

func TestParseURL(t *testing.T) {
	for _, tc := range []struct{ in, bucket, prefix string }{
		{"s3://b", "b", ""},
		{"s3://b/", "b", ""},
		{"s3://b/p", "b", "p"},
		{"s3://b/some/prefix/", "b", "some/prefix"},
	} {
		bk, p, err := ParseURL(tc.in)
		if err != nil || bk != tc.bucket || p != tc.prefix {
			t.Errorf("ParseURL(%q) = %q, %q, %v; want %q, %q", tc.in, bk, p, err, tc.bucket, tc.prefix)
		}
	}
	for _, bad := range []string{"", "http://b/p", "s3://", "s3:///p", "s3://b/a//c", "s3://b/../c", "/local/dir"} {
		if _, _, err := ParseURL(bad); err == nil {
			t.Errorf("ParseURL(%q) accepted", bad)
		}
	}
}

func TestWriteReadRanges(t *testing.T) {
	b := newTestBackend(t, testConfig(t))
	data := randBytes(1, 3<<20+123)
	f, err := b.Open(bg, "f.bin", syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL, 0o640, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Out of order, in pieces.
	for _, r := range [][2]int{{1 << 20, 2 << 20}, {0, 1 << 20}, {2 << 20, len(data)}} {
		if n, err := f.WriteAt(data[r[0]:r[1]], int64(r[0])); err != nil || n != r[1]-r[0] {
			t.Fatalf("WriteAt: %d, %v", n, err)
		}
	}
	var st syscall.Stat_t
	if err := b.Lstat(bg, "f.bin", &st); err != nil || st.Size != int64(len(data)) {
		t.Fatalf("Lstat while open: size %d, %v; want %d", st.Size, err, len(data))
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	// The object holds exactly the bytes written.
	if got := rawGet(t, b, b.prefix+"f.bin"); !bytes.Equal(got, data) {
		t.Fatalf("object content differs (%d bytes, want %d)", len(got), len(data))
	}
	if err := b.Lstat(bg, "f.bin", &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != int64(len(data)) || st.Mode != syscall.S_IFREG|0o640 || st.Nlink != 1 || st.Ino != ino("f.bin") || st.Ino < 2 {
		t.Fatalf("Lstat: %+v", st)
	}
	// Random ranged reads, and reads across and past the end.
	r, err := b.Open(bg, "f.bin", syscall.O_RDONLY, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	rng := rand.New(rand.NewPCG(2, 3))
	for range 50 {
		off := rng.IntN(len(data))
		n := 1 + rng.IntN(200<<10)
		buf := make([]byte, n)
		got, err := r.ReadAt(buf, int64(off))
		want := min(n, len(data)-off)
		if got != want || (err != nil && !(err == io.EOF && want < n)) {
			t.Fatalf("ReadAt(%d, %d) = %d, %v; want %d", n, off, got, err, want)
		}
		if !bytes.Equal(buf[:got], data[off:off+want]) {
			t.Fatalf("ReadAt(%d, %d): content differs", n, off)
		}
	}
	if n, err := r.ReadAt(make([]byte, 10), int64(len(data))); n != 0 || err != io.EOF {
		t.Fatalf("read at EOF: %d, %v", n, err)
	}
	// Sequential reads in 128 KiB steps, as the volume does.
	var out []byte
	buf := make([]byte, 128<<10)
	for off := int64(0); ; {
		n, err := r.ReadAt(buf, off)
		out = append(out, buf[:n]...)
		off += int64(n)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(out, data) {
		t.Fatal("sequential read differs")
	}
}

func TestPartialRewriteAndTruncate(t *testing.T) {
	b := newTestBackend(t, testConfig(t))
	data := randBytes(4, 2<<20)
	create(t, b, "f", data)

	// Writing into the middle of an existing object keeps the rest.
	f, err := b.Open(bg, "f", syscall.O_RDWR, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	patch := bytes.Repeat([]byte{0xAB}, 5000)
	if _, err := f.WriteAt(patch, 1<<20); err != nil {
		t.Fatal(err)
	}
	copy(data[1<<20:], patch)
	// Append past the end.
	tail := []byte("tail")
	if _, err := f.WriteAt(tail, int64(len(data))); err != nil {
		t.Fatal(err)
	}
	data = append(data, tail...)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := rawGet(t, b, b.prefix+"f"); !bytes.Equal(got, data) {
		t.Fatal("after partial rewrite + Sync: object differs")
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	// Truncate down (only the kept prefix needs downloading), then up.
	f, err = b.Open(bg, "f", syscall.O_RDWR, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1000); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(3000); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	want := append(slices.Clone(data[:1000]), make([]byte, 2000)...)
	if got := readFile(t, b, "f"); !bytes.Equal(got, want) {
		t.Fatal("after truncate: content differs")
	}

	// O_TRUNC empties the object on close, keeping its mode.
	if err := b.Chmod(bg, "f", 0o600); err != nil {
		t.Fatal(err)
	}
	f, err = b.Open(bg, "f", syscall.O_WRONLY|syscall.O_TRUNC, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := b.Lstat(bg, "f", &st); err != nil || st.Size != 0 || st.Mode != syscall.S_IFREG|0o600 {
		t.Fatalf("after O_TRUNC: %+v, %v", st, err)
	}
	if got := rawGet(t, b, b.prefix+"f"); len(got) != 0 {
		t.Fatalf("after O_TRUNC the object has %d bytes", len(got))
	}
	// An empty object opens and reads as empty.
	if got := readFile(t, b, "f"); len(got) != 0 {
		t.Fatal("empty file reads data")
	}
}

func TestDirectoriesAndListing(t *testing.T) {
	b := newTestBackend(t, testConfig(t))
	if err := b.Mkdir(bg, "d", 0o750, nil); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, b.Mkdir(bg, "d", 0o750, nil), syscall.EEXIST)
	if err := b.Mkdir(bg, "d/empty", 0o700, nil); err != nil {
		t.Fatal(err)
	}
	create(t, b, "d/file", []byte("x"))
	if err := b.Symlink(bg, "../target with space", "d/link", nil); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, b.Symlink(bg, "other", "d/link", nil), syscall.EEXIST)
	wantErrno(t, b.Mkdir(bg, "d/file", 0o755, nil), syscall.EEXIST)

	var st syscall.Stat_t
	if err := b.Lstat(bg, "d/empty", &st); err != nil || st.Mode != syscall.S_IFDIR|0o700 || st.Nlink != 2 {
		t.Fatalf("empty dir: %+v, %v", st, err)
	}
	if err := b.Lstat(bg, "d/link", &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFLNK || st.Size != int64(len("../target with space")) {
		t.Fatalf("symlink: %+v, %v", st, err)
	}
	if target, err := b.Readlink(bg, "d/link"); err != nil || target != "../target with space" {
		t.Fatalf("Readlink = %q, %v", target, err)
	}
	if _, err := b.Readlink(bg, "d/file"); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("Readlink of a file: %v", err)
	}
	// An open of the symlink still under way (the volume's key read-ahead
	// opens a directory's entries, which a listing calls files; the open
	// fails once it sees the symlink) does not make it a file to readlink.
	opening := &openFile{b: b, name: "d/link", refs: 1}
	b.mu.Lock()
	b.open["d/link"] = opening
	b.mu.Unlock()
	if target, err := b.Readlink(bg, "d/link"); err != nil || target != "../target with space" {
		t.Fatalf("Readlink while an open of the name is under way = %q, %v", target, err)
	}
	b.mu.Lock()
	delete(b.open, "d/link")
	b.mu.Unlock()
	wantErrno(t, b.Lstat(bg, "d/missing", &st), syscall.ENOENT)

	ents, err := b.ReadDir(bg, "d")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name)
		if e.Ino != ino("d/"+e.Name) {
			t.Errorf("%s: ino %d", e.Name, e.Ino)
		}
		if e.Name == "empty" && e.Mode != syscall.S_IFDIR {
			t.Errorf("empty: mode %o", e.Mode)
		}
	}
	if strings.Join(names, ",") != "empty,file,link" {
		t.Fatalf("ReadDir(d) = %v", names)
	}
	// An empty directory survives (its marker), lists as empty, and goes
	// with rmdir; a non-empty one does not.
	if ents, err := b.ReadDir(bg, "d/empty"); err != nil || len(ents) != 0 {
		t.Fatalf("ReadDir(empty) = %v, %v", ents, err)
	}
	wantErrno(t, b.Rmdir(bg, "d"), syscall.ENOTEMPTY)
	if err := b.Rmdir(bg, "d/empty"); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, b.Lstat(bg, "d/empty", &st), syscall.ENOENT)
	if _, err := b.ReadDir(bg, "nope"); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("ReadDir(nope): %v", err)
	}
	if _, err := b.ReadDir(bg, "d/file"); !errors.Is(err, syscall.ENOTDIR) {
		t.Fatalf("ReadDir(file): %v", err)
	}
	if err := b.Unlink(bg, "d/file"); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, b.Unlink(bg, "d/file"), syscall.ENOENT)
	if err := b.Unlink(bg, "d/link"); err != nil {
		t.Fatal(err)
	}
	if err := b.Rmdir(bg, "d"); err != nil {
		t.Fatal(err)
	}
	if keys := rawKeys(t, b); len(keys) != 0 {
		t.Fatalf("objects left: %v", keys)
	}
	wantErrno(t, b.Link(bg, "a", "b"), syscall.ENOTSUP)
	wantErrno(t, b.Mknod(bg, "fifo", syscall.S_IFIFO|0o644, 0, nil), syscall.ENOTSUP)
}

func TestListingPagination(t *testing.T) {
	b := newTestBackend(t, testConfig(t))
	if err := b.Mkdir(bg, "big", 0o755, nil); err != nil {
		t.Fatal(err)
	}
	// More than one ListObjectsV2 page (1000 keys), written straight to S3
	// in parallel to keep the test quick.
	const nfiles, ndirs = 1234, 17
	var wg sync.WaitGroup
	errs := make(chan error, nfiles+ndirs)
	sem := make(chan struct{}, 16)
	for i := range nfiles + ndirs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			var key string
			if i < nfiles {
				key = fmt.Sprintf("%sbig/f%05d", b.prefix, i)
			} else {
				key = fmt.Sprintf("%sbig/sub%02d/inner", b.prefix, i-nfiles)
			}
			_, err := b.client.PutObject(bg, &s3.PutObjectInput{Bucket: aws.String(b.bucket), Key: aws.String(key), Body: strings.NewReader("x")})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	ents, err := b.ReadDir(bg, "big")
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != nfiles+ndirs {
		t.Fatalf("ReadDir: %d entries, want %d", len(ents), nfiles+ndirs)
	}
	dirs := 0
	for _, e := range ents {
		if e.Mode == syscall.S_IFDIR {
			dirs++
		}
	}
	if dirs != ndirs {
		t.Fatalf("%d directories, want %d", dirs, ndirs)
	}
	// A directory known only from its objects (no marker) is a directory.
	var st syscall.Stat_t
	if err := b.Lstat(bg, "big/sub03", &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		t.Fatalf("implicit dir: %+v, %v", st, err)
	}
	// The root lists big, not the metadata folder.
	if err := b.WriteMeta(bg, "volume.json", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	root, err := b.ReadDir(bg, "")
	if err != nil || len(root) != 1 || root[0].Name != "big" {
		t.Fatalf("ReadDir(root) = %v, %v", root, err)
	}
}

func TestMetadataRoundTrip(t *testing.T) {
	cfg := testConfig(t)
	b := newTestBackend(t, cfg)
	create(t, b, "f", []byte("content"))
	if err := b.Mkdir(bg, "d", 0o755, nil); err != nil {
		t.Fatal(err)
	}
	mtime := time.Date(2001, 2, 3, 4, 5, 6, 789, time.UTC)
	atime := time.Date(2002, 1, 1, 0, 0, 0, 1, time.UTC)
	for _, name := range []string{"f", "d", ""} {
		if err := b.Chmod(bg, name, 0o4710); err != nil {
			t.Fatalf("chmod %q: %v", name, err)
		}
		if err := b.Lchown(bg, name, 1234, -1); err != nil {
			t.Fatalf("chown %q: %v", name, err)
		}
		if err := b.Lchown(bg, name, -1, 5678); err != nil {
			t.Fatalf("chown %q: %v", name, err)
		}
		if err := b.Utimens(bg, name, &atime, &mtime); err != nil {
			t.Fatalf("utimens %q: %v", name, err)
		}
		if err := b.Setxattr(bg, name, "user.test", []byte("v\x00\xff"), 0); err != nil {
			t.Fatalf("setxattr %q: %v", name, err)
		}
	}
	wantErrno(t, b.Setxattr(bg, "f", "user.test", []byte("x"), unix.XATTR_CREATE), syscall.EEXIST)
	wantErrno(t, b.Setxattr(bg, "f", "user.nope", []byte("x"), unix.XATTR_REPLACE), syscall.ENODATA)
	wantErrno(t, b.Setxattr(bg, "f", "user.huge", bytes.Repeat([]byte("x"), 4000), 0), syscall.ENOSPC)

	// A second backend (a remount) sees everything.
	b2 := newTestBackend(t, cfg)
	for _, name := range []string{"f", "d", ""} {
		var st syscall.Stat_t
		if err := b2.Lstat(bg, name, &st); err != nil {
			t.Fatal(err)
		}
		if st.Mode&07777 != 0o4710 || st.Uid != 1234 || st.Gid != 5678 ||
			st.Mtim != syscall.NsecToTimespec(mtime.UnixNano()) || st.Atim != syscall.NsecToTimespec(atime.UnixNano()) {
			t.Fatalf("%q after remount: %+v", name, st)
		}
		if v, err := b2.Getxattr(bg, name, "user.test"); err != nil || string(v) != "v\x00\xff" {
			t.Fatalf("getxattr %q = %q, %v", name, v, err)
		}
		if l, err := b2.Listxattr(bg, name); err != nil || len(l) != 1 || l[0] != "user.test" {
			t.Fatalf("listxattr %q = %v, %v", name, l, err)
		}
	}
	if err := b2.Removexattr(bg, "f", "user.test"); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, b2.Removexattr(bg, "f", "user.test"), syscall.ENODATA)
	if _, err := b2.Getxattr(bg, "f", "user.test"); !errors.Is(err, syscall.ENODATA) {
		t.Fatalf("getxattr after remove: %v", err)
	}
	// Metadata changes keep the content.
	if got := readFile(t, b2, "f"); string(got) != "content" {
		t.Fatalf("content after metadata changes: %q", got)
	}
}

// Attribute changes on a file being written join its upload: cp -a sets
// times and mode on the open descriptor before closing it.
func TestAttrsWhileWriting(t *testing.T) {
	b := newTestBackend(t, testConfig(t))
	f, err := b.Open(bg, "f", syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("abc"), 0); err != nil {
		t.Fatal(err)
	}
	mtime := time.Unix(1_000_000_000, 0)
	if err := b.Utimens(bg, "f", nil, &mtime); err != nil {
		t.Fatal(err)
	}
	if err := b.Chmod(bg, "f", 0o751); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	b2 := newTestBackend(t, Config{Bucket: b.bucket, Prefix: b.prefix, Endpoint: testGateway.endpoint, PathStyle: true})
	var st syscall.Stat_t
	if err := b2.Lstat(bg, "f", &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode != syscall.S_IFREG|0o751 || st.Mtim.Sec != mtime.Unix() || st.Size != 3 {
		t.Fatalf("after close: %+v", st)
	}
}

func TestRename(t *testing.T) {
	cfg := testConfig(t)
	b := newTestBackend(t, cfg)
	data := randBytes(7, 100000)
	create(t, b, "a", data)
	if err := b.Chmod(bg, "a", 0o640); err != nil {
		t.Fatal(err)
	}
	if err := b.Rename(bg, "a", "b", 0); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	wantErrno(t, b.Lstat(bg, "a", &st), syscall.ENOENT)
	if err := b.Lstat(bg, "b", &st); err != nil || st.Mode != syscall.S_IFREG|0o640 {
		t.Fatalf("renamed: %+v, %v", st, err)
	}
	if got := readFile(t, b, "b"); !bytes.Equal(got, data) {
		t.Fatal("content changed by rename")
	}
	// Replace an existing file; NOREPLACE refuses; EXCHANGE is not offered.
	create(t, b, "c", []byte("old c"))
	wantErrno(t, b.Rename(bg, "b", "c", unix.RENAME_NOREPLACE), syscall.EEXIST)
	wantErrno(t, b.Rename(bg, "b", "c", unix.RENAME_EXCHANGE), syscall.ENOTSUP)
	if err := b.Rename(bg, "b", "c", 0); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, b, "c"); !bytes.Equal(got, data) {
		t.Fatal("replace by rename: wrong content")
	}
	if err := b.Rename(bg, "c", "d", unix.RENAME_NOREPLACE); err != nil {
		t.Fatal(err)
	}

	// A directory tree, with an empty subdirectory and a symlink.
	for _, d := range []string{"src", "src/sub", "src/sub/empty", "dst"} {
		if err := b.Mkdir(bg, d, 0o755, nil); err != nil {
			t.Fatal(err)
		}
	}
	create(t, b, "src/one", []byte("1"))
	create(t, b, "src/sub/two", []byte("22"))
	if err := b.Symlink(bg, "one", "src/ln", nil); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, b.Rename(bg, "src", "d", 0), syscall.ENOTDIR)
	wantErrno(t, b.Rename(bg, "d", "src", 0), syscall.EISDIR)
	wantErrno(t, b.Rename(bg, "src", "src/sub/x", 0), syscall.EINVAL)
	create(t, b, "dst/x", nil)
	wantErrno(t, b.Rename(bg, "src", "dst", 0), syscall.ENOTEMPTY)
	if err := b.Unlink(bg, "dst/x"); err != nil {
		t.Fatal(err)
	}
	// Over an empty directory.
	if err := b.Rename(bg, "src", "dst", 0); err != nil {
		t.Fatal(err)
	}
	keys := rawKeys(t, b)
	slices.Sort(keys)
	want := []string{"d", "dst/", "dst/ln", "dst/one", "dst/sub/", "dst/sub/empty/", "dst/sub/two"}
	if !slices.Equal(keys, want) {
		t.Fatalf("objects after directory rename:\n got %v\nwant %v", keys, want)
	}
	if got := readFile(t, b, "dst/sub/two"); string(got) != "22" {
		t.Fatalf("dst/sub/two = %q", got)
	}
	if target, err := b.Readlink(bg, "dst/ln"); err != nil || target != "one" {
		t.Fatalf("dst/ln -> %q, %v", target, err)
	}
}

// Files above the CopyObject limit are renamed with UploadPartCopy; the
// limit is shrunk here to exercise that path.
func TestRenameMultipartCopy(t *testing.T) {
	b := newTestBackend(t, testConfig(t))
	b.copyLimit, b.copyPartSize = 6<<20, 5<<20
	data := randBytes(9, 13<<20+7)
	create(t, b, "big", data)
	if err := b.Setxattr(bg, "big", "user.k", []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	if err := b.Rename(bg, "big", "moved", 0); err != nil {
		t.Fatal(err)
	}
	if got := rawGet(t, b, b.prefix+"moved"); !bytes.Equal(got, data) {
		t.Fatal("multipart copy: content differs")
	}
	if v, err := b.Getxattr(bg, "moved", "user.k"); err != nil || string(v) != "v" {
		t.Fatalf("metadata after multipart copy: %q, %v", v, err)
	}
	if len(pendingUploads(t, b)) != 0 {
		t.Fatal("multipart copy left an upload")
	}
}

func TestMultipartUpload(t *testing.T) {
	cfg := testConfig(t)
	cfg.PartSize = 8 << 20
	b := newTestBackend(t, cfg)
	data := randBytes(11, 40<<20+5)
	f, err := b.Open(bg, "large", syscall.O_RDWR|syscall.O_CREAT, 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off < len(data); off += 1 << 20 {
		if _, err := f.WriteAt(data[off:min(off+1<<20, len(data))], int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	h, err := b.client.HeadObject(bg, &s3.HeadObjectInput{Bucket: aws.String(b.bucket), Key: aws.String(b.prefix + "large")})
	if err != nil {
		t.Fatal(err)
	}
	// A multipart object's ETag ends in -<number of parts>.
	if etag := aws.ToString(h.ETag); !strings.HasSuffix(strings.Trim(etag, `"`), "-6") {
		t.Fatalf("ETag %s: not a 6-part upload", etag)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, b, "large"); !bytes.Equal(got, data) {
		t.Fatal("large file reads back different")
	}
	if len(pendingUploads(t, b)) != 0 {
		t.Fatal("upload left behind")
	}
}

// failPart makes UploadPart number n fail (a non-retryable error, as after
// the SDK gave up retrying).
func failPart(n int32) func(*s3.Options) {
	return func(o *s3.Options) {
		o.APIOptions = append(o.APIOptions, func(stack *middleware.Stack) error {
			return stack.Initialize.Add(middleware.InitializeMiddlewareFunc("failPart",
				func(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
					if p, ok := in.Parameters.(*s3.UploadPartInput); ok && aws.ToInt32(p.PartNumber) == n {
						return middleware.InitializeOutput{}, middleware.Metadata{}, errors.New("injected failure")
					}
					return next.HandleInitialize(ctx, in)
				}), middleware.After)
		})
	}
}

func TestFailedUploadKeepsOldObject(t *testing.T) {
	cfg := testConfig(t)
	good := newTestBackend(t, cfg)
	old := randBytes(12, 100000)
	create(t, good, "f", old)

	bad := newTestBackend(t, cfg, failPart(3))
	f, err := bad.Open(bg, "f", syscall.O_WRONLY|syscall.O_TRUNC, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(randBytes(13, 30<<20), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("Sync with a failing part: %v, want EIO", err)
	}
	if err := f.Close(); err == nil {
		t.Fatal("Close with a failing part succeeded")
	}
	if got := rawGet(t, good, good.prefix+"f"); !bytes.Equal(got, old) {
		t.Fatal("failed upload changed the object")
	}
	if ups := pendingUploads(t, good); len(ups) != 0 {
		t.Fatalf("failed upload left multipart uploads: %v", ups)
	}
}

// A process killed during a multipart upload cannot abort it; the next
// writer does, once it holds the writer lease.
func TestCleanupUploadsOnNew(t *testing.T) {
	cfg := testConfig(t)
	b := newTestBackend(t, cfg)
	key := b.prefix + "orphan"
	up, err := b.client.CreateMultipartUpload(bg, &s3.CreateMultipartUploadInput{Bucket: aws.String(b.bucket), Key: aws.String(key)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.client.UploadPart(bg, &s3.UploadPartInput{
		Bucket: aws.String(b.bucket), Key: aws.String(key), UploadId: up.UploadId,
		PartNumber: aws.Int32(1), Body: bytes.NewReader(randBytes(1, 5<<20)),
	}); err != nil {
		t.Fatal(err)
	}
	if len(pendingUploads(t, b)) != 1 {
		t.Fatal("setup: no pending upload")
	}
	// One still younger than the age given is kept.
	if n, err := b.CleanupUploads(bg, time.Hour); err != nil || n != 0 {
		t.Fatalf("CleanupUploads(1h) = %d, %v", n, err)
	}
	next := newTestBackend(t, cfg)
	if len(pendingUploads(t, b)) != 1 {
		t.Fatal("New aborted an upload before holding the writer lease")
	}
	release, err := next.LockVolume(bg)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if ups := pendingUploads(t, b); len(ups) != 0 {
		t.Fatalf("taking the lease left %v", ups)
	}
	var st syscall.Stat_t
	wantErrno(t, b.Lstat(bg, "orphan", &st), syscall.ENOENT)
}

func TestConditionalCreate(t *testing.T) {
	cfg := testConfig(t)
	b := newTestBackend(t, cfg)
	create(t, b, "exists", []byte("x"))
	_, err := b.Open(bg, "exists", syscall.O_RDWR|syscall.O_CREAT|syscall.O_EXCL, 0o644, nil)
	wantErrno(t, err, syscall.EEXIST)

	// Several mounts race to create one name exclusively: exactly one
	// creator gets both open and close through; every other one is told
	// EEXIST, at open or (if it opened before the winner uploaded) at
	// close, and nothing of it lands.
	const racers = 6
	var wins, exists int
	winner := byte(0)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range racers {
		other := newTestBackend(t, cfg)
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, err := other.Open(bg, "race", syscall.O_RDWR|syscall.O_CREAT|syscall.O_EXCL, 0o644, nil)
			if err == nil {
				f.WriteAt([]byte{byte('a' + i)}, 0)
				err = f.Close()
			}
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins++
				winner = byte('a' + i)
			case errors.Is(err, syscall.EEXIST):
				exists++
			default:
				t.Errorf("racer %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 || exists != racers-1 {
		t.Fatalf("%d creators won, %d got EEXIST", wins, exists)
	}
	if got := rawGet(t, b, b.prefix+"race"); len(got) != 1 || got[0] != winner {
		t.Fatalf("race object %q, winner %c", got, winner)
	}
	// Within one mount the loser learns at open.
	h, err := b.Open(bg, "excl", syscall.O_RDWR|syscall.O_CREAT|syscall.O_EXCL, 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.Open(bg, "excl", syscall.O_RDWR|syscall.O_CREAT|syscall.O_EXCL, 0o644, nil)
	wantErrno(t, err, syscall.EEXIST)
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}

	// Two writers of one key without O_EXCL: the last close wins, whole.
	w1, w2 := newTestBackend(t, cfg), newTestBackend(t, cfg)
	f1, err := w1.Open(bg, "two", syscall.O_RDWR|syscall.O_CREAT|syscall.O_TRUNC, 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	f2, err := w2.Open(bg, "two", syscall.O_RDWR|syscall.O_CREAT|syscall.O_TRUNC, 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	one, two := bytes.Repeat([]byte("1"), 3000), bytes.Repeat([]byte("2"), 2000)
	if _, err := f1.WriteAt(one, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f2.WriteAt(two, 0); err != nil {
		t.Fatal(err)
	}
	if err := f2.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f1.Close(); err != nil {
		t.Fatal(err)
	}
	if got := rawGet(t, b, b.prefix+"two"); !bytes.Equal(got, one) {
		t.Fatalf("last close did not win: %d bytes", len(got))
	}
}

func TestTwoHandlesOnePath(t *testing.T) {
	b := newTestBackend(t, testConfig(t))
	create(t, b, "f", []byte("0123456789"))
	h1, err := b.Open(bg, "f", syscall.O_RDWR, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	h2, err := b.Open(bg, "f", syscall.O_RDONLY, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h1.WriteAt([]byte("AB"), 4); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 10)
	if n, _ := h2.ReadAt(buf, 0); n != 10 || string(buf) != "0123AB6789" {
		t.Fatalf("second handle reads %q", buf[:n])
	}
	var st syscall.Stat_t
	h2.Stat(&st)
	if st.Size != 10 {
		t.Fatalf("size %d", st.Size)
	}
	// A third open with O_TRUNC truncates the shared content.
	h3, err := b.Open(bg, "f", syscall.O_WRONLY|syscall.O_TRUNC, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	h3.WriteAt([]byte("new"), 0)
	if n, err := h2.ReadAt(buf, 0); n != 3 || err != io.EOF || string(buf[:3]) != "new" {
		t.Fatalf("after O_TRUNC by another handle: %q, %v", buf[:n], err)
	}
	if err := h3.Close(); err != nil {
		t.Fatal(err)
	}
	if got := rawGet(t, b, b.prefix+"f"); string(got) != "new" {
		t.Fatalf("object after first close: %q", got)
	}
	// Unlinked while open: the handles keep the content; nothing is
	// uploaded again.
	if err := b.Unlink(bg, "f"); err != nil {
		t.Fatal(err)
	}
	if _, err := h1.WriteAt([]byte("!"), 3); err != nil {
		t.Fatal(err)
	}
	if n, _ := h2.ReadAt(buf, 0); string(buf[:n]) != "new!" {
		t.Fatalf("unlinked file reads %q", buf[:n])
	}
	if err := errors.Join(h1.Close(), h2.Close()); err != nil {
		t.Fatal(err)
	}
	if keys := rawKeys(t, b); len(keys) != 0 {
		t.Fatalf("unlinked file came back: %v", keys)
	}
	// A file created and not yet closed is visible to Lstat and ReadDir.
	h, err := b.Open(bg, "pending", syscall.O_RDWR|syscall.O_CREAT, 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	ents, err := b.ReadDir(bg, "")
	if err != nil || len(ents) != 1 || ents[0].Name != "pending" {
		t.Fatalf("ReadDir with a pending file: %v, %v", ents, err)
	}
	// Renamed before its first upload: it lands under the new name only.
	if err := b.Rename(bg, "pending", "final", 0); err != nil {
		t.Fatal(err)
	}
	h.WriteAt([]byte("data"), 0)
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if keys := rawKeys(t, b); !slices.Equal(keys, []string{"final"}) {
		t.Fatalf("objects: %v", keys)
	}
}

func TestVolumeMeta(t *testing.T) {
	b := newTestBackend(t, testConfig(t))
	if _, err := b.ReadMeta(bg, "volume.json"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("ReadMeta before write: %v", err)
	}
	if err := b.WriteMeta(bg, "volume.json", []byte(`{"a":1}`)); err != nil {
		t.Fatal(err)
	}
	if got, err := b.ReadMeta(bg, "volume.json"); err != nil || string(got) != `{"a":1}` {
		t.Fatalf("ReadMeta = %q, %v", got, err)
	}
	var st syscall.Stat_t
	wantErrno(t, b.Lstat(bg, MetaDir, &st), syscall.ENOENT)
	_, err := b.Open(bg, MetaDir+"/volume.json", syscall.O_RDONLY, 0, nil)
	wantErrno(t, err, syscall.EPERM)
	wantErrno(t, b.Mkdir(bg, MetaDir, 0o755, nil), syscall.EPERM)
	wantErrno(t, b.Rename(bg, MetaDir, "x", 0), syscall.EPERM)
}

func TestErrorMapping(t *testing.T) {
	cfg := testConfig(t)
	b := newTestBackend(t, cfg)
	_, err := b.Open(bg, "missing", syscall.O_RDONLY, 0, nil)
	wantErrno(t, err, syscall.ENOENT)

	t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
	_, err = New(bg, cfg)
	if !errors.Is(err, syscall.EACCES) {
		t.Fatalf("New with a wrong secret: %v, want EACCES", err)
	}
	_, err = New(bg, Config{Bucket: "no-such-bucket", Endpoint: cfg.Endpoint, PathStyle: true})
	if err == nil {
		t.Fatal("New on a missing bucket succeeded")
	}
}

// cp -a sets permissions through system.posix_acl_access (FUSE passes ACLs
// to the filesystem as xattrs): a mode-equivalent ACL becomes the mode.
func TestACLBecomesMode(t *testing.T) {
	b := newTestBackend(t, testConfig(t))
	create(t, b, "f", []byte("x"))
	// user::rwx group::r-x other::--x
	acl := []byte{2, 0, 0, 0, 1, 0, 7, 0, 0xff, 0xff, 0xff, 0xff, 4, 0, 5, 0, 0xff, 0xff, 0xff, 0xff, 0x20, 0, 1, 0, 0xff, 0xff, 0xff, 0xff}
	if err := b.Setxattr(bg, "f", posixacl.XattrAccess, acl, 0); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := b.Lstat(bg, "f", &st); err != nil || st.Mode != syscall.S_IFREG|0o751 {
		t.Fatalf("mode after ACL: %o, %v", st.Mode, err)
	}
	if _, err := b.Getxattr(bg, "f", posixacl.XattrAccess); !errors.Is(err, syscall.ENODATA) {
		t.Fatalf("getxattr ACL: %v", err)
	}
	if l, _ := b.Listxattr(bg, "f"); len(l) != 0 {
		t.Fatalf("ACL stored as an xattr: %v", l)
	}
	// A named-user entry cannot be expressed by the mode.
	ext := append(slices.Clone(acl), 2, 0, 7, 0, 0xe8, 3, 0, 0, 0x10, 0, 7, 0, 0xff, 0xff, 0xff, 0xff)
	wantErrno(t, b.Setxattr(bg, "f", posixacl.XattrAccess, ext, 0), syscall.ENOTSUP)
}

// A FUSE INTERRUPT (any signal to the caller, SIGURG in Go programs)
// cancels the request context; the S3 operation still completes.
func TestCancelledContextStillCompletes(t *testing.T) {
	b := newTestBackend(t, testConfig(t))
	create(t, b, "f", []byte("x"))
	ctx, cancel := context.WithCancel(bg)
	cancel()
	var st syscall.Stat_t
	if err := b.Lstat(ctx, "f", &st); err != nil {
		t.Fatalf("Lstat with a cancelled context: %v", err)
	}
	if err := b.Rename(ctx, "f", "g", 0); err != nil {
		t.Fatalf("Rename with a cancelled context: %v", err)
	}
}

// A miss is remembered briefly (the kernel looks a name up again before
// creating it); every way of creating the name here forgets it.
func TestMissCacheForgetsCreations(t *testing.T) {
	cfg := testConfig(t)
	clock := newFakeClock()
	cfg.Now = clock.now
	b := newTestBackend(t, cfg)
	var st syscall.Stat_t
	for _, n := range []string{"f", "d", "l", "r", "dir2"} {
		wantErrno(t, b.Lstat(bg, n, &st), syscall.ENOENT)
	}
	create(t, b, "f", []byte("x"))
	if err := b.Mkdir(bg, "d", 0o755, nil); err != nil {
		t.Fatal(err)
	}
	if err := b.Symlink(bg, "f", "l", nil); err != nil {
		t.Fatal(err)
	}
	create(t, b, "tmp", nil)
	if err := b.Rename(bg, "tmp", "r", 0); err != nil {
		t.Fatal(err)
	}
	if err := b.Rename(bg, "d", "dir2", 0); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"f", "l", "r", "dir2"} {
		if err := b.Lstat(bg, n, &st); err != nil {
			t.Errorf("Lstat(%s) after creating it: %v", n, err)
		}
	}
	// Another client's creation shows once the miss has expired.
	wantErrno(t, b.Lstat(bg, "other", &st), syscall.ENOENT)
	if _, err := b.client.PutObject(bg, &s3.PutObjectInput{Bucket: aws.String(b.bucket), Key: aws.String(b.prefix + "other"), Body: strings.NewReader("x")}); err != nil {
		t.Fatal(err)
	}
	// Within lookupTTL the remembered miss answers; past it, S3 does.
	clock.advance(lookupTTL)
	wantErrno(t, b.Lstat(bg, "other", &st), syscall.ENOENT)
	clock.advance(time.Millisecond)
	if err := b.Lstat(bg, "other", &st); err != nil {
		t.Fatalf("Lstat after the miss expired: %v", err)
	}
}

func TestRemoveDeadStaging(t *testing.T) {
	tmp := t.TempDir()
	dead, live, other := tmp+"/kmsfs-staging-999999999", fmt.Sprintf("%s/kmsfs-staging-%d", tmp, os.Getppid()), tmp+"/kmsfs-staging-x"
	for _, d := range []string{dead, live, other} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	removeDeadStaging(tmp)
	if _, err := os.Stat(dead); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dead process's staging dir kept: %v", err)
	}
	for _, d := range []string{live, other} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s removed: %v", d, err)
		}
	}
}

var _ backend.File = (*handle)(nil)

// fakeClock is a Config.Now that moves only when told to.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// A sparse tail: the object holds the data, its metadata the file's size;
// the tail reads as zeros through a new open, a lookup and a staged write;
// an attribute change and a rename keep it; a write into it stores it.
func TestSparseTail(t *testing.T) {
	b := newTestBackend(t, testConfig(t))
	data := randBytes(7, 10000)
	const size = 50000
	f, err := b.Open(bg, "f", syscall.O_RDWR|syscall.O_CREAT, 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.(backend.SparseTail).SetSparseTail(int64(len(data)), size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if got := rawGet(t, b, b.prefix+"f"); !bytes.Equal(got, data) {
		t.Fatalf("object holds %d bytes, want the %d data bytes only", len(got), len(data))
	}
	want := append(slices.Clone(data), make([]byte, size-len(data))...)
	check := func(stage string) {
		t.Helper()
		var st syscall.Stat_t
		if err := b.Lstat(bg, "f", &st); err != nil || st.Size != size {
			t.Fatalf("%s: lstat size %d, %v; want %d", stage, st.Size, err, size)
		}
		if got := readFile(t, b, "f"); !bytes.Equal(got, want) {
			t.Fatalf("%s: content differs (%d bytes)", stage, len(got))
		}
	}
	check("after upload")
	cfg := testConfig(t)
	cfg.Prefix = strings.TrimSuffix(b.prefix, "/")
	fresh := newTestBackend(t, cfg)
	if got := readFile(t, fresh, "f"); !bytes.Equal(got, want) {
		t.Fatal("another process reads other content")
	}
	if err := b.Chmod(bg, "f", 0o600); err != nil {
		t.Fatal(err)
	}
	check("after chmod")
	if err := b.Rename(bg, "f", "g", 0); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, b, "g"); !bytes.Equal(got, want) {
		t.Fatal("after rename: content differs")
	}
	// A write inside the tail: the zeros before it are stored.
	f, err = b.Open(bg, "g", syscall.O_RDWR, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("mid"), 30000); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	copy(want[30000:], "mid")
	if got := rawGet(t, b, b.prefix+"g"); !bytes.Equal(got, want[:30003]) {
		t.Fatalf("after a write in the tail the object has %d bytes, want %d", len(got), 30003)
	}
	if got := readFile(t, b, "g"); !bytes.Equal(got, want) {
		t.Fatal("after a write in the tail: content differs")
	}
}
