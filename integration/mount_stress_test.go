package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// mountFioRandom: random writes of unaligned sizes (1 KiB..64 KiB, so most
// straddle the 4 KiB block boundary) verified continually while writing,
// and a mixed random read/write job; both verified with crc32c.
const mountFioRandom = `
[global]
directory=%DIR%
ioengine=psync
size=64m
verify=crc32c
do_verify=1
verify_fatal=1
randrepeat=1

[randwrite-unaligned]
rw=randwrite
bsrange=1k-64k
bs_unaligned=1
verify_backlog=256

[randrw]
rw=randrw
bsrange=4k-64k
`

// mountFioTruncate: many files grown with ftruncate(2) to random sizes,
// written randomly in small unaligned pieces inside the zero-filled
// extension, verified, unlinked, four times over.
const mountFioTruncate = `
[global]
directory=%DIR%
ioengine=psync
verify=crc32c
do_verify=1
verify_fatal=1

[truncate-heavy]
rw=randwrite
nrfiles=32
filesize=64k-1m
fallocate=truncate
bsrange=512-16k
bs_unaligned=1
loops=4
unlink_each_loop=1
file_service_type=random
`

// mountRunFio writes a job file for dir and runs fio with extra flags,
// failing on a non-zero exit or any job reporting err != 0.
func mountRunFio(t *testing.T, job, dir string, extra ...string) string {
	t.Helper()
	jobFile := filepath.Join(t.TempDir(), "job.fio")
	if err := os.WriteFile(jobFile, []byte(strings.ReplaceAll(job, "%DIR%", dir)), 0o644); err != nil {
		t.Fatal(err)
	}
	// fio saves verify state files in its working directory.
	cmd := exec.Command("fio", append(extra, jobFile)...)
	cmd.Dir = filepath.Dir(jobFile)
	outb, err := cmd.CombinedOutput()
	out := string(outb)
	if err != nil || regexp.MustCompile(`err=\s*[1-9]`).MatchString(out) || strings.Contains(out, "verify:") {
		t.Fatalf("fio %s: %v\n%s", strings.Join(extra, " "), err, mountTail(out, 60))
	}
	return out
}

// TestMountFio runs fio with --verify=crc32c on the mount, then remounts
// and has fio verify the random jobs' data again (--verify_only replays
// the same seeded pattern), so the check reads decrypted backing blocks,
// not the kernel's page cache.
func TestMountFio(t *testing.T) {
	mountRequireTool(t, "fio")
	v := mountNewVolume(t)
	v.mount()
	dir := v.path("fio")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	mountRunFio(t, mountFioRandom, dir)
	v.remount()
	out := mountRunFio(t, mountFioRandom, dir, "--verify_only")
	if !strings.Contains(out, "READ:") {
		t.Errorf("fio --verify_only read nothing:\n%s", mountTail(out, 30))
	}
	mountRunFio(t, mountFioTruncate, dir)
}

// TestMountStressNG runs stress-ng's filesystem stressors on the mount
// with a bounded time each; every run must exit 0 (no stressor failed or
// found corrupt data with --verify).
func TestMountStressNG(t *testing.T) {
	mountRequireTool(t, "stress-ng")
	v := mountNewVolume(t)
	v.mount()
	runs := []struct {
		name string
		args []string
	}{
		// Sequential and random block I/O with read-back verification.
		{"hdd-seq", []string{"--hdd", "2", "--hdd-ops", "2000", "--hdd-bytes", "16m"}},
		{"hdd-rnd", []string{"--hdd", "2", "--hdd-ops", "2000", "--hdd-bytes", "16m", "--hdd-opts", "wr-rnd,rd-rnd", "--hdd-write-size", "5000"}},
		// Namespace operations.
		{"namespace", []string{"--dir", "1", "--rename", "1", "--link", "1", "--symlink", "1", "--dentry", "1"}},
		// Metadata and file-descriptor operations.
		{"metadata", []string{"--chmod", "1", "--utime", "1", "--xattr", "1", "--fallocate", "1", "--seek", "1", "--sync-file", "1", "--lockf", "1", "--flock", "1"}},
	}
	for _, r := range runs {
		t.Run(r.name, func(t *testing.T) {
			dir := v.path("stress-" + r.name)
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			args := append([]string{"--temp-path", dir, "--timeout", "4s", "--verify", "--metrics-brief"}, r.args...)
			out, err := mountExecOut("stress-ng", args...)
			if err != nil || !strings.Contains(out, "successful run completed") {
				t.Errorf("stress-ng %s: %v\n%s", strings.Join(r.args, " "), err, mountTail(out, 40))
			}
			t.Log(mountTail(out, 1))
		})
	}
	if entries, err := os.ReadDir(v.mnt); err != nil || len(entries) != len(runs) {
		t.Errorf("mount after stress-ng: %d entries, %v", len(entries), err)
	}
}
