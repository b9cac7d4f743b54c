package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/keycache"
	"github.com/kmsfs/kmsfs/metrics"
)

// memHarness keeps volumes in memory and counts KMS calls the way a mount
// would: per-object mode one GenerateDataKey per new file and one Decrypt
// per file first read in a mount; bucket-key mode one of each per mount.
type memHarness struct {
	mu      sync.Mutex
	volumes map[string]*memVolume
	// corrupt names a file whose reads come back with a flipped byte.
	corrupt string
	opens   int
}

type memVolume struct {
	mode  string
	files map[string][]byte
}

func (h *memHarness) Path() string { return "memory" }

func (h *memHarness) Init(ctx context.Context, backend, mode string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.volumes == nil {
		h.volumes = map[string]*memVolume{}
	}
	h.volumes[backend] = &memVolume{mode: mode, files: map[string][]byte{}}
	return nil
}

func (h *memHarness) Open(ctx context.Context, spec OpenSpec) (Target, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.opens++
	v := h.volumes[spec.Backend]
	if v == nil {
		return nil, fmt.Errorf("no volume at %s", spec.Backend)
	}
	return &memTarget{h: h, v: v, cached: map[string]bool{}, stats: metrics.Snapshot{Cache: keycache.Stats{KMSCalls: map[string]map[string]uint64{}}}}, nil
}

type memTarget struct {
	h      *memHarness
	v      *memVolume
	mu     sync.Mutex
	cached map[string]bool
	bucket bool // bucket key generated or unwrapped in this mount
	stats  metrics.Snapshot
}

func (t *memTarget) call(op string) { t.stats.Cache.KMSCalls[op]["ok"]++ }

func (t *memTarget) Mkdir(ctx context.Context, name string) error { return nil }

func (t *memTarget) WriteFile(ctx context.Context, name string, size int64, buf []byte, fill func([]byte, int64)) error {
	data := make([]byte, size)
	for off := int64(0); off < size; off += int64(len(buf)) {
		fill(data[off:min(size, off+int64(len(buf)))], off)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stats.Cache.KMSCalls["GenerateDataKey"] == nil {
		t.stats.Cache.KMSCalls["GenerateDataKey"] = map[string]uint64{}
	}
	if t.v.mode == "per-object" || !t.bucket {
		t.call("GenerateDataKey")
		t.bucket = true
	}
	t.v.files[name] = data
	return nil
}

func (t *memTarget) ReadFile(ctx context.Context, name string, buf []byte, check func([]byte, int64) error) (int64, error) {
	t.mu.Lock()
	data, ok := t.v.files[name]
	if !ok {
		t.mu.Unlock()
		return 0, errors.New("no such file")
	}
	key := name
	if t.v.mode == "bucket-key" {
		key = "bucket"
	}
	if t.cached[key] {
		t.stats.Cache.Hits++
	} else {
		t.stats.Cache.Misses++
		if t.stats.Cache.KMSCalls["Decrypt"] == nil {
			t.stats.Cache.KMSCalls["Decrypt"] = map[string]uint64{}
		}
		t.call("Decrypt")
		t.cached[key] = true
	}
	if name == t.h.corrupt {
		data = bytes.Clone(data)
		data[len(data)/2] ^= 0x40
	}
	t.mu.Unlock()
	r := bytes.NewReader(data)
	return readAll(r, buf, check)
}

func (t *memTarget) Stats(ctx context.Context) (metrics.Snapshot, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.stats
	s.Cache.KMSCalls = map[string]map[string]uint64{}
	for op, m := range t.stats.Cache.KMSCalls {
		s.Cache.KMSCalls[op] = map[string]uint64{}
		for r, n := range m {
			s.Cache.KMSCalls[op][r] = n
		}
	}
	return s, nil
}

func (t *memTarget) Close(ctx context.Context) error { return nil }

func TestRunnerPhasesAndCounts(t *testing.T) {
	h := &memHarness{}
	var progress strings.Builder
	r := &Runner{
		Config: Config{Files: 250, FileSize: 5000, Modes: []string{"per-object", "bucket-key"},
			KMSLatencies: []time.Duration{0}, KMSRPS: []float64{0}, Jobs: []int{3}, Scratch: t.TempDir(), Seed: 3},
		Harness:    h,
		Progress:   &progress,
		DropCaches: func() bool { return true },
	}
	rep, err := r.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Runs) != 2 {
		t.Fatalf("%d runs, want 2", len(rep.Runs))
	}
	if h.opens != 4 {
		t.Errorf("%d opens, want 4 (a mount for create and a remount for the reads, per mode)", h.opens)
	}
	po, bk := rep.Runs[0], rep.Runs[1]
	for _, c := range []struct {
		run         Run
		phase       string
		calls       uint64
		hits, verif int
	}{
		{po, PhaseCreate, 250, 0, 0},
		{po, PhaseReadCold, 250, 0, 250},
		{po, PhaseReadWarm, 0, 250, 250},
		{bk, PhaseCreate, 1, 0, 0},
		{bk, PhaseReadCold, 1, 249, 250},
		{bk, PhaseReadWarm, 0, 250, 250},
	} {
		p := c.run.Phase(c.phase)
		if p == nil {
			t.Fatalf("%s: no %s phase", c.run.Mode, c.phase)
		}
		if p.KMSCallsTotal != c.calls || p.CacheHits != uint64(c.hits) || p.Verified != c.verif || p.Failed != 0 {
			t.Errorf("%s %s: calls %d hits %d verified %d failed %d; want %d %d %d 0",
				c.run.Mode, c.phase, p.KMSCallsTotal, p.CacheHits, p.Verified, p.Failed, c.calls, c.hits, c.verif)
		}
		if p.Files != 250 || p.Bytes != 250*5000 || p.FilesPerSec <= 0 || p.MaxMs < p.P99Ms || p.P99Ms < p.P50Ms {
			t.Errorf("%s %s: implausible figures %+v", c.run.Mode, c.phase, p)
		}
	}
	if cold := po.Phase(PhaseReadCold); !cold.CachesDropped {
		t.Error("cold phase does not record the dropped caches")
	}
	if !strings.Contains(progress.String(), "per-object j3 create: 250 files") {
		t.Errorf("no progress line for the create phase:\n%s", progress.String())
	}
	for _, f := range rep.Findings {
		if !f.Pass {
			t.Errorf("finding failed: %+v", f)
		}
	}
	if len(rep.Findings) != 5 { // share, per-object cold calls per file, two warm re-reads, verification
		t.Errorf("%d findings, want 5: %+v", len(rep.Findings), rep.Findings)
	}
}

