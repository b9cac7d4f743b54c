package shared

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/kmsfs/kmsfs/backend"
	"github.com/kmsfs/kmsfs/backend/s3"
	"github.com/kmsfs/kmsfs/backend/shared/pgmeta"
	"github.com/kmsfs/kmsfs/backend/shared/pgmeta/pgtest"
)

const (
	testBucket = "kmsfs-shared"
	testRegion = 64 // header region size of the test volume
	testChunk  = 1000
)

// startGateway starts versitygw on a free port and points this process's
// AWS credential chain at it; it returns the endpoint.
func startGateway(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("versitygw")
	if err != nil {
		home, _ := os.UserHomeDir()
		bin = filepath.Join(home, "go", "bin", "versitygw")
		if _, err := os.Stat(bin); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatal("versitygw is required in CI")
			}
			t.Skip("versitygw not installed")
		}
	}
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, testBucket), 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	const key, secret = "sharedtest", "shared-test-secret-0123456789"
	cmd := exec.Command(bin, "--port", addr, "posix", root)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+key, "ROOT_SECRET_KEY="+secret)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("versitygw did not start")
		}
	}
	none := filepath.Join(root, "none")
	for k, v := range map[string]string{"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": "us-east-1",
		"AWS_CONFIG_FILE": none, "AWS_SHARED_CREDENTIALS_FILE": none, "AWS_EC2_METADATA_DISABLED": "true", "AWS_PROFILE": "", "AWS_SESSION_TOKEN": ""} {
		t.Setenv(k, v)
	}
	return "http://" + addr
}

type env struct {
	t         *testing.T
	endpoint  string
	dbURL     string
	pg        *pgtest.Cluster
	chunkSize int64 // of the volume newEnv creates; 0: testChunk
}

// open opens the volume as another process would: its own store
// connection and S3 client.
func (e *env) open() *Backend { return e.openWith(Config{}) }

func (e *env) openWith(cfg Config) *Backend {
	e.t.Helper()
	ctx := context.Background()
	s3b, err := s3.New(ctx, s3.Config{Bucket: testBucket, Prefix: "vol", Endpoint: e.endpoint, PathStyle: true, StaleUploadAge: 24 * time.Hour, StagingDir: e.t.TempDir()})
	if err != nil {
		e.t.Fatal(err)
	}
	store, err := pgmeta.Open(ctx, e.dbURL)
	if err != nil {
		e.t.Fatal(err)
	}
	cfg.Store, cfg.S3, cfg.URL, cfg.ChunkSize, cfg.StagingDir = store, s3b, "s3://"+testBucket+"/vol", testChunk, e.t.TempDir()
	if e.chunkSize != 0 {
		cfg.ChunkSize = e.chunkSize
	}
	b, err := Open(ctx, cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { b.Close(); store.Close(); s3b.Close() })
	return b
}

func newEnv(t *testing.T) (*env, *Backend) { return newEnvChunks(t, testChunk) }

// newEnvChunks is newEnv for a volume of chunks of chunkSize bytes.
func newEnvChunks(t *testing.T, chunkSize int64) (*env, *Backend) {
	pg := pgtest.Start(t)
	e := &env{t: t, endpoint: startGateway(t), pg: pg, chunkSize: chunkSize}
	e.dbURL = pg.CreateDB("vol")
	b := e.open()
	doc := `{"format":1,"volume_id":"00112233445566778899aabbccddeeff","header_size":64,"features":["shared-metadata","name-encryption"]}`
	if err := b.WriteMeta(context.Background(), ConfigName, []byte(doc)); err != nil {
		t.Fatal(err)
	}
	return e, b
}

func (e *env) objects() map[string][]byte {
	e.t.Helper()
	b := e.open()
	out := map[string][]byte{}
	p := awss3.NewListObjectsV2Paginator(b.client, &awss3.ListObjectsV2Input{Bucket: aws.String(testBucket), Prefix: aws.String("vol/chunks/")})
	for p.HasMorePages() {
		page, err := p.NextPage(context.Background())
		if err != nil {
			e.t.Fatal(err)
		}
		for _, o := range page.Contents {
			r, err := b.client.GetObject(context.Background(), &awss3.GetObjectInput{Bucket: aws.String(testBucket), Key: o.Key})
			var missing *types.NoSuchKey
			if errors.As(err, &missing) {
				continue // deleted (by a gc running meanwhile) since the listing
			}
			if err != nil {
				e.t.Fatal(err)
			}
			data, _ := io.ReadAll(r.Body)
			r.Body.Close()
			out[aws.ToString(o.Key)] = data
		}
	}
	return out
}

