package integration

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/kmsfs/kmsfs/envelope"
)

// TestRewrapOnRemoteKMS moves a mounted-and-filled volume from one key of a
// `kmsfs kms serve` to another with `kmsfs rewrap`, with keys created and
// disabled by the Debian awscli:
//   - a rewrap is refused while the volume is mounted read-write;
//   - one the destination key's policy forbids fails with the KMS's reason
//     and changes nothing;
//   - the real one makes only ReEncrypt calls (audited: the plaintext keys
//     never leave the KMS), after which the first key is disabled and every
//     file, time and xattr reads back as it was copied in.
func TestRewrapOnRemoteKMS(t *testing.T) {
	kmsAWS(t)
	mountRequireFuse(t)
	mountRequireTool(t, "rsync")
	h := kmsStartServer(t)
	keyA, arnA := h.createKey(kmsAliceKey)
	kmsSetAWSEnv(t, kmsAliceKey)
	v := mountNewVolume(t, "--kms", h.url, "--kms-region", kmsRegion, "--key", keyA)
	src := filepath.Join(t.TempDir(), "src")
	mountMakeTree(t, src, 11)
	want := mountSnapshot(t, src)
	v.mount()
	cpDst, rsDst := v.path("cp"), v.path("rs")
	mountExec(t, "cp", "-a", src, cpDst)
	mountExec(t, "rsync", "-aHX", src+"/", rsDst+"/")

	keyB, arnB := h.createKey(kmsAliceKey)
	if out, err := v.tryRun("rewrap", "--to-key", keyB, v.vault); err == nil || !strings.Contains(out, "in use by another kmsfs process") {
		t.Fatalf("rewrap of a volume mounted read-write: %v\n%s", err, out)
	}
	v.unmount()

	// Key B's policy lets the account do everything but re-encrypt to it.
	policy := `{"Version":"2012-10-17","Statement":[
	 {"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::` + kmsAccount + `:root"},"Action":"kms:*","Resource":"*"},
	 {"Effect":"Deny","Principal":{"AWS":"*"},"Action":"kms:ReEncryptTo","Resource":"*"}]}`
	policyFile := filepath.Join(h.dir, "no-reencrypt-to.json")
	if err := os.WriteFile(policyFile, []byte(policy), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := h.aws(kmsAliceKey, "put-key-policy", "--key-id", keyB, "--policy-name", "default", "--policy", "file://"+policyFile); err != nil {
		t.Fatal(err)
	}
	configBefore, err := os.ReadFile(v.backing(".kmsfs/volume.json"))
	if err != nil {
		t.Fatal(err)
	}
	if out, err := v.tryRun("rewrap", "--to-key", keyB, v.vault); err == nil || !strings.Contains(out, "AccessDeniedException") {
		t.Fatalf("rewrap to a key whose policy denies ReEncryptTo: %v\n%s", err, out)
	}
	if configAfter, err := os.ReadFile(v.backing(".kmsfs/volume.json")); err != nil || string(configAfter) != string(configBefore) {
		t.Fatalf("a refused rewrap changed the volume config (%v)", err)
	}
	policy = `{"Version":"2012-10-17","Statement":[
	 {"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::` + kmsAccount + `:root"},"Action":"kms:*","Resource":"*"}]}`
	if err := os.WriteFile(policyFile, []byte(policy), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := h.aws(kmsAliceKey, "put-key-policy", "--key-id", keyB, "--policy-name", "default", "--policy", "file://"+policyFile); err != nil {
		t.Fatal(err)
	}

	before := h.auditLog()
	out := v.run("rewrap", "--to-key", keyB, v.vault)
	if !strings.Contains(out, "0 failed") || !strings.Contains(out, arnB) {
		t.Fatalf("rewrap output:\n%s", out)
	}
	during := strings.TrimPrefix(h.auditLog(), before)
	// One ReEncrypt per file with content (a hard link pair is one file;
	// empty files have no key) in each of the two copies, plus the volume's
	// metadata key.
	wantCalls := 2*rewrapKeyedFiles(t, src) + 1
	if n := strings.Count(during, `"operation":"ReEncrypt"`); n != wantCalls {
		t.Errorf("%d ReEncrypt calls audited during the rewrap, want %d", n, wantCalls)
	}
	for _, op := range []string{"Decrypt", "GenerateDataKey", "Encrypt"} {
		if strings.Contains(during, `"operation":"`+op+`"`) {
			t.Errorf("the rewrap called %s: plaintext keys left the KMS", op)
		}
	}
	var cfg struct {
		KeyID string `json:"kms_key_id"`
	}
	data, err := os.ReadFile(v.backing(".kmsfs/volume.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &cfg); err != nil || cfg.KeyID != arnB {
		t.Fatalf("volume config names %s after the rewrap, want %s", cfg.KeyID, arnB)
	}

	if _, err := h.aws(kmsAliceKey, "disable-key", "--key-id", keyA); err != nil {
		t.Fatal(err)
	}
	v.mount()
	mountCheckCopies(t, "after rewrap with the old key disabled", src, want, cpDst, rsDst)
	// New files get keys under B.
	if err := os.WriteFile(v.path("new.txt"), []byte("after the rewrap"), 0o644); err != nil {
		t.Fatal(err)
	}
	v.remount()
	if got, err := os.ReadFile(v.path("new.txt")); err != nil || string(got) != "after the rewrap" {
		t.Fatalf("new file after the rewrap: %q, %v", got, err)
	}
	if strings.Contains(strings.TrimPrefix(h.auditLog(), before), `"keyArn":"`+arnA+`","encryptionContext":{"kmsfs:file"`) {
		t.Error("a file key was used under the old key after the rewrap")
	}
	mountRequireNoPlaintext(t, v.vault)
}

// rewrapKeyedFiles counts the files below root that have a data key once
// stored: regular, not empty, each inode once.
func rewrapKeyedFiles(t *testing.T, root string) int {
	t.Helper()
	inodes := map[uint64]bool{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			return err
		}
		if st.Size > 0 {
			inodes[st.Ino] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return len(inodes)
}

// TestRewrapOnS3 rewraps a volume in an S3 bucket (versitygw) under a second
// key of the embedded KMS. A first run goes through a proxy that refuses
// every write to a file after the first few, as an S3 outage would: it
// stops with those files failed, every file still readable, and a
// checkpoint; the next run resumes at the checkpoint and finishes. With the
// first key disabled the mount reads the tree back as copied (times
// included: a rewrap changes no plaintext file). awscli reads the objects
// to check each header names the new key.
func TestRewrapOnS3(t *testing.T) {
	const prefix = "rewrapped"
	g, v, src, want := s3MountedVolume(t, prefix)
	dst := v.path("cp")
	mountExec(t, "cp", "-a", src, dst)
	v.unmount()

	keyA := s3VolumeKey(t, g, prefix)
	keyB := v.createKey()
	rewrap := func(endpoint string) []string {
		return []string{"rewrap", "--to-key", keyB, "--parallel", "1", "--s3-endpoint", endpoint, "--s3-path-style", v.vault}
	}

	// The first run: the files after the first few fail to be written.
	const admitted = 3
	proxy := s3StartProxy(t, g, s3RefuseWritesAfter("/"+s3Bucket+"/"+prefix+"/cp/", admitted))
	out, err := v.tryRun(rewrap(proxy.endpoint)...)
	if err == nil || strings.Contains(out, " 0 failed") {
		t.Fatalf("rewrap through a failing S3 succeeded:\n%s", out)
	}
	if n := proxy.refusedCount(); n == 0 {
		t.Fatalf("the proxy refused no write; the rewrap was not interrupted:\n%s", out)
	}
	var job struct {
		Finished    bool   `json:"finished"`
		DoneThrough string `json:"done_through"`
	}
	if err := json.Unmarshal(g.get(t, prefix+"/.kmsfs/rewrap.json"), &job); err != nil {
		t.Fatal(err)
	}
	if job.Finished || !strings.HasPrefix(job.DoneThrough, "cp/") {
		t.Fatalf("the interrupted rewrap recorded %+v; want unfinished, done through a file under cp/", job)
	}
	// Every file reads back meanwhile, under one key or the other.
	v.mount(g.flags()...)
	mountCompareSnapshots(t, "after the interrupted rewrap", want, s3Snapshot(t, dst))
	v.unmount()

	out = v.run(rewrap(g.endpoint)...)
	if !strings.Contains(out, " 0 failed") {
		t.Fatalf("resumed rewrap:\n%s", out)
	}
	if !strings.Contains(out, "resuming an interrupted rewrap") {
		t.Errorf("the second run did not resume the first:\n%s", out)
	}
	v.run("kms", "disable", keyA)
	v.mount(g.flags()...)
	mountCompareSnapshots(t, "after rewrap", want, s3Snapshot(t, dst))
	if out, err := mountExecOut("diff", "-r", "--no-dereference", src, dst); err != nil {
		t.Errorf("after rewrap: diff -r: %v\n%s", err, mountTail(out, 20))
	}
	v.unmount()

	// Every stored header, read by an independent client, names key B.
	listing := g.aws(t, "s3", "ls", "--recursive", "s3://"+s3Bucket+"/"+prefix+"/cp/")
	checked := 0
	for _, line := range strings.Split(strings.TrimSpace(listing), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || f[2] == "0" {
			continue
		}
		key := strings.Join(f[3:], " ")
		obj := filepath.Join(t.TempDir(), "obj")
		g.aws(t, "s3", "cp", "s3://"+s3Bucket+"/"+key, obj)
		data, err := os.ReadFile(obj)
		if err != nil {
			t.Fatal(err)
		}
		p, err := envelope.ParseHeader(data)
		if err != nil {
			continue // a symlink or directory marker
		}
		if !strings.HasSuffix(p.KeyID, "/"+keyB) {
			t.Errorf("%s: header names %s after the rewrap, want key %s", key, p.KeyID, keyB)
		}
		if checked++; checked == 12 {
			break // awscli starts slowly; a dozen objects make the point
		}
	}
	if checked == 0 {
		t.Fatal("no object with a header found")
	}
}

// s3VolumeKey is the KMS key ID the config of the S3 volume at prefix names.
func s3VolumeKey(t *testing.T, g *s3Gateway, prefix string) string {
	t.Helper()
	var cfg struct {
		KeyID string `json:"kms_key_id"`
	}
	if err := json.Unmarshal(g.get(t, prefix+"/.kmsfs/volume.json"), &cfg); err != nil || cfg.KeyID == "" {
		t.Fatalf("volume config of %s: %v", prefix, err)
	}
	return cfg.KeyID
}

// createKey creates a key in the volume's keystore and returns its ID.
func (v *mountVolume) createKey() string {
	v.t.Helper()
	for _, line := range strings.Split(v.run("kms", "create-key"), "\n") {
		if f := strings.Fields(line); len(f) == 2 && strings.HasPrefix(f[1], "arn:aws:kms:") {
			return f[0]
		}
	}
	v.t.Fatal("kms create-key printed no key")
	return ""
}
