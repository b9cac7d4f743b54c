package s3

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/kmsfs/kmsfs/backend"
)

// putLease writes a lease object as another process would, bypassing the
// backend (and its fence).
func putLease(t *testing.T, b *Backend, rec leaseRecord) {
	t.Helper()
	body, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.WithValue(bg, leaseCtxKey{}, true)
	if _, err := b.client.PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String(b.bucket), Key: aws.String(b.metaKey(leaseName)), Body: bytes.NewReader(body),
	}); err != nil {
		t.Fatalf("put lease: %v", err)
	}
}

// waitFor polls cond until it holds, failing the test after 20 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func lockWithin(b *Backend, d time.Duration) (func() error, error) {
	ctx, cancel := context.WithTimeout(bg, d)
	defer cancel()
	return b.LockVolume(ctx)
}

func TestLeaseExcludesSecondWriter(t *testing.T) {
	cfg := testConfig(t)
	first, second := newTestBackend(t, cfg), newTestBackend(t, cfg)
	release, err := first.LockVolume(bg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = lockWithin(second, 1500*time.Millisecond)
	if !errors.Is(err, backend.ErrVolumeBusy) {
		t.Fatalf("second LockVolume = %v, want ErrVolumeBusy", err)
	}
	host, _ := os.Hostname()
	for _, want := range []string{"s3://" + cfg.Bucket + "/" + cfg.Prefix, "host " + host, "pid "} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	// The holder keeps writing.
	create(t, first, "by-first", []byte("one"))

	if err := release(); err != nil {
		t.Fatalf("release: %v", err)
	}
	for _, k := range rawKeys(t, first) {
		if k == MetaDir+"/"+leaseName {
			t.Fatal("release left the lease object")
		}
	}
	release2, err := lockWithin(second, 5*time.Second)
	if err != nil {
		t.Fatalf("LockVolume after release: %v", err)
	}
	defer release2()
}

func TestLeaseTakesOverExpired(t *testing.T) {
	cfg := testConfig(t)
	b := newTestBackend(t, cfg)
	putLease(t, b, leaseRecord{Version: 1, Holder: "x", Host: "elsewhere.example", PID: 4242, TTLSec: 2})
	// Live for 2 s after its Last-Modified (one-second resolution): refused at
	// first, taken over once the server's clock says it expired.
	if _, err := lockWithin(b, 200*time.Millisecond); !errors.Is(err, backend.ErrVolumeBusy) || !strings.Contains(err.Error(), "elsewhere.example") {
		t.Fatalf("LockVolume on a live lease = %v", err)
	}
	release, err := lockWithin(b, 10*time.Second)
	if err != nil {
		t.Fatalf("LockVolume on an expired lease: %v", err)
	}
	defer release()
	var rec leaseRecord
	if err := json.Unmarshal(rawGet(t, b, b.metaKey(leaseName)), &rec); err != nil || rec.PID != os.Getpid() {
		t.Fatalf("lease after takeover: %+v, %v", rec, err)
	}
}

// A lease whose process is gone on this very machine is taken over at once.
func TestLeaseTakesOverOrphanOnSameHost(t *testing.T) {
	cfg := testConfig(t)
	b := newTestBackend(t, cfg)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	putLease(t, b, leaseRecord{Version: 1, Holder: "x", Host: hostname(), BootID: bootID(), PID: dead.Process.Pid, TTLSec: 3600})
	release, err := lockWithin(b, 2*time.Second)
	if err != nil {
		t.Fatalf("LockVolume over a dead process's lease: %v", err)
	}
	defer release()
	// A live process's lease, even with the same boot, is respected.
	putLease(t, b, leaseRecord{Version: 1, Holder: "y", Host: hostname(), BootID: bootID(), PID: os.Getppid(), TTLSec: 3600})
	other := newTestBackend(t, cfg)
	if _, err := lockWithin(other, time.Second); !errors.Is(err, backend.ErrVolumeBusy) {
		t.Fatalf("LockVolume over a live process's lease = %v", err)
	}
}

func TestLeaseRefusesUnreadableObject(t *testing.T) {
	cfg := testConfig(t)
	b := newTestBackend(t, cfg)
	ctx := context.WithValue(bg, leaseCtxKey{}, true)
	if _, err := b.client.PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String(b.bucket), Key: aws.String(b.metaKey(leaseName)), Body: strings.NewReader("not json"),
	}); err != nil {
		t.Fatal(err)
	}
	_, err := lockWithin(b, 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "unreadable lease object") {
		t.Fatalf("LockVolume = %v, want an unreadable-lease error", err)
	}
	if got := string(rawGet(t, b, b.metaKey(leaseName))); got != "not json" {
		t.Fatalf("the lease object was changed to %q", got)
	}
}

