package integration

// The S3 backend mounted for real: a versitygw process (real SigV4, part
// sizes, conditional writes) per test, `kmsfs init/mount s3://...`, cp -a,
// rsync -a, diff -r, a remount, awscli looking at the bucket, and kill -9
// of the mount during a multipart upload.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

const (
	s3AccessKey = "kmsfsintegration"
	s3SecretKey = "kmsfs-integration-secret-0123456789"
	s3Bucket    = "kmsfs-it"
)

// s3Gateway is a versitygw process serving one bucket from a temp dir.
type s3Gateway struct {
	endpoint string
	client   *s3.Client
}

// s3StartGateway starts versitygw on a free port and points the AWS
// credential chain (environment) of this process and its children at it.
func s3StartGateway(t *testing.T) *s3Gateway {
	t.Helper()
	bin := mountRequireTool(t, "versitygw")
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, s3Bucket), 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	logf, err := os.Create(filepath.Join(t.TempDir(), "versitygw.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--port", addr, "posix", root)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+s3AccessKey, "ROOT_SECRET_KEY="+s3SecretKey)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Registered first, so it runs after the unmounts registered later.
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		logf.Close()
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(logf.Name())
			t.Fatalf("versitygw not up on %s: %v\n%s", addr, err, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	noFile := filepath.Join(root, "none")
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID": s3AccessKey, "AWS_SECRET_ACCESS_KEY": s3SecretKey, "AWS_REGION": "us-east-1",
		"AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": noFile, "AWS_SHARED_CREDENTIALS_FILE": noFile,
		"AWS_EC2_METADATA_DISABLED": "true",
	} {
		t.Setenv(k, v)
	}
	for _, k := range []string{"AWS_PROFILE", "AWS_SESSION_TOKEN"} {
		t.Setenv(k, "") // restored after the test
		os.Unsetenv(k)
	}
	cfg, err := config.LoadDefaultConfig(context.Background(),
		config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(s3AccessKey, s3SecretKey, "")),
		config.WithRegion("us-east-1"))
	if err != nil {
		t.Fatal(err)
	}
	endpoint := "http://" + addr
	client := s3.NewFromConfig(cfg, func(o *s3.Options) {
		o.BaseEndpoint = aws.String(endpoint)
		o.UsePathStyle = true
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	})
	return &s3Gateway{endpoint: endpoint, client: client}
}

// flags are the kmsfs flags that reach this gateway.
func (g *s3Gateway) flags() []string {
	return []string{"--s3-endpoint", g.endpoint, "--s3-path-style"}
}

