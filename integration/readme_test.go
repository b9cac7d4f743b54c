package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/backend/shared/pgmeta/pgtest"
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

// readmeShell runs README lines as a user would type them, in a work
// directory standing in for the README's absolute paths.
type readmeShell struct {
	t     *testing.T
	work  string
	env   []string
	paths *strings.Replacer
	// readmeURL, url: the server's address in the README and in the test.
	readmeURL, url string
}

func newReadmeShell(t *testing.T) *readmeShell {
	work := t.TempDir()
	sh := &readmeShell{t: t, work: work,
		paths: strings.NewReplacer(
			"/srv/kms", filepath.Join(work, "kms"),
			"/data/vault", filepath.Join(work, "vault"),
			"/mnt/plain", filepath.Join(work, "plain"),
			"~/", work+"/",
		),
		// Only what the README sets: no AWS configuration of this machine,
		// and a home of its own (the default keystore is under it).
		env: []string{"PATH=" + filepath.Dir(kmsfsBinary()) + ":" + os.Getenv("PATH"), "HOME=" + work,
			"AWS_CONFIG_FILE=/dev/null", "AWS_SHARED_CREDENTIALS_FILE=/dev/null", "AWS_EC2_METADATA_DISABLED=true"},
	}
	mnt := sh.path("/mnt/plain")
	t.Cleanup(func() {
		if mountIsMounted(mnt) {
			exec.Command(kmsfsBinary(), "umount", mnt).Run()
			mountWaitUnmounted(mnt, 10*time.Second)
		}
	})
	return sh
}

// path is where the README's path p is in the test.
func (sh *readmeShell) path(p string) string { return sh.paths.Replace(p) }

// run runs one line (README paths allowed) with bash and returns its
// output; it fails the test if the line fails.
func (sh *readmeShell) run(line string) string {
	t := sh.t
	t.Helper()
	line = sh.paths.Replace(line)
	if sh.url != "" {
		line = strings.ReplaceAll(line, sh.readmeURL, sh.url)
	}
	// Output through a file: `kmsfs mount` leaves a daemon holding the
	// descriptors it was given.
	f, err := os.CreateTemp(sh.work, "out")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("bash", "-euc", line)
	cmd.Dir, cmd.Env, cmd.Stdout, cmd.Stderr = sh.work, sh.env, f, f
	err = cmd.Run()
	out, _ := os.ReadFile(f.Name())
	if err != nil {
		t.Fatalf("README line failed: %s\n%v\n%s", line, err, out)
	}
	return string(out)
}

// block runs the README section's command lines in order, its paths
// replaced and words replaced as in words (placeholders such as OLD-KEY).
// A `kmsfs kms serve ... &` line starts the server on a free port; export
// lines set the environment of the lines after them. It returns each
// line's output.
func (sh *readmeShell) block(heading string, words ...string) []string {
	t := sh.t
	t.Helper()
	subst := strings.NewReplacer(words...)
	var outs []string
	for _, line := range readmeBlock(t, heading) {
		line = subst.Replace(sh.paths.Replace(line))
		out := ""
		switch {
		case strings.HasPrefix(line, "kmsfs kms serve ") && strings.HasSuffix(line, "&"):
			m := regexp.MustCompile(`--listen (\S+)`).FindStringSubmatch(line)
			if m == nil {
				t.Fatalf("README serve line without --listen: %s", line)
			}
			sh.readmeURL = "http://" + m[1]
			sh.url = readmeServe(t, sh.work, sh.env, strings.Replace(strings.TrimSuffix(line, "&"), m[1], "127.0.0.1:0", 1))
		case strings.HasPrefix(line, "export "):
			for _, kv := range strings.Fields(strings.TrimPrefix(line, "export ")) {
				if !strings.Contains(kv, "=") {
					t.Fatalf("README export without a value: %s", line)
				}
				sh.env = append(sh.env, kv)
			}
		default:
			out = sh.run(line)
		}
		outs = append(outs, out)
	}
	return outs
}

