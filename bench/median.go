package bench

import "sort"

// Medians reduces repeated runs to one run per combination (mode, latency,
// quota, jobs), in first-seen order. Each phase is the repetition with the
// median files/s (the lower middle one for an even count), taken whole so that its figures stay consistent with one
// another; failures (failed files, throttled calls, mount errors) are summed
// over every repetition, so that one failure in any of them still fails the
// report.
func Medians(samples []Run) []Run {
	type combo struct {
		mode, lat string
		rps       float64
		jobs      int
	}
	var order []combo
	groups := map[combo][]Run{}
	for _, s := range samples {
		c := combo{s.Mode, s.KMSLatency, s.KMSRPS, s.Jobs}
		if _, ok := groups[c]; !ok {
			order = append(order, c)
		}
		groups[c] = append(groups[c], s)
	}
	var out []Run
	for _, c := range order {
		g := groups[c]
		run := g[0]
		run.Name = "median-" + run.Name
		run.Repeat = len(g)
		run.Phases = nil
		for _, s := range g {
			if s.Error != "" && run.Error == "" {
				run.Error = s.Error
			}
		}
		for _, name := range []string{PhaseCreate, PhaseReadCold, PhaseReadWarm} {
			var ps []Phase
			failed, firstErr := 0, ""
			var throttled, mountErrs uint64
			for _, s := range g {
				if p := s.Phase(name); p != nil {
					ps = append(ps, *p)
					failed += p.Failed
					throttled += p.Throttled
					mountErrs += p.MountErrors
					if firstErr == "" {
						firstErr = p.FirstError
					}
				}
			}
			if len(ps) == 0 {
				continue
			}
			sort.Slice(ps, func(i, j int) bool { return ps[i].FilesPerSec < ps[j].FilesPerSec })
			m := ps[(len(ps)-1)/2]
			m.Samples = len(ps)
			m.FilesPerSecRange = []float64{ps[0].FilesPerSec, ps[len(ps)-1].FilesPerSec}
			m.Failed, m.FirstError, m.Throttled, m.MountErrors = failed, firstErr, throttled, mountErrs
			run.Phases = append(run.Phases, m)
		}
		out = append(out, run)
	}
	return out
}
