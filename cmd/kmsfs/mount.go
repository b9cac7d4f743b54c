package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/kmsfs/kmsfs/envelope"
	kfs "github.com/kmsfs/kmsfs/fs"
	"github.com/kmsfs/kmsfs/internal/compose"
	"github.com/kmsfs/kmsfs/keycache"
	"github.com/kmsfs/kmsfs/kms/kmsmw"
	"github.com/kmsfs/kmsfs/metrics"
	"github.com/kmsfs/kmsfs/volume"
)

// readyFDEnv names the descriptor on which a daemonised mount child reports
// "ok" (mounted) or an error to the parent waiting in the foreground.
const readyFDEnv = "KMSFS_READY_FD"

type mountFlags struct {
	commonFlags
	foreground   bool
	allowOther   bool
	readOnly     bool
	debug        bool
	logFile      string
	attrTimeout  time.Duration
	entryTimeout time.Duration
	negTimeout   time.Duration
	flagSet      *pflag.FlagSet // to tell timeouts given from defaults
	cache        keycache.Limits
	bucketAge    time.Duration
	bucketFiles  int
	prefetch     int
	mode         string
	kmsLatency   time.Duration
	kmsRPS       float64
	metricsAddr  string
	cpuProfile   string
	options      string
	writeback    bool
	vfs          kfs.VFSFlags // generic options: noatime, nosuid, sync, ro/rw, ...
}

func (m *mountFlags) register(fs *pflag.FlagSet) {
	m.commonFlags.register(fs)
	d := kfs.DefaultMountOptions()
	lim := keycache.DefaultLimits()
	fs.BoolVarP(&m.foreground, "foreground", "f", false, "stay attached; unmount on SIGINT/SIGTERM")
	fs.BoolVar(&m.allowOther, "allow-other", false, "let other users access the mount (needs root or user_allow_other)")
	fs.BoolVar(&m.readOnly, "read-only", false, "mount read-only")
	fs.BoolVar(&m.debug, "debug", false, "log every FUSE request")
	fs.StringVar(&m.logFile, "log", "", "append the mount's log to `FILE` (default: stderr with --foreground, else ~/.cache/kmsfs/mount-NAME-HASH.log)")
	m.flagSet = fs
	const auto = " (default: 30s on a read-write mount, which alone changes the volume; 1s on a read-only mount or a shared volume)"
	fs.DurationVar(&m.attrTimeout, "attr-timeout", 0, "how long (`DURATION`) the kernel caches attributes"+auto)
	fs.DurationVar(&m.entryTimeout, "entry-timeout", 0, "how long (`DURATION`) the kernel caches name lookups"+auto)
	fs.DurationVar(&m.negTimeout, "negative-timeout", 0, "how long (`DURATION`) the kernel caches \"no such file\" (default: as --entry-timeout, but 0 on a read-only mount or a shared volume)")
	fs.BoolVar(&m.writeback, "writeback-cache", d.WritebackCache, "let the kernel cache writes and send them in the background: small write(2)s 2-3x faster, rsync -a slower (see docs/BENCHMARKS.md)")
	fs.DurationVar(&m.cache.MaxAge, "cache-max-age", lim.MaxAge, "key cache: how long (`DURATION`) a plaintext data key is reused before asking the KMS again")
	fs.Uint64Var(&m.cache.MaxUses, "cache-max-uses", lim.MaxUses, "key cache: how many times (`N`) a cached key is served")
	fs.Uint64Var(&m.cache.MaxBytes, "cache-max-bytes", lim.MaxBytes, "key cache: `BYTES` processed under a cached key")
	fs.IntVar(&m.cache.Capacity, "cache-capacity", lim.Capacity, "key cache: number of keys (`N`) kept (LRU)")
	fs.DurationVar(&m.cache.Grace, "cache-grace", 0, "key cache: keep serving expired keys this long (`DURATION`) while the KMS is unreachable (0: off)")
	fs.DurationVar(&m.bucketAge, "bucket-key-max-age", volume.DefaultBucketKeyMaxAge, "bucket-key mode: replace the volume-level key after this long (`DURATION`)")
	fs.IntVar(&m.bucketFiles, "bucket-key-max-files", volume.DefaultBucketKeyMaxFiles, "bucket-key mode: replace the volume-level key after `N` new files")
	fs.StringVar(&m.mode, "mode", "", "key `MODE` for new files, overriding the volume's: per-object or bucket-key (every mount reads both)")
	fs.IntVar(&m.prefetch, "prefetch", volume.DefaultPrefetchMax, "per-object mode: most data keys (`N`) fetched ahead of file creation (-1: none)")
	fs.DurationVar(&m.kmsLatency, "kms-latency", 0, "benchmarking: add this latency (`DURATION`) to every KMS call (a regional KMS is ~10ms)")
	fs.Float64Var(&m.kmsRPS, "kms-rps", 0, "benchmarking: KMS request quota per second (`RATE`); beyond it calls are throttled and retried")
	fs.StringVar(&m.metricsAddr, "metrics-addr", "", "serve Prometheus /metrics on `ADDR` (e.g. 127.0.0.1:9310)")
	fs.StringVar(&m.cpuProfile, "cpuprofile", "", "write a CPU profile (pprof) of the mount to `FILE`, until unmount")
	fs.StringVarP(&m.options, "options", "o", "", "comma-separated mount `OPTIONS`, as from /etc/fstab (allow_other, ro, debug, keystore=DIR, ...)")
}

