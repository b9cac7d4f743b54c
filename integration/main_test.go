// Package integration holds the tests that run kmsfs for real: a mounted
// FUSE filesystem, `kmsfs kms serve` and versitygw as processes, real cp,
// rsync, diff, fio and awscli.
//
// TestMain builds the kmsfs binary once; every test file uses kmsfsBinary().
// Keep helpers in files named after their area (mount_*, kms_*, s3_*).
package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// binDir holds the kmsfs binary built for this test run. It is written once
// in TestMain before any test runs and only read afterwards.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kmsfs-integration-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	build := exec.Command("go", "build", "-o", filepath.Join(dir, "kmsfs"), "../cmd/kmsfs")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build kmsfs:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// kmsfsBinary is the path of the kmsfs binary under test.
func kmsfsBinary() string { return filepath.Join(binDir, "kmsfs") }
