package bench

import (
	"fmt"
	"time"
)

// Finding is one target of kmsfs bench (an expected property of key use or
// throughput) checked against measured runs.
type Finding struct {
	Target string `json:"target"`
	Run    string `json:"run"` // the run (or runs) it was measured on
	Pass   bool   `json:"pass"`
	Detail string `json:"detail"`
}

// Verdict is PASS or FAIL.
func (f Finding) Verdict() string {
	if f.Pass {
		return "PASS"
	}
	return "FAIL"
}

// Thresholds of the targets.
const (
	// BucketKeyCallShare is the largest share of per-object's KMS calls
	// that bucket-key mode may make for the same new files.
	BucketKeyCallShare = 0.01
	// MinFilesForShare: below 100 files, 1% of per-object's calls is less
	// than the one GenerateDataKey any bucket key needs.
	MinFilesForShare = 100
	// BucketKeyLatencyFactor and PerObjectLatencyFactor are the create
	// rates at KMS latency L, relative to zero latency, each mode must keep.
	BucketKeyLatencyFactor = 0.9
	PerObjectLatencyFactor = 0.5
	// ColdReadLatencyFactor is the per-object cold read rate of one reader
	// at KMS latency L, relative to zero latency, that the read-ahead of
	// keys must keep; ColdReadCallsPerFile the KMS calls per file read it
	// may make (speculative ones included).
	ColdReadLatencyFactor = 0.5
	ColdReadCallsPerFile  = 1.1
)

