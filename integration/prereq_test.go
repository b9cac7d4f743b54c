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

// prereqMissing skips the test, or fails it under CI=true.
func prereqMissing(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("missing prerequisite (CI=true, so this fails instead of skipping): "+format, args...)
	}
	t.Skipf(format, args...)
}

// requireFUSE needs /dev/fuse and the fusermount3 helper `kmsfs umount` uses.
func requireFUSE(t testing.TB) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		prereqMissing(t, "no /dev/fuse, cannot mount: %v", err)
	}
	requireTool(t, "fusermount3")
}

// requireRoot needs uid 0; why says what the test does with it.
func requireRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		prereqMissing(t, "needs root to %s", why)
	}
}

// requireTool returns the path of a tool, looked up in PATH and then in
// $HOME/go/bin (where `go install` puts versitygw).
func requireTool(t testing.TB, name string) string {
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
	prereqMissing(t, "%s not installed (scripts/deps.sh installs it)", name)
	return ""
}

// requireFile needs a file a package installs (a library, not a command).
func requireFile(t testing.TB, path, pkg string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		prereqMissing(t, "%s missing (apt-get install %s): %v", path, pkg, err)
	}
}

// requireFreeBytes needs n bytes available to unprivileged users on the
// file system holding dir.
func requireFreeBytes(t testing.TB, dir string, n uint64) {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatalf("statfs %s: %v", dir, err)
	}
	if free := st.Bavail * uint64(st.Bsize); free < n {
		prereqMissing(t, "only %d MiB free next to %s; want %d MiB", free>>20, dir, n>>20)
	}
}
