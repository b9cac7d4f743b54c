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

	"github.com/kmsfs/kmsfs/bench"
	"github.com/kmsfs/kmsfs/keycache"
	"github.com/kmsfs/kmsfs/kms"
	"github.com/kmsfs/kmsfs/kms/kmsmw"
	"github.com/kmsfs/kmsfs/metrics"
	"github.com/kmsfs/kmsfs/volume"
)

// benchCommand runs `kmsfs bench`: per-object against bucket-key mode,
// through a real mount (child processes of this binary) or, with --direct,
// through the volume library in this process.
func benchCommand(ctx context.Context, args []string) error {
	var c commonFlags
	fs := newFlagSet("bench", "kmsfs bench [flags]")
	c.register(fs)
	preset := fs.String("preset", "small", "workload: "+bench.PresetNames+"; --files and --size override it")
	files := fs.Int("files", 0, "number of files to create (default from --preset)")
	sizeStr := fs.String("size", "", "size of each file, e.g. 4KiB or 256MiB (default from --preset)")
	modes := fs.StringSlice("mode", []string{"per-object", "bucket-key"}, "key modes to compare (comma-separated)")
	latencies := fs.DurationSlice("kms-latency", nil, "simulated KMS latency per call; several (e.g. 0,10ms) make one run each (default 0)")
	rps := fs.Float64Slice("kms-rps", []float64{0}, "simulated KMS request quota per second (0: none); several make one run each")
	jobs := fs.IntSlice("jobs", []int{1}, "parallel writers and readers; several (e.g. 1,8) make one run each")
	repeat := fs.Int("repeat", 1, "run every combination this many times, interleaved, and report medians (for shared, noisy machines)")
	direct := fs.Bool("direct", false, "drive the volume library in-process instead of a FUSE mount (isolates FUSE)")
	backendURL := fs.String("backend", "", "s3://bucket/prefix to bench the S3 backend (default: a directory under --scratch)")
	key := fs.String("key", "", "KMS key for the bench volumes (needed with --kms; default: new keys on the embedded KMS)")
	prefetch := fs.Int("prefetch", 0, "per-object data key prefetch pool size (-1: off; 0: the mount's default)")
	var mountArgs []string
	fs.StringArrayVar(&mountArgs, "mount-flag", nil, "extra `kmsfs mount` flag, repeatable (e.g. --mount-flag=--cache-capacity=20000)")
	scratch := fs.String("scratch", "", "make the bench's directory (volumes, mount points, logs) in this directory (default: the system temporary directory)")
	keep := fs.Bool("keep", false, "keep the scratch directory (volumes, logs) afterwards")
	cold := fs.Bool("cold", true, "read the files back after a remount (cold caches)")
	warm := fs.Bool("warm", true, "read the files again in the same mount (warm caches)")
	seed := fs.Uint64("seed", 1, "seed of the file content")
	jsonPath := fs.String("json", "", "write the results as JSON to this file")
	chartPath := fs.String("chart", "", "draw the results as an SVG chart into this file")
	cpuProfile := fs.String("cpuprofile", "", "with --direct: write a CPU profile (pprof) of the bench to this file")
	quiet := fs.Bool("quiet", false, "no progress lines on stderr")
	render := fs.String("render", "", "run nothing: print the table (and --chart) of an earlier --json FILE")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		fs.Usage()
		return errors.New("kmsfs bench takes no arguments")
	}
	if *render != "" {
		return benchRender(*render, *chartPath)
	}
	p, ok := bench.LookupPreset(*preset)
	if !ok {
		return fmt.Errorf("--preset %q: want %s", *preset, bench.PresetNames)
	}
	if *files > 0 {
		p.Files = *files
	}
	if *sizeStr != "" {
		n, err := bench.ParseSize(*sizeStr)
		if err != nil {
			return err
		}
		p.Size = n
	}
	if len(*latencies) == 0 {
		*latencies = append(*latencies, 0)
	}
	if *cpuProfile != "" && !*direct {
		return errors.New("--cpuprofile profiles the bench process, which does the work only with --direct; for a mount use --mount-flag=--cpuprofile=FILE")
	}

	// Always a new directory (inside --scratch, if given), so that the
	// cleanup removes only what the bench made.
	if *scratch != "" {
		if err := os.MkdirAll(*scratch, 0o700); err != nil {
			return err
		}
	}
	dir, err := os.MkdirTemp(*scratch, "kmsfs-bench-")
	if err != nil {
		return err
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return err
	}
	if !*keep {
		defer os.RemoveAll(dir)
	}
	// A keystore of its own, so that the bench's keys never land in the
	// user's; --keystore picks one (e.g. one the passphrase file opens).
	if !fs.Changed("keystore") {
		c.keystore = filepath.Join(dir, "keystore")
		// Protect the scratch keystore with a random passphrase, so that no
		// unprotected root key is written (and warned about) even there.
		if c.passphraseFile == "" {
			pass := make([]byte, 24)
			if _, err := rand.Read(pass); err != nil {
				return err
			}
			c.passphraseFile = filepath.Join(dir, "passphrase")
			err := os.WriteFile(c.passphraseFile, []byte(hex.EncodeToString(pass)), 0o600)
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
	kmsfs := bench.Kmsfs{Exe: exe, Env: []string{"KMSFS_KEYSTORE=" + c.keystore}, Common: c.args(), Key: *key}
	var harness bench.Harness
	if *direct {
		harness = &directHarness{Kmsfs: kmsfs, common: c, prefetch: *prefetch}
	} else {
		ma := append([]string(nil), mountArgs...)
		if *prefetch != 0 {
			ma = append(ma, "--prefetch", strconv.Itoa(*prefetch))
		}
		harness = &bench.MountHarness{Kmsfs: kmsfs, ReadyFDEnv: readyFDEnv, MountArgs: ma}
	}
	runner := &bench.Runner{
		Config: bench.Config{
			Files: p.Files, FileSize: p.Size, Modes: *modes, KMSLatencies: *latencies, KMSRPS: *rps, Jobs: *jobs,
			Backend: *backendURL, Scratch: dir, Seed: *seed, Repeat: *repeat, SkipCold: !*cold, SkipWarm: !*warm,
		},
		Harness: harness,
	}
	if !*quiet {
		runner.Progress = os.Stderr
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
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
	if rep == nil {
		return runErr
	}
	fmt.Println()
	if err := benchOutput(rep, *jsonPath, *chartPath); err != nil {
		return err
	}
	if *keep {
		fmt.Fprintf(os.Stderr, "kmsfs bench: volumes and logs kept in %s\n", dir)
	}
	return runErr
}

// benchOutput prints the table and writes the JSON and chart files asked for.
func benchOutput(rep *bench.Report, jsonPath, chartPath string) error {
	if err := rep.WriteTable(os.Stdout); err != nil {
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
func benchRender(jsonPath, chartPath string) error {
	raw, err := os.ReadFile(jsonPath)
	if err != nil {
		return err
	}
	var rep bench.Report
	if err := json.Unmarshal(raw, &rep); err != nil {
		return fmt.Errorf("%s: %w", jsonPath, err)
	}
	return benchOutput(&rep, "", chartPath)
}

// args renders the flags init and mount share, for the bench's children.
func (c *commonFlags) args() []string {
	var a []string
	add := func(flag, v string) {
		if v != "" {
			a = append(a, flag, v)
		}
	}
	add("--passphrase-file", c.passphraseFile)
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
}

func (d *directHarness) Path() string { return "direct" }

func (d *directHarness) Open(ctx context.Context, spec bench.OpenSpec) (bench.Target, error) {
	logFile, err := os.OpenFile(filepath.Join(spec.WorkDir, "kmsfs.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	set := metrics.New()
	opened, err := openVolume(ctx, &d.common, spec.Backend, false, keycache.DefaultLimits(), slog.New(slog.NewTextHandler(logFile, nil)),
		volume.Options{PrefetchMax: d.prefetch},
		kmsChain{simulate: kmsmw.SimulateOptions{Latency: spec.KMSLatency, RPS: spec.KMSRPS}, metrics: set})
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
	return t.opened.vol.Backend().Mkdir(ctx, name, 0o755, nil)
}

func (t *directTarget) WriteFile(ctx context.Context, name string, size int64, buf []byte, fill func([]byte, int64)) error {
	h, err := t.opened.vol.OpenFile(ctx, name, syscall.O_CREAT|syscall.O_WRONLY|syscall.O_TRUNC, 0o644, nil)
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
	h, err := t.opened.vol.OpenFile(ctx, name, syscall.O_RDONLY, 0, nil)
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