// Findings checks the targets that the runs can answer:
//   - bucket-key makes at most 1% of per-object's KMS calls creating the same
//     files (runs that differ only in mode);
//   - the create rate at a KMS latency is at least 0.9× (bucket-key) or 0.5×
//     (per-object) the rate at zero latency (runs that differ only in latency);
//   - a per-object cold read by one reader at a KMS latency keeps 0.5× its
//     rate at zero latency, with at most 1.1 KMS calls per file read;
//   - a warm re-read makes no KMS call;
//   - under a quota no file operation fails and KMS calls stay within it;
//   - every file read back matched.
func Findings(runs []Run) []Finding {
	var out []Finding
	type shape struct {
		lat   string
		rps   float64
		jobs  int
		files int
		size  int64
	}
	key := func(r Run) shape { return shape{r.KMSLatency, r.KMSRPS, r.Jobs, r.Files, r.FileSize} }
	zeroLat := func(r Run) shape { s := key(r); s.lat = time.Duration(0).String(); return s }
	byMode := map[string]map[shape]Run{}
	for _, r := range runs {
		if byMode[r.Mode] == nil {
			byMode[r.Mode] = map[shape]Run{}
		}
		byMode[r.Mode][key(r)] = r
	}

	for _, po := range runs {
		if po.Mode != "per-object" || po.Files < MinFilesForShare {
			continue
		}
		bk, ok := byMode["bucket-key"][key(po)]
		pc, bc := po.Phase(PhaseCreate), bk.Phase(PhaseCreate)
		if !ok || pc == nil || bc == nil || pc.KMSCallsTotal == 0 {
			continue
		}
		share := float64(bc.KMSCallsTotal) / float64(pc.KMSCallsTotal)
		out = append(out, Finding{
			Target: fmt.Sprintf("bucket-key makes <= %.0f%% of per-object's KMS calls for %d new files", 100*BucketKeyCallShare, po.Files),
			Run:    po.Label() + " / " + bk.Label(),
			Pass:   share <= BucketKeyCallShare,
			Detail: fmt.Sprintf("%d vs %d calls (%.3f%%)", bc.KMSCallsTotal, pc.KMSCallsTotal, 100*share),
		})
	}

	for _, r := range runs {
		lat, err := time.ParseDuration(r.KMSLatency)
		if err != nil || lat == 0 {
			continue
		}
		base, ok := byMode[r.Mode][zeroLat(r)]
		rc, bc := r.Phase(PhaseCreate), base.Phase(PhaseCreate)
		if !ok || rc == nil || bc == nil || bc.FilesPerSec == 0 {
			continue
		}
		want := PerObjectLatencyFactor
		if r.Mode == "bucket-key" {
			want = BucketKeyLatencyFactor
		}
		f := rc.FilesPerSec / bc.FilesPerSec
		out = append(out, Finding{
			Target: fmt.Sprintf("%s create rate at %v KMS latency >= %.1fx its rate at 0", r.Mode, lat, want),
			Run:    r.Label() + " / " + base.Label(),
			Pass:   f >= want,
			Detail: fmt.Sprintf("%.0f vs %.0f files/s (%.2fx)", rc.FilesPerSec, bc.FilesPerSec, f),
		})
	}

	for _, r := range runs {
		lat, err := time.ParseDuration(r.KMSLatency)
		if err != nil || lat == 0 || r.Mode != "per-object" || r.Jobs != 1 {
			continue
		}
		base, ok := byMode[r.Mode][zeroLat(r)]
		rc, bc := r.Phase(PhaseReadCold), base.Phase(PhaseReadCold)
		if !ok || rc == nil || bc == nil || bc.FilesPerSec == 0 {
			continue
		}
		f := rc.FilesPerSec / bc.FilesPerSec
		out = append(out, Finding{
			Target: fmt.Sprintf("per-object cold read rate of one reader at %v KMS latency >= %.1fx its rate at 0", lat, ColdReadLatencyFactor),
			Run:    r.Label() + " / " + base.Label(),
			Pass:   f >= ColdReadLatencyFactor,
			Detail: fmt.Sprintf("%.0f vs %.0f files/s (%.2fx)", rc.FilesPerSec, bc.FilesPerSec, f),
		})
	}
	for _, r := range runs {
		if p := r.Phase(PhaseReadCold); p != nil && r.Mode == "per-object" && p.Files > 0 {
			per := float64(p.KMSCallsTotal) / float64(p.Files)
			out = append(out, Finding{
				Target: fmt.Sprintf("per-object cold read makes <= %.1f KMS calls per file read", ColdReadCallsPerFile),
				Run:    r.Label(),
				Pass:   per <= ColdReadCallsPerFile,
				Detail: fmt.Sprintf("%d KMS calls for %d files (%.3f)", p.KMSCallsTotal, p.Files, per),
			})
		}
	}

	for _, r := range runs {
		if p := r.Phase(PhaseReadWarm); p != nil {
			out = append(out, Finding{
				Target: "warm re-read makes no KMS call",
				Run:    r.Label(),
				Pass:   p.KMSCallsTotal == 0,
				Detail: fmt.Sprintf("%d KMS calls for %d files (%s)", p.KMSCallsTotal, p.Files, formatCalls(p.KMSCalls)),
			})
		}
	}

	for _, r := range runs {
		if r.KMSRPS <= 0 {
			continue
		}
		failed, throttled, retries := 0, uint64(0), uint64(0)
		var mountErrs uint64
		for _, p := range r.Phases {
			failed += p.Failed
			mountErrs += p.MountErrors
			retries += p.Retries
			throttled += p.Throttled
		}
		out = append(out, Finding{
			Target: fmt.Sprintf("at a %g/s KMS quota no file operation fails", r.KMSRPS),
			Run:    r.Label(),
			Pass:   failed == 0 && throttled == 0 && mountErrs == 0 && r.Error == "",
			Detail: fmt.Sprintf("%d failed file operations, %d throttled KMS calls surfaced, %d mount errors, %d throttles absorbed by retries", failed, throttled, mountErrs, retries),
		})
		if p := r.Phase(PhaseCreate); p != nil && p.Seconds > 0 {
			// The simulated quota is a token bucket of depth RPS/10: over
			// T seconds at most RPS*T + RPS/10 calls can pass.
			limit := r.KMSRPS*p.Seconds + max(1, r.KMSRPS/10)
			rate := float64(p.KMSCallsTotal) / p.Seconds
			detail := fmt.Sprintf("%.0f KMS calls/s, %.0f files/s against a %g/s quota (%d retries)", rate, p.FilesPerSec, r.KMSRPS, p.Retries)
			if p.Retries == 0 {
				detail += "; the quota was not reached, so it did not bound the rate"
			}
			out = append(out, Finding{
				Target: fmt.Sprintf("create under a %g/s KMS quota stays within it", r.KMSRPS),
				Run:    r.Label(),
				Pass:   float64(p.KMSCallsTotal) <= limit,
				Detail: detail,
			})
		}
	}

	verified, read, phases := 0, 0, 0
	var bad []string
	for _, r := range runs {
		for _, p := range r.Phases {
			if p.Name == PhaseCreate {
				continue
			}
			phases++
			verified += p.Verified
			read += p.Files
			if p.Verified != p.Files || p.Failed != 0 {
				bad = append(bad, r.Label()+" "+p.Name)
			}
		}
	}
	if phases > 0 {
		detail := fmt.Sprintf("%d of %d files verified in %d read phases", verified, read, phases)
		if len(bad) > 0 {
			detail += fmt.Sprintf("; failures in %v", bad)
		}
		out = append(out, Finding{Target: "every file read back matches what was written", Run: "all", Pass: len(bad) == 0, Detail: detail})
	}
	return out
}
