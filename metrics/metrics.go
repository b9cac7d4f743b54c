// Package metrics exposes a mount's counters: the Prometheus exposition
// format on /metrics (--metrics-addr, and the stats socket) and JSON on
// /stats.json for `kmsfs stats MOUNTPOINT`.
//
// Every Set has a Prometheus registry of its own (prometheus/client_golang,
// never the global default one): the key cache and volume counters, read at
// each scrape; latency histograms of KMS calls (fed by a kmsmw.Observe hook)
// and of FUSE requests (fed through the volume's request observer, which
// the mount resolves per operation once); and the standard process and Go
// runtime collectors.
package metrics

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/kmsfs/kmsfs/keycache"
	"github.com/kmsfs/kmsfs/volume"
)

// kmsBuckets are the KMS latency bucket upper bounds in seconds: from an
// in-process keystore (microseconds) to a slow remote KMS (seconds).
func kmsBuckets() []float64 {
	return []float64{0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}
}

// fuseBuckets are the FUSE request latency bucket upper bounds in seconds:
// from a lookup answered from memory (microseconds) to a 1 MiB write that
// waits for a KMS call or an S3 upload (seconds).
func fuseBuckets() []float64 {
	return []float64{0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}
}

// Set is the metrics of one mount.
type Set struct {
	reg *prometheus.Registry

	mu    sync.Mutex
	cache *keycache.Cache
	vol   *volume.Volume

	kmsLatency  *prometheus.HistogramVec
	fuseLatency *prometheus.HistogramVec
	retries     atomic.Uint64

	// The histograms of each operation, resolved once (KMS: at its first
	// call; FUSE: when the mount starts), so that an observation costs no
	// label lookup; Snapshot reads them back.
	histMu sync.RWMutex
	kmsOps map[string]prometheus.Histogram
	fuseOp map[string]prometheus.Histogram

	failover func() FailoverState // set by AttachFailover before serving
}

// AttachFailover reports a mount's multi-Region KMS failover: its state in
// the snapshot (`kmsfs stats`) and the gauge kmsfs_kms_primary_unreachable.
// Call it once, before the set is served.
func (s *Set) AttachFailover(state func() FailoverState) {
	s.failover = state
	s.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "kmsfs_kms_primary_unreachable",
		Help: "1 while the volume's primary KMS is unreachable and its keys are unwrapped with replicas.",
	}, func() float64 {
		if state().PrimaryDown {
			return 1
		}
		return 0
	}))
}

// New returns a metrics set with its own registry; Attach it to the cache
// and volume once they exist (the KMS hooks are needed before the cache is
// built).
func New() *Set {
	s := &Set{
		reg: prometheus.NewRegistry(),
		kmsLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "kmsfs_kms_latency_seconds", Help: "KMS call latency by operation.", Buckets: kmsBuckets(),
		}, []string{"operation"}),
		fuseLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "kmsfs_fuse_latency_seconds", Help: "FUSE request latency (time to answer the kernel) by operation.", Buckets: fuseBuckets(),
		}, []string{"operation"}),
		kmsOps: map[string]prometheus.Histogram{},
		fuseOp: map[string]prometheus.Histogram{},
	}
	s.reg.MustRegister(
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector(),
		s.kmsLatency,
		s.fuseLatency,
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "kmsfs_kms_retries_total", Help: "KMS calls retried after throttling or an outage.",
		}, func() float64 { return float64(s.retries.Load()) }),
		newCounters(s),
	)
	return s
}

// Registry is the set's registry, for serving or testing.
func (s *Set) Registry() *prometheus.Registry { return s.reg }

// Attach names the cache and volume whose counters the set reports, and
// makes the set the volume's request observer, so that a mount of vol
// started afterwards reports its FUSE request latencies here.
func (s *Set) Attach(cache *keycache.Cache, vol *volume.Volume) {
	s.mu.Lock()
	s.cache, s.vol = cache, vol
	s.mu.Unlock()
	if vol != nil {
		vol.ObserveRequests(s)
	}
}

// attached returns the cache and volume (nil before Attach).
func (s *Set) attached() (*keycache.Cache, *volume.Volume) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cache, s.vol
}

// ObserveKMS records one KMS call (a kmsmw.Observe hook).
func (s *Set) ObserveKMS(op string, d time.Duration, err error) {
	s.kmsHistogram(op).Observe(d.Seconds())
}

func (s *Set) kmsHistogram(op string) prometheus.Histogram {
	s.histMu.RLock()
	h := s.kmsOps[op]
	s.histMu.RUnlock()
	if h != nil {
		return h
	}
	s.histMu.Lock()
	defer s.histMu.Unlock()
	if h = s.kmsOps[op]; h == nil {
		h = s.kmsLatency.WithLabelValues(op).(prometheus.Histogram)
		s.kmsOps[op] = h
	}
	return h
}

// RequestRecorder returns the function that records the duration of one
// FUSE request of operation op (volume.RequestObserver). The histogram is
// resolved here, once, so a request costs one Observe.
func (s *Set) RequestRecorder(op string) func(time.Duration) {
	h := s.fuseLatency.WithLabelValues(op).(prometheus.Histogram)
	s.histMu.Lock()
	s.fuseOp[op] = h
	s.histMu.Unlock()
	return func(d time.Duration) { h.Observe(d.Seconds()) }
}

// CountRetry records one retried KMS call (a kmsmw.Retry hook).
func (s *Set) CountRetry(op string, err error) { s.retries.Add(1) }
