// Package metrics exposes a mount's counters: Prometheus text format on
// /metrics (--metrics-addr, and the stats socket) and JSON on /stats.json
// for `kmsfs stats MOUNTPOINT`. It reads the key cache and volume counters
// and keeps the KMS latency histograms itself.
package metrics

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kmsfs/kmsfs/keycache"
	"github.com/kmsfs/kmsfs/volume"
)

// latencyBounds are the histogram bucket upper bounds in seconds: from an
// in-process keystore (microseconds) to a slow remote KMS (seconds).
var latencyBounds = []float64{0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}

// Histogram counts durations into fixed buckets.
type Histogram struct {
	counts []atomic.Uint64 // one per bound, plus +Inf
	sumNs  atomic.Uint64
	count  atomic.Uint64
}

func newHistogram() *Histogram {
	return &Histogram{counts: make([]atomic.Uint64, len(latencyBounds)+1)}
}

// Observe records one duration.
func (h *Histogram) Observe(d time.Duration) {
	s := d.Seconds()
	i := sort.SearchFloat64s(latencyBounds, s)
	h.counts[i].Add(1)
	h.sumNs.Add(uint64(d))
	h.count.Add(1)
}

// Set is the metrics of one mount.
type Set struct {
	cache *keycache.Cache
	vol   *volume.Volume

	mu      sync.Mutex
	latency map[string]*Histogram // by KMS operation
	retries atomic.Uint64
}

// New returns an empty metrics set; Attach it to the cache and volume once
// they exist (the KMS hooks are needed before the cache is built).
func New() *Set {
	return &Set{latency: map[string]*Histogram{}}
}

// Attach names the cache and volume whose counters the set reports.
func (s *Set) Attach(cache *keycache.Cache, vol *volume.Volume) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cache, s.vol = cache, vol
}

// ObserveKMS records one KMS call (a kmsmw.Observe hook).
func (s *Set) ObserveKMS(op string, d time.Duration, err error) {
	s.mu.Lock()
	h := s.latency[op]
	if h == nil {
		h = newHistogram()
		s.latency[op] = h
	}
	s.mu.Unlock()
	h.Observe(d)
}

// CountRetry records one retried KMS call (a kmsmw.Retry hook).
func (s *Set) CountRetry(op string, err error) { s.retries.Add(1) }

// Snapshot is what /stats.json returns.
type Snapshot struct {
	Cache      keycache.Stats            `json:"cache"`
	Volume     volume.Stats              `json:"volume"`
	KMSRetries uint64                    `json:"kms_retries"`
	KMSLatency map[string]LatencySummary `json:"kms_latency"`
}

// LatencySummary is a histogram reduced to what a person reads.
type LatencySummary struct {
	Count  uint64  `json:"count"`
	MeanMs float64 `json:"mean_ms"`
	P50Ms  float64 `json:"p50_ms"`
	P99Ms  float64 `json:"p99_ms"`
}

func (h *Histogram) summary() LatencySummary {
	n := h.count.Load()
	out := LatencySummary{Count: n}
	if n == 0 {
		return out
	}
	out.MeanMs = float64(h.sumNs.Load()) / float64(n) / 1e6
	quantile := func(q float64) float64 {
		want := uint64(float64(n) * q)
		var acc uint64
		for i := range h.counts {
			acc += h.counts[i].Load()
			if acc > want {
				if i < len(latencyBounds) {
					return latencyBounds[i] * 1000
				}
				return latencyBounds[len(latencyBounds)-1] * 1000
			}
		}
		return 0
	}
	out.P50Ms, out.P99Ms = quantile(0.5), quantile(0.99)
	return out
}

// Snapshot takes the current values.
func (s *Set) Snapshot() Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	snap := Snapshot{Cache: s.cache.Stats(), Volume: s.vol.Stats(), KMSRetries: s.retries.Load(), KMSLatency: map[string]LatencySummary{}}
	for op, h := range s.latency {
		snap.KMSLatency[op] = h.summary()
	}
	return snap
}