func TestRunnerReportsCorruptContent(t *testing.T) {
	h := &memHarness{corrupt: "d000/f000007"}
	r := &Runner{
		Config: Config{Files: 20, FileSize: 10000, Modes: []string{"bucket-key"},
			KMSLatencies: []time.Duration{0}, KMSRPS: []float64{0}, Jobs: []int{2}, Scratch: t.TempDir()},
		Harness:    h,
		DropCaches: func() bool { return false },
	}
	rep, err := r.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "d000/f000007: content differs at byte 5000") {
		t.Fatalf("error %v, want the corrupt file named", err)
	}
	for _, name := range []string{PhaseReadCold, PhaseReadWarm} {
		p := rep.Runs[0].Phase(name)
		if p.Failed != 1 || p.Verified != 19 || !strings.Contains(p.FirstError, "f000007") {
			t.Errorf("%s: failed %d verified %d first %q", name, p.Failed, p.Verified, p.FirstError)
		}
	}
	var verdict *Finding
	for i := range rep.Findings {
		if strings.HasPrefix(rep.Findings[i].Target, "every file read back") {
			verdict = &rep.Findings[i]
		}
	}
	if verdict == nil || verdict.Pass {
		t.Fatalf("verification finding %+v, want a failure", verdict)
	}
}