// A holder whose lease another process took over refuses every write (EIO)
// rather than overwrite the new writer's files.
func TestLeaseLostFencesWrites(t *testing.T) {
	cfg := testConfig(t)
	cfg.LeaseTTL = 2 * time.Second // renewed every 500 ms
	b := newTestBackend(t, cfg)
	release, err := b.LockVolume(bg)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	create(t, b, "before", []byte("kept"))
	putLease(t, b, leaseRecord{Version: 1, Holder: "thief", Host: "elsewhere.example", PID: 1, TTLSec: 60})
	waitFor(t, "the renewal to find the lease gone", func() bool { return b.fence.check() != nil })

	wantErrno(t, b.Mkdir(bg, "after", 0o755, nil), syscall.EIO)
	wantErrno(t, b.Unlink(bg, "before"), syscall.EIO)
	f, err := b.Open(bg, "before", syscall.O_RDWR, 0, nil)
	if err == nil {
		if _, err = f.WriteAt([]byte("changed"), 0); err == nil {
			err = f.Close()
		} else {
			f.Close()
		}
	}
	wantErrno(t, err, syscall.EIO)
	if got := string(rawGet(t, b, b.prefix+"before")); got != "kept" {
		t.Fatalf("object changed after the lease was lost: %q", got)
	}
	// Release leaves the new holder's lease alone.
	if err := release(); err != nil {
		t.Fatal(err)
	}
	var rec leaseRecord
	if err := json.Unmarshal(rawGet(t, b, b.metaKey(leaseName)), &rec); err != nil || rec.Holder != "thief" {
		t.Fatalf("lease after release: %+v, %v", rec, err)
	}
}

// A holder that cannot renew (its clock says the lease is half gone) stops
// writing until a renewal succeeds again.
func TestLeaseNotRenewedFencesWritesUntilRenewed(t *testing.T) {
	cfg := testConfig(t)
	cfg.LeaseTTL = 2 * time.Second
	b := newTestBackend(t, cfg)
	release, err := b.LockVolume(bg)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	// Jump past the deadline: writes stop...
	b.fence.mu.Lock()
	b.fence.validUntil = time.Now().Add(-time.Millisecond)
	b.fence.mu.Unlock()
	wantErrno(t, b.Mkdir(bg, "d", 0o755, nil), syscall.EIO)
	// ...and resume with the next renewal.
	waitFor(t, "a renewal", func() bool { return b.fence.check() == nil })
	if err := b.Mkdir(bg, "d", 0o755, nil); err != nil {
		t.Fatalf("Mkdir after the renewal: %v", err)
	}
}

// A second read-write process that is refused must not abort the holder's
// multipart uploads on its way (New defers that to a held lease).
func TestLeaseRefusedWriterLeavesUploads(t *testing.T) {
	cfg := testConfig(t)
	first := newTestBackend(t, cfg)
	release, err := first.LockVolume(bg)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	up, err := first.client.CreateMultipartUpload(bg, &s3.CreateMultipartUploadInput{Bucket: aws.String(first.bucket), Key: aws.String(first.prefix + "big")})
	if err != nil {
		t.Fatal(err)
	}
	defer first.client.AbortMultipartUpload(bg, &s3.AbortMultipartUploadInput{Bucket: aws.String(first.bucket), Key: aws.String(first.prefix + "big"), UploadId: up.UploadId})
	second := newTestBackend(t, cfg)
	if _, err := lockWithin(second, 700*time.Millisecond); !errors.Is(err, backend.ErrVolumeBusy) {
		t.Fatalf("second LockVolume = %v", err)
	}
	if ups := pendingUploads(t, first); len(ups) != 1 {
		t.Fatalf("the holder's upload was touched: %v", ups)
	}
}
