package metrics

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

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

// TestExposition: the families and labels the hand-written exposition had
// are all there, with their types, and the KMS histogram and counters hold
// exactly what was observed.
func TestExposition(t *testing.T) {
	s := newSet(t)
	// Durations whose seconds are exact binary fractions, so the sum is exact.
	s.ObserveKMS("GenerateDataKey", 3906250*time.Nanosecond, nil) // 1/256 s
	s.ObserveKMS("GenerateDataKey", 250*time.Millisecond, errors.New("x"))
	s.CountRetry("GenerateDataKey", nil)
	const want = `
# HELP kmsfs_kms_calls_total KMS calls by operation and result.
# TYPE kmsfs_kms_calls_total counter
kmsfs_kms_calls_total{operation="GenerateDataKey",result="ok"} 1
# HELP kmsfs_kms_retries_total KMS calls retried after throttling or an outage.
# TYPE kmsfs_kms_retries_total counter
kmsfs_kms_retries_total 1
# HELP kmsfs_kms_latency_seconds KMS call latency by operation.
# TYPE kmsfs_kms_latency_seconds histogram
kmsfs_kms_latency_seconds_bucket{operation="GenerateDataKey",le="0.0001"} 0
kmsfs_kms_latency_seconds_bucket{operation="GenerateDataKey",le="0.0005"} 0
kmsfs_kms_latency_seconds_bucket{operation="GenerateDataKey",le="0.001"} 0
kmsfs_kms_latency_seconds_bucket{operation="GenerateDataKey",le="0.0025"} 0
kmsfs_kms_latency_seconds_bucket{operation="GenerateDataKey",le="0.005"} 1
kmsfs_kms_latency_seconds_bucket{operation="GenerateDataKey",le="0.01"} 1
kmsfs_kms_latency_seconds_bucket{operation="GenerateDataKey",le="0.025"} 1
kmsfs_kms_latency_seconds_bucket{operation="GenerateDataKey",le="0.05"} 1
kmsfs_kms_latency_seconds_bucket{operation="GenerateDataKey",le="0.1"} 1
kmsfs_kms_latency_seconds_bucket{operation="GenerateDataKey",le="0.25"} 2
kmsfs_kms_latency_seconds_bucket{operation="GenerateDataKey",le="0.5"} 2
kmsfs_kms_latency_seconds_bucket{operation="GenerateDataKey",le="1"} 2
kmsfs_kms_latency_seconds_bucket{operation="GenerateDataKey",le="2.5"} 2
kmsfs_kms_latency_seconds_bucket{operation="GenerateDataKey",le="5"} 2
kmsfs_kms_latency_seconds_bucket{operation="GenerateDataKey",le="+Inf"} 2
kmsfs_kms_latency_seconds_sum{operation="GenerateDataKey"} 0.25390625
kmsfs_kms_latency_seconds_count{operation="GenerateDataKey"} 2
# HELP kmsfs_cache_evictions_total Key cache evictions by reason.
# TYPE kmsfs_cache_evictions_total counter
kmsfs_cache_evictions_total{reason="age"} 0
kmsfs_cache_evictions_total{reason="bytes"} 0
kmsfs_cache_evictions_total{reason="capacity"} 0
kmsfs_cache_evictions_total{reason="explicit"} 0
kmsfs_cache_evictions_total{reason="uses"} 0
# HELP kmsfs_errors_total Failures reported to applications (EIO, EACCES).
# TYPE kmsfs_errors_total counter
kmsfs_errors_total 0
`
	if err := testutil.GatherAndCompare(s.Registry(), strings.NewReader(want),
		"kmsfs_kms_calls_total", "kmsfs_kms_retries_total", "kmsfs_kms_latency_seconds",
		"kmsfs_cache_evictions_total", "kmsfs_errors_total"); err != nil {
		t.Fatal(err)
	}

	// Every family of the hand-written format, with its type.
	families, err := s.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	types := map[string]dto.MetricType{}
	for _, f := range families {
		types[f.GetName()] = f.GetType()
	}
	for name, typ := range map[string]dto.MetricType{
		"kmsfs_kms_calls_total": dto.MetricType_COUNTER, "kmsfs_kms_retries_total": dto.MetricType_COUNTER,
		"kmsfs_kms_latency_seconds": dto.MetricType_HISTOGRAM, "kmsfs_cache_hits_total": dto.MetricType_COUNTER,
		"kmsfs_cache_misses_total": dto.MetricType_COUNTER, "kmsfs_cache_coalesced_total": dto.MetricType_COUNTER,
		"kmsfs_cache_grace_hits_total": dto.MetricType_COUNTER, "kmsfs_bytes_read_total": dto.MetricType_COUNTER,
		"kmsfs_bytes_written_total": dto.MetricType_COUNTER, "kmsfs_files_created_total": dto.MetricType_COUNTER,
		"kmsfs_files_opened_total": dto.MetricType_COUNTER, "kmsfs_errors_total": dto.MetricType_COUNTER,
		"kmsfs_auth_failures_total": dto.MetricType_COUNTER, "kmsfs_cache_evictions_total": dto.MetricType_COUNTER,
		"kmsfs_cache_entries": dto.MetricType_GAUGE, "kmsfs_prefetched_keys": dto.MetricType_GAUGE,
		// The standard collectors.
		"go_goroutines": dto.MetricType_GAUGE, "process_cpu_seconds_total": dto.MetricType_COUNTER,
	} {
		if got, ok := types[name]; !ok || got != typ {
			t.Errorf("%s: type %v (present %v), want %v", name, got, ok, typ)
		}
	}
}

