package integration

import (
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// mountFreeAddr is a loopback address nothing listens on now, for
// --metrics-addr.
func mountFreeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// mountScrape fetches a mount's /metrics from its --metrics-addr and
// parses it as a Prometheus server would.
func mountScrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %s", addr, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("scrape %s: not the Prometheus text format: %v", addr, err)
	}
	return fams
}

// mountSeries returns the series of family name whose operation label is
// op ("" for a family without labels), or nil.
func mountSeries(fams map[string]*dto.MetricFamily, name, op string) *dto.Metric {
	f := fams[name]
	if f == nil {
		return nil
	}
	for _, m := range f.GetMetric() {
		got := ""
		for _, l := range m.GetLabel() {
			if l.GetName() == "operation" {
				got = l.GetValue()
			}
		}
		if got == op {
			return m
		}
	}
	return nil
}

// mountCounter is the value of the counter name (no labels), -1 if absent.
func mountCounter(fams map[string]*dto.MetricFamily, name string) float64 {
	m := mountSeries(fams, name, "")
	if m == nil || m.GetCounter() == nil {
		return -1
	}
	return m.GetCounter().GetValue()
}

// mountCheckHistogram checks that the histogram series of op in family name
// holds at least min observations, in buckets that add up.
func mountCheckHistogram(t *testing.T, fams map[string]*dto.MetricFamily, name, op string, min uint64) {
	t.Helper()
	if f := fams[name]; f == nil || f.GetType() != dto.MetricType_HISTOGRAM {
		t.Errorf("%s: not a histogram on /metrics", name)
		return
	}
	m := mountSeries(fams, name, op)
	if m == nil {
		t.Errorf("%s{operation=%q}: no series", name, op)
		return
	}
	h := m.GetHistogram()
	if h.GetSampleCount() < min {
		t.Errorf("%s{operation=%q}: %d observations, want at least %d", name, op, h.GetSampleCount(), min)
	}
	var prev uint64
	for _, b := range h.GetBucket() {
		if b.GetCumulativeCount() < prev || b.GetCumulativeCount() > h.GetSampleCount() {
			t.Errorf("%s{operation=%q}: bucket le=%g holds %d (previous %d, total %d)", name, op, b.GetUpperBound(), b.GetCumulativeCount(), prev, h.GetSampleCount())
		}
		prev = b.GetCumulativeCount()
	}
	if h.GetSampleCount() > 0 && h.GetSampleSum() <= 0 {
		t.Errorf("%s{operation=%q}: %d observations summing to %g s", name, op, h.GetSampleCount(), h.GetSampleSum())
	}
}

// TestMountMetrics scrapes a live mount's --metrics-addr: the FUSE requests
// it answered and the KMS calls it made show as latency histograms by
// operation, next to the counters and the Go runtime and process metrics.
func TestMountMetrics(t *testing.T) {
	v := mountNewVolume(t)
	addr := mountFreeAddr(t)
	v.mount("--metrics-addr", addr)
	want := mountPattern(3<<20+123, 7)
	mountWriteFile(t, v.path("f"), want)
	// A new mount: the read is not answered from the page cache, and the
	// file's data key is unwrapped through the KMS (Decrypt).
	// (A new address: the old mount's process may still be exiting.)
	addr = mountFreeAddr(t)
	v.remount("--metrics-addr", addr)
	got, err := os.ReadFile(v.path("f"))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Fatal("file read back differs")
	}
	fams := mountScrape(t, addr)
	mountCheckHistogram(t, fams, "kmsfs_fuse_latency_seconds", "lookup", 1)
	mountCheckHistogram(t, fams, "kmsfs_fuse_latency_seconds", "open", 1)
	mountCheckHistogram(t, fams, "kmsfs_fuse_latency_seconds", "read", 1)
	mountCheckHistogram(t, fams, "kmsfs_kms_latency_seconds", "Decrypt", 1)
	if m := mountSeries(fams, "go_goroutines", ""); m == nil || m.GetGauge().GetValue() < 1 {
		t.Errorf("go_goroutines missing or zero: %v", m)
	}
	if m := mountSeries(fams, "process_resident_memory_bytes", ""); m == nil || m.GetGauge().GetValue() <= 0 {
		t.Errorf("process_resident_memory_bytes missing or zero: %v", m)
	}
	if n := mountCounter(fams, "kmsfs_bytes_read_total"); n < float64(len(want)) {
		t.Errorf("kmsfs_bytes_read_total %g, want at least %d", n, len(want))
	}
	if n := mountCounter(fams, "kmsfs_errors_total"); n != 0 {
		t.Errorf("kmsfs_errors_total %g after reading a file back", n)
	}
}
