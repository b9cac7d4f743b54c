package main

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
)

// TestProgressLines: not on a terminal, each update is a line with the
// count, the total and the detail; quiet prints nothing.
func TestProgressLines(t *testing.T) {
	var buf bytes.Buffer
	p := newProgress(&buf, "kmsfs rewrap: ", false)
	if p.tty {
		t.Fatal("a buffer is not a terminal")
	}
	p.begin("rewrap", 5)
	p.update(2, "2 rewrapped")
	p.println("a line of its own")
	p.finish()
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 || !regexp.MustCompile(`^kmsfs rewrap: 2/5 files, \d+ files/s, ETA \S+: 2 rewrapped$`).MatchString(lines[0]) ||
		lines[1] != "kmsfs rewrap: a line of its own" {
		t.Fatalf("progress lines:\n%s", buf.String())
	}

	buf.Reset()
	q := newProgress(&buf, "kmsfs rewrap: ", true)
	q.begin("rewrap", 5)
	q.update(2, "x")
	q.println("y")
	q.finish()
	progressLog{q, &buf}.Write([]byte("a log line\n"))
	if buf.String() != "a log line\n" {
		t.Fatalf("quiet progress printed %q (log lines still pass)", buf.String())
	}
}

// TestProgressBar: on a terminal the bar shows done/total and the rate,
// and log lines written meanwhile come out whole.
func TestProgressBar(t *testing.T) {
	var buf bytes.Buffer
	p := &progress{w: &buf, prefix: "kmsfs rewrap: ", tty: true}
	p.begin("rewrap", 5)
	p.update(3, "ignored on a bar")
	progressLog{p, &buf}.Write([]byte("level=ERROR msg=\"rewrap failed\"\n"))
	p.update(5, "")
	p.finish()
	out := buf.String()
	if !strings.Contains(out, "(5/5, ") || !strings.Contains(out, "files/s") || !strings.Contains(out, "rewrap") {
		t.Fatalf("bar output lacks count, rate or description:\n%q", out)
	}
	if strings.Contains(out, "ignored on a bar") {
		t.Fatalf("a bar printed a line's detail:\n%q", out)
	}
	if !strings.Contains(out, "level=ERROR msg=\"rewrap failed\"\n") {
		t.Fatalf("a log line did not come out whole:\n%q", out)
	}
	// More files than counted (created since): the total follows.
	buf.Reset()
	p.begin("rewrap", 2)
	p.update(4, "")
	p.finish()
	if !strings.Contains(buf.String(), "(4/4, ") {
		t.Fatalf("the bar kept a total below the count:\n%q", buf.String())
	}
}