func TestConfigValidate(t *testing.T) {
	ok := Config{Files: 1, Modes: []string{"per-object"}, KMSLatencies: []time.Duration{0}, KMSRPS: []float64{0}, Jobs: []int{1}, Scratch: "/tmp"}
	if err := ok.validate(); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*Config){
		"no files":  func(c *Config) { c.Files = 0 },
		"bad mode":  func(c *Config) { c.Modes = []string{"sse-kms"} },
		"zero jobs": func(c *Config) { c.Jobs = []int{0} },
		"no modes":  func(c *Config) { c.Modes = nil },
		"no dir":    func(c *Config) { c.Scratch = "" },
	} {
		c := ok
		mut(&c)
		if err := c.validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestPercentiles(t *testing.T) {
	lat := make([]time.Duration, 200)
	for i := range lat {
		lat[len(lat)-1-i] = time.Duration(i+1) * time.Millisecond
	}
	p50, p99, mx := percentiles(lat)
	if p50 != 100 || p99 != 198 || mx != 200 {
		t.Fatalf("p50 %v p99 %v max %v; want 100 198 200", p50, p99, mx)
	}
}

func TestRunnerRepeatReportsMedians(t *testing.T) {
	h := &memHarness{corrupt: "d000/f000002"}
	r := &Runner{
		Config: Config{Files: 10, FileSize: 100, Modes: []string{"per-object", "bucket-key"},
			KMSLatencies: []time.Duration{0}, KMSRPS: []float64{0}, Jobs: []int{1}, Scratch: t.TempDir(), Repeat: 3},
		Harness:    h,
		DropCaches: func() bool { return false },
	}
	rep, err := r.Run(context.Background())
	if err == nil {
		t.Fatal("a corrupt file in every repetition went unreported")
	}
	if len(rep.Samples) != 6 || len(rep.Runs) != 2 {
		t.Fatalf("%d samples and %d runs, want 6 and 2", len(rep.Samples), len(rep.Runs))
	}
	// Interleaved: per-object, bucket-key, per-object, ...
	for i, s := range rep.Samples {
		if want := []string{"per-object", "bucket-key"}[i%2]; s.Mode != want || s.Repeat != i/2 {
			t.Errorf("sample %d: %s repeat %d, want %s repeat %d", i, s.Mode, s.Repeat, want, i/2)
		}
	}
	cold := rep.Runs[0].Phase(PhaseReadCold)
	if cold.Samples != 3 || cold.Failed != 3 || len(cold.FilesPerSecRange) != 2 || cold.FilesPerSecRange[0] > cold.FilesPerSec || cold.FilesPerSec > cold.FilesPerSecRange[1] {
		t.Fatalf("median phase: %+v", cold)
	}
	var b strings.Builder
	if err := rep.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "range") {
		t.Errorf("repeated table has no range column:\n%s", b.String())
	}
}

// closeCounter wraps memHarness targets to count Close calls.
type closeCounter struct {
	memHarness
	closes int
}

type countedTarget struct {
	Target
	c *closeCounter
}

func (t countedTarget) Close(ctx context.Context) error { t.c.closes++; return t.Target.Close(ctx) }

func (c *closeCounter) Open(ctx context.Context, spec OpenSpec) (Target, error) {
	t, err := c.memHarness.Open(ctx, spec)
	if err != nil {
		return nil, err
	}
	return countedTarget{t, c}, nil
}

func TestRunnerClosesEachOpenOnce(t *testing.T) {
	h := &closeCounter{}
	r := &Runner{
		Config: Config{Files: 5, FileSize: 10, Modes: []string{"per-object"},
			KMSLatencies: []time.Duration{0}, KMSRPS: []float64{0}, Jobs: []int{1}, Scratch: t.TempDir()},
		Harness:    h,
		DropCaches: func() bool { return false },
	}
	if _, err := r.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if h.opens != 2 || h.closes != 2 {
		t.Fatalf("%d opens, %d closes; want 2 and 2", h.opens, h.closes)
	}
}

// failingStats fails the stats snapshot after the warm phase, so that the
// phase cannot be measured.
type failingStats struct {
	memHarness
	opens int
}

type statsFailTarget struct {
	Target
	calls *int
}

func (t statsFailTarget) Stats(ctx context.Context) (metrics.Snapshot, error) {
	*t.calls++
	if *t.calls == 4 { // before cold, after cold, before warm, after warm
		return metrics.Snapshot{}, errors.New("stats socket gone")
	}
	return t.Target.Stats(ctx)
}

func (f *failingStats) Open(ctx context.Context, spec OpenSpec) (Target, error) {
	t, err := f.memHarness.Open(ctx, spec)
	if err != nil {
		return nil, err
	}
	f.opens++
	if f.opens == 2 {
		calls := 0
		return statsFailTarget{t, &calls}, nil
	}
	return t, nil
}

func TestRunnerLeavesOutUnmeasuredPhase(t *testing.T) {
	r := &Runner{
		Config: Config{Files: 5, FileSize: 10, Modes: []string{"bucket-key"},
			KMSLatencies: []time.Duration{0}, KMSRPS: []float64{0}, Jobs: []int{1}, Scratch: t.TempDir()},
		Harness:    &failingStats{},
		DropCaches: func() bool { return false },
	}
	rep, err := r.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "stats after read-warm: stats socket gone") {
		t.Fatalf("error %v", err)
	}
	run := rep.Runs[0]
	if run.Phase(PhaseReadWarm) != nil || run.Phase(PhaseReadCold) == nil || run.Error == "" {
		t.Fatalf("phases %+v, error %q: want create and read-cold only, and the error", run.Phases, run.Error)
	}
	for _, f := range rep.Findings {
		if strings.HasPrefix(f.Target, "warm re-read") {
			t.Errorf("a finding about a warm phase that was not measured: %+v", f)
		}
	}
}
