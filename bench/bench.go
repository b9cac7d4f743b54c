// Package bench is the harness behind `kmsfs bench`: it creates N files of
// size S on a fresh kmsfs volume, reads them back after a remount (cold key
// and page caches) and again in the same mount (warm), for each key mode,
// KMS shape (latency, quota) and number of parallel jobs, and reports files/s,
// MB/s, KMS calls by operation (from the mount's own counters), key cache hit
// rate and per-file latency percentiles, as a table, JSON and an SVG chart.
//
// It drives a Harness: a real FUSE mount (MountHarness, kmsfs child
// processes) or the volume library in-process (cmd/kmsfs --direct), so the
// cost of FUSE can be told apart from the cost of keys.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kmsfs/kmsfs/metrics"
)

// filesPerDir spreads the files over directories, as a real tree would:
// 10,000 entries in one directory measure the directory more than the keys.
const filesPerDir = 1000

// Config is what to run: the cross product of Modes, KMSLatencies, KMSRPS
// and Jobs, each on a fresh volume.
type Config struct {
	Files        int             `json:"files"`
	FileSize     int64           `json:"file_size"`
	Modes        []string        `json:"modes"`
	KMSLatencies []time.Duration `json:"kms_latencies_ns"`
	KMSRPS       []float64       `json:"kms_rps"`
	Jobs         []int           `json:"jobs"`
	// Backend is "" (a directory under Scratch per run) or an s3:// URL
	// under which each run gets its own prefix.
	Backend string `json:"backend"`
	// Scratch holds every run's backend directory, mount point and logs.
	Scratch string `json:"scratch"`
	// Seed selects the file content.
	Seed uint64 `json:"seed"`
	// Repeat runs the whole matrix this many times, interleaved (every
	// combination once, then again), so that a burst of load from elsewhere
	// on a shared machine lands on different combinations; the report's
	// Runs are then per-combination medians and Samples every repetition.
	Repeat int `json:"repeat"`
	// SkipCold and SkipWarm leave out the read phases.
	SkipCold bool `json:"skip_cold,omitempty"`
	SkipWarm bool `json:"skip_warm,omitempty"`
}

func (c *Config) validate() error {
	if c.Files <= 0 {
		return errors.New("files must be positive")
	}
	if c.FileSize < 0 {
		return errors.New("size must not be negative")
	}
	if len(c.Modes) == 0 || len(c.KMSLatencies) == 0 || len(c.KMSRPS) == 0 || len(c.Jobs) == 0 {
		return errors.New("need at least one mode, latency, quota and jobs value")
	}
	for _, m := range c.Modes {
		if m != "per-object" && m != "bucket-key" {
			return fmt.Errorf("mode %q: want per-object or bucket-key", m)
		}
	}
	for _, j := range c.Jobs {
		if j <= 0 {
			return fmt.Errorf("jobs %d: must be positive", j)
		}
	}
	if c.Scratch == "" {
		return errors.New("no scratch directory")
	}
	if c.Repeat < 0 {
		return errors.New("repeat must not be negative")
	}
	return nil
}

// Runner runs a Config on a Harness.
type Runner struct {
	Config  Config
	Harness Harness
	// Progress receives a line per second while a phase runs, and a line
	// per finished phase; nil for none.
	Progress io.Writer
	// Meter, if set, replaces the per-second lines of a running phase (a
	// progress bar): it is called as a phase starts, with the phase's label
	// and file count, and returns a function told the files done so far.
	Meter func(label string, files int) (done func(int))
	// DropCaches drops the kernel's caches before a cold phase; the
	// default (nil) writes /proc/sys/vm/drop_caches when running as root.
	DropCaches func() bool
}

