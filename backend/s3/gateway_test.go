package s3

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// The tests run against a real S3 server: versitygw (v1.8.0, posix backend),
// started once for the package on a free local port. It checks SigV4
// signatures, part sizes and conditional writes as S3 does.

const (
	testAccessKey = "kmsfstestkey"
	testSecretKey = "kmsfs-test-secret-key-0123456789"
	testBucket    = "kmsfs-test"
)

// testGateway is the server shared by the package's tests ("" endpoint:
// not started; skipReason says why).
var testGateway struct {
	endpoint   string
	skipReason string
	prefixes   atomic.Int64
}

func findVersitygw() string {
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p
	}
	if home, err := os.UserHomeDir(); err == nil {
		if p := filepath.Join(home, "go", "bin", "versitygw"); fileExists(p) {
			return p
		}
	}
	if gopath := os.Getenv("GOPATH"); gopath != "" {
		if p := filepath.Join(gopath, "bin", "versitygw"); fileExists(p) {
			return p
		}
	}
	return ""
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func TestMain(m *testing.M) {
	os.Exit(runWithGateway(m))
}

func runWithGateway(m *testing.M) int {
	bin := findVersitygw()
	if bin == "" {
		testGateway.skipReason = "versitygw not found in PATH or $HOME/go/bin (go install github.com/versity/versitygw/cmd/versitygw@v1.8.0)"
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "kmsfs-s3test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	root := filepath.Join(dir, "root")
	if err := os.Mkdir(root, 0o700); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	port, err := freePort()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	logf, err := os.Create(filepath.Join(dir, "versitygw.log"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer logf.Close()
	cmd := exec.Command(bin, "--port", addr, "posix", root)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+testAccessKey, "ROOT_SECRET_KEY="+testSecretKey)
	cmd.Stdout, cmd.Stderr = logf, logf
	// A test that panics ends the process without running the deferred
	// Kill below; the server must not outlive it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "start versitygw:", err)
		return 1
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(logf.Name())
			fmt.Fprintf(os.Stderr, "versitygw did not come up on %s: %v\n%s", addr, err, out)
			return 1
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The backend takes credentials from the standard chain: the
	// environment, with shared files and IMDS out of the way.
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID":           testAccessKey,
		"AWS_SECRET_ACCESS_KEY":       testSecretKey,
		"AWS_REGION":                  "us-east-1",
		"AWS_CONFIG_FILE":             filepath.Join(dir, "no-config"),
		"AWS_SHARED_CREDENTIALS_FILE": filepath.Join(dir, "no-credentials"),
		"AWS_EC2_METADATA_DISABLED":   "true",
	} {
		if err := os.Setenv(k, v); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	for _, k := range []string{"AWS_PROFILE", "AWS_SESSION_TOKEN"} {
		if err := os.Unsetenv(k); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	testGateway.endpoint = "http://" + addr
	if err := os.Mkdir(filepath.Join(root, testBucket), 0o700); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// testConfig gives a test its own prefix in the shared bucket. Without
// the gateway the test is skipped, or fails under CI=true.
func testConfig(t testing.TB) Config {
	t.Helper()
	if testGateway.endpoint == "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("missing prerequisite (CI=true, so this fails instead of skipping): %s", testGateway.skipReason)
		}
		t.Skip(testGateway.skipReason)
	}
	n := testGateway.prefixes.Add(1)
	name := strings.NewReplacer("/", "-", " ", "-").Replace(t.Name())
	return Config{
		Bucket:     testBucket,
		Prefix:     fmt.Sprintf("%s-%d", name, n),
		Endpoint:   testGateway.endpoint,
		Region:     "us-east-1",
		PathStyle:  true,
		StagingDir: t.TempDir(),
	}
}

func newTestBackend(t testing.TB, cfg Config, optFns ...func(*s3.Options)) *Backend {
	t.Helper()
	b, err := newBackend(context.Background(), cfg, optFns...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// rawGet reads an object with the SDK, bypassing the backend.
func rawGet(t testing.TB, b *Backend, key string) []byte {
	t.Helper()
	out, err := b.client.GetObject(context.Background(), &s3.GetObjectInput{Bucket: aws.String(b.bucket), Key: aws.String(key)})
	if err != nil {
		t.Fatalf("GetObject %s: %v", key, err)
	}
	defer out.Body.Close()
	data, err := readAll(out.Body)
	if err != nil {
		t.Fatalf("GetObject %s: %v", key, err)
	}
	return data
}

// rawKeys lists every key under the backend's prefix.
func rawKeys(t testing.TB, b *Backend) []string {
	t.Helper()
	var keys []string
	p := s3.NewListObjectsV2Paginator(b.client, &s3.ListObjectsV2Input{Bucket: aws.String(b.bucket), Prefix: aws.String(b.prefix)})
	for p.HasMorePages() {
		page, err := p.NextPage(context.Background())
		if err != nil {
			t.Fatalf("ListObjectsV2: %v", err)
		}
		for _, o := range page.Contents {
			keys = append(keys, strings.TrimPrefix(aws.ToString(o.Key), b.prefix))
		}
	}
	return keys
}

// pendingUploads lists the multipart uploads under the backend's prefix.
func pendingUploads(t testing.TB, b *Backend) []string {
	t.Helper()
	out, err := b.client.ListMultipartUploads(context.Background(), &s3.ListMultipartUploadsInput{
		Bucket: aws.String(b.bucket), Prefix: aws.String(b.prefix),
	})
	if err != nil {
		t.Fatalf("ListMultipartUploads: %v", err)
	}
	var ids []string
	for _, u := range out.Uploads {
		ids = append(ids, aws.ToString(u.Key)+" "+aws.ToString(u.UploadId))
	}
	return ids
}