// applyOptions folds -o options (from mount(8) via the mount helper) into flags.
func (m *mountFlags) applyOptions() error {
	for _, o := range strings.Split(m.options, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(o), "=")
		if m.vfs.Parse(k) {
			m.readOnly = m.readOnly || m.vfs.ReadOnly()
			continue
		}
		switch k {
		case "", "auto", "noauto", "user", "nouser", "_netdev", "nofail", "defaults":
		case "allow_other":
			m.allowOther = true
		case "debug":
			m.debug = true
		case "writeback_cache":
			m.writeback = true
		case "no_writeback_cache":
			m.writeback = false
		case "keystore":
			m.keystore.dir = v
		case "passphrase_file":
			m.keystore.passphraseFile = v
		case "kms":
			m.kmsURL = v
		case "log":
			m.logFile = v
		default:
			return usagef("unknown mount option %q", k)
		}
	}
	return nil
}

func mountCommand() *command {
	return &command{
		name: "mount", args: "BACKEND MOUNTPOINT", minArgs: 2, maxArgs: 2,
		summary: "mount a volume (returns once mounted)",
		about: `Mounts the volume in BACKEND (a directory or s3://bucket/prefix) on MOUNTPOINT
and returns once the mount answers; --foreground stays attached. mount(8) runs
'kmsfs BACKEND MOUNTPOINT -o OPTIONS' for fstab entries of type fuse.kmsfs.
A local volume mounted read-write here already is bind-mounted (as root): both
mountpoints show one mount, served by its one process, with the first mount's
options except read-only and the generic ones (noatime, nosuid, ...).`,
		setup: func(fs *pflag.FlagSet) runFunc {
			var m mountFlags
			m.register(fs)
			return func(ctx context.Context, inv *invocation) error { return mount(ctx, inv, &m) }
		},
	}
}

func mount(ctx context.Context, inv *invocation, m *mountFlags) error {
	if kfs.IsRemount(m.options) {
		return kfs.Remount(inv.args[1], m.options)
	}
	if err := m.applyOptions(); err != nil {
		return err
	}
	var mode envelope.Mode
	if m.mode != "" {
		var err error
		if mode, err = parseMode(m.mode); err != nil {
			return err
		}
	}
	spec, mnt := inv.args[0], inv.args[1]
	if !compose.IsS3(spec) {
		abs, err := filepath.Abs(spec)
		if err != nil {
			return err
		}
		spec = abs
	}
	mnt, err := filepath.Abs(mnt)
	if err != nil {
		return err
	}
	if !compose.IsS3(spec) {
		// Mounted read-write here already: this mountpoint shows that
		// mount (fs/bind.go). Without the privilege to bind, go on: the
		// volume lock then says who holds the volume.
		if at := kfs.MountedReadWrite(spec); at != "" && kfs.BindMount(at, mnt, m.vfs, m.readOnly) == nil {
			return nil
		}
	}
	if !m.foreground && os.Getenv(readyFDEnv) == "" {
		if m.logFile == "" {
			if m.logFile, err = defaultLogPath(mnt); err != nil {
				return err
			}
		}
		return daemonize(inv.raw, m.logFile)
	}
	return runMount(ctx, m, mode, spec, mnt, inv.stderr)
}

// daemonize re-executes kmsfs in the background with --foreground and waits
// until the child reports that the mount is up (or why it failed), so that
// `kmsfs mount` returns only once the mount is usable.
//
// The child's stdout and stderr go to the log file, never to ours: a caller
// that captures our output through a pipe and stops reading after we exit
// would otherwise block the mount on its next log line once the pipe fills.
func daemonize(args []string, logPath string) error {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("log file: %w", err)
	}
	defer logf.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(self, append([]string{"mount", "--foreground", "--log", logPath}, args...)...)
	cmd.Env = append(os.Environ(), readyFDEnv+"=3")
	cmd.ExtraFiles = []*os.File{w}
	cmd.Stdin = nil
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	w.Close()
	msg, _ := io.ReadAll(r)
	r.Close()
	if string(msg) == "ok\n" {
		return nil
	}
	_ = cmd.Wait()
	if len(msg) == 0 {
		return errors.New("mount process exited without mounting (see its log)")
	}
	return errors.New(strings.TrimSpace(string(msg)))
}

