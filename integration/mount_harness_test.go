package integration

// Harness for the tests that mount kmsfs for real: a fresh volume and
// keystore per test under t.TempDir(), `kmsfs mount` as a process, and an
// unmount in t.Cleanup that runs even when the test failed.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/keycache"
)

// mountFuseSuperMagic is FUSE_SUPER_MAGIC from linux/magic.h: what statfs
// reports as f_type on a FUSE mount.
const mountFuseSuperMagic = 0x65735546

// Backing-file geometry of a volume made with the default `kmsfs init`
// (docs/FORMAT.md): a header region, then blocks of nonce||ciphertext||tag.
const (
	mountHeaderSize      = 1024
	mountBlockSize       = 4096
	mountCipherBlockSize = 12 + mountBlockSize + 16
)

// mountVolume is one kmsfs volume with its own embedded keystore, its
// backing directory, a mount point and the mount's log file.
type mountVolume struct {
	t        *testing.T
	vault    string // backing directory (ciphertext)
	mnt      string // mount point (plaintext)
	keystore string // embedded KMS keystore directory
	logPath  string // --log of every mount of this volume

	// foreground holds `kmsfs mount --foreground` children still running;
	// cleanup kills them after unmounting.
	foreground []*mountProc
}

// mountNewVolume runs `kmsfs init` on a fresh directory. initArgs go before
// the backend argument (e.g. "--mode", "bucket-key"). The volume is not
// mounted yet; whatever gets mounted later is unmounted in t.Cleanup.
func mountNewVolume(t *testing.T, initArgs ...string) *mountVolume {
	t.Helper()
	mountRequireFuse(t)
	// TempDir registers its removal before our cleanup is registered, so
	// (cleanups run last-in first-out) we unmount before it is removed.
	root := t.TempDir()
	v := &mountVolume{
		t:        t,
		vault:    filepath.Join(root, "vault"),
		mnt:      filepath.Join(root, "mnt"),
		keystore: filepath.Join(root, "keystore"),
		logPath:  filepath.Join(root, "kmsfs.log"),
	}
	if err := os.Mkdir(v.mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.cleanup)
	v.run(append(append([]string{"init"}, initArgs...), v.vault)...)
	return v
}

// command is a kmsfs command using this volume's keystore.
func (v *mountVolume) command(args ...string) *exec.Cmd {
	c := exec.Command(kmsfsBinary(), args...)
	c.Env = append(os.Environ(), "KMSFS_KEYSTORE="+v.keystore)
	return c
}

