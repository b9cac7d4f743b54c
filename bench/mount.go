package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/metrics"
)

// fuseSuperMagic is FUSE_SUPER_MAGIC from linux/magic.h: statfs's f_type
// on a FUSE mount.
const fuseSuperMagic = 0x65735546

// Kmsfs runs the kmsfs binary as child processes.
type Kmsfs struct {
	// Exe is the kmsfs binary (the bench's own, os.Executable()).
	Exe string
	// Env is appended to the children's environment (KMSFS_KEYSTORE=...).
	Env []string
	// Common are flags init and mount both take: --kms, --kms-region,
	// --s3-endpoint, --s3-region, --s3-path-style, --passphrase-file.
	Common []string
	// Key is the KMS key for new volumes (--key); "" creates one on the
	// embedded KMS.
	Key string
}

func (k *Kmsfs) command(ctx context.Context, args ...string) *exec.Cmd {
	c := exec.CommandContext(ctx, k.Exe, args...)
	c.Env = append(os.Environ(), k.Env...)
	return c
}

// Init runs `kmsfs init --mode MODE BACKEND`.
func (k *Kmsfs) Init(ctx context.Context, backend, mode string) error {
	args := append([]string{"init", "--mode", mode}, k.Common...)
	if k.Key != "" {
		args = append(args, "--key", k.Key)
	}
	if !strings.HasPrefix(backend, "s3://") {
		if err := os.MkdirAll(backend, 0o700); err != nil {
			return err
		}
	}
	out, err := k.command(ctx, append(args, backend)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("kmsfs %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// MountHarness opens volumes as `kmsfs mount --foreground` child processes.
type MountHarness struct {
	Kmsfs
	// ReadyFDEnv names the variable through which a foreground mount
	// reports on descriptor 3 that it is mounted ("ok\n") or why not.
	ReadyFDEnv string
	// MountArgs are extra `kmsfs mount` flags (--prefetch, --cache-*, ...).
	MountArgs []string
	// RuntimeDir is $XDG_RUNTIME_DIR, where a mount not run by root
	// serves its stats (metrics.SocketPath).
	RuntimeDir string
}

// Path implements Harness.
func (m *MountHarness) Path() string { return "mount" }

// Open implements Harness: it mounts spec.Backend on WorkDir/mnt and returns
// once the mount answers.
func (m *MountHarness) Open(ctx context.Context, spec OpenSpec) (Target, error) {
	mnt := filepath.Join(spec.WorkDir, "mnt")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return nil, err
	}
	logPath := filepath.Join(spec.WorkDir, "kmsfs.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	args := []string{"mount", "--foreground", "--log", logPath,
		"--kms-latency", spec.KMSLatency.String(), "--kms-rps", strconv.FormatFloat(spec.KMSRPS, 'g', -1, 64)}
	args = append(append(append(args, m.Common...), m.MountArgs...), spec.Backend, mnt)
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	// Not CommandContext: the mount must outlive a cancelled context long
	// enough to be unmounted cleanly by Close.
	cmd := exec.Command(m.Exe, args...)
	cmd.Env = append(append(os.Environ(), m.Env...), m.ReadyFDEnv+"=3")
	cmd.ExtraFiles = []*os.File{w}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		r.Close()
		w.Close()
		return nil, err
	}
	w.Close()
	exited := make(chan struct{})
	t := &mountTarget{mnt: mnt, runtimeDir: m.RuntimeDir, cmd: cmd, exited: exited, logPath: logPath}
	go func() { t.waitErr = cmd.Wait(); close(exited) }()
	msg, _ := io.ReadAll(r)
	r.Close()
	if string(msg) != "ok\n" {
		<-exited
		if len(msg) == 0 {
			msg = []byte(fmt.Sprintf("exited (%v) without mounting", t.waitErr))
		}
		return nil, fmt.Errorf("kmsfs %s: %s (log %s)", strings.Join(args, " "), strings.TrimSpace(string(msg)), logPath)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(mnt, &st); err != nil || st.Type != fuseSuperMagic {
		t.Close(ctx)
		return nil, fmt.Errorf("kmsfs mount reported ok but %s is not a FUSE mount", mnt)
	}
	return t, nil
}

// mountTarget is a running `kmsfs mount --foreground` child.
type mountTarget struct {
	runtimeDir string
	mnt        string
	logPath    string
	cmd        *exec.Cmd
	exited     chan struct{}
	waitErr    error // valid once exited is closed
}

func (t *mountTarget) path(name string) string {
	return filepath.Join(t.mnt, filepath.FromSlash(path.Clean(name)))
}

func (t *mountTarget) Mkdir(ctx context.Context, name string) error {
	return os.Mkdir(t.path(name), 0o755)
}

func (t *mountTarget) WriteFile(ctx context.Context, name string, size int64, buf []byte, fill func([]byte, int64)) error {
	f, err := os.OpenFile(t.path(name), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	for off := int64(0); off < size; {
		p := buf[:min(int64(len(buf)), size-off)]
		fill(p, off)
		n, err := f.Write(p)
		off += int64(n)
		if err != nil {
			f.Close()
			return err
		}
	}
	// close(2) is where FUSE flushes (and the S3 backend uploads): its
	// error is the write's error.
	return f.Close()
}

func (t *mountTarget) ReadFile(ctx context.Context, name string, buf []byte, check func([]byte, int64) error) (int64, error) {
	f, err := os.Open(t.path(name))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return readAll(f, buf, check)
}

// readAll reads r to its end in pieces of len(buf), checking each.
func readAll(r io.Reader, buf []byte, check func([]byte, int64) error) (int64, error) {
	var off int64
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			if cerr := check(buf[:n], off); cerr != nil {
				return off, cerr
			}
			off += int64(n)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return off, nil
		}
		if err != nil {
			return off, err
		}
	}
}

func (t *mountTarget) Stats(ctx context.Context) (metrics.Snapshot, error) {
	return metrics.Fetch(ctx, t.runtimeDir, t.mnt)
}

// Close stops the mount with SIGTERM (kmsfs unmounts on it) and waits for
// the process; a mount that does not go away is lazily unmounted and
// killed, so that the next run can use the mount point.
func (t *mountTarget) Close(ctx context.Context) error {
	select {
	case <-t.exited:
		return fmt.Errorf("kmsfs mount on %s had exited: %v (log %s)", t.mnt, t.waitErr, t.logPath)
	default:
	}
	_ = t.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-t.exited:
		return nil
	case <-time.After(30 * time.Second):
	}
	if err := exec.Command("fusermount3", "-u", "-z", t.mnt).Run(); err != nil {
		_ = syscall.Unmount(t.mnt, syscall.MNT_DETACH)
	}
	_ = t.cmd.Process.Kill()
	<-t.exited
	return fmt.Errorf("kmsfs mount on %s did not exit within 30s of SIGTERM; unmounted lazily and killed (log %s)", t.mnt, t.logPath)
}
