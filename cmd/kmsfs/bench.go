package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/kmsfs/kmsfs/bench"
	"github.com/kmsfs/kmsfs/internal/compose"
	"github.com/kmsfs/kmsfs/keycache"
	"github.com/kmsfs/kmsfs/kms"
	"github.com/kmsfs/kmsfs/kms/kmsmw"
	"github.com/kmsfs/kmsfs/metrics"
	"github.com/kmsfs/kmsfs/volume"
)

// benchCommand runs `kmsfs bench`: per-object against bucket-key mode,
// through a real mount (child processes of this binary) or, with --direct,
// through the volume library in this process.
func benchCommand() *command {
	return &command{
		name: "bench", minArgs: 0, maxArgs: 0,
		summary: "compare per-object and bucket-key modes (files/s, KMS calls)",
		about: `Creates volumes in a scratch directory, writes and reads files through a mount
(or the volume library with --direct) in each key mode and prints a table.
Progress goes to stderr: a bar on a terminal, else a line a second.`,
		setup: func(fs *pflag.FlagSet) runFunc {
			var b benchFlags
			b.register(fs)
			return func(ctx context.Context, inv *invocation) error { return b.run(ctx, inv, fs) }
		},
	}
}

// benchFlags are the flags of kmsfs bench.
type benchFlags struct {
	c                   commonFlags
	preset, sizeStr     *string
	files, repeat       *int
	modes               *[]string
	latencies           *[]time.Duration
	rps                 *[]float64
	jobs                *[]int
	direct              *bool
	backendURL, key     *string
	prefetch            *int
	mountArgs           []string
	scratch             *string
	keep, cold, warm    *bool
	seed                *uint64
	jsonPath, chartPath *string
	cpuProfile, render  *string
	quiet               *bool
}

func (b *benchFlags) register(fs *pflag.FlagSet) {
	b.c.register(fs)
	b.preset = fs.String("preset", "small", "workload `NAME`: "+bench.PresetNames+"; --files and --size override it")
	b.files = fs.Int("files", 0, "number of files (`N`) to create (default from --preset)")
	b.sizeStr = fs.String("size", "", "`SIZE` of each file, e.g. 4KiB or 256MiB (default from --preset)")
	b.modes = fs.StringSlice("mode", []string{"per-object", "bucket-key"}, "key `MODES` to compare (comma-separated)")
	b.latencies = fs.DurationSlice("kms-latency", nil, "simulated KMS latency per call (`DURATIONS`); several (e.g. 0,10ms) make one run each (default 0)")
	b.rps = fs.Float64Slice("kms-rps", []float64{0}, "simulated KMS request quota per second (`RATES`; 0: none); several make one run each")
	b.jobs = fs.IntSlice("jobs", []int{1}, "parallel writers and readers (`N,...`); several (e.g. 1,8) make one run each")
	b.repeat = fs.Int("repeat", 1, "run every combination `N` times, interleaved, and report medians (for shared, noisy machines)")
	b.direct = fs.Bool("direct", false, "drive the volume library in-process instead of a FUSE mount (isolates FUSE)")
	b.backendURL = fs.String("backend", "", "s3://bucket/prefix `URL` to bench the S3 backend (default: a directory under --scratch)")
	b.key = fs.String("key", "", "KMS `KEY` for the bench volumes (needed with --kms; default: new keys on the embedded KMS)")
	b.prefetch = fs.Int("prefetch", 0, "per-object data key prefetch pool size (`N`; -1: off; 0: the mount's default)")
	fs.StringArrayVar(&b.mountArgs, "mount-flag", nil, "extra `FLAG` for the bench's kmsfs mount, repeatable (e.g. --mount-flag=--cache-capacity=20000)")
	b.scratch = fs.String("scratch", "", "make the bench's directory (volumes, mount points, logs) in `DIR` (default: the system temporary directory)")
	b.keep = fs.Bool("keep", false, "keep the scratch directory (volumes, logs) afterwards")
	b.cold = fs.Bool("cold", true, "read the files back after a remount (cold caches)")
	b.warm = fs.Bool("warm", true, "read the files again in the same mount (warm caches)")
	b.seed = fs.Uint64("seed", 1, "`SEED` of the file content")
	b.jsonPath = fs.String("json", "", "write the results as JSON to `FILE`")
	b.chartPath = fs.String("chart", "", "draw the results as an SVG chart into `FILE`")
	b.cpuProfile = fs.String("cpuprofile", "", "with --direct: write a CPU profile (pprof) of the bench to `FILE`")
	b.quiet = fs.BoolP("quiet", "q", false, "no progress on stderr")
	b.render = fs.String("render", "", "run nothing: print the table (and --chart) of an earlier --json `FILE`")
}

