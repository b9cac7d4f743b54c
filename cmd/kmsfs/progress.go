package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// progress shows how far a long command (rewrap, bench) got: a bar on a
// terminal (done/total, rate, ETA), a line per update when the output is
// a file or a pipe (logs, tests), nothing when quiet.
type progress struct {
	mu     sync.Mutex
	w      io.Writer // nil: quiet
	prefix string    // "kmsfs rewrap: "
	tty    bool
	bar    *progressbar.ProgressBar
	start  time.Time
	total  int
}

func newProgress(w io.Writer, prefix string, quiet bool) *progress {
	if quiet {
		return &progress{}
	}
	f, ok := w.(*os.File)
	return &progress{w: w, prefix: prefix, tty: ok && term.IsTerminal(int(f.Fd()))}
}

// begin starts a phase of total items described by desc.
func (p *progress) begin(desc string, total int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.w == nil {
		return
	}
	p.finishLocked()
	p.start, p.total = time.Now(), total
	if !p.tty || total <= 0 { // nothing to show a bar of
		return
	}
	p.bar = progressbar.NewOptions64(int64(total),
		progressbar.OptionSetWriter(p.w),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionSetWidth(30),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString("files"),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionSetRenderBlankState(true),
	)
}

// update reports done items; detail is what a line says besides the
// count, rate and ETA.
func (p *progress) update(done int, detail string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.w == nil {
		return
	}
	if p.bar != nil {
		if p.total > 0 && done > p.total { // files added since the count
			p.total = done
			p.bar.ChangeMax(done)
		}
		p.bar.Set(done)
		return
	}
	fmt.Fprintf(p.w, "%s%s%s\n", p.prefix, p.counts(done), detail)
}

// counts renders "done/total files, rate files/s, ETA d: " for a line.
func (p *progress) counts(done int) string {
	el := time.Since(p.start).Seconds()
	if el <= 0 || done == 0 {
		if p.total > 0 {
			return fmt.Sprintf("%d/%d files: ", done, p.total)
		}
		return fmt.Sprintf("%d files: ", done)
	}
	rate := float64(done) / el
	if p.total <= 0 || done >= p.total {
		return fmt.Sprintf("%d files, %.0f files/s: ", done, rate)
	}
	eta := time.Duration(float64(p.total-done) / rate * float64(time.Second)).Round(time.Second)
	return fmt.Sprintf("%d/%d files, %.0f files/s, ETA %s: ", done, p.total, rate, eta)
}

// println prints a line of its own (above the bar on a terminal).
func (p *progress) println(line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.w == nil {
		return
	}
	if p.bar != nil {
		p.bar.Clear()
	}
	fmt.Fprintf(p.w, "%s%s\n", p.prefix, line)
	if p.bar != nil {
		p.bar.RenderBlank()
	}
}

// finish ends the current bar, leaving it on the screen.
func (p *progress) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.finishLocked()
}

func (p *progress) finishLocked() {
	if p.bar == nil {
		return
	}
	p.bar.Exit()
	fmt.Fprintln(p.w)
	p.bar = nil
}

// progressLog carries log lines to w, clearing the bar before each and
// drawing it again after, so that neither garbles the other.
type progressLog struct {
	p *progress
	w io.Writer
}

func (l progressLog) Write(b []byte) (int, error) {
	l.p.mu.Lock()
	defer l.p.mu.Unlock()
	if l.p.bar != nil {
		l.p.bar.Clear()
		defer l.p.bar.RenderBlank()
	}
	return l.w.Write(b)
}
