package integration

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// mountBoundaryLine matches the log line of a failure the mount returned
// to an application (fs.tree.fail): one per failure it counts.
var mountBoundaryLine = regexp.MustCompile(`(?m)^.*level=ERROR msg="[a-z]+ failed".*$`)

// TestMountNameErrors: failures of the namespace of a volume with encrypted
// names (a symlink target that fails authentication, a directory whose ID
// file was cut) reach the application as EIO, are logged with the path
// they happened on, and are counted, in `kmsfs stats` and on /metrics,
// one count per logged failure; the rest of the volume keeps working.
func TestMountNameErrors(t *testing.T) {
	v := mountNewVolume(t, "--encrypt-names")
	v.mount()
	for _, d := range []string{"d", "e"} {
		if err := os.Mkdir(v.path(d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mountWriteFile(t, v.path("d/f.txt"), []byte("readable"))
	mountWriteFile(t, v.path("e/g.txt"), []byte("behind a cut ID"))
	if err := os.Symlink("f.txt", v.path("d/link")); err != nil {
		t.Fatal(err)
	}
	v.unmount()

	// The stored directories: d holds the only symlink, e is the other one.
	var dDir, eDir, link string
	ents, err := os.ReadDir(v.vault)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if !e.IsDir() || e.Name() == ".kmsfs" {
			continue
		}
		dir := v.backing(e.Name())
		inner, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		isD := false
		for _, in := range inner {
			if in.Type()&os.ModeSymlink != 0 {
				isD, link = true, filepath.Join(dir, in.Name())
			}
		}
		if isD {
			dDir = dir
		} else {
			eDir = dir
		}
	}
	if dDir == "" || eDir == "" || link == "" {
		t.Fatalf("stored directories not found: d %q, e %q, symlink %q", dDir, eDir, link)
	}
	// Tamper with the stored (encrypted) symlink target: one character in
	// the middle, swapped for another of the same alphabet.
	target, err := os.Readlink(link)
	if err != nil {
		t.Fatal(err)
	}
	b := []byte(target)
	i := len(b) / 2
	if b[i] == 'A' {
		b[i] = 'B'
	} else {
		b[i] = 'A'
	}
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(string(b), link); err != nil {
		t.Fatal(err)
	}
	// Cut e's directory ID file: its names can no longer be decrypted.
	if err := os.Truncate(filepath.Join(eDir, ".kmsfs-dirid"), 5); err != nil {
		t.Fatal(err)
	}

	addr := mountFreeAddr(t)
	v.mount("--metrics-addr", addr)
	if n := mountCounter(mountScrape(t, addr), "kmsfs_errors_total"); n != 0 {
		t.Fatalf("kmsfs_errors_total %g before any failure", n)
	}

	if _, err := os.Readlink(v.path("d/link")); mountErrno(err) != syscall.EIO {
		t.Errorf("readlink of a tampered symlink: %v, want EIO", err)
	}
	out, err := mountExecOut("ls", "-l", v.path("d"))
	if err == nil || !strings.Contains(out, "Input/output error") {
		t.Errorf("ls -l of the directory with the tampered symlink: %v\n%s", err, out)
	}
	if !strings.Contains(out, "f.txt") {
		t.Errorf("ls -l lost the intact entry:\n%s", out)
	}
	if got, err := os.ReadFile(v.path("d/f.txt")); err != nil || string(got) != "readable" {
		t.Errorf("intact file next to the tampered symlink: %q, %v", got, err)
	}
	if _, err := os.ReadDir(v.path("e")); mountErrno(err) != syscall.EIO {
		t.Errorf("readdir of a directory with a cut ID file: %v, want EIO", err)
	}
	if out, err := mountExecOut("ls", v.path("e")); err == nil || !strings.Contains(out, "Input/output error") {
		t.Errorf("ls of the directory with a cut ID file: %v\n%s", err, out)
	}

	log := v.log()
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`msg="readlink failed" path=/d/link errno="input/output error"`),
		regexp.MustCompile(`msg="[a-z]+ failed" path=/e errno="input/output error"`),
	} {
		if !want.MatchString(log) {
			t.Errorf("mount log has no line matching %s:\n%s", want, mountTail(log, 30))
		}
	}
	logged := len(mountBoundaryLine.FindAllString(log, -1))
	if logged < 3 {
		t.Fatalf("%d failures logged, want at least 3 (readlink, ls -l, readdir):\n%s", logged, mountTail(log, 30))
	}

	counted := mountCounter(mountScrape(t, addr), "kmsfs_errors_total")
	if counted != float64(logged) {
		t.Errorf("kmsfs_errors_total %g, but %d failures logged", counted, logged)
	}
	// The symlink target failed authentication (readlink, and ls -l's
	// readlink): counted as tampering too, unlike the cut ID file.
	if n := mountCounter(mountScrape(t, addr), "kmsfs_auth_failures_total"); n < 1 || n >= counted {
		t.Errorf("kmsfs_auth_failures_total %g, want at least the readlink and fewer than all %g failures", n, counted)
	}
	stats := v.run("stats", v.mnt)
	m := regexp.MustCompile(`errors\s+(\d+)`).FindStringSubmatch(stats)
	if m == nil {
		t.Fatalf("kmsfs stats shows no error count:\n%s", stats)
	}
	if n, _ := strconv.Atoi(m[1]); n != logged {
		t.Errorf("kmsfs stats counts %d errors, %d were logged:\n%s", n, logged, stats)
	}
}
