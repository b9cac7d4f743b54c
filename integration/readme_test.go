package integration

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// readmeBlock returns the command lines of the first indented block after
// the README heading, without their trailing "# ..." comments.
func readmeBlock(t *testing.T, heading string) []string {
	t.Helper()
	raw, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(raw), "\n"+heading+"\n")
	if !ok {
		t.Fatalf("README.md has no %q section", heading)
	}
	var lines []string
	for _, l := range strings.Split(rest, "\n") {
		if strings.HasPrefix(l, "## ") {
			break
		}
		if !strings.HasPrefix(l, "    ") {
			if len(lines) > 0 && strings.TrimSpace(l) == "" {
				break // the block ended
			}
			continue
		}
		cmd := strings.TrimSpace(l)
		if i := strings.Index(cmd, "  # "); i >= 0 {
			cmd = strings.TrimSpace(cmd[:i])
		}
		if cmd != "" {
			lines = append(lines, cmd)
		}
	}
	if len(lines) == 0 {
		t.Fatalf("README.md section %q has no commands", heading)
	}
	return lines
}

// TestReadmeRemoteKMS runs the README's remote-KMS example as it is written,
// with its absolute paths moved into a temporary directory and the server on
// a free port: credentials, `kmsfs kms serve` with a region, the credentials
// exported, a key created with its alias, init on the alias, a mount that
// finds the KMS from the volume, and the server's audit log verified. Then
// a file written through the mount reads back, offline too.
func TestReadmeRemoteKMS(t *testing.T) {
	mountRequireFuse(t)
	lines := readmeBlock(t, "## A remote KMS")
	work := t.TempDir()
	paths := strings.NewReplacer(
		"/srv/kms", filepath.Join(work, "kms"),
		"/data/vault", filepath.Join(work, "vault"),
		"/mnt/plain", filepath.Join(work, "plain"),
	)
	mnt := filepath.Join(work, "plain")
	// Only what the README exports: no AWS configuration of this machine.
	env := []string{"PATH=" + filepath.Dir(kmsfsBinary()) + ":" + os.Getenv("PATH"), "HOME=" + work,
		"AWS_CONFIG_FILE=/dev/null", "AWS_SHARED_CREDENTIALS_FILE=/dev/null", "AWS_EC2_METADATA_DISABLED=true"}
	t.Cleanup(func() {
		if mountIsMounted(mnt) {
			exec.Command(kmsfsBinary(), "umount", mnt).Run()
			mountWaitUnmounted(mnt, 10*time.Second)
		}
	})

	readmeURL := ""
	url := ""
	run := func(line string) string {
		t.Helper()
		if url != "" {
			line = strings.ReplaceAll(line, readmeURL, url)
		}
		// Output through a file: `kmsfs mount` leaves a daemon holding
		// the descriptors it was given.
		f, err := os.CreateTemp(work, "out")
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd := exec.Command("bash", "-euc", line)
		cmd.Dir, cmd.Env, cmd.Stdout, cmd.Stderr = work, env, f, f
		err = cmd.Run()
		out, _ := os.ReadFile(f.Name())
		if err != nil {
			t.Fatalf("README line failed: %s\n%v\n%s", line, err, out)
		}
		return string(out)
	}
	var auditOut string
	for _, line := range lines {
		line = paths.Replace(line)
		switch {
		case strings.HasPrefix(line, "kmsfs kms serve ") && strings.HasSuffix(line, "&"):
			m := regexp.MustCompile(`--listen (\S+)`).FindStringSubmatch(line)
			if m == nil {
				t.Fatalf("README serve line without --listen: %s", line)
			}
			readmeURL = "http://" + m[1]
			url = readmeServe(t, work, env, strings.Replace(strings.TrimSuffix(line, "&"), m[1], "127.0.0.1:0", 1))
		case strings.HasPrefix(line, "export "):
			for _, kv := range strings.Fields(strings.TrimPrefix(line, "export ")) {
				if !strings.Contains(kv, "=") {
					t.Fatalf("README export without a value: %s", line)
				}
				env = append(env, kv)
			}
		case strings.HasPrefix(line, "kmsfs kms audit verify"):
			auditOut = run(line)
		default:
			run(line)
		}
	}
	if url == "" {
		t.Fatal("the README example starts no KMS server")
	}
	if !mountIsMounted(mnt) {
		t.Fatal("after the README example nothing is mounted on its mount point")
	}
	if !strings.Contains(auditOut, "intact") {
		t.Fatalf("audit verify: %s", auditOut)
	}

	want := []byte("through the README's remote KMS\n")
	if err := os.WriteFile(filepath.Join(mnt, "note.txt"), want, 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(mnt, "note.txt")); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read back through the mount: %q, %v", got, err)
	}
	run("kmsfs umount " + mnt)
	if !mountWaitUnmounted(mnt, 10*time.Second) {
		t.Fatal("still mounted after kmsfs umount")
	}
	if got := run("kmsfs cat " + filepath.Join(work, "vault") + " note.txt"); got != string(want) {
		t.Fatalf("kmsfs cat with the remote KMS: %q", got)
	}
	audit, err := os.ReadFile(filepath.Join(work, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	for _, op := range []string{"CreateKey", "CreateAlias", "GenerateDataKey", "Decrypt"} {
		if !bytes.Contains(audit, []byte(`"`+op+`"`)) {
			t.Errorf("the server's audit log has no %s", op)
		}
	}
}

// readmeServe starts the README's `kmsfs kms serve` line (on a free port)
// and returns the URL it announces; the server is stopped at cleanup.
func readmeServe(t *testing.T, dir string, env []string, line string) string {
	t.Helper()
	cmd := exec.Command("bash", "-euc", "exec "+line)
	cmd.Dir, cmd.Env = dir, env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	first := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case first <- sc.Text():
			default:
			}
		}
	}()
	select {
	case l := <-first:
		m := regexp.MustCompile(`listening on (http://\S+)`).FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("kmsfs kms serve announced %q", l)
		}
		return m[1]
	case <-time.After(20 * time.Second):
		t.Fatalf("kmsfs kms serve did not start: %s", stderr.String())
	}
	return ""
}