// WritePrometheus writes the metrics in the Prometheus text format.
func (s *Set) WritePrometheus(w io.Writer) {
	s.mu.Lock()
	cs := s.cache.Stats()
	vs := s.vol.Stats()
	s.mu.Unlock()
	metric := func(name, typ, help string) {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
	}
	metric("kmsfs_kms_calls_total", "counter", "KMS calls by operation and result.")
	var ops []string
	for op := range cs.KMSCalls {
		ops = append(ops, op)
	}
	sort.Strings(ops)
	for _, op := range ops {
		var results []string
		for r := range cs.KMSCalls[op] {
			results = append(results, r)
		}
		sort.Strings(results)
		for _, r := range results {
			fmt.Fprintf(w, "kmsfs_kms_calls_total{operation=%q,result=%q} %d\n", op, r, cs.KMSCalls[op][r])
		}
	}
	metric("kmsfs_kms_retries_total", "counter", "KMS calls retried after throttling or an outage.")
	fmt.Fprintf(w, "kmsfs_kms_retries_total %d\n", s.retries.Load())
	metric("kmsfs_kms_latency_seconds", "histogram", "KMS call latency by operation.")
	s.mu.Lock()
	var lops []string
	for op := range s.latency {
		lops = append(lops, op)
	}
	sort.Strings(lops)
	for _, op := range lops {
		h := s.latency[op]
		var acc uint64
		for i, b := range latencyBounds {
			acc += h.counts[i].Load()
			fmt.Fprintf(w, "kmsfs_kms_latency_seconds_bucket{operation=%q,le=\"%g\"} %d\n", op, b, acc)
		}
		acc += h.counts[len(latencyBounds)].Load()
		fmt.Fprintf(w, "kmsfs_kms_latency_seconds_bucket{operation=%q,le=\"+Inf\"} %d\n", op, acc)
		fmt.Fprintf(w, "kmsfs_kms_latency_seconds_sum{operation=%q} %g\n", op, float64(h.sumNs.Load())/1e9)
		fmt.Fprintf(w, "kmsfs_kms_latency_seconds_count{operation=%q} %d\n", op, h.count.Load())
	}
	s.mu.Unlock()
	for _, c := range []struct {
		name, help string
		v          uint64
	}{
		{"kmsfs_cache_hits_total", "Data key lookups served from the key cache.", cs.Hits},
		{"kmsfs_cache_misses_total", "Data key lookups that needed the KMS.", cs.Misses},
		{"kmsfs_cache_coalesced_total", "Misses that shared another caller's KMS call.", cs.Coalesced},
		{"kmsfs_cache_grace_hits_total", "Expired keys served while the KMS was unreachable.", cs.GraceHits},
		{"kmsfs_bytes_read_total", "Plaintext bytes read.", vs.BytesRead},
		{"kmsfs_bytes_written_total", "Plaintext bytes written.", vs.BytesWritten},
		{"kmsfs_files_created_total", "Files that got a new data key.", vs.FilesCreated},
		{"kmsfs_files_opened_total", "File opens.", vs.FilesOpened},
		{"kmsfs_errors_total", "Failures reported to applications (EIO, EACCES).", vs.Errors},
		{"kmsfs_auth_failures_total", "Blocks or headers that failed authentication.", vs.AuthFailures},
	} {
		metric(c.name, "counter", c.help)
		fmt.Fprintf(w, "%s %d\n", c.name, c.v)
	}
	metric("kmsfs_cache_evictions_total", "counter", "Key cache evictions by reason.")
	for _, e := range []struct {
		reason string
		v      uint64
	}{{"age", cs.Evictions.Age}, {"uses", cs.Evictions.Uses}, {"bytes", cs.Evictions.Bytes}, {"capacity", cs.Evictions.Capacity}, {"explicit", cs.Evictions.Explicit}} {
		fmt.Fprintf(w, "kmsfs_cache_evictions_total{reason=%q} %d\n", e.reason, e.v)
	}
	metric("kmsfs_cache_entries", "gauge", "Keys in the key cache.")
	fmt.Fprintf(w, "kmsfs_cache_entries %d\n", cs.Entries)
	metric("kmsfs_prefetched_keys", "gauge", "Data keys waiting in the per-object prefetch pool.")
	fmt.Fprintf(w, "kmsfs_prefetched_keys %d\n", vs.PrefetchedKeys)
}

// Handler serves /metrics (Prometheus) and /stats.json.
func (s *Set) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		s.WritePrometheus(w)
	})
	mux.HandleFunc("/stats.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(s.Snapshot())
	})
	return mux
}