// Run runs every combination and returns the report. A run that fails
// stops there (its Error says why) and the others still run; the returned
// error joins the runs' errors and every failed file operation, so a
// caller can exit non-zero after writing the report.
func (r *Runner) Run(ctx context.Context) (*Report, error) {
	cfg := r.Config
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	rep := &Report{Started: time.Now().UTC(), Host: hostInfo(), Config: cfg}
	content := NewContent(cfg.Seed)
	var errs []error
	var samples []Run
	n := 0
	for repeat := range max(1, cfg.Repeat) {
		for _, lat := range cfg.KMSLatencies {
			for _, rps := range cfg.KMSRPS {
				for _, jobs := range cfg.Jobs {
					for _, mode := range cfg.Modes {
						n++
						run := Run{
							Name: fmt.Sprintf("run%02d-%s", n, mode), Mode: mode, Path: r.Harness.Path(), Repeat: repeat,
							KMSLatency: lat.String(), KMSRPS: rps, Jobs: jobs, Files: cfg.Files, FileSize: cfg.FileSize,
						}
						err := r.runOne(ctx, &run, content, lat, rps, jobs)
						if err != nil {
							run.Error = err.Error()
							errs = append(errs, fmt.Errorf("%s: %w", run.Label(), err))
						}
						for _, p := range run.Phases {
							if p.Failed > 0 {
								errs = append(errs, fmt.Errorf("%s %s: %d file operations failed, first: %s", run.Label(), p.Name, p.Failed, p.FirstError))
							}
						}
						samples = append(samples, run)
						if ctx.Err() != nil {
							errs = append(errs, ctx.Err())
							r.finish(rep, samples)
							return rep, errors.Join(errs...)
						}
					}
				}
			}
		}
	}
	r.finish(rep, samples)
	return rep, errors.Join(errs...)
}

// finish fills the report's runs (medians when repeated) and findings.
func (r *Runner) finish(rep *Report, samples []Run) {
	if r.Config.Repeat > 1 {
		rep.Samples = samples
		rep.Runs = Medians(samples)
	} else {
		rep.Runs = samples
	}
	rep.Findings = Findings(rep.Runs)
}

func (r *Runner) runOne(ctx context.Context, run *Run, content *Content, lat time.Duration, rps float64, jobs int) error {
	work := filepath.Join(r.Config.Scratch, run.Name)
	if err := os.MkdirAll(work, 0o700); err != nil {
		return err
	}
	backend := filepath.Join(work, "vault")
	if r.Config.Backend != "" {
		backend = strings.TrimSuffix(r.Config.Backend, "/") + "/" + filepath.Base(r.Config.Scratch) + "/" + run.Name
	}
	run.Backend = backend
	r.progressf("%s: kmsfs init --mode %s %s\n", run.Label(), run.Mode, backend)
	if err := r.Harness.Init(ctx, backend, run.Mode); err != nil {
		return err
	}
	spec := OpenSpec{Backend: backend, WorkDir: work, KMSLatency: lat, KMSRPS: rps}
	names := fileNames(r.Config.Files)

	t, err := r.Harness.Open(ctx, spec)
	if err != nil {
		return err
	}
	for _, d := range dirNames(r.Config.Files) {
		if err := t.Mkdir(ctx, d); err != nil {
			t.Close(ctx)
			return fmt.Errorf("mkdir %s: %w", d, err)
		}
	}
	p, err := r.phase(ctx, t, run, PhaseCreate, names, jobs, func(w *worker, i int) error {
		return t.WriteFile(ctx, names[i], r.Config.FileSize, w.buf, func(b []byte, off int64) { content.Fill(b, i, off) })
	})
	if err != nil {
		t.Close(ctx)
		return err
	}
	run.Phases = append(run.Phases, p)
	if err := t.Close(ctx); err != nil {
		return err
	}
	if r.Config.SkipCold && r.Config.SkipWarm {
		return nil
	}

	// Cold: a new mount process has an empty key cache; the kernel's page
	// cache of the old mount went with it, and dropping caches empties
	// the page cache of the backend's files too.
	dropped := r.dropCaches()
	if t, err = r.Harness.Open(ctx, spec); err != nil {
		return err
	}
	closed := false
	defer func() {
		if !closed { // a phase failed: unmount anyway, its error is the one to report
			t.Close(ctx)
		}
	}()
	read := func(w *worker, i int) error {
		n, err := t.ReadFile(ctx, names[i], w.buf, func(b []byte, off int64) error { return content.Check(b, w.scratch, i, off) })
		if err != nil {
			return err
		}
		if n != r.Config.FileSize {
			return fmt.Errorf("read %d bytes, want %d", n, r.Config.FileSize)
		}
		return nil
	}
	if !r.Config.SkipCold {
		p, err := r.phase(ctx, t, run, PhaseReadCold, names, jobs, read)
		if err != nil {
			return err // an unmeasured phase is left out, never reported as zeros
		}
		p.CachesDropped = dropped
		run.Phases = append(run.Phases, p)
	}
	if !r.Config.SkipWarm {
		p, err := r.phase(ctx, t, run, PhaseReadWarm, names, jobs, read)
		if err != nil {
			return err
		}
		run.Phases = append(run.Phases, p)
	}
	closed = true
	return t.Close(ctx)
}

