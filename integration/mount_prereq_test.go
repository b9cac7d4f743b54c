package integration

// Prerequisites of the integration tests: FUSE, root, the tools CI installs
// (scripts/deps.sh) and disk space. On a developer's machine a missing one
// skips the test and says what to install; in CI (CI=true) it fails the
// test, so that a suite that ran nothing cannot pass.

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// mountPrereqMissing skips the test, or fails it under CI=true.
func mountPrereqMissing(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("missing prerequisite (CI=true, so this fails instead of skipping): "+format, args...)
	}
	t.Skipf(format, args...)
}

// mountRequireFuse needs /dev/fuse and the fusermount3 helper `kmsfs umount` uses.
func mountRequireFuse(t testing.TB) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		mountPrereqMissing(t, "no /dev/fuse, cannot mount: %v", err)
	}
	mountRequireTool(t, "fusermount3")
}

// mountRequireRoot needs uid 0; why says what the test does with it.
func mountRequireRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		mountPrereqMissing(t, "needs root to %s", why)
	}
}

// mountRequireTool returns the path of a tool, looked up in PATH and then in
// $HOME/go/bin (where `go install` puts versitygw).
func mountRequireTool(t testing.TB, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if home, err := os.UserHomeDir(); err == nil {
		p := filepath.Join(home, "go", "bin", name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	mountPrereqMissing(t, "%s not installed (scripts/deps.sh installs it)", name)
	return ""
}

// mountRequireFile needs a file a package installs (a library, not a command).
func mountRequireFile(t testing.TB, path, pkg string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		mountPrereqMissing(t, "%s missing (apt-get install %s): %v", path, pkg, err)
	}
}

// mountRequireFreeBytes needs n bytes available to unprivileged users on the
// file system holding dir.
func mountRequireFreeBytes(t testing.TB, dir string, n uint64) {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatalf("statfs %s: %v", dir, err)
	}
	if free := st.Bavail * uint64(st.Bsize); free < n {
		mountPrereqMissing(t, "only %d MiB free next to %s; want %d MiB", free>>20, dir, n>>20)
	}
}