// FormatText renders a snapshot for `kmsfs stats`.
func FormatText(s Snapshot) string {
	var b strings.Builder
	total := func(op string) uint64 { return s.Cache.KMSCallCount(op) }
	fmt.Fprintf(&b, "files created   %d\nfiles opened    %d\nbytes read      %d\nbytes written   %d\n",
		s.Volume.FilesCreated, s.Volume.FilesOpened, s.Volume.BytesRead, s.Volume.BytesWritten)
	fmt.Fprintf(&b, "errors          %d (authentication failures %d)\n", s.Volume.Errors, s.Volume.AuthFailures)
	lookups := s.Cache.Hits + s.Cache.Misses
	rate := 0.0
	if lookups > 0 {
		rate = 100 * float64(s.Cache.Hits) / float64(lookups)
	}
	fmt.Fprintf(&b, "key cache       %d hits, %d misses (%.1f%% hit rate), %d entries, %d evictions\n",
		s.Cache.Hits, s.Cache.Misses, rate, s.Cache.Entries, s.Cache.Evictions.Total())
	fmt.Fprintf(&b, "prefetched keys %d\nKMS retries     %d\n", s.Volume.PrefetchedKeys, s.KMSRetries)
	var ops []string
	for op := range s.Cache.KMSCalls {
		ops = append(ops, op)
	}
	sort.Strings(ops)
	for _, op := range ops {
		l := s.KMSLatency[op]
		fmt.Fprintf(&b, "KMS %-31s %6d calls  p50 %.2f ms  p99 %.2f ms  %v\n", op, total(op), l.P50Ms, l.P99Ms, s.Cache.KMSCalls[op])
	}
	return b.String()
}

// SocketPath is where a mount serves its metrics for `kmsfs stats`: a unix
// socket named after a hash of the absolute mount point, under /run/kmsfs
// for root and runtimeDir/kmsfs (else the temp dir) for others. runtimeDir
// is $XDG_RUNTIME_DIR, which the command reads.
func SocketPath(runtimeDir, mountpoint string) string {
	sum := sha256.Sum256([]byte(filepath.Clean(mountpoint)))
	dir := "/run/kmsfs"
	if os.Getuid() != 0 {
		if runtimeDir != "" {
			dir = filepath.Join(runtimeDir, "kmsfs")
		} else {
			dir = filepath.Join(os.TempDir(), fmt.Sprintf("kmsfs-%d", os.Getuid()))
		}
	}
	return filepath.Join(dir, hex.EncodeToString(sum[:8])+".sock")
}

// Fetch asks the mount at mountpoint for its snapshot over its socket
// (runtimeDir as for SocketPath).
func Fetch(ctx context.Context, runtimeDir, mountpoint string) (Snapshot, error) {
	sock := SocketPath(runtimeDir, mountpoint)
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	var snap Snapshot
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://kmsfs/stats.json", nil)
	if err != nil {
		return snap, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return snap, fmt.Errorf("no kmsfs mount answering at %s (socket %s): %w", mountpoint, sock, err)
	}
	defer resp.Body.Close()
	err = json.NewDecoder(resp.Body).Decode(&snap)
	return snap, err
}

// Serve listens on the stats socket of mountpoint (runtimeDir as for
// SocketPath), and on addr if not empty, until ctx ends.
func (s *Set) Serve(ctx context.Context, runtimeDir, mountpoint, addr string) error {
	sock := SocketPath(runtimeDir, mountpoint)
	if err := os.MkdirAll(filepath.Dir(sock), 0o700); err != nil {
		return err
	}
	os.Remove(sock) // a stale socket of a mount that died
	ul, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("stats socket: %w", err)
	}
	listeners := []net.Listener{ul}
	if addr != "" {
		tl, err := net.Listen("tcp", addr)
		if err != nil {
			ul.Close()
			return fmt.Errorf("--metrics-addr %s: %w", addr, err)
		}
		listeners = append(listeners, tl)
	}
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second}
	for _, l := range listeners {
		go srv.Serve(l)
	}
	go func() {
		<-ctx.Done()
		srv.Close()
		os.Remove(sock)
	}()
	return nil
}
