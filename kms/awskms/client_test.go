package awskms

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/kmsfs/kmsfs/kms"
)

func testClient(t *testing.T, endpoint string, opts Options) *Client {
	t.Helper()
	opts.Endpoint = endpoint
	opts.Region = "us-test-1"
	opts.Credentials = credentials.NewStaticCredentialsProvider("AKID", "secret", "")
	c, err := New(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestUnreachableIsUnavailable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	c := testClient(t, "http://"+addr, Options{MaxAttempts: 2, BaseBackoff: time.Millisecond})
	_, _, err = c.Decrypt(context.Background(), "", []byte("x"), nil)
	if !errors.Is(err, kms.ErrUnavailable) || strings.Contains(err.Error(), "\n") {
		t.Fatalf("got %v", err)
	}
}

func TestTimeoutIsUnavailable(t *testing.T) {
	block := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-block }))
	defer srv.Close()
	defer close(block)
	c := testClient(t, srv.URL, Options{Timeout: 300 * time.Millisecond, MaxAttempts: 1})
	start := time.Now()
	_, err := c.GenerateRandom(context.Background(), 16)
	if !errors.Is(err, kms.ErrUnavailable) || !strings.Contains(err.Error(), "no answer") {
		t.Fatalf("got %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("call took %v despite a 300ms timeout", d)
	}
}

// TestErrorsMapToKMSCodes: an AWS error body becomes a *kms.Error with its
// code, and throttling is retried until it succeeds.
func TestErrorsMapToKMSCodesAndThrottlingRetries(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		switch r.Header.Get("X-Amz-Target") {
		case "TrentService.DisableKey":
			w.WriteHeader(400)
			w.Write([]byte(`{"__type":"DisabledException","message":"key k is disabled"}`))
		case "TrentService.GenerateRandom":
			if calls.Add(1) <= 3 {
				w.WriteHeader(400)
				w.Write([]byte(`{"__type":"ThrottlingException","message":"Rate exceeded"}`))
				return
			}
			w.Write([]byte(`{"Plaintext":"AAECAw=="}`))
		}
	}))
	defer srv.Close()
	c := testClient(t, srv.URL, Options{BaseBackoff: time.Millisecond})
	err := c.DisableKey(context.Background(), "k")
	if !errors.Is(err, kms.ErrDisabled) || err.Error() != "KMS DisableKey k: DisabledException: key k is disabled" {
		t.Fatalf("got %q", err)
	}
	b, err := c.GenerateRandom(context.Background(), 4)
	if err != nil || len(b) != 4 || calls.Load() != 4 {
		t.Fatalf("after throttling: %v %v, %d calls", b, err, calls.Load())
	}
	calls.Store(0)
	_, err = testClient(t, srv.URL, Options{MaxAttempts: 2, BaseBackoff: time.Millisecond}).GenerateRandom(context.Background(), 4)
	if !errors.Is(err, kms.ErrThrottling) {
		t.Fatalf("with 2 attempts: %v", err)
	}
}

func TestJitterBackoffBounds(t *testing.T) {
	j := jitterBackoff{base: 10 * time.Millisecond, max: 100 * time.Millisecond}
	for attempt := 1; attempt < 40; attempt++ {
		for range 20 {
			d, _ := j.BackoffDelay(attempt, nil)
			if d < 0 || d >= min(j.max, j.base<<min(attempt, 20)) {
				t.Fatalf("attempt %d: delay %v out of range", attempt, d)
			}
		}
	}
}

func TestNoCredentialsIsOneClearError(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_CONFIG_FILE", "/dev/null")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	_, err := New(context.Background(), Options{Endpoint: "http://127.0.0.1:1", Region: "us-test-1"})
	if err == nil || !strings.Contains(err.Error(), "no usable AWS credentials") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("got %v", err)
	}
}
