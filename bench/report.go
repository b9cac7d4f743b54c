package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// Phase names, in the order a run performs them.
const (
	PhaseCreate   = "create"    // N new files written
	PhaseReadCold = "read-cold" // read back after a remount (cold key and page caches)
	PhaseReadWarm = "read-warm" // read again in the same mount
)

// Report is everything one `kmsfs bench` produced: the JSON file.
type Report struct {
	Started time.Time `json:"started"`
	Host    Host      `json:"host"`
	Config  Config    `json:"config"`
	// Runs are the measured combinations: with Config.Repeat > 1, each is
	// the per-phase median of its repetitions, which are in Samples.
	Runs    []Run `json:"runs"`
	Samples []Run `json:"samples,omitempty"`
	// Findings check the targets against the runs that can answer
	// them (see Findings).
	Findings []Finding `json:"findings"`
}

// Host describes the machine, since every figure depends on it.
type Host struct {
	Hostname  string `json:"hostname"`
	CPUs      int    `json:"cpus"`
	Kernel    string `json:"kernel"`
	GoVersion string `json:"go_version"`
}

// Run is one volume put through the phases: one mode under one KMS shape
// and one number of parallel jobs.
type Run struct {
	Name       string  `json:"name"`
	Mode       string  `json:"mode"`
	Path       string  `json:"path"` // mount or direct
	Backend    string  `json:"backend"`
	KMSLatency string  `json:"kms_latency"` // a Go duration
	KMSRPS     float64 `json:"kms_rps"`     // 0: no quota
	Jobs       int     `json:"jobs"`
	Repeat     int     `json:"repeat"` // which repetition (0-based); a median run has the count
	Files      int     `json:"files"`
	FileSize   int64   `json:"file_size"`
	Phases     []Phase `json:"phases"`
	// Error is why the run stopped early, if it did.
	Error string `json:"error,omitempty"`
}

// Label names the run in tables and charts: its mode and whatever of
// latency, quota and jobs is not the default.
func (r Run) Label() string {
	var b strings.Builder
	b.WriteString(r.Mode)
	if d, err := time.ParseDuration(r.KMSLatency); err == nil && d > 0 {
		fmt.Fprintf(&b, " %v", d)
	}
	if r.KMSRPS > 0 {
		fmt.Fprintf(&b, " %grps", r.KMSRPS)
	}
	if r.Jobs > 1 {
		fmt.Fprintf(&b, " j%d", r.Jobs)
	}
	return b.String()
}

// Phase returns the phase named name, or nil.
func (r *Run) Phase(name string) *Phase {
	for i := range r.Phases {
		if r.Phases[i].Name == name {
			return &r.Phases[i]
		}
	}
	return nil
}

// Phase is the measurement of one phase of a run.
type Phase struct {
	Name    string  `json:"name"`
	Files   int     `json:"files"` // files done (including failed ones)
	Bytes   int64   `json:"bytes"`
	Seconds float64 `json:"seconds"`
	// FilesPerSec and MBPerSec are Files and Bytes (MB = 10^6 bytes) over
	// the phase's wall time.
	FilesPerSec float64 `json:"files_per_sec"`
	MBPerSec    float64 `json:"mb_per_sec"`
	// KMSCalls counts KMS calls by operation (whatever their result), as
	// the key cache counted them: a call retried after throttling is one
	// call here and its retries are in Retries.
	KMSCalls map[string]uint64 `json:"kms_calls"`
	// KMSResults counts the same calls by operation and result.
	KMSResults map[string]map[string]uint64 `json:"kms_results"`
	// KMSCallsTotal is the sum of KMSCalls; CallsPerFile is it over Files.
	KMSCallsTotal uint64  `json:"kms_calls_total"`
	CallsPerFile  float64 `json:"kms_calls_per_file"`
	// CacheHits and CacheMisses are key cache lookups (data key unwraps);
	// HitRate is hits over lookups, 0 when there were none.
	CacheHits   uint64  `json:"cache_hits"`
	CacheMisses uint64  `json:"cache_misses"`
	HitRate     float64 `json:"cache_hit_rate"`
	// Throttled counts KMS calls that ended in ThrottlingException after
	// kmsfs's own retries: throttling that reached the volume.
	Throttled uint64 `json:"kms_throttled"`
	// Retries counts KMS calls retried (throttled or unavailable) inside
	// kmsfs: what a quota costs without failing a file operation.
	Retries uint64 `json:"kms_retries"`
	// P50Ms, P99Ms and MaxMs are per-file latencies: open, write or read
	// (and check) everything, close.
	P50Ms float64 `json:"p50_ms"`
	P99Ms float64 `json:"p99_ms"`
	MaxMs float64 `json:"max_ms"`
	// Verified counts files read back whose every byte matched; Failed
	// counts file operations that returned an error or wrong content.
	Verified int `json:"verified"`
	Failed   int `json:"failed"`
	// FirstError is the first failure, if any.
	FirstError string `json:"first_error,omitempty"`
	// MountErrors is the mount's own error counter (EIO/EACCES reported
	// to applications) over the phase.
	MountErrors uint64 `json:"mount_errors"`
	// Samples is the number of repetitions a median phase stands for, and
	// FilesPerSecRange their lowest and highest rate.
	Samples          int       `json:"samples,omitempty"`
	FilesPerSecRange []float64 `json:"files_per_sec_range,omitempty"`
	// LoadAvg is the machine's 1-minute load average when the phase began.
	LoadAvg float64 `json:"loadavg_1m"`
	// CachesDropped says whether the kernel's page, dentry and inode
	// caches were dropped before the phase (needs root).
	CachesDropped bool `json:"caches_dropped"`
}