func (b *benchFlags) run(ctx context.Context, inv *invocation, fs *pflag.FlagSet) error {
	if *b.render != "" {
		return benchRender(inv.stdout, *b.render, *b.chartPath)
	}
	p, ok := bench.LookupPreset(*b.preset)
	if !ok {
		return usagef("--preset %q: want %s", *b.preset, bench.PresetNames)
	}
	if *b.files > 0 {
		p.Files = *b.files
	}
	if *b.sizeStr != "" {
		n, err := bench.ParseSize(*b.sizeStr)
		if err != nil {
			return usagef("--size: %v", err)
		}
		p.Size = n
	}
	if len(*b.latencies) == 0 {
		*b.latencies = append(*b.latencies, 0)
	}
	if *b.cpuProfile != "" && !*b.direct {
		return usagef("--cpuprofile profiles the bench process, which does the work only with --direct; for a mount use --mount-flag=--cpuprofile=FILE")
	}

	// Always a new directory (inside --scratch, if given), so that the
	// cleanup removes only what the bench made.
	if *b.scratch != "" {
		if err := os.MkdirAll(*b.scratch, 0o700); err != nil {
			return err
		}
	}
	dir, err := os.MkdirTemp(*b.scratch, "kmsfs-bench-")
	if err != nil {
		return err
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return err
	}
	if !*b.keep {
		defer os.RemoveAll(dir)
	}
	// A keystore of its own, so that the bench's keys never land in the
	// user's; --keystore picks one (e.g. one the passphrase file opens).
	if !fs.Changed("keystore") {
		b.c.keystore.dir = filepath.Join(dir, "keystore")
		// Protect the scratch keystore with a random passphrase, so that no
		// unprotected root key is written (and warned about) even there.
		if b.c.keystore.passphraseFile == "" {
			pass := make([]byte, 24)
			if _, err := rand.Read(pass); err != nil {
				return err
			}
			b.c.keystore.passphraseFile = filepath.Join(dir, "passphrase")
			err := os.WriteFile(b.c.keystore.passphraseFile, []byte(hex.EncodeToString(pass)), 0o600)
			kms.Zero(pass)
			if err != nil {
				return err
			}
		}
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	kmsfs := bench.Kmsfs{Exe: exe, Env: []string{envKeystore + "=" + b.c.keystore.dir}, Common: b.c.args(), Key: *b.key}
	var harness bench.Harness
	if *b.direct {
		harness = &directHarness{Kmsfs: kmsfs, common: b.c, prefetch: *b.prefetch, stderr: inv.stderr}
	} else {
		ma := append([]string(nil), b.mountArgs...)
		if *b.prefetch != 0 {
			ma = append(ma, "--prefetch", strconv.Itoa(*b.prefetch))
		}
		harness = &bench.MountHarness{Kmsfs: kmsfs, ReadyFDEnv: readyFDEnv, MountArgs: ma, RuntimeDir: os.Getenv(envRuntimeDir)}
	}
	runner := &bench.Runner{
		Config: bench.Config{
			Files: p.Files, FileSize: p.Size, Modes: *b.modes, KMSLatencies: *b.latencies, KMSRPS: *b.rps, Jobs: *b.jobs,
			Backend: *b.backendURL, Scratch: dir, Seed: *b.seed, Repeat: *b.repeat, SkipCold: !*b.cold, SkipWarm: !*b.warm,
		},
		Harness: harness,
	}
	bar := newProgress(inv.stderr, "", *b.quiet)
	if !*b.quiet {
		runner.Progress = inv.stderr
		if bar.tty {
			// Phase summaries print above the bar; the bar follows the files.
			runner.Progress = progressLog{bar, inv.stderr}
			runner.Meter = func(label string, files int) func(int) {
				bar.begin(label, files)
				return func(done int) { bar.update(done, "") }
			}
		}
	}
	if *b.cpuProfile != "" {
		f, err := os.Create(*b.cpuProfile)
		if err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	rep, runErr := runner.Run(ctx)
	bar.finish()
	if rep == nil {
		return runErr
	}
	fmt.Fprintln(inv.stdout)
	if err := benchOutput(inv.stdout, rep, *b.jsonPath, *b.chartPath); err != nil {
		return err
	}
	if *b.keep {
		fmt.Fprintf(inv.stderr, "kmsfs: bench: volumes and logs kept in %s\n", dir)
	}
	return runErr
}

// benchOutput prints the table and writes the JSON and chart files asked for.
func benchOutput(stdout io.Writer, rep *bench.Report, jsonPath, chartPath string) error {
	if err := rep.WriteTable(stdout); err != nil {
		return err
	}
	if jsonPath != "" {
		if err := rep.WriteJSON(jsonPath); err != nil {
			return fmt.Errorf("--json: %w", err)
		}
	}
	if chartPath != "" {
		f, err := os.Create(chartPath)
		if err != nil {
			return fmt.Errorf("--chart: %w", err)
		}
		err = bench.WriteSVG(f, rep)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("--chart: %w", err)
		}
	}
	return nil
}

// benchRender re-renders a saved report (a chart redrawn after a change of
// style, without running the bench again).
func benchRender(stdout io.Writer, jsonPath, chartPath string) error {
	raw, err := os.ReadFile(jsonPath)
	if err != nil {
		return err
	}
	var rep bench.Report
	if err := json.Unmarshal(raw, &rep); err != nil {
		return fmt.Errorf("%s: %w", jsonPath, err)
	}
	return benchOutput(stdout, &rep, "", chartPath)
}

// args renders the flags init and mount share, for the bench's children.
func (c *commonFlags) args() []string {
	var a []string
	add := func(flag, v string) {
		if v != "" {
			a = append(a, flag, v)
		}
	}
	add("--passphrase-file", c.keystore.passphraseFile)
	add("--kms", c.kmsURL)
	add("--kms-region", c.kmsRegion)
	add("--s3-endpoint", c.s3Endpoint)
	add("--s3-region", c.s3Region)
	if c.s3PathStyle {
		a = append(a, "--s3-path-style")
	}
	return a
}

// directHarness opens volumes in this process, composed as a mount
// composes them (openVolume), minus FUSE.
type directHarness struct {
	bench.Kmsfs // Init runs `kmsfs init`, as for a mount
	common      commonFlags
	prefetch    int
	stderr      io.Writer
}

func (d *directHarness) Path() string { return "direct" }

func (d *directHarness) Open(ctx context.Context, spec bench.OpenSpec) (bench.Target, error) {
	logFile, err := os.OpenFile(filepath.Join(spec.WorkDir, "kmsfs.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	set := metrics.New()
	opened, err := openVolume(ctx, &d.common, spec.Backend, volumeRequest{
		limits: keycache.DefaultLimits(), log: slog.New(slog.NewTextHandler(logFile, nil)), stderr: d.stderr, command: "bench",
		volume: volume.Options{PrefetchMax: d.prefetch},
		chain:  compose.Chain{Simulate: kmsmw.SimulateOptions{Latency: spec.KMSLatency, RPS: spec.KMSRPS}, Metrics: set},
	})
	if err != nil {
		logFile.Close()
		return nil, err
	}
	return &directTarget{opened: opened, set: set, log: logFile}, nil
}

// directTarget is a volume opened in-process.
type directTarget struct {
	opened *openedVolume
	set    *metrics.Set
	log    *os.File
}

func (t *directTarget) Mkdir(ctx context.Context, name string) error {
	return t.opened.Vol.Backend().Mkdir(ctx, name, 0o755, nil)
}

func (t *directTarget) WriteFile(ctx context.Context, name string, size int64, buf []byte, fill func([]byte, int64)) error {
	h, err := t.opened.Vol.OpenFile(ctx, name, syscall.O_CREAT|syscall.O_WRONLY|syscall.O_TRUNC, 0o644, nil)
	if err != nil {
		return err
	}
	for off := int64(0); off < size; {
		p := buf[:min(int64(len(buf)), size-off)]
		fill(p, off)
		n, err := h.WriteAt(ctx, p, off)
		off += int64(n)
		if err != nil {
			h.Close()
			return err
		}
	}
	// As close(2) on a mount: flush (the S3 backend uploads), then close.
	if err := h.Flush(ctx); err != nil {
		h.Close()
		return err
	}
	return h.Close()
}

func (t *directTarget) ReadFile(ctx context.Context, name string, buf []byte, check func([]byte, int64) error) (int64, error) {
	h, err := t.opened.Vol.OpenFile(ctx, name, syscall.O_RDONLY, 0, nil)
	if err != nil {
		return 0, err
	}
	defer h.Close()
	var off int64
	for {
		n, err := h.ReadAt(ctx, buf, off)
		if n > 0 {
			if cerr := check(buf[:n], off); cerr != nil {
				return off, cerr
			}
			off += int64(n)
		}
		if errors.Is(err, io.EOF) {
			return off, nil
		}
		if err != nil {
			return off, err
		}
	}
}

func (t *directTarget) Stats(ctx context.Context) (metrics.Snapshot, error) {
	return t.set.Snapshot(), nil
}

func (t *directTarget) Close(ctx context.Context) error {
	err := t.opened.Close()
	if lerr := t.log.Close(); err == nil {
		err = lerr
	}
	return err
}