func runMount(ctx context.Context, m *mountFlags, mode envelope.Mode, spec, mnt string, stderr io.Writer) (err error) {
	ready := readyPipe()
	defer func() {
		if ready != nil { // failed before mounting: tell the waiting parent
			fmt.Fprintf(ready, "%v\n", err)
			ready.Close()
		}
	}()
	logOut := stderr
	if m.logFile != "" {
		f, err := os.OpenFile(m.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("log file: %w", err)
		}
		defer f.Close()
		logOut = f
	}
	log := slog.New(slog.NewTextHandler(logOut, nil))

	// The kernel has already applied the caller's umask to the modes it
	// sends (FUSE without DONT_MASK); ours must not mask them again.
	syscall.Umask(0)

	if m.cpuProfile != "" {
		f, err := os.Create(m.cpuProfile)
		if err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	m.mounting = !m.readOnly
	set := metrics.New()
	opened, err := openVolume(ctx, &m.commonFlags, spec, volumeRequest{
		readOnly: m.readOnly, limits: m.cache, log: log, stderr: stderr, command: "mount",
		volume: volume.Options{BucketKeyMaxAge: m.bucketAge, BucketKeyMaxFiles: m.bucketFiles, PrefetchMax: m.prefetch, Mode: mode},
		chain:  compose.Chain{Simulate: kmsmw.SimulateOptions{Latency: m.kmsLatency, RPS: m.kmsRPS}, Metrics: set},
	})
	if err != nil {
		return err
	}
	defer opened.Close()
	metricsCtx, stopMetrics := context.WithCancel(context.Background())
	defer stopMetrics()
	if err := set.Serve(metricsCtx, os.Getenv(envRuntimeDir), mnt, m.metricsAddr); err != nil {
		return err
	}

	mo := kfs.DefaultMountOptions()
	mo.AllowOther, mo.ReadOnly, mo.Debug = m.allowOther, m.readOnly, m.debug
	for _, t := range []struct {
		flag string
		dst  *time.Duration
		val  time.Duration
	}{{"attr-timeout", &mo.AttrTimeout, m.attrTimeout}, {"entry-timeout", &mo.EntryTimeout, m.entryTimeout}, {"negative-timeout", &mo.NegativeTimeout, m.negTimeout}} {
		if m.flagSet != nil && m.flagSet.Changed(t.flag) {
			*t.dst = t.val
		}
	}
	if limit := opened.MaxCacheTimeout(); limit > 0 {
		// A shared volume: other mounts' changes show within a second,
		// whatever was asked for (the automatic timeout included).
		capped := func(d time.Duration) time.Duration {
			if d < 0 || d > limit {
				return limit
			}
			return d
		}
		mo.AttrTimeout, mo.EntryTimeout = capped(mo.AttrTimeout), capped(mo.EntryTimeout)
		mo.NegativeTimeout = min(mo.NegativeTimeout, limit) // automatic: none
	}
	mo.WritebackCache = m.writeback
	mo.VFS = m.vfs
	mo.FsName = spec
	srv, err := kfs.Mount(opened.Vol, mnt, mo, log)
	if err != nil {
		return fmt.Errorf("mount %s on %s: %w", spec, mnt, err)
	}
	log.Info("mounted", "backend", spec, "mountpoint", mnt, "volume", opened.Vol.Config().VolumeID, "mode", opened.Vol.Config().Mode)
	if ready != nil {
		fmt.Fprint(ready, "ok\n")
		ready.Close()
		ready = nil
	}
	served := make(chan struct{})
	go func() {
		select {
		case <-served:
			// Unmounted from outside (umount, fusermount3 -u): nothing to
			// do. Unmounting by path now could take down a new mount that
			// already sits on the same mount point.
			return
		case <-ctx.Done():
		}
		// SIGINT/SIGTERM: unmount cleanly; retry while the mount is busy.
		for i := 0; i < 50; i++ {
			if err := srv.Unmount(); err == nil {
				return
			}
			select {
			case <-served:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
		log.Error("unmount on signal failed: mount busy")
	}()
	srv.Wait()
	close(served)
	log.Info("unmounted", "mountpoint", mnt)
	return nil
}

// defaultLogPath is where a daemonised mount logs when --log is not given.
func defaultLogPath(mnt string) (string, error) {
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no --log and no cache directory: %w", err)
	}
	dir = filepath.Join(dir, "kmsfs")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	sum := sha256.Sum256([]byte(mnt))
	return filepath.Join(dir, fmt.Sprintf("mount-%s-%x.log", filepath.Base(mnt), sum[:4])), nil
}

func readyPipe() *os.File {
	if os.Getenv(readyFDEnv) != "3" {
		return nil
	}
	os.Unsetenv(readyFDEnv)
	return os.NewFile(3, "ready")
}