// TestReadmeRemoteKMS runs the README's remote-KMS example as it is written,
// with its absolute paths moved into a temporary directory and the server on
// a free port: credentials, `kmsfs kms serve` with a region, the credentials
// exported, a key created with its alias, init on the alias, a mount that
// finds the KMS from the volume, and the server's audit log verified. Then
// a file written through the mount reads back, offline too.
func TestReadmeRemoteKMS(t *testing.T) {
	mountRequireFuse(t)
	sh := newReadmeShell(t)
	outs := sh.block("## A remote KMS")
	if sh.url == "" {
		t.Fatal("the README example starts no KMS server")
	}
	mnt := sh.path("/mnt/plain")
	if !mountIsMounted(mnt) {
		t.Fatal("after the README example nothing is mounted on its mount point")
	}
	if last := outs[len(outs)-1]; !strings.Contains(last, "intact") {
		t.Fatalf("the example's last line (audit verify) said: %s", last)
	}

	want := []byte("through the README's remote KMS\n")
	if err := os.WriteFile(filepath.Join(mnt, "note.txt"), want, 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(mnt, "note.txt")); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read back through the mount: %q, %v", got, err)
	}
	sh.run("kmsfs umount " + mnt)
	if !mountWaitUnmounted(mnt, 10*time.Second) {
		t.Fatal("still mounted after kmsfs umount")
	}
	if got := sh.run("kmsfs cat " + sh.path("/data/vault") + " note.txt 2>/dev/null"); got != string(want) {
		t.Fatalf("kmsfs cat with the remote KMS: %q", got)
	}
	audit, err := os.ReadFile(filepath.Join(sh.work, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	for _, op := range []string{"CreateKey", "CreateAlias", "GenerateDataKey", "Decrypt"} {
		if !bytes.Contains(audit, []byte(`"`+op+`"`)) {
			t.Errorf("the server's audit log has no %s", op)
		}
	}
}

// TestReadmeUsingItAndMovingToAnotherKey runs the README's "Using it" and
// "Moving a volume to another key" examples as written (on the embedded
// KMS, the default keystore under a home of the test's own): init, mount,
// rsync of a photo directory, umount, offline cat; then a new key with its
// alias, rewrap onto it, the old key disabled, a refresh rewrap, and the
// photo still reading.
func TestReadmeUsingItAndMovingToAnotherKey(t *testing.T) {
	mountRequireFuse(t)
	mountRequireTool(t, "rsync")
	sh := newReadmeShell(t)
	photo := bytes.Repeat([]byte("not really a jpeg "), 1000)
	if err := os.MkdirAll(filepath.Join(sh.work, "photos"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sh.work, "photos", "a.jpg"), photo, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(sh.path("/mnt/plain"), 0o755); err != nil {
		t.Fatal(err)
	}
	outs := sh.block("## Using it")
	if last := outs[len(outs)-1]; !strings.HasSuffix(last, string(photo)) {
		t.Fatalf("kmsfs cat of the photo printed %d bytes, want the photo's %d", len(last), len(photo))
	}
	raw, err := os.ReadFile(filepath.Join(sh.path("/data/vault"), ".kmsfs", "volume.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		KeyID string `json:"kms_key_id"`
	}
	if err := json.Unmarshal(raw, &cfg); err != nil || cfg.KeyID == "" {
		t.Fatalf("volume.json: %v\n%s", err, raw)
	}

	// The example starts from a mounted volume.
	sh.run("kmsfs mount /data/vault /mnt/plain")
	sh.block("## Moving a volume to another key", "OLD-KEY", cfg.KeyID)
	if got := sh.run("kmsfs cat /data/vault photos/a.jpg 2>/dev/null"); got != string(photo) {
		t.Fatalf("after the moves the photo reads as %d bytes, want %d", len(got), len(photo))
	}
	if out := sh.run("kmsfs kms describe-key " + cfg.KeyID); !strings.Contains(out, "Disabled") {
		t.Fatalf("the old key is not disabled:\n%s", out)
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

// TestReadmeSharedVolume runs the README's shared-volume example as written,
// against its own PostgreSQL cluster and versitygw in place of the README's
// addresses: init with --meta, a mount that finds the database from the
// volume, a file written, gc, and salvage rebuilding that file from the
// bucket alone.
func TestReadmeSharedVolume(t *testing.T) {
	mountRequireFuse(t)
	pg := pgtest.Start(t)
	g := s3StartGateway(t)
	sh := newReadmeShell(t)
	sh.env = append(sh.env, "AWS_ACCESS_KEY_ID="+s3AccessKey, "AWS_SECRET_ACCESS_KEY="+s3SecretKey, "AWS_REGION=us-east-1")
	if err := os.MkdirAll(sh.path("/mnt/plain"), 0o755); err != nil {
		t.Fatal(err)
	}
	outs := sh.block("## Many machines, one volume",
		"http://127.0.0.1:7070", g.endpoint,
		"postgres://kmsfs@127.0.0.1:5432/vault", pg.CreateDB("vault"),
		"s3://bucket/", "s3://"+s3Bucket+"/")
	if last := outs[len(outs)-1]; !strings.Contains(last, "salvage: 1 files (") || !strings.Contains(last, "0 failed") {
		t.Fatalf("salvage said: %s", last)
	}
	got, err := filepath.Glob(filepath.Join(sh.work, "rescued", "inode-*"))
	if err != nil || len(got) != 1 {
		t.Fatalf("rescued files: %v, %v", got, err)
	}
	if data, err := os.ReadFile(got[0]); err != nil || string(data) != "hello\n" {
		t.Fatalf("rescued %s: %q, %v", got[0], data, err)
	}
}