// TestFUSELatency: attaching the set makes it the volume's request
// observer; a recorder resolved once per operation feeds that operation's
// histogram and allocates nothing; so does a KMS observation.
func TestFUSELatency(t *testing.T) {
	s := newSet(t)
	if got := s.attachedVolume().RequestObserver(); got != volume.RequestObserver(s) {
		t.Fatalf("the volume's request observer is %v, not the set", got)
	}
	read, lookup := s.RequestRecorder("read"), s.RequestRecorder("lookup")
	read(40 * time.Microsecond)
	read(3 * time.Millisecond)
	lookup(20 * time.Microsecond)
	if n := testutil.CollectAndCount(s.fuseLatency, "kmsfs_fuse_latency_seconds"); n != 2 {
		t.Fatalf("%d FUSE latency series, want 2 (read, lookup)", n)
	}
	const want = `
# HELP kmsfs_fuse_latency_seconds FUSE request latency (time to answer the kernel) by operation.
# TYPE kmsfs_fuse_latency_seconds histogram
kmsfs_fuse_latency_seconds_bucket{operation="lookup",le="1e-05"} 0
kmsfs_fuse_latency_seconds_bucket{operation="lookup",le="2.5e-05"} 1
kmsfs_fuse_latency_seconds_bucket{operation="lookup",le="5e-05"} 1
kmsfs_fuse_latency_seconds_bucket{operation="lookup",le="0.0001"} 1
kmsfs_fuse_latency_seconds_bucket{operation="lookup",le="0.00025"} 1
kmsfs_fuse_latency_seconds_bucket{operation="lookup",le="0.0005"} 1
kmsfs_fuse_latency_seconds_bucket{operation="lookup",le="0.001"} 1
kmsfs_fuse_latency_seconds_bucket{operation="lookup",le="0.0025"} 1
kmsfs_fuse_latency_seconds_bucket{operation="lookup",le="0.005"} 1
kmsfs_fuse_latency_seconds_bucket{operation="lookup",le="0.01"} 1
kmsfs_fuse_latency_seconds_bucket{operation="lookup",le="0.025"} 1
kmsfs_fuse_latency_seconds_bucket{operation="lookup",le="0.05"} 1
kmsfs_fuse_latency_seconds_bucket{operation="lookup",le="0.1"} 1
kmsfs_fuse_latency_seconds_bucket{operation="lookup",le="0.25"} 1
kmsfs_fuse_latency_seconds_bucket{operation="lookup",le="0.5"} 1
kmsfs_fuse_latency_seconds_bucket{operation="lookup",le="1"} 1
kmsfs_fuse_latency_seconds_bucket{operation="lookup",le="2.5"} 1
kmsfs_fuse_latency_seconds_bucket{operation="lookup",le="5"} 1
kmsfs_fuse_latency_seconds_bucket{operation="lookup",le="+Inf"} 1
kmsfs_fuse_latency_seconds_sum{operation="lookup"} 2e-05
kmsfs_fuse_latency_seconds_count{operation="lookup"} 1
`
	if err := testutil.CollectAndCompare(filterOp{s.fuseLatency, "lookup"}, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	if allocs := testing.AllocsPerRun(1000, func() { read(time.Millisecond) }); allocs != 0 {
		t.Errorf("recording a FUSE request allocates %.1f times", allocs)
	}
	s.ObserveKMS("Decrypt", time.Millisecond, nil)
	if allocs := testing.AllocsPerRun(1000, func() { s.ObserveKMS("Decrypt", time.Millisecond, nil) }); allocs != 0 {
		t.Errorf("recording a KMS call allocates %.1f times", allocs)
	}
	snap := s.Snapshot()
	// Two reads above, 1000 and AllocsPerRun's warm-up run of 1 ms.
	if r := snap.FUSELatency["read"]; r.Count != 1003 || r.P50Ms != 1 || r.P99Ms != 1 {
		t.Errorf("read latency summary %+v", r)
	}
	if txt := FormatText(snap); !strings.Contains(txt, "FUSE lookup") {
		t.Errorf("no FUSE line in:\n%s", txt)
	}
}

// filterOp is the series of one operation of a histogram vector.
type filterOp struct {
	*prometheus.HistogramVec
	op string
}

func (f filterOp) Collect(ch chan<- prometheus.Metric) {
	ch <- f.WithLabelValues(f.op).(prometheus.Histogram)
}

// TestHandler: /metrics serves the registry in the text format, the
// process and Go collectors included; a set not attached yet serves too.
func TestHandler(t *testing.T) {
	for _, attached := range []bool{true, false} {
		s := New()
		if attached {
			s = newSet(t)
		}
		srv := httptest.NewServer(s.Handler())
		resp, err := http.Get(srv.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		srv.Close()
		if err != nil {
			t.Fatal(err)
		}
		if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || !strings.HasPrefix(ct, "text/plain") {
			t.Fatalf("attached %v: status %d, content type %q", attached, resp.StatusCode, ct)
		}
		wants := []string{"\ngo_goroutines ", "\nprocess_cpu_seconds_total "}
		if attached {
			wants = append(wants, `kmsfs_kms_calls_total{operation="GenerateDataKey",result="ok"} 1`, "\nkmsfs_cache_entries ")
		}
		for _, want := range wants {
			if !strings.Contains(string(body), want) {
				t.Errorf("attached %v: %q missing from /metrics:\n%s", attached, want, body)
			}
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
	if len(snap.FUSELatency) != 0 {
		t.Fatalf("FUSE latency of a volume never mounted: %+v", snap.FUSELatency)
	}
	if txt := FormatText(snap); !strings.Contains(txt, "KMS GenerateDataKey") {
		t.Fatalf("text:\n%s", txt)
	}
	if _, err := Fetch(ctx, "", t.TempDir()); err == nil {
		t.Fatal("fetch from a directory with no mount succeeded")
	}
}

// attachedVolume is the volume the set reports.
func (s *Set) attachedVolume() *volume.Volume {
	_, vol := s.attached()
	return vol
}

// BenchmarkRequestRecorder is what timing one FUSE request adds to it
// (besides two clock reads): one Observe on a resolved histogram.
func BenchmarkRequestRecorder(b *testing.B) {
	rec := New().RequestRecorder("read")
	b.ReportAllocs()
	for b.Loop() {
		rec(37 * time.Microsecond)
	}
}

// A mount with KMS replicas reports where its calls go: in the snapshot,
// in `kmsfs stats` text, and as the kmsfs_kms_primary_unreachable gauge.
func TestFailoverState(t *testing.T) {
	s := newSet(t)
	if s.Snapshot().KMSFailover != nil {
		t.Fatal("a failover state without replicas")
	}
	st := FailoverState{PrimaryRegion: "eu-west-1", Replicas: []string{"us-east-2"}}
	s.AttachFailover(func() FailoverState { return st })
	gauge := func() string {
		rec := httptest.NewRecorder()
		s.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		for _, line := range strings.Split(rec.Body.String(), "\n") {
			if strings.HasPrefix(line, "kmsfs_kms_primary_unreachable ") {
				return strings.TrimPrefix(line, "kmsfs_kms_primary_unreachable ")
			}
		}
		t.Fatalf("no kmsfs_kms_primary_unreachable in /metrics:\n%s", rec.Body.String())
		return ""
	}
	if txt := FormatText(s.Snapshot()); !strings.Contains(txt, "KMS failover    primary eu-west-1 answering (replicas us-east-2)") || gauge() != "0" {
		t.Fatalf("primary up: gauge %s, text:\n%s", gauge(), txt)
	}
	st.PrimaryDown, st.DownSince = true, time.Date(2026, 12, 7, 19, 0, 0, 0, time.UTC)
	if txt := FormatText(s.Snapshot()); !strings.Contains(txt, "primary eu-west-1 unreachable since 2026-12-07T19:00:00Z; no replica has answered yet") || gauge() != "1" {
		t.Fatalf("primary down: gauge %s, text:\n%s", gauge(), txt)
	}
	st.Replica = "us-east-2"
	if txt := FormatText(s.Snapshot()); !strings.Contains(txt, "unreachable since 2026-12-07T19:00:00Z; replica us-east-2 answering") {
		t.Fatalf("replica answering, text:\n%s", txt)
	}
}