// WriteJSON writes the report as indented JSON to path.
func (r *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// opAbbrev shortens AWS operation names for the table.
func opAbbrev(op string) string {
	switch op {
	case "GenerateDataKey":
		return "GDK"
	case "GenerateDataKeyWithoutPlaintext":
		return "GDKwP"
	case "Encrypt":
		return "Enc"
	case "Decrypt":
		return "Dec"
	case "ReEncrypt":
		return "ReEnc"
	}
	return op
}

// formatCalls renders calls by operation, e.g. "GDK 10000 Dec 3", or "0".
func formatCalls(calls map[string]uint64) string {
	var ops []string
	for op, n := range calls {
		if n > 0 {
			ops = append(ops, op)
		}
	}
	if len(ops) == 0 {
		return "0"
	}
	sort.Strings(ops)
	var parts []string
	for _, op := range ops {
		parts = append(parts, fmt.Sprintf("%s %d", opAbbrev(op), calls[op]))
	}
	return strings.Join(parts, " ")
}

// WriteTable prints one line per run and phase, then the findings.
func (r *Report) WriteTable(w io.Writer) error {
	// Numbers align right; the run and phase names are padded to one
	// width so that they read left-aligned in the right-aligned writer.
	labelW, phaseW := len("run"), len(PhaseReadCold)
	for _, run := range r.Runs {
		labelW = max(labelW, len(run.Label()))
	}
	left := func(s string, w int) string { return s + strings.Repeat(" ", max(0, w-len(s))) }
	repeated := false
	for _, run := range r.Runs {
		for _, p := range run.Phases {
			repeated = repeated || len(p.FilesPerSecRange) == 2
		}
	}
	rangeCol := func(p Phase) string {
		if !repeated {
			return ""
		}
		if len(p.FilesPerSecRange) != 2 {
			return "-\t"
		}
		return formatRate(p.FilesPerSecRange[0]) + "-" + formatRate(p.FilesPerSecRange[1]) + "\t"
	}
	rangeHead := ""
	if repeated {
		rangeHead = "range\t"
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "%s\t%s\tfiles\tfiles/s\t%sMB/s\tKMS calls\tcalls/file\thit rate\tp50 ms\tp99 ms\tretries\tfailed\t\n", left("run", labelW), left("phase", phaseW), rangeHead)
	for _, run := range r.Runs {
		for _, p := range run.Phases {
			hit := "-"
			if p.CacheHits+p.CacheMisses > 0 {
				hit = fmt.Sprintf("%.1f%%", 100*p.HitRate)
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s%.1f\t%s\t%s\t%s\t%.2f\t%.2f\t%d\t%d\t\n",
				left(run.Label(), labelW), left(p.Name, phaseW), p.Files, formatRate(p.FilesPerSec), rangeCol(p), p.MBPerSec, formatCalls(p.KMSCalls),
				formatPerFile(p.CallsPerFile), hit, p.P50Ms, p.P99Ms, p.Retries, p.Failed)
		}
		if run.Error != "" {
			fmt.Fprintf(tw, "%s\tstopped: %s\t\n", left(run.Label(), labelW), run.Error)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(r.Findings) > 0 {
		fmt.Fprintln(w)
		for _, f := range r.Findings {
			fmt.Fprintf(w, "%s  %s [%s]: %s\n", f.Verdict(), f.Target, f.Run, f.Detail)
		}
	}
	return nil
}

// formatRate prints files/s with the digits that matter: whole files for
// thousands of small files, hundredths for a few large ones.
func formatRate(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

// formatPerFile prints calls per file with enough digits to tell 0.0001
// from 0.
func formatPerFile(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v >= 0.1:
		return fmt.Sprintf("%.3f", v)
	default:
		return fmt.Sprintf("%.2g", v)
	}
}
