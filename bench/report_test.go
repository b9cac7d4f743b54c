package bench

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/keycache"
	"github.com/kmsfs/kmsfs/metrics"
)

// sampleReport is a report as a 10,000-file run at 0 and 10 ms produces.
func sampleReport() *Report {
	mk := func(mode, lat string, create, cold, warm Phase) Run {
		return Run{Name: "r-" + mode + lat, Mode: mode, Path: "mount", KMSLatency: lat, Jobs: 1, Files: 10000, FileSize: 4096,
			Phases: []Phase{create, cold, warm}}
	}
	ph := func(name string, fps float64, calls map[string]uint64, hits, misses uint64) Phase {
		p := Phase{Name: name, Files: 10000, Bytes: 10000 * 4096, Seconds: 10000 / fps, FilesPerSec: fps, MBPerSec: fps * 4096 / 1e6,
			KMSCalls: calls, CacheHits: hits, CacheMisses: misses, P50Ms: 0.5, P99Ms: 3.25, MaxMs: 9}
		for _, n := range calls {
			p.KMSCallsTotal += n
		}
		p.CallsPerFile = float64(p.KMSCallsTotal) / 10000
		if hits+misses > 0 {
			p.HitRate = float64(hits) / float64(hits+misses)
		}
		if name != PhaseCreate {
			p.Verified = 10000
		}
		return p
	}
	runs := []Run{
		mk("per-object", "0s", ph(PhaseCreate, 2000, map[string]uint64{"GenerateDataKey": 10000}, 0, 0),
			ph(PhaseReadCold, 1500, map[string]uint64{"Decrypt": 10000}, 0, 10000), ph(PhaseReadWarm, 6000, nil, 0, 0)),
		mk("bucket-key", "0s", ph(PhaseCreate, 2100, map[string]uint64{"GenerateDataKey": 1}, 0, 0),
			ph(PhaseReadCold, 1900, map[string]uint64{"Decrypt": 1}, 9999, 1), ph(PhaseReadWarm, 6100, nil, 0, 0)),
		mk("per-object", "10ms", ph(PhaseCreate, 900, map[string]uint64{"GenerateDataKey": 10000}, 0, 0),
			ph(PhaseReadCold, 95, map[string]uint64{"Decrypt": 10000}, 0, 10000), ph(PhaseReadWarm, 6000, nil, 0, 0)),
		mk("bucket-key", "10ms", ph(PhaseCreate, 2050, map[string]uint64{"GenerateDataKey": 1}, 0, 0),
			ph(PhaseReadCold, 1800, map[string]uint64{"Decrypt": 1}, 9999, 1), ph(PhaseReadWarm, 6000, map[string]uint64{"Decrypt": 2}, 0, 0)),
	}
	rep := &Report{Started: time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC), Host: Host{CPUs: 2, Kernel: "6.1.0"},
		Config: Config{Files: 10000, FileSize: 4096}, Runs: runs}
	rep.Findings = Findings(rep.Runs)
	return rep
}

