package metrics

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/backend/local"
	"github.com/kmsfs/kmsfs/keycache"
	"github.com/kmsfs/kmsfs/kms"
	"github.com/kmsfs/kmsfs/kms/keystore"
	"github.com/kmsfs/kmsfs/volume"
)

func newSet(t *testing.T) *Set {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	ks, err := keystore.Open(filepath.Join(dir, "ks"), keystore.Options{Warn: func(string) {}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ks.Close() })
	md, _ := ks.CreateKey(ctx, kms.CreateKeyInput{})
	os.Mkdir(filepath.Join(dir, "v"), 0o700)
	be, _ := local.New(filepath.Join(dir, "v"))
	if _, err := volume.Init(ctx, be, ks, volume.InitOptions{KeyID: md.ARN}); err != nil {
		t.Fatal(err)
	}
	cache, _ := keycache.New(ks, keycache.Limits{}, nil)
	t.Cleanup(func() { cache.Close() })
	vol, err := volume.Open(ctx, be, volume.Options{Keys: cache, PrefetchMax: -1})
	if err != nil {
		t.Fatal(err)
	}
	s := New()
	s.Attach(cache, vol)
	// One real KMS call through the cache, so counters move.
	if _, err := cache.GenerateDataKey(ctx, md.ARN, 32, kms.EncryptionContext{"a": "b"}); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestPrometheusText(t *testing.T) {
	s := newSet(t)
	s.ObserveKMS("GenerateDataKey", 3*time.Millisecond, nil)
	s.ObserveKMS("GenerateDataKey", 300*time.Millisecond, errors.New("x"))
	s.CountRetry("GenerateDataKey", nil)
	var b strings.Builder
	s.WritePrometheus(&b)
	out := b.String()
	for _, want := range []string{
		`kmsfs_kms_calls_total{operation="GenerateDataKey",result="ok"} 1`,
		`kmsfs_kms_latency_seconds_bucket{operation="GenerateDataKey",le="0.005"} 1`,
		`kmsfs_kms_latency_seconds_bucket{operation="GenerateDataKey",le="+Inf"} 2`,
		`kmsfs_kms_latency_seconds_count{operation="GenerateDataKey"} 2`,
		`kmsfs_kms_retries_total 1`,
		`# TYPE kmsfs_cache_hits_total counter`,
		`kmsfs_cache_evictions_total{reason="age"} 0`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
}

func TestSnapshotAndSocket(t *testing.T) {
	s := newSet(t)
	for i := 0; i < 100; i++ {
		s.ObserveKMS("Decrypt", time.Duration(i+1)*100*time.Microsecond, nil) // 0.1..10 ms
	}
	mnt := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := s.Serve(ctx, "", mnt, ""); err != nil {
		t.Fatal(err)
	}
	snap, err := Fetch(ctx, "", mnt)
	if err != nil {
		t.Fatal(err)
	}
	d := snap.KMSLatency["Decrypt"]
	if d.Count != 100 || d.P50Ms < 2.5 || d.P50Ms > 10 || d.P99Ms < d.P50Ms {
		t.Fatalf("latency summary %+v", d)
	}
	if snap.Cache.KMSCallCount("GenerateDataKey") != 1 {
		t.Fatalf("cache stats not in the snapshot: %+v", snap.Cache)
	}
	if txt := FormatText(snap); !strings.Contains(txt, "KMS GenerateDataKey") {
		t.Fatalf("text:\n%s", txt)
	}
	if _, err := Fetch(ctx, "", t.TempDir()); err == nil {
		t.Fatal("fetch from a directory with no mount succeeded")
	}
}