// aws runs the Debian awscli against the gateway.
func (g *s3Gateway) aws(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(kmsAWS(t), append([]string{"--endpoint-url", g.endpoint}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("aws %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (g *s3Gateway) get(t *testing.T, key string) []byte {
	t.Helper()
	out, err := g.client.GetObject(context.Background(), &s3.GetObjectInput{Bucket: aws.String(s3Bucket), Key: aws.String(key)})
	if err != nil {
		t.Fatalf("GetObject %s: %v", key, err)
	}
	defer out.Body.Close()
	b, err := io.ReadAll(out.Body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (g *s3Gateway) uploads(t *testing.T, prefix string) []string {
	t.Helper()
	out, err := g.client.ListMultipartUploads(context.Background(), &s3.ListMultipartUploadsInput{
		Bucket: aws.String(s3Bucket), Prefix: aws.String(prefix),
	})
	if err != nil {
		t.Fatalf("ListMultipartUploads: %v", err)
	}
	var keys []string
	for _, u := range out.Uploads {
		keys = append(keys, aws.ToString(u.Key))
	}
	return keys
}

// s3NewVolume runs `kmsfs init` on s3://bucket/prefix; the volume is not
// mounted yet (mount with v.mount(g.flags()...)).
func s3NewVolume(t *testing.T, g *s3Gateway, prefix string, initArgs ...string) *mountVolume {
	t.Helper()
	mountRequireFuse(t)
	root := t.TempDir()
	v := &mountVolume{
		t:        t,
		vault:    "s3://" + s3Bucket + "/" + prefix,
		mnt:      filepath.Join(root, "mnt"),
		keystore: filepath.Join(root, "keystore"),
		logPath:  filepath.Join(root, "kmsfs.log"),
	}
	if err := os.Mkdir(v.mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.cleanup)
	v.run(append(append(append([]string{"init"}, g.flags()...), initArgs...), v.vault)...)
	return v
}

// s3Snapshot is mountSnapshot without what an object store cannot keep:
// directory link counts (S3 has no subdirectory links; a directory says 2).
func s3Snapshot(t *testing.T, root string) map[string]mountEntry {
	snap := mountSnapshot(t, root)
	for k, e := range snap {
		if e.mode&syscall.S_IFMT == syscall.S_IFDIR {
			e.nlink = 0
			snap[k] = e
		}
	}
	return snap
}

// s3MakeTree is mountMakeTree without hard links (ENOTSUP on S3) plus a
// file large enough for a parallel multipart upload.
func s3MakeTree(t *testing.T, root string) mountTreeInfo {
	t.Helper()
	info := mountMakeTree(t, root, 5)
	// Break the hard link pair into two files, keeping mtimes.
	p := filepath.Join(root, info.hardLinks[1])
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(root, "big", "large.bin")
	if err := os.MkdirAll(filepath.Dir(big), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(big, mountContent(rand.New(rand.NewPCG(7, 7)), 20<<20+77), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{p, big, filepath.Dir(big), filepath.Dir(p)} {
		tm := time.Unix(1_300_000_000, 123456789)
		if err := os.Chtimes(f, tm, tm); err != nil {
			t.Fatal(err)
		}
	}
	info.hardLinks = [2]string{}
	return info
}

// s3MountedVolume starts a gateway, makes a volume at prefix (initArgs go to
// kmsfs init), generates the S3 test tree and mounts the volume; it returns
// them with the tree's snapshot.
func s3MountedVolume(t *testing.T, prefix string, initArgs ...string) (g *s3Gateway, v *mountVolume, src string, want map[string]mountEntry) {
	t.Helper()
	g = s3StartGateway(t)
	v = s3NewVolume(t, g, prefix, initArgs...)
	src = filepath.Join(t.TempDir(), "src")
	s3MakeTree(t, src)
	want = s3Snapshot(t, src)
	v.mount(g.flags()...)
	return g, v, src, want
}

func TestS3MountCopyTree(t *testing.T) {
	mountRequireTool(t, "rsync")
	const prefix = "vol"
	g, v, src, want := s3MountedVolume(t, prefix)

	cpDst, rsDst := v.path("cp"), v.path("rs")
	mountExec(t, "cp", "-a", src, cpDst)
	mountExec(t, "rsync", "-aX", src+"/", rsDst+"/")
	check := func(stage string) {
		t.Helper()
		for _, dst := range []string{cpDst, rsDst} {
			name := stage + " " + filepath.Base(dst)
			mountCompareSnapshots(t, name, want, s3Snapshot(t, dst))
			if out, err := mountExecOut("diff", "-r", "--no-dereference", src, dst); err != nil {
				t.Errorf("%s: diff -r: %v\n%s", name, err, mountTail(out, 20))
			}
			if out := mountExec(t, "rsync", "-aX", "--dry-run", "--itemize-changes", src+"/", dst+"/"); strings.TrimSpace(out) != "" {
				t.Errorf("%s: rsync --dry-run wants changes:\n%s", name, mountTail(out, 20))
			}
		}
	}
	check("after copy")
	v.remount(g.flags()...)
	check("after remount")

	// awscli's view of the bucket: one object per file and symlink, a
	// marker per directory, the volume config, and no plaintext anywhere.
	listing := g.aws(t, "s3", "ls", "--recursive", "s3://"+s3Bucket+"/"+prefix+"/")
	keys := map[string]int64{}
	for _, line := range strings.Split(strings.TrimSpace(listing), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 {
			t.Fatalf("aws s3 ls line %q", line)
		}
		var size int64
		fmt.Sscan(f[2], &size)
		keys[strings.Join(f[3:], " ")] = size
	}
	for rel, e := range want {
		for _, top := range []string{"cp/", "rs/"} {
			k := prefix + "/" + top + rel
			if e.mode&syscall.S_IFMT == syscall.S_IFDIR {
				k += "/"
			}
			if _, ok := keys[k]; !ok && !strings.Contains(rel, "'") && !strings.ContainsFunc(rel, func(r rune) bool { return r > 127 }) {
				t.Errorf("aws s3 ls: no object %q", k)
			}
		}
	}
	if _, ok := keys[prefix+"/.kmsfs/volume.json"]; !ok {
		t.Errorf("aws s3 ls: no volume config; listing:\n%s", mountTail(listing, 20))
	}
	leaks, headers := 0, 0
	var sampleKey string
	for k, size := range keys {
		if strings.HasSuffix(k, "/") || strings.Contains(k, "/.kmsfs/") {
			continue
		}
		body := g.get(t, k)
		if int64(len(body)) != size {
			t.Errorf("%s: %d bytes, listed %d", k, len(body), size)
		}
		if bytes.Contains(body, []byte(mountMarker)) {
			leaks++
			t.Errorf("plaintext marker in object %s", k)
		}
		if bytes.HasPrefix(body, []byte("KMFS")) {
			headers++
			if strings.HasSuffix(k, "sizes/f0004097") {
				sampleKey = k
			}
		}
	}
	// Every non-empty file (two copies each) is header + blocks; empty
	// files are empty objects (the header comes with the first write).
	nonEmpty := 0
	for _, e := range want {
		if e.mode&syscall.S_IFMT == syscall.S_IFREG && e.size > 0 {
			nonEmpty++
		}
	}
	if headers != 2*nonEmpty {
		t.Errorf("%d objects start with a kmsfs header, want %d", headers, 2*nonEmpty)
	}

	// An object fetched with awscli is the same format as a local volume:
	// copy it and the volume config into a directory and `kmsfs cat` it.
	if sampleKey == "" {
		t.Fatal("no object for sizes/f0004097")
	}
	local := t.TempDir()
	g.aws(t, "s3", "cp", "s3://"+s3Bucket+"/"+prefix+"/.kmsfs/volume.json", filepath.Join(local, ".kmsfs", "volume.json"))
	g.aws(t, "s3", "cp", "s3://"+s3Bucket+"/"+sampleKey, filepath.Join(local, "copied"))
	out, err := v.command("cat", local, "copied").Output()
	if err != nil {
		t.Fatalf("kmsfs cat of an object copied with awscli: %v", err)
	}
	if orig, _ := os.ReadFile(filepath.Join(src, "sizes", "f0004097")); !bytes.Equal(out, orig) {
		t.Fatalf("kmsfs cat: %d bytes differ from the source", len(out))
	}
	if ups := g.uploads(t, prefix+"/"); len(ups) != 0 {
		t.Errorf("multipart uploads left: %v", ups)
	}
}

// TestS3MountCrashDuringUpload kills the mount (SIGKILL) while it uploads a
// new version of a large file: the old object must stay whole, and the
// orphaned multipart upload must be gone after the next mount. The mount
// that is killed talks to S3 through a proxy that holds the upload's
// completion, so the kill always falls inside the upload.
func TestS3MountCrashDuringUpload(t *testing.T) {
	g := s3StartGateway(t)
	const prefix = "crash"
	v := s3NewVolume(t, g, prefix)
	key := prefix + "/big"
	old := mountContent(rand.New(rand.NewPCG(1, 2)), 24<<20)
	v.mount(g.flags()...)
	if err := os.WriteFile(v.path("big"), old, 0o644); err != nil {
		t.Fatal(err)
	}
	v.unmount()
	oldObject := g.get(t, key)

	objectPath := "/" + s3Bucket + "/" + key
	proxy := s3StartProxy(t, g, func(_ *s3Proxy, r *http.Request) s3ProxyAction {
		if r.Method == http.MethodPost && r.URL.Path == objectPath && r.URL.Query().Has("uploadId") {
			return s3Hold // CompleteMultipartUpload
		}
		return s3Pass
	})
	p := v.mountForeground("--s3-endpoint", proxy.endpoint, "--s3-path-style")
	// A new version, large enough for a multipart upload: 128 MiB, 16
	// parts. notrunc: a truncation is a change of its own (ftruncate
	// commits an empty file); this is about an upload killed half way.
	writer := exec.Command("dd", "if=/dev/zero", "of="+v.path("big"), "bs=1M", "count=128", "conv=notrunc,fsync")
	if err := writer.Start(); err != nil {
		t.Fatal(err)
	}
	writerErr := make(chan error, 1)
	go func() { writerErr <- writer.Wait() }()
	select {
	case <-proxy.held:
	case err := <-writerErr:
		t.Fatalf("dd ended (%v) before the upload was completed", err)
	case <-time.After(60 * time.Second):
		t.Fatal("no CompleteMultipartUpload within 60s")
	}
	if len(g.uploads(t, key)) == 0 {
		t.Fatal("the upload is being completed, yet the gateway lists no upload in progress")
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if done, _ := p.wait(10 * time.Second); !done {
		t.Fatal("kmsfs still running 10s after SIGKILL")
	}
	if out, err := exec.Command("umount", "-l", v.mnt).CombinedOutput(); err != nil {
		t.Fatalf("umount -l after SIGKILL: %v: %s", err, out)
	}
	if !mountWaitUnmounted(v.mnt, 10*time.Second) {
		t.Fatal("the killed mount is still listed")
	}
	if err := <-writerErr; err == nil {
		t.Error("dd succeeded although the mount died before its fsync returned")
	}
	if got := g.get(t, key); !bytes.Equal(got, oldObject) {
		t.Fatalf("after kill -9 during upload the object changed (%d bytes, was %d)", len(got), len(oldObject))
	}
	if len(g.uploads(t, key)) == 0 {
		t.Fatal("no orphaned multipart upload after kill -9: the test did not kill mid-upload")
	}
	v.mount(g.flags()...)
	if ups := g.uploads(t, prefix+"/"); len(ups) != 0 {
		t.Fatalf("multipart uploads left after remount: %v", ups)
	}
	got, err := os.ReadFile(v.path("big"))
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != sha256.Sum256(old) {
		t.Fatalf("after remount big reads %d bytes, not the old content", len(got))
	}
}

// TestS3MountFio runs the fio random-write jobs with crc32c verification on
// an S3 mount (random writes into staged objects), then remounts and has
// fio verify the data again from S3 (ranged GETs, not the page cache).
func TestS3MountFio(t *testing.T) {
	mountRequireTool(t, "fio")
	g := s3StartGateway(t)
	const prefix = "fio"
	v := s3NewVolume(t, g, prefix)
	v.mount(g.flags()...)
	dir := v.path("fio")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	mountRunFio(t, mountFioRandom, dir)
	v.remount(g.flags()...)
	out := mountRunFio(t, mountFioRandom, dir, "--verify_only")
	if !strings.Contains(out, "READ:") {
		t.Errorf("fio --verify_only read nothing:\n%s", mountTail(out, 30))
	}
	mountRunFio(t, mountFioTruncate, dir)
	if ups := g.uploads(t, prefix+"/"); len(ups) != 0 {
		t.Errorf("multipart uploads left: %v", ups)
	}
}

// s3Proxy stands between kmsfs and the gateway and decides, request by
// request, to pass it on, refuse it with an S3 AccessDenied error (which
// the SDK does not retry), or hold it until the client gives up: a
// deterministic S3 fault at a chosen point of a job. Requests keep their
// Host header, so the gateway still verifies their SigV4 signatures.
type s3Proxy struct {
	endpoint string
	held     chan struct{} // closed when the first request is held
	stop     chan struct{} // closed at cleanup: held requests end

	mu       sync.Mutex
	admitted map[string]bool // objects s3RefuseWritesAfter lets through
	refused  int
	holdOnce sync.Once
}

type s3ProxyAction int

const (
	s3Pass s3ProxyAction = iota
	s3Refuse
	s3Hold
)

// s3StartProxy proxies to g, asking decide about every request.
func s3StartProxy(t *testing.T, g *s3Gateway, decide func(p *s3Proxy, r *http.Request) s3ProxyAction) *s3Proxy {
	t.Helper()
	target, err := url.Parse(g.endpoint)
	if err != nil {
		t.Fatal(err)
	}
	p := &s3Proxy{admitted: map[string]bool{}, held: make(chan struct{}), stop: make(chan struct{})}
	rp := &httputil.ReverseProxy{Director: func(r *http.Request) {
		r.URL.Scheme, r.URL.Host = target.Scheme, target.Host
	}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch decide(p, r) {
		case s3Refuse:
			p.mu.Lock()
			p.refused++
			p.mu.Unlock()
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusForbidden)
			fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>refused by the test's proxy</Message><Resource>%s</Resource></Error>`, r.URL.Path)
		case s3Hold:
			// Read the body first: only then does the server notice
			// that the client has gone (and cancel r.Context()).
			if _, err := io.Copy(io.Discard, r.Body); err != nil {
				return
			}
			p.holdOnce.Do(func() { close(p.held) })
			select {
			case <-r.Context().Done():
			case <-p.stop:
			}
		default:
			rp.ServeHTTP(w, r)
		}
	}))
	// Cleanups run last-in first-out: held requests end, then the server
	// closes (which waits for them).
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(p.stop) })
	p.endpoint = srv.URL
	return p
}

// s3RefuseWritesAfter lets requests that change objects under pathPrefix
// (a path-style URL path: /bucket/key-prefix) write the first admit such
// objects, as often as they like, and refuses writes to any other.
func s3RefuseWritesAfter(pathPrefix string, admit int) func(*s3Proxy, *http.Request) s3ProxyAction {
	return func(p *s3Proxy, r *http.Request) s3ProxyAction {
		if r.Method == http.MethodGet || r.Method == http.MethodHead || !strings.HasPrefix(r.URL.Path, pathPrefix) {
			return s3Pass
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		if !p.admitted[r.URL.Path] && len(p.admitted) >= admit {
			return s3Refuse
		}
		p.admitted[r.URL.Path] = true
		return s3Pass
	}
}

// refusedCount is how many requests the proxy has refused.
func (p *s3Proxy) refusedCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.refused
}
