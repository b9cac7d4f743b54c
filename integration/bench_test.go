package integration

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/bench"
)

// TestBenchThroughMount runs a small `kmsfs bench` through real FUSE mounts
// (its own kmsfs init and mount --foreground children) and checks the
// promises of the two modes from its JSON: bucket-key needs at most 1% (+1)
// of per-object's GenerateDataKey calls for the same new files, a cold
// re-read needs a Decrypt per file (per-object) or per bucket key, a warm
// re-read none, and every file reads back as written.
func TestBenchThroughMount(t *testing.T) {
	mountRequireFuse(t)
	const files = 300
	dir := t.TempDir()
	jsonPath, chartPath := filepath.Join(dir, "bench.json"), filepath.Join(dir, "bench.svg")
	cmd := exec.Command(kmsfsBinary(), "bench", "--files", "300", "--size", "4KiB", "--jobs", "2",
		"--scratch", filepath.Join(dir, "scratch"), "--json", jsonPath, "--chart", chartPath, "--quiet")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("kmsfs bench: %v\n%s", err, out)
	}
	raw, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var rep bench.Report
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatal(err)
	}
	runs := map[string]bench.Run{}
	for _, r := range rep.Runs {
		if r.Path != "mount" || r.Error != "" {
			t.Fatalf("run %s: path %q error %q", r.Label(), r.Path, r.Error)
		}
		runs[r.Mode] = r
	}
	po, bk := runs["per-object"], runs["bucket-key"]
	if len(runs) != 2 || len(po.Phases) != 3 || len(bk.Phases) != 3 {
		t.Fatalf("want per-object and bucket-key runs with create, read-cold, read-warm; got %+v", rep.Runs)
	}

	poGDK := po.Phase(bench.PhaseCreate).KMSCalls["GenerateDataKey"]
	bkGDK := bk.Phase(bench.PhaseCreate).KMSCalls["GenerateDataKey"]
	if poGDK < files {
		t.Errorf("per-object made %d GenerateDataKey calls for %d new files, want at least one per file", poGDK, files)
	}
	if bkGDK < 1 || bkGDK > poGDK/100+1 {
		t.Errorf("bucket-key made %d GenerateDataKey calls, want 1..%d (1%% of per-object's %d, +1)", bkGDK, poGDK/100+1, poGDK)
	}
	if n := po.Phase(bench.PhaseReadCold).KMSCalls["Decrypt"]; n != files {
		t.Errorf("per-object cold read: %d Decrypt calls, want one per file (%d): the remount should empty the key cache", n, files)
	}
	if n := bk.Phase(bench.PhaseReadCold).KMSCallsTotal; n < 1 || n > bkGDK {
		t.Errorf("bucket-key cold read: %d KMS calls, want one Decrypt per bucket key (%d)", n, bkGDK)
	}
	for _, r := range []bench.Run{po, bk} {
		if w := r.Phase(bench.PhaseReadWarm); w.KMSCallsTotal != 0 {
			t.Errorf("%s warm re-read: %d KMS calls (%v), want 0", r.Mode, w.KMSCallsTotal, w.KMSCalls)
		}
		for _, p := range r.Phases {
			if p.Files != files || p.Failed != 0 || p.FilesPerSec <= 0 {
				t.Errorf("%s %s: files %d failed %d (%s) rate %v", r.Mode, p.Name, p.Files, p.Failed, p.FirstError, p.FilesPerSec)
			}
			if p.Name != bench.PhaseCreate && p.Verified != files {
				t.Errorf("%s %s: %d of %d files matched what was written", r.Mode, p.Name, p.Verified, files)
			}
		}
	}
	for _, f := range rep.Findings {
		if !f.Pass {
			t.Errorf("finding failed: %s [%s]: %s", f.Target, f.Run, f.Detail)
		}
	}
	table := string(out)
	if !strings.Contains(table, "calls/file") || !strings.Contains(table, "PASS  bucket-key makes <= 1%") {
		t.Errorf("no table on stdout:\n%s", table)
	}
	svg, err := os.ReadFile(chartPath)
	if err != nil || !strings.HasPrefix(string(svg), "<svg ") || !strings.Contains(string(svg), "KMS calls per file") {
		t.Errorf("chart: %v\n%.200s", err, svg)
	}
	// The bench removed what it made (volumes, mount points) and only that.
	entries, err := os.ReadDir(filepath.Join(dir, "scratch"))
	if err != nil || len(entries) != 0 {
		t.Errorf("scratch directory: %v, %d entries left", err, len(entries))
	}
}