// tryRun runs kmsfs and returns its combined output. The output goes
// through a file, not a pipe: the daemon `kmsfs mount` leaves behind
// inherits the descriptors, and a pipe would then stay open (and
// CombinedOutput block) until the volume is unmounted.
func (v *mountVolume) tryRun(args ...string) (string, error) {
	f, err := os.CreateTemp("", "kmsfs-output")
	if err != nil {
		return "", err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	cmd := v.command(args...)
	cmd.Stdout, cmd.Stderr = f, f
	runErr := cmd.Run()
	out, err := os.ReadFile(f.Name())
	if err != nil {
		return "", err
	}
	return string(out), runErr
}

// run runs kmsfs and fails the test if it fails.
func (v *mountVolume) run(args ...string) string {
	v.t.Helper()
	out, err := v.tryRun(args...)
	if err != nil {
		v.t.Fatalf("kmsfs %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// path is name inside the mount.
func (v *mountVolume) path(name string) string { return filepath.Join(v.mnt, name) }

// backing is name inside the backing directory.
func (v *mountVolume) backing(name string) string { return filepath.Join(v.vault, name) }

// letOthersReach makes the directories above the mount point traversable
// (the tests' temporary directories are 0700), so that another user can
// reach the mount point; whether the mount lets them in is --allow-other's
// business.
func (v *mountVolume) letOthersReach() {
	v.t.Helper()
	for d := filepath.Dir(v.mnt); d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			v.t.Fatal(err)
		}
	}
}

// mount runs `kmsfs mount` (which returns once the mount is up) with extra
// flags before the positional arguments.
func (v *mountVolume) mount(extra ...string) {
	v.t.Helper()
	args := append([]string{"mount", "--log", v.logPath}, extra...)
	v.run(append(args, v.vault, v.mnt)...)
	if !mountIsMounted(v.mnt) {
		v.t.Fatalf("kmsfs mount returned but %s is not in /proc/self/mountinfo", v.mnt)
	}
}

// mountProc is a `kmsfs mount --foreground` child process.
type mountProc struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed when the process has been reaped
	err    error         // its exit status, valid once exited is closed
}

// wait waits up to timeout for the process to exit and returns its exit
// status; done is false if it is still running.
func (p *mountProc) wait(timeout time.Duration) (done bool, err error) {
	if timeout <= 0 {
		select {
		case <-p.exited:
			return true, p.err
		default:
			return false, nil
		}
	}
	select {
	case <-p.exited:
		return true, p.err
	case <-time.After(timeout):
		return false, nil
	}
}

// mountForeground starts `kmsfs mount --foreground` as a child process and
// waits until the mount is up. Its output goes to the log file.
func (v *mountVolume) mountForeground(extra ...string) *mountProc {
	v.t.Helper()
	args := append([]string{"mount", "--foreground", "--log", v.logPath}, extra...)
	cmd := v.command(append(args, v.vault, v.mnt)...)
	logf, err := os.OpenFile(v.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		v.t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		v.t.Fatal(err)
	}
	p := &mountProc{cmd: cmd, exited: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.exited) }()
	v.foreground = append(v.foreground, p)
	deadline := time.Now().Add(20 * time.Second)
	for !mountIsMounted(v.mnt) {
		if done, err := p.wait(0); done {
			v.t.Fatalf("kmsfs mount --foreground exited before mounting: %v\nlog:\n%s", err, v.log())
		}
		if time.Now().After(deadline) {
			v.t.Fatalf("kmsfs mount --foreground: %s not mounted after 20s\nlog:\n%s", v.mnt, v.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return p
}

// unmount runs `kmsfs umount` and waits until the kernel has dropped the mount.
func (v *mountVolume) unmount() {
	v.t.Helper()
	v.run("umount", v.mnt)
	if !mountWaitUnmounted(v.mnt, 10*time.Second) {
		v.t.Fatalf("kmsfs umount %s returned but the mount is still listed", v.mnt)
	}
}

// remount unmounts and mounts again with extra flags: every later read
// comes from the backing files, not from the kernel's page cache.
func (v *mountVolume) remount(extra ...string) {
	v.t.Helper()
	v.unmount()
	v.mount(extra...)
}

// log returns the mount log so far.
func (v *mountVolume) log() string {
	b, _ := os.ReadFile(v.logPath)
	return string(b)
}

// cleanup unmounts whatever is still mounted (kmsfs umount, then a lazy
// umount as the last resort) and kills foreground mount processes.
func (v *mountVolume) cleanup() {
	if mountIsMounted(v.mnt) {
		if out, err := v.tryRun("umount", v.mnt); err != nil {
			v.t.Logf("cleanup: kmsfs umount: %v: %s", err, out)
		}
		if !mountWaitUnmounted(v.mnt, 5*time.Second) {
			if out, err := exec.Command("umount", "-l", v.mnt).CombinedOutput(); err != nil {
				v.t.Logf("cleanup: umount -l: %v: %s", err, out)
			}
		}
	}
	for _, p := range v.foreground {
		if done, _ := p.wait(0); !done {
			_ = p.cmd.Process.Kill()
			p.wait(5 * time.Second)
		}
	}
	if v.t.Failed() {
		v.t.Logf("mount log %s:\n%s", v.logPath, mountTail(v.log(), 60))
	}
}

// mountTail returns the last n lines of s.
func mountTail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// mountIsMounted reports whether dir is a mount point in this process's
// mount namespace.
func mountIsMounted(dir string) bool {
	dir = filepath.Clean(dir)
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && mountUnescape(fields[4]) == dir {
			return true
		}
	}
	return false
}

// mountUnescape undoes the octal escapes (\040 for space, ...) the kernel
// applies to paths in /proc/self/mountinfo.
func mountUnescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func mountWaitUnmounted(dir string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for mountIsMounted(dir) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// mountWaitFor polls cond until it holds, failing the test if it still
// does not after timeout; what names the condition in the failure.
func mountWaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("still waiting after %v for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// keyCacheStats is the key cache part of `kmsfs stats --json` of the
// mounted volume.
func (v *mountVolume) keyCacheStats() keycache.Stats {
	v.t.Helper()
	var snap struct {
		Cache keycache.Stats `json:"cache"`
	}
	out := v.run("stats", "--json", v.mnt)
	if err := json.Unmarshal([]byte(out), &snap); err != nil {
		v.t.Fatalf("kmsfs stats --json: %v\n%s", err, out)
	}
	return snap.Cache
}

// mountExecOut runs a tool (cp, rsync, diff, fio, ...) and returns its
// combined output and error.
func mountExecOut(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

// mountExec runs a tool and fails the test if it fails.
func mountExec(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := mountExecOut(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, mountTail(out, 80))
	}
	return out
}

// mountErrno extracts the errno from an *os.PathError (or any wrapped
// syscall.Errno), 0 if there is none.
func mountErrno(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return 0
}

// mountGrepBacking returns the backing files (outside .kmsfs) whose bytes
// contain needle: it must find none when needle is plaintext.
func mountGrepBacking(t *testing.T, vault string, needle []byte) []string {
	t.Helper()
	var hits []string
	err := filepath.WalkDir(vault, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.Contains(b, needle) {
			hits = append(hits, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return hits
}

// mountSeed is the seed of a randomised test: $KMSFS_TEST_SEED when set
// (to replay a failure), else fresh. The test logs it either way.
func mountSeed(t *testing.T) uint64 {
	t.Helper()
	if s := os.Getenv("KMSFS_TEST_SEED"); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("KMSFS_TEST_SEED=%q: %v", s, err)
		}
		t.Logf("seed %d (from KMSFS_TEST_SEED)", seed)
		return seed
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d (replay with KMSFS_TEST_SEED=%d)", seed, seed)
	return seed
}

// kill SIGKILLs the mount process and waits for it to be gone; it reports
// whether the process exited with an error, as a killed one does.
func (p *mountProc) kill(t *testing.T) (exitErr error) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	done, err := p.wait(10 * time.Second)
	if !done {
		t.Fatal("kmsfs still running 10s after SIGKILL")
	}
	return err
}

// dropDeadMount detaches the mount point of a killed mount process
// (fusermount3 -u -z, else umount -l) and waits until it is no longer
// listed.
func (v *mountVolume) dropDeadMount() {
	v.t.Helper()
	if out, err := exec.Command("fusermount3", "-u", "-z", v.mnt).CombinedOutput(); err != nil {
		if out2, err2 := exec.Command("umount", "-l", v.mnt).CombinedOutput(); err2 != nil {
			v.t.Fatalf("unmount the dead mount: fusermount3 -u -z: %v %s; umount -l: %v %s", err, out, err2, out2)
		}
	}
	if !mountWaitUnmounted(v.mnt, 5*time.Second) {
		v.t.Fatal("dead mount still listed")
	}
}
