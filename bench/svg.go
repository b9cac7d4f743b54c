package bench

import (
	"fmt"
	"html"
	"io"
	"math"
	"strings"
)

// Chart geometry, in SVG user units (pixels at 100%).
const (
	chartWidth   = 1000
	chartLeft    = 80 // room for the y tick labels
	chartRight   = 24
	panelHeight  = 250
	panelGap     = 70 // panel title and x labels
	legendRow    = 22
	legendColumn = 240
	// largeFile is the file size from which the chart plots MB/s instead
	// of files/s.
	largeFile = 1 << 20
)

// modePalette gives each mode its own hue family (per-object blues,
// bucket-key oranges, after the Okabe-Ito colours, which stay distinct for
// colour-blind readers), darkest first; several runs of one mode
// (latencies, quotas, jobs) take successive shades.
func modePalette(mode string) []string {
	switch mode {
	case "per-object":
		return []string{"#0b5394", "#3d85c6", "#6fa8dc", "#9fc5e8", "#56b4e9", "#003f6b"}
	case "bucket-key":
		return []string{"#b45f06", "#e69138", "#f6b26b", "#f9cb9c", "#d55e00", "#7f3f00"}
	}
	return []string{"#555555", "#888888", "#bbbbbb"}
}

// barColors assigns each run its colour.
func barColors(runs []Run) []string {
	used := map[string]int{}
	out := make([]string, len(runs))
	for i, r := range runs {
		pal := modePalette(r.Mode)
		out[i] = pal[used[r.Mode]%len(pal)]
		used[r.Mode]++
	}
	return out
}

// chartPanel is one bar chart: a value per (phase, run).
type chartPanel struct {
	title  string
	value  func(Phase) float64
	format func(float64) string
}