// worker is one parallel job's buffers.
type worker struct {
	buf, scratch []byte
}

// ioChunk is the most one read or write call moves: FUSE's largest request.
const ioChunk = 1 << 20

// phase runs op on every file with jobs workers and measures it. Failed
// file operations are counted, not fatal; the error is for a phase that
// could not be measured at all (stats unavailable, context cancelled).
func (r *Runner) phase(ctx context.Context, t Target, run *Run, name string, names []string, jobs int, op func(w *worker, i int) error) (Phase, error) {
	p := Phase{Name: name, Files: len(names), LoadAvg: loadAvg()}
	before, err := t.Stats(ctx)
	if err != nil {
		return p, fmt.Errorf("stats before %s: %w", name, err)
	}
	lat := make([]time.Duration, len(names))
	var next, done, failed atomic.Int64
	var firstErr atomic.Pointer[string]
	bufSize := int(max(1, min(r.Config.FileSize, ioChunk)))
	start := time.Now()
	var stopProgress func()
	if r.Meter != nil {
		stopProgress = meterEvery(100*time.Millisecond, r.Meter(run.Label()+" "+name, len(names)), &done)
	} else {
		stopProgress = r.progressEvery(time.Second, func() string {
			d := done.Load()
			el := time.Since(start).Seconds()
			return fmt.Sprintf("%s %s: %d/%d files, %.0f files/s, %d failed", run.Label(), name, d, len(names), float64(d)/el, failed.Load())
		})
	}
	var wg sync.WaitGroup
	for range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := &worker{buf: make([]byte, bufSize), scratch: make([]byte, bufSize)}
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= len(names) {
					return
				}
				t0 := time.Now()
				err := op(w, i)
				lat[i] = time.Since(t0)
				if err != nil {
					failed.Add(1)
					msg := fmt.Sprintf("%s: %v", names[i], err)
					firstErr.CompareAndSwap(nil, &msg)
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	stopProgress()
	if err := ctx.Err(); err != nil {
		return p, err
	}
	after, err := t.Stats(ctx)
	if err != nil {
		return p, fmt.Errorf("stats after %s: %w", name, err)
	}
	p.Seconds = elapsed.Seconds()
	p.Bytes = int64(len(names)) * r.Config.FileSize
	p.FilesPerSec = float64(len(names)) / p.Seconds
	p.MBPerSec = float64(p.Bytes) / 1e6 / p.Seconds
	p.Failed = int(failed.Load())
	if name != PhaseCreate {
		p.Verified = len(names) - p.Failed
	}
	if e := firstErr.Load(); e != nil {
		p.FirstError = *e
	}
	fillStats(&p, before, after)
	p.P50Ms, p.P99Ms, p.MaxMs = percentiles(lat)
	r.progressf("%s %s: %d files in %.2fs, %.0f files/s, %.1f MB/s, KMS %s, %d retries, %d failed\n",
		run.Label(), name, p.Files, p.Seconds, p.FilesPerSec, p.MBPerSec, formatCalls(p.KMSCalls), p.Retries, p.Failed)
	return p, nil
}

// throttlingCode is the AWS error code of a throttled call, as the key
// cache counts results.
const throttlingCode = "ThrottlingException"

// fillStats sets the KMS and cache figures of p from the counters before
// and after it.
func fillStats(p *Phase, before, after metrics.Snapshot) {
	p.KMSCalls = map[string]uint64{}
	p.KMSResults = map[string]map[string]uint64{}
	for op, results := range after.Cache.KMSCalls {
		for res, n := range results {
			d := n - before.Cache.KMSCalls[op][res]
			if d == 0 {
				continue
			}
			if p.KMSResults[op] == nil {
				p.KMSResults[op] = map[string]uint64{}
			}
			p.KMSResults[op][res] = d
			if res == throttlingCode {
				p.Throttled += d
			}
			p.KMSCalls[op] += d
			p.KMSCallsTotal += d
		}
	}
	if p.Files > 0 {
		p.CallsPerFile = float64(p.KMSCallsTotal) / float64(p.Files)
	}
	p.CacheHits = after.Cache.Hits - before.Cache.Hits
	p.CacheMisses = after.Cache.Misses - before.Cache.Misses
	if n := p.CacheHits + p.CacheMisses; n > 0 {
		p.HitRate = float64(p.CacheHits) / float64(n)
	}
	p.Retries = after.KMSRetries - before.KMSRetries
	p.MountErrors = after.Volume.Errors - before.Volume.Errors
}

// percentiles returns the nearest-rank p50, p99 and max in milliseconds.
func percentiles(lat []time.Duration) (p50, p99, maxMs float64) {
	if len(lat) == 0 {
		return 0, 0, 0
	}
	s := append([]time.Duration(nil), lat...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	rank := func(q float64) time.Duration {
		i := int(q*float64(len(s))+0.999999) - 1
		return s[min(max(i, 0), len(s)-1)]
	}
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	return ms(rank(0.5)), ms(rank(0.99)), ms(s[len(s)-1])
}

// fileNames are the bench's files, filesPerDir to a directory.
func fileNames(n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("d%03d/f%06d", i/filesPerDir, i)
	}
	return names
}

func dirNames(n int) []string {
	var dirs []string
	for d := 0; d*filesPerDir < n; d++ {
		dirs = append(dirs, fmt.Sprintf("d%03d", d))
	}
	return dirs
}

func (r *Runner) dropCaches() bool {
	if r.DropCaches != nil {
		return r.DropCaches()
	}
	return DropCaches()
}

// DropCaches writes back dirty data and drops the page, dentry and inode
// caches (echo 3 > /proc/sys/vm/drop_caches); it reports whether it could,
// which needs root.
func DropCaches() bool {
	if os.Geteuid() != 0 {
		return false
	}
	syscall.Sync()
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200) == nil
}