func readAll(t *testing.T, b *Backend, name string) []byte {
	t.Helper()
	f, err := b.Open(context.Background(), name, syscall.O_RDONLY, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st syscall.Stat_t
	f.Stat(&st)
	buf := make([]byte, st.Size)
	if n, err := f.ReadAt(buf, 0); err != nil && !(errors.Is(err, io.EOF) && n == len(buf)) {
		t.Fatalf("read %s: %d, %v", name, n, err)
	}
	return buf
}

func write(t *testing.T, f backend.File, p []byte, off int64) {
	t.Helper()
	if _, err := f.WriteAt(p, off); err != nil {
		t.Fatal(err)
	}
}

func TestChunkedWritesAcrossProcesses(t *testing.T) {
	e, a := newEnv(t)
	b := e.open() // a second process
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, 3500)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	f, err := a.Open(ctx, "f", syscall.O_RDWR|syscall.O_CREAT|syscall.O_EXCL, 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	write(t, f, data[:1700], 0)
	write(t, f, data[1700:], 1700)
	if err := f.(backend.Flusher).Flush(); err != nil {
		t.Fatal(err)
	}
	objs := e.objects()
	if len(objs) != 4 {
		t.Fatalf("%d chunk objects for 3500 bytes in chunks of %d", len(objs), testChunk)
	}
	// Each object describes itself and carries the header region.
	var st syscall.Stat_t
	f.Stat(&st)
	for k, obj := range objs {
		h, region, body, err := ParseChunk(obj)
		if err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		if h.Ino != st.Ino || h.Offset != h.Index*testChunk || !bytes.Equal(region, data[:testRegion]) || !bytes.Equal(body, data[h.Offset:h.Offset+h.Length]) {
			t.Errorf("%s: header %+v does not describe its bytes", k, h)
		}
	}
	if got := readAll(t, b, "f"); !bytes.Equal(got, data) {
		t.Fatal("the other process reads different bytes")
	}
	// An overwrite inside one chunk uploads that chunk only.
	copy(data[1500:1600], bytes.Repeat([]byte{'x'}, 100))
	write(t, f, data[1500:1600], 1500)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if n := len(e.objects()); n != 5 {
		t.Errorf("%d objects after a one-chunk overwrite, want 5 (the old one is garbage until gc)", n)
	}
	// Truncation down into a chunk, then up: zeros.
	if err := f.Truncate(2100); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(2600); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	want := append(append([]byte{}, data[:2100]...), make([]byte, 500)...)
	if got := readAll(t, b, "f"); !bytes.Equal(got, want) {
		t.Fatal("after truncations the other process reads different bytes")
	}
	// gc removes what was replaced, keeps what is referenced.
	r, err := a.GC(ctx, GCOptions{Grace: 0, Sweep: true})
	if err != nil {
		t.Fatal(err)
	}
	// Replaced: the first chunk 1, the first chunk 2; dropped: chunk 3.
	if r.Deleted != 3 {
		t.Errorf("gc: %+v, want 3 deleted", r)
	}
	if n := len(e.objects()); n != 3 {
		t.Errorf("%d objects after gc, want 3 (2600 bytes)", n)
	}
	if got := readAll(t, b, "f"); !bytes.Equal(got, want) {
		t.Fatal("gc took data a file points to")
	}
}

func TestSecondWriterGetsAnError(t *testing.T) {
	e, a := newEnv(t)
	b := e.open()
	ctx := context.Background()
	f, err := a.Open(ctx, "f", syscall.O_RDWR|syscall.O_CREAT, 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	write(t, f, []byte(strings.Repeat("0", 2500)), 0)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	fa, _ := a.Open(ctx, "f", syscall.O_RDWR, 0, nil)
	fb, err := b.Open(ctx, "f", syscall.O_RDWR, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	write(t, fa, []byte(strings.Repeat("A", 1200)), 0)
	write(t, fb, []byte(strings.Repeat("B", 2500)), 0)
	if err := fa.Close(); err != nil {
		t.Fatal(err)
	}
	if err := fb.(backend.Flusher).Flush(); err == nil || !errors.Is(err, syscall.EIO) {
		t.Fatalf("second writer's flush: %v, want EIO", err)
	}
	fb.Close()
	want := strings.Repeat("A", 1200) + strings.Repeat("0", 1300)
	if got := readAll(t, e.open(), "f"); string(got) != want {
		t.Fatalf("content is a mix or the loser's: %q...", got[:20])
	}
	// The loser's uploads were not left behind.
	if n := len(e.objects()); n != 3+2 { // 3 chunks + the 2 replaced, until gc
		t.Errorf("%d objects", n)
	}
}

func TestBackgroundGC(t *testing.T) {
	e, a := newEnv(t)
	ctx := context.Background()
	f, err := a.Open(ctx, "f", syscall.O_RDWR|syscall.O_CREAT, 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	write(t, f, bytes.Repeat([]byte{1}, 2500), 0)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	write(t, f, bytes.Repeat([]byte{2}, 2500), 0)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(e.objects()); n != 6 {
		t.Fatalf("%d objects before gc, want 3 current and 3 replaced", n)
	}
	e.openWith(Config{GCEvery: 50 * time.Millisecond, GCGrace: time.Nanosecond})
	deadline := time.Now().Add(10 * time.Second)
	for len(e.objects()) != 3 {
		if time.Now().After(deadline) {
			t.Fatalf("background gc left %d objects, want 3", len(e.objects()))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := readAll(t, e.open(), "f"); !bytes.Equal(got, bytes.Repeat([]byte{2}, 2500)) {
		t.Fatal("background gc took referenced data")
	}
}

// A sparse tail: no chunk holds it, the size is the inode's, another
// process reads zeros there; a later tail that starts lower drops the
// committed data past it; a write inside the tail stores the zeros before
// it.
func TestSparseTail(t *testing.T) {
	e, a := newEnv(t)
	b := e.open() // a second process
	ctx := context.Background()
	data := make([]byte, 2500)
	for i := range data {
		data[i] = byte(i%251 + 1)
	}
	f, err := a.Open(ctx, "f", syscall.O_RDWR|syscall.O_CREAT|syscall.O_EXCL, 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	write(t, f, data[:1500], 0)
	if err := f.(backend.SparseTail).SetSparseTail(1500, 2500); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	var stored int64
	for k, obj := range e.objects() {
		h, _, _, err := ParseChunk(obj)
		if err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		stored += h.Length
	}
	if stored != 1500 {
		t.Errorf("chunks hold %d stream bytes, want 1500 (the tail is not stored)", stored)
	}
	want := append(append([]byte{}, data[:1500]...), make([]byte, 1000)...)
	if got := readAll(t, b, "f"); !bytes.Equal(got, want) {
		t.Fatalf("the other process reads %d bytes, not the data and zeros", len(got))
	}
	// The tail starts lower now: committed bytes past it read as zeros
	// here at once, and elsewhere after the commit.
	if err := f.(backend.SparseTail).SetSparseTail(700, 2500); err != nil {
		t.Fatal(err)
	}
	clear(want[700:])
	buf := make([]byte, 2500)
	if _, err := f.ReadAt(buf, 0); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, want) {
		t.Fatal("before the commit the writer reads the old bytes past the new tail")
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	c := e.open() // a third process, opening after the commit
	if got := readAll(t, c, "f"); !bytes.Equal(got, want) {
		t.Fatal("after a lower tail another process reads the old bytes")
	}
	// A write inside the tail.
	write(t, f, []byte("zz"), 2000)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	copy(want[2000:], "zz")
	d := e.open()
	if got := readAll(t, d, "f"); !bytes.Equal(got, want) {
		t.Fatal("after a write in the tail another process reads other bytes")
	}
}
