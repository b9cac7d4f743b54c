package metrics

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/kmsfs/kmsfs/keycache"
	"github.com/kmsfs/kmsfs/volume"
)

// Snapshot is what /stats.json returns.
type Snapshot struct {
	Cache      keycache.Stats            `json:"cache"`
	Volume     volume.Stats              `json:"volume"`
	KMSRetries uint64                    `json:"kms_retries"`
	KMSLatency map[string]LatencySummary `json:"kms_latency"`
	// FUSELatency is by FUSE operation, for the operations the mount has
	// answered.
	FUSELatency map[string]LatencySummary `json:"fuse_latency,omitempty"`
	// KMSFailover is the state of a volume's multi-Region KMS failover,
	// for a mount with KMS replicas.
	KMSFailover *FailoverState `json:"kms_failover,omitempty"`
}

// FailoverState is where a mount with KMS replicas sends its calls.
type FailoverState struct {
	PrimaryRegion string    `json:"primary_region"`
	PrimaryDown   bool      `json:"primary_down"`
	DownSince     time.Time `json:"down_since,omitzero"`
	Replica       string    `json:"replica,omitempty"` // the region answering while the primary is down
	Replicas      []string  `json:"replicas"`
}

// LatencySummary is a histogram reduced to what a person reads.
type LatencySummary struct {
	Count  uint64  `json:"count"`
	MeanMs float64 `json:"mean_ms"`
	P50Ms  float64 `json:"p50_ms"`
	P99Ms  float64 `json:"p99_ms"`
}

// summarize reduces a histogram; quantiles are the upper bound of the
// bucket they fall in (the last finite bound past it).
func summarize(h prometheus.Histogram) (LatencySummary, error) {
	var m dto.Metric
	if err := h.Write(&m); err != nil {
		return LatencySummary{}, err
	}
	hist := m.GetHistogram()
	n := hist.GetSampleCount()
	out := LatencySummary{Count: n}
	if n == 0 {
		return out, nil
	}
	out.MeanMs = hist.GetSampleSum() / float64(n) * 1000
	buckets := hist.GetBucket()
	quantile := func(q float64) float64 {
		want := uint64(float64(n) * q)
		for _, b := range buckets {
			if b.GetCumulativeCount() > want {
				return b.GetUpperBound() * 1000
			}
		}
		if len(buckets) == 0 {
			return 0
		}
		return buckets[len(buckets)-1].GetUpperBound() * 1000
	}
	out.P50Ms, out.P99Ms = quantile(0.5), quantile(0.99)
	return out, nil
}

// summaries reduces the histograms that have observations.
func summaries(hs map[string]prometheus.Histogram) map[string]LatencySummary {
	out := map[string]LatencySummary{}
	for op, h := range hs {
		if s, err := summarize(h); err == nil && s.Count > 0 {
			out[op] = s
		}
	}
	return out
}

// Snapshot takes the current values.
func (s *Set) Snapshot() Snapshot {
	cache, vol := s.attached()
	snap := Snapshot{KMSRetries: s.retries.Load()}
	if cache != nil {
		snap.Cache = cache.Stats()
	}
	if vol != nil {
		snap.Volume = vol.Stats()
	}
	s.histMu.RLock()
	defer s.histMu.RUnlock()
	if s.failover != nil {
		st := s.failover()
		snap.KMSFailover = &st
	}
	snap.KMSLatency = summaries(s.kmsOps)
	if f := summaries(s.fuseOp); len(f) > 0 {
		snap.FUSELatency = f
	}
	return snap
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
	fmt.Fprintf(&b, "key read-ahead  %d speculative Decrypts, %d used, %d unused\n",
		s.Cache.Prefetches, s.Cache.PrefetchUsed, s.Cache.PrefetchUnused)
	if f := s.KMSFailover; f != nil {
		switch {
		case !f.PrimaryDown:
			fmt.Fprintf(&b, "KMS failover    primary %s answering (replicas %s)\n", f.PrimaryRegion, strings.Join(f.Replicas, ", "))
		case f.Replica != "":
			fmt.Fprintf(&b, "KMS failover    primary %s unreachable since %s; replica %s answering\n", f.PrimaryRegion, f.DownSince.UTC().Format(time.RFC3339), f.Replica)
		default:
			fmt.Fprintf(&b, "KMS failover    primary %s unreachable since %s; no replica has answered yet\n", f.PrimaryRegion, f.DownSince.UTC().Format(time.RFC3339))
		}
	}
	var ops []string
	for op := range s.Cache.KMSCalls {
		ops = append(ops, op)
	}
	sort.Strings(ops)
	for _, op := range ops {
		l := s.KMSLatency[op]
		fmt.Fprintf(&b, "KMS %-31s %6d calls  p50 %.2f ms  p99 %.2f ms  %v\n", op, total(op), l.P50Ms, l.P99Ms, s.Cache.KMSCalls[op])
	}
	ops = ops[:0]
	for op := range s.FUSELatency {
		ops = append(ops, op)
	}
	sort.Strings(ops)
	for _, op := range ops {
		l := s.FUSELatency[op]
		fmt.Fprintf(&b, "FUSE %-30s %6d requests  mean %.3f ms  p50 %.3f ms  p99 %.3f ms\n", op, l.Count, l.MeanMs, l.P50Ms, l.P99Ms)
	}
	return b.String()
}