func (r *Runner) progressf(format string, args ...any) {
	if r.Progress != nil {
		fmt.Fprintf(r.Progress, format, args...)
	}
}

// progressEvery prints line() every interval until the returned stop is
// called.
func (r *Runner) progressEvery(interval time.Duration, line func() string) (stop func()) {
	if r.Progress == nil {
		return func() {}
	}
	return tickEvery(interval, func() { fmt.Fprintln(r.Progress, "  "+line()) }, nil)
}

// meterEvery tells update the value of done every interval, and once more
// when the returned stop is called.
func meterEvery(interval time.Duration, update func(int), done *atomic.Int64) (stop func()) {
	report := func() { update(int(done.Load())) }
	return tickEvery(interval, report, report)
}

// tickEvery calls onTick every interval, and onStop (if not nil) once the
// returned stop is called; stop returns when neither runs any more.
func tickEvery(interval time.Duration, onTick, onStop func()) (stop func()) {
	quit := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-quit:
				if onStop != nil {
					onStop()
				}
				return
			case <-tick.C:
				onTick()
			}
		}
	}()
	return func() { close(quit); <-finished }
}

// loadAvg is the 1-minute load average (0 if unknown): on a shared machine
// it tells which figures were taken under someone else's load.
func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	var v float64
	fmt.Sscan(string(b), &v)
	return v
}

func hostInfo() Host {
	h := Host{CPUs: runtime.NumCPU(), GoVersion: runtime.Version()}
	h.Hostname, _ = os.Hostname()
	var u syscall.Utsname
	if syscall.Uname(&u) == nil {
		var b strings.Builder
		for _, c := range u.Release {
			if c == 0 {
				break
			}
			b.WriteByte(byte(c))
		}
		h.Kernel = b.String()
	}
	return h
}