func TestWriteTable(t *testing.T) {
	var b bytes.Buffer
	if err := sampleReport().WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	lines := strings.Split(out, "\n")
	// Header, 12 phase lines, a blank line, the findings.
	if !strings.HasPrefix(strings.TrimSpace(lines[0]), "run") || !strings.Contains(lines[0], "calls/file") || !strings.Contains(lines[0], "p99 ms") {
		t.Fatalf("header: %q", lines[0])
	}
	for _, want := range []string{
		"per-object       create     10000     2000   8.2  GDK 10000       1.000         -    0.50    3.25        0       0",
		"bucket-key       read-cold  10000     1900   7.8      Dec 1      0.0001    100.0%",
		"per-object 10ms  read-cold  10000     95.0   0.4  Dec 10000       1.000      0.0%",
		"FAIL  warm re-read makes no KMS call [bucket-key 10ms]: 2 KMS calls for 10000 files (Dec 2)",
		"PASS  bucket-key makes <= 1% of per-object's KMS calls for 10000 new files [per-object 10ms / bucket-key 10ms]: 1 vs 10000 calls (0.010%)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	// Every column of the phase lines lines up: same length after padding.
	if len(lines[1]) != len(lines[2]) || len(lines[1]) != len(lines[12]) {
		t.Errorf("ragged table:\n%s", out)
	}
}

func TestFindings(t *testing.T) {
	got := map[string]bool{}
	for _, f := range sampleReport().Findings {
		got[f.Target+" @ "+f.Run] = f.Pass
	}
	want := map[string]bool{
		"bucket-key makes <= 1% of per-object's KMS calls for 10000 new files @ per-object / bucket-key":                   true,
		"bucket-key makes <= 1% of per-object's KMS calls for 10000 new files @ per-object 10ms / bucket-key 10ms":         true,
		"per-object create rate at 10ms KMS latency >= 0.5x its rate at 0 @ per-object 10ms / per-object":                  false, // 900/2000
		"bucket-key create rate at 10ms KMS latency >= 0.9x its rate at 0 @ bucket-key 10ms / bucket-key":                  true,  // 2050/2100
		"per-object cold read rate of one reader at 10ms KMS latency >= 0.5x its rate at 0 @ per-object 10ms / per-object": false, // 95/1500
		"per-object cold read makes <= 1.1 KMS calls per file read @ per-object":                                           true,
		"per-object cold read makes <= 1.1 KMS calls per file read @ per-object 10ms":                                      true,
		"warm re-read makes no KMS call @ per-object":                                                                      true,
		"warm re-read makes no KMS call @ bucket-key":                                                                      true,
		"warm re-read makes no KMS call @ per-object 10ms":                                                                 true,
		"warm re-read makes no KMS call @ bucket-key 10ms":                                                                 false,
		"every file read back matches what was written @ all":                                                              true,
	}
	for k, v := range want {
		pass, ok := got[k]
		if !ok {
			t.Errorf("missing finding %q", k)
		} else if pass != v {
			t.Errorf("%q: pass %v, want %v", k, pass, v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("got %d findings, want %d: %v", len(got), len(want), got)
	}
}

func TestFindingsQuota(t *testing.T) {
	run := Run{Mode: "per-object", KMSLatency: "10ms", KMSRPS: 1000, Jobs: 8, Files: 5000, FileSize: 4096, Phases: []Phase{
		{Name: PhaseCreate, Files: 5000, Seconds: 5, FilesPerSec: 1000, KMSCallsTotal: 5090, Retries: 700,
			KMSResults: map[string]map[string]uint64{"GenerateDataKey": {"ok": 5090}}},
	}}
	fs := Findings([]Run{run})
	if len(fs) != 2 || !fs[0].Pass || !fs[1].Pass {
		t.Fatalf("within quota: %+v", fs)
	}
	// 5000 calls in 4s against 1000/s (+100 burst) is over the quota; a
	// throttle that reached the application is a failure.
	run.Phases[0].Seconds = 4
	run.Phases[0].Throttled = 3
	fs = Findings([]Run{run})
	if len(fs) != 2 || fs[0].Pass || fs[1].Pass {
		t.Fatalf("over quota: %+v", fs)
	}
	if !strings.Contains(fs[0].Detail, "3 throttled KMS calls surfaced") {
		t.Errorf("detail %q", fs[0].Detail)
	}
}

func TestWriteJSON(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.json")
	if err := sampleReport().WriteJSON(path); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var generic struct {
		Runs []struct {
			Mode   string `json:"mode"`
			Phases []map[string]any
		} `json:"runs"`
		Findings []map[string]any `json:"findings"`
	}
	if err := json.Unmarshal(raw, &generic); err != nil {
		t.Fatal(err)
	}
	p := generic.Runs[1].Phases[1]
	if generic.Runs[1].Mode != "bucket-key" || p["name"] != PhaseReadCold || p["kms_calls_per_file"] != 0.0001 ||
		p["cache_hit_rate"] != 0.9999 || p["kms_calls"].(map[string]any)["Decrypt"] != 1.0 || p["verified"] != 10000.0 {
		t.Fatalf("phase as JSON: %v", p)
	}
	var back Report
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Runs) != 4 || back.Runs[2].Phase(PhaseReadCold).FilesPerSec != 95 || len(back.Findings) != 12 {
		t.Fatalf("round trip lost data: %+v", back)
	}
}

func TestFillStats(t *testing.T) {
	snap := func(gdk, gdkThrottled, dec, hits, misses, retries, errs uint64) metrics.Snapshot {
		calls := map[string]map[string]uint64{"GenerateDataKey": {"ok": gdk}}
		if gdkThrottled > 0 {
			calls["GenerateDataKey"]["ThrottlingException"] = gdkThrottled
		}
		if dec > 0 {
			calls["Decrypt"] = map[string]uint64{"ok": dec}
		}
		s := metrics.Snapshot{Cache: keycache.Stats{Hits: hits, Misses: misses, KMSCalls: calls}, KMSRetries: retries}
		s.Volume.Errors = errs
		return s
	}
	p := Phase{Files: 50}
	fillStats(&p, snap(10, 0, 0, 5, 5, 1, 0), snap(110, 2, 20, 35, 25, 41, 2))
	if p.KMSCalls["GenerateDataKey"] != 102 || p.KMSCalls["Decrypt"] != 20 || p.KMSCallsTotal != 122 ||
		p.KMSResults["GenerateDataKey"]["ThrottlingException"] != 2 || p.KMSResults["GenerateDataKey"]["ok"] != 100 {
		t.Fatalf("calls: %+v %+v", p.KMSCalls, p.KMSResults)
	}
	if p.CallsPerFile != 122.0/50 || p.CacheHits != 30 || p.CacheMisses != 20 || p.HitRate != 0.6 || p.Retries != 40 || p.MountErrors != 2 || p.Throttled != 2 {
		t.Fatalf("figures: %+v", p)
	}
}

func TestWriteSVG(t *testing.T) {
	rep := sampleReport()
	rep.Runs[0].Jobs = 8 // label "per-object j8"
	rep.Config.Backend = "s3://bucket/<prefix>&co"
	var b bytes.Buffer
	if err := WriteSVG(&b, rep); err != nil {
		t.Fatal(err)
	}
	// Well-formed XML, whatever the labels held.
	dec := xml.NewDecoder(bytes.NewReader(b.Bytes()))
	var rects, texts int
	var allText strings.Builder
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("SVG is not well-formed XML: %v\n%s", err, b.String())
		}
		switch el := tok.(type) {
		case xml.StartElement:
			switch el.Name.Local {
			case "rect":
				rects++
			case "text":
				texts++
			}
		case xml.CharData:
			allText.Write(el)
			allText.WriteByte('\n')
		}
	}
	// Background, one legend swatch per run, one bar per run, phase and panel.
	if want := 1 + 4 + 4*3*2; rects != want {
		t.Errorf("%d rects, want %d", rects, want)
	}
	text := allText.String()
	for _, want := range []string{
		"kmsfs bench: 10000 files x 4 KiB, mount",
		"backend s3://bucket/<prefix>&co",
		"per-object j8", "bucket-key 10ms",
		"Files per second (higher is better)", "KMS calls per file (lower is better)",
		"create", "read-cold", "read-warm",
		"2000", "1.000", "0.0001", "0.0002",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("chart text lacks %q", want)
		}
	}
}