// WriteSVG draws the report as grouped bars: files/s (MB/s for files of
// 1 MiB and more) on top and KMS calls
// per file (bottom), one group per phase, one bar per run, each bar
// labelled with its value (so that bucket-key's near-zero calls per file
// are still read as a number, not as a missing bar).
func WriteSVG(w io.Writer, rep *Report) error {
	phases := chartPhases(rep.Runs)
	colors := barColors(rep.Runs)
	rate := chartPanel{"Files per second (higher is better)", func(p Phase) float64 { return p.FilesPerSec }, formatRate}
	if rep.Config.FileSize >= largeFile {
		// A few large files: throughput is the figure, files/s a fraction.
		rate = chartPanel{"MB per second (higher is better)", func(p Phase) float64 { return p.MBPerSec }, formatRate}
	}
	panels := []chartPanel{rate,
		{"KMS calls per file (lower is better)", func(p Phase) float64 { return p.CallsPerFile }, formatPerFile},
	}
	perRow := max(1, (chartWidth-chartLeft-chartRight)/legendColumn)
	legendRows := (len(rep.Runs) + perRow - 1) / perRow
	top := 70 + legendRows*legendRow + 20
	height := top + len(panels)*(panelHeight+panelGap) + 10

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">`+"\n",
		chartWidth, height, chartWidth, height)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="#ffffff"/>`+"\n", chartWidth, height)
	fmt.Fprintf(&b, `<text x="%d" y="28" font-size="20" font-weight="bold" fill="#222">%s</text>`+"\n", chartLeft, esc(chartTitle(rep)))
	fmt.Fprintf(&b, `<text x="%d" y="50" font-size="13" fill="#555">%s</text>`+"\n", chartLeft, esc(chartSubtitle(rep)))
	for i, r := range rep.Runs {
		x := chartLeft + (i%perRow)*legendColumn
		y := 70 + (i/perRow)*legendRow
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="14" height="14" fill="%s"/>`+"\n", x, y, colors[i])
		fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="13" fill="#222">%s</text>`+"\n", x+20, y+12, esc(r.Label()))
	}
	for pi, panel := range panels {
		drawPanel(&b, rep.Runs, phases, colors, panel, top+pi*(panelHeight+panelGap))
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// drawPanel draws one panel whose plot area starts at y0+30.
func drawPanel(b *strings.Builder, runs []Run, phases []string, colors []string, panel chartPanel, y0 int) {
	plotTop := float64(y0 + 30)
	plotH := float64(panelHeight - 30)
	plotBottom := plotTop + plotH
	plotW := float64(chartWidth - chartLeft - chartRight)
	fmt.Fprintf(b, `<text x="%d" y="%d" font-size="15" font-weight="bold" fill="#222">%s</text>`+"\n", chartLeft, y0+16, esc(panel.title))

	maxV := 0.0
	for _, r := range runs {
		for _, ph := range phases {
			if p := r.Phase(ph); p != nil {
				maxV = max(maxV, panel.value(*p))
			}
		}
	}
	ticks := niceTicks(maxV)
	top := ticks[len(ticks)-1]
	yOf := func(v float64) float64 { return plotBottom - v/top*plotH }
	for _, t := range ticks {
		y := yOf(t)
		fmt.Fprintf(b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e3e3e3"/>`+"\n", chartLeft, y, chartWidth-chartRight, y)
		fmt.Fprintf(b, `<text x="%d" y="%.1f" font-size="12" fill="#555" text-anchor="end">%s</text>`+"\n", chartLeft-8, y+4, tickLabel(t))
	}
	fmt.Fprintf(b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#333"/>`+"\n", chartLeft, plotBottom, chartWidth-chartRight, plotBottom)

	groupW := plotW / float64(max(1, len(phases)))
	barW := groupW * 0.8 / float64(max(1, len(runs)))
	rotate := barW < 38
	for gi, ph := range phases {
		gx := float64(chartLeft) + float64(gi)*groupW
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" font-size="13" fill="#222" text-anchor="middle">%s</text>`+"\n", gx+groupW/2, plotBottom+20, esc(ph))
		for ri, r := range runs {
			p := r.Phase(ph)
			if p == nil {
				continue
			}
			v := panel.value(*p)
			x := gx + groupW*0.1 + float64(ri)*barW
			y := yOf(v)
			fmt.Fprintf(b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s %s: %s</title></rect>`+"\n",
				x+1, y, max(1, barW-2), plotBottom-y, colors[ri], esc(r.Label()), esc(ph), esc(panel.format(v)))
			cx := x + barW/2
			if rotate {
				fmt.Fprintf(b, `<text x="%.1f" y="%.1f" font-size="11" fill="#222" transform="rotate(-90 %.1f %.1f)">%s</text>`+"\n",
					cx+4, y-4, cx+4, y-4, esc(panel.format(v)))
			} else {
				fmt.Fprintf(b, `<text x="%.1f" y="%.1f" font-size="11" fill="#222" text-anchor="middle">%s</text>`+"\n", cx, y-4, esc(panel.format(v)))
			}
		}
	}
}

// chartPhases are the phases any run has, in run order.
func chartPhases(runs []Run) []string {
	var out []string
	for _, name := range []string{PhaseCreate, PhaseReadCold, PhaseReadWarm} {
		for _, r := range runs {
			if r.Phase(name) != nil {
				out = append(out, name)
				break
			}
		}
	}
	return out
}

// niceTicks returns 0 and four to six more round values up to at least
// maxV (1-2-5 steps), leaving headroom above the tallest bar for its label.
func niceTicks(maxV float64) []float64 {
	if maxV <= 0 || math.IsNaN(maxV) || math.IsInf(maxV, 0) {
		return []float64{0, 1}
	}
	raw := maxV * 1.15 / 5
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag * 10
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	ticks := []float64{0}
	for v := step; ; v += step {
		ticks = append(ticks, v)
		if v >= maxV*1.15 {
			break
		}
	}
	return ticks
}

func tickLabel(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v >= 1000 && math.Mod(v, 1000) == 0:
		return fmt.Sprintf("%gk", v/1000)
	default:
		return fmt.Sprintf("%g", v)
	}
}

func chartTitle(rep *Report) string {
	c := rep.Config
	path := "mount"
	if len(rep.Runs) > 0 {
		path = rep.Runs[0].Path
	}
	return fmt.Sprintf("kmsfs bench: %d files x %s, %s", c.Files, humanBytes(c.FileSize), path)
}

func chartSubtitle(rep *Report) string {
	backend := "local directory"
	if rep.Config.Backend != "" {
		backend = rep.Config.Backend
	}
	return fmt.Sprintf("backend %s; %d CPUs, Linux %s; %s", backend, rep.Host.CPUs, rep.Host.Kernel, rep.Started.Format("2006-01-02"))
}

// humanBytes renders a size in binary units when it is a round number of
// them (4 KiB, 256 MiB), else in bytes.
func humanBytes(n int64) string {
	for _, u := range []struct {
		size int64
		name string
	}{{1 << 30, "GiB"}, {1 << 20, "MiB"}, {1 << 10, "KiB"}} {
		if n >= u.size && n%u.size == 0 {
			return fmt.Sprintf("%d %s", n/u.size, u.name)
		}
	}
	return fmt.Sprintf("%d B", n)
}

func esc(s string) string { return html.EscapeString(s) }