func TestNiceTicks(t *testing.T) {
	for _, maxV := range []float64{0, 0.0001, 0.9, 1, 1.003, 95, 2100, 6100, 123456} {
		ticks := niceTicks(maxV)
		if ticks[0] != 0 || ticks[len(ticks)-1] < maxV || len(ticks) < 2 || len(ticks) > 8 {
			t.Errorf("niceTicks(%v) = %v", maxV, ticks)
		}
		for i := 2; i < len(ticks); i++ {
			if d1, d0 := ticks[i]-ticks[i-1], ticks[1]-ticks[0]; d1-d0 > d0*1e-9 || d0-d1 > d0*1e-9 {
				t.Errorf("niceTicks(%v) = %v: uneven steps", maxV, ticks)
			}
		}
	}
}

func TestLabels(t *testing.T) {
	for _, c := range []struct {
		run  Run
		want string
	}{
		{Run{Mode: "per-object", KMSLatency: "0s", Jobs: 1}, "per-object"},
		{Run{Mode: "bucket-key", KMSLatency: "10ms", KMSRPS: 5500, Jobs: 8}, "bucket-key 10ms 5500rps j8"},
	} {
		if got := c.run.Label(); got != c.want {
			t.Errorf("label %q, want %q", got, c.want)
		}
	}
	for n, want := range map[int64]string{4096: "4 KiB", 256 << 20: "256 MiB", 1 << 30: "1 GiB", 1000: "1000 B"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestMedians(t *testing.T) {
	mk := func(mode string, rep int, fps ...float64) Run {
		r := Run{Mode: mode, KMSLatency: "0s", Jobs: 1, Repeat: rep}
		for i, f := range fps {
			r.Phases = append(r.Phases, Phase{Name: []string{PhaseCreate, PhaseReadCold, PhaseReadWarm}[i], FilesPerSec: f, Files: 10, Verified: 10, P50Ms: f / 100})
		}
		return r
	}
	samples := []Run{mk("per-object", 0, 100, 50), mk("bucket-key", 0, 300), mk("per-object", 1, 90, 70), mk("per-object", 2, 120, 10)}
	samples[2].Phases[1].Failed, samples[2].Phases[1].FirstError, samples[2].Phases[1].Throttled = 2, "f1: boom", 1
	runs := Medians(samples)
	if len(runs) != 2 || runs[0].Mode != "per-object" || runs[1].Mode != "bucket-key" || runs[0].Repeat != 3 {
		t.Fatalf("runs: %+v", runs)
	}
	c, r := runs[0].Phase(PhaseCreate), runs[0].Phase(PhaseReadCold)
	if c.FilesPerSec != 100 || c.P50Ms != 1 || c.Samples != 3 || c.FilesPerSecRange[0] != 90 || c.FilesPerSecRange[1] != 120 {
		t.Errorf("create median: %+v", c)
	}
	// The median is a whole sample (50 with its own p50), failures summed.
	if r.FilesPerSec != 50 || r.P50Ms != 0.5 || r.Failed != 2 || r.FirstError != "f1: boom" || r.Throttled != 1 {
		t.Errorf("read median: %+v", r)
	}
	if b := runs[1].Phase(PhaseCreate); b.FilesPerSec != 300 || b.Samples != 1 {
		t.Errorf("single sample: %+v", b)
	}
}

func TestFormatRate(t *testing.T) {
	for v, want := range map[float64]string{2868.4: "2868", 95.04: "95.0", 0.373: "0.37", 0: "0.00"} {
		if got := formatRate(v); got != want {
			t.Errorf("formatRate(%v) = %q, want %q", v, got, want)
		}
	}
}

func TestWriteSVGLargeFilesPlotsMBps(t *testing.T) {
	rep := sampleReport()
	rep.Config.Files, rep.Config.FileSize = 8, 256<<20
	var b bytes.Buffer
	if err := WriteSVG(&b, rep); err != nil {
		t.Fatal(err)
	}
	if s := b.String(); !strings.Contains(s, "MB per second") || strings.Contains(s, "Files per second") || !strings.Contains(s, "8 files x 256 MiB") {
		t.Errorf("large-file chart should plot MB/s:\n%.600s", s)
	}
}
