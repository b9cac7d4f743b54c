package integration

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/kmsfs/kmsfs/kms"
	"github.com/kmsfs/kmsfs/kms/awskms"
)

// The second region of the multi-Region tests; kmsRegion is the first.
const kmsRegion2 = "us-test-2"

// mrkFreeAddr returns a loopback address nothing listens on, for a server
// that must come back on the same address after it was killed.
func mrkFreeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// mrkServer starts `kmsfs kms serve` for region on addr with its own
// keystore and audit log under dir (kept across restarts), and the peers
// file peers ("" for none).
func mrkServer(t *testing.T, dir, region, addr, peers string) *kmsHarness {
	t.Helper()
	extra := []string{"--region", region, "--listen", addr,
		"--keystore", filepath.Join(dir, "keystore"), "--audit-log", filepath.Join(dir, "audit.log")}
	if peers != "" {
		extra = append(extra, "--peers", peers)
	}
	h := kmsStartServer(t, extra...)
	h.keystore, h.audit = filepath.Join(dir, "keystore"), filepath.Join(dir, "audit.log")
	return h
}

// mrkPeers writes a peers file naming region's server at url, signed with
// alice's access key there.
func mrkPeers(t *testing.T, region, url string) string {
	t.Helper()
	b, _ := json.Marshal(map[string]map[string]string{
		region: {"Endpoint": url, "AccessKeyId": kmsAliceKey, "SecretAccessKey": kmsSecrets[kmsAliceKey]},
	})
	p := filepath.Join(t.TempDir(), "peers.json")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// mrkClient is the Go SDK client of h, signing as alice for region.
func mrkClient(t *testing.T, h *kmsHarness, region string) *awskms.Client {
	t.Helper()
	c, err := awskms.New(context.Background(), awskms.Options{Endpoint: h.url, Region: region,
		Credentials: credentials.NewStaticCredentialsProvider(kmsAliceKey, kmsSecrets[kmsAliceKey], "")})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

type mrkDescribe struct {
	KeyMetadata struct {
		KeyId                    string
		Arn                      string
		Description              string
		MultiRegion              bool
		MultiRegionConfiguration struct {
			MultiRegionKeyType string
			PrimaryKey         struct{ Arn, Region string }
			ReplicaKeys        []struct{ Arn, Region string }
		}
	}
}

// TestKMSMultiRegionReplicateAcrossServers: two `kmsfs kms serve`
// processes, two regions. awscli creates a multi-Region key in the first,
// replicates it to the second, and ciphertext made in either region
// decrypts in the other (awscli one way, the Go SDK the other); AWS's
// error types for the rules; UpdatePrimaryRegion changes both servers;
// both audit logs record the operations, and no log holds key material.
func TestKMSMultiRegionReplicateAcrossServers(t *testing.T) {
	kmsAWS(t)
	b := mrkServer(t, t.TempDir(), kmsRegion2, "127.0.0.1:0", "")
	a := mrkServer(t, t.TempDir(), kmsRegion, "127.0.0.1:0", mrkPeers(t, kmsRegion2, b.url))

	var created mrkDescribe
	a.awsJSON(kmsAliceKey, &created, "create-key", "--multi-region", "--description", "primary")
	id := created.KeyMetadata.KeyId
	if !strings.HasPrefix(id, "mrk-") || len(id) != 36 || !created.KeyMetadata.MultiRegion {
		t.Fatalf("create-key --multi-region: %+v", created.KeyMetadata)
	}
	var rep struct {
		ReplicaKeyMetadata struct{ KeyId, Arn, Description, KeyState string }
		ReplicaTags        []struct{ TagKey, TagValue string }
	}
	a.awsJSON(kmsAliceKey, &rep, "replicate-key", "--key-id", id, "--replica-region", kmsRegion2,
		"--description", "replica", "--tags", "TagKey=side,TagValue=b")
	if rep.ReplicaKeyMetadata.KeyId != id || rep.ReplicaKeyMetadata.Arn != "arn:aws:kms:"+kmsRegion2+":"+kmsAccount+":key/"+id ||
		rep.ReplicaKeyMetadata.KeyState != "Enabled" || len(rep.ReplicaTags) != 1 {
		t.Fatalf("replicate-key: %+v", rep)
	}

	for _, tc := range []struct {
		h          *kmsHarness
		region     string
		typ, descr string
	}{{a, kmsRegion, "PRIMARY", "primary"}, {b, kmsRegion2, "REPLICA", "replica"}} {
		var d mrkDescribe
		tc.h.awsJSON(kmsAliceKey, &d, "describe-key", "--region", tc.region, "--key-id", id)
		c := d.KeyMetadata.MultiRegionConfiguration
		if c.MultiRegionKeyType != tc.typ || c.PrimaryKey.Region != kmsRegion || c.PrimaryKey.Arn != created.KeyMetadata.Arn ||
			len(c.ReplicaKeys) != 1 || c.ReplicaKeys[0].Region != kmsRegion2 || d.KeyMetadata.Description != tc.descr {
			t.Fatalf("describe-key in %s: %+v", tc.region, d.KeyMetadata)
		}
	}

	// awscli: encrypt in the first region, decrypt in the second.
	work := t.TempDir()
	pt := filepath.Join(work, "pt")
	if err := os.WriteFile(pt, []byte("one key, two regions"), 0o600); err != nil {
		t.Fatal(err)
	}
	var enc struct{ CiphertextBlob string }
	a.awsJSON(kmsAliceKey, &enc, "encrypt", "--key-id", id, "--plaintext", "fileb://"+pt, "--encryption-context", "volume=v1")
	ct := filepath.Join(work, "ct")
	if err := os.WriteFile(ct, kmsB64(t, enc.CiphertextBlob), 0o600); err != nil {
		t.Fatal(err)
	}
	var dec struct{ Plaintext, KeyId string }
	b.awsJSON(kmsAliceKey, &dec, "decrypt", "--region", kmsRegion2, "--ciphertext-blob", "fileb://"+ct, "--encryption-context", "volume=v1")
	if string(kmsB64(t, dec.Plaintext)) != "one key, two regions" || dec.KeyId != rep.ReplicaKeyMetadata.Arn {
		t.Fatalf("decrypt in %s: %+v", kmsRegion2, dec)
	}
	b.awsFails(kmsAliceKey, "InvalidCiphertextException", "decrypt", "--region", kmsRegion2, "--ciphertext-blob", "fileb://"+ct, "--encryption-context", "volume=v2")

	// The Go SDK: the other way round.
	ctx := context.Background()
	ct2, arn, err := mrkClient(t, b, kmsRegion2).Encrypt(ctx, id, []byte("and back"), kms.EncryptionContext{"volume": "v1"})
	if err != nil || arn != rep.ReplicaKeyMetadata.Arn {
		t.Fatalf("Encrypt in %s: %v (%s)", kmsRegion2, err, arn)
	}
	got, arn, err := mrkClient(t, a, kmsRegion).Decrypt(ctx, "", ct2, kms.EncryptionContext{"volume": "v1"})
	if err != nil || string(got) != "and back" || arn != created.KeyMetadata.Arn {
		t.Fatalf("Decrypt in %s: %q %v (%s)", kmsRegion, got, err, arn)
	}

	// Each region's key has its own state: disabling the replica leaves
	// the primary usable.
	if _, err := b.aws(kmsAliceKey, "disable-key", "--region", kmsRegion2, "--key-id", id); err != nil {
		t.Fatal(err)
	}
	b.awsFails(kmsAliceKey, "DisabledException", "decrypt", "--region", kmsRegion2, "--ciphertext-blob", "fileb://"+ct, "--encryption-context", "volume=v1")
	if _, err := a.aws(kmsAliceKey, "decrypt", "--ciphertext-blob", "fileb://"+ct, "--encryption-context", "volume=v1"); err != nil {
		t.Fatalf("primary after disabling the replica: %v", err)
	}
	if _, err := b.aws(kmsAliceKey, "enable-key", "--region", kmsRegion2, "--key-id", id); err != nil {
		t.Fatal(err)
	}

	// AWS's rules, AWS's error types.
	a.awsFails(kmsAliceKey, "AlreadyExistsException", "replicate-key", "--key-id", id, "--replica-region", kmsRegion2)
	a.awsFails(kmsAliceKey, "ValidationException", "replicate-key", "--key-id", id, "--replica-region", kmsRegion)
	b.awsFails(kmsAliceKey, "UnsupportedOperationException", "replicate-key", "--region", kmsRegion2, "--key-id", id, "--replica-region", "us-test-3")
	single, _ := a.createKey(kmsAliceKey)
	a.awsFails(kmsAliceKey, "UnsupportedOperationException", "replicate-key", "--key-id", single, "--replica-region", kmsRegion2)
	a.awsFails(kmsAliceKey, "UnsupportedOperationException", "create-key", "--multi-region", "--origin", "EXTERNAL")
	a.awsFails(kmsAliceKey, "UnsupportedOperationException", "enable-key-rotation", "--key-id", id)
	a.awsFails(kmsAliceKey, "NotFoundException", "update-primary-region", "--key-id", id, "--primary-region", "us-test-3")
	a.awsFails(kmsMalloryKey, "AccessDeniedException", "replicate-key", "--key-id", created.KeyMetadata.Arn, "--replica-region", kmsRegion2)

	// kmsfs kms replicate through the server.
	out, err := a.kmsfs(kmsAliceKey, "kms", "create-key", "--kms", a.url, "--kms-region", kmsRegion, "--multi-region")
	if err != nil {
		t.Fatal(err)
	}
	id2 := strings.Fields(out)[0]
	if out, err = a.kmsfs(kmsAliceKey, "kms", "replicate", "--kms", a.url, "--kms-region", kmsRegion, id2, kmsRegion2); err != nil || !strings.Contains(out, "arn:aws:kms:"+kmsRegion2+":") {
		t.Fatalf("kmsfs kms replicate: %q %v", out, err)
	}

	// UpdatePrimaryRegion: the second region's key becomes the primary,
	// on both servers.
	if _, err := a.aws(kmsAliceKey, "update-primary-region", "--key-id", id, "--primary-region", kmsRegion2); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		h      *kmsHarness
		region string
		typ    string
	}{{a, kmsRegion, "REPLICA"}, {b, kmsRegion2, "PRIMARY"}} {
		var d mrkDescribe
		tc.h.awsJSON(kmsAliceKey, &d, "describe-key", "--region", tc.region, "--key-id", id)
		c := d.KeyMetadata.MultiRegionConfiguration
		if c.MultiRegionKeyType != tc.typ || c.PrimaryKey.Region != kmsRegion2 || len(c.ReplicaKeys) != 1 || c.ReplicaKeys[0].Region != kmsRegion {
			t.Fatalf("after update-primary-region, describe-key in %s: %+v", tc.region, c)
		}
	}
	a.awsFails(kmsAliceKey, "UnsupportedOperationException", "update-primary-region", "--key-id", id, "--primary-region", kmsRegion2)
	out, err = a.kmsfs(kmsAliceKey, "kms", "describe-key", "--kms", a.url, "--kms-region", kmsRegion, id)
	if err != nil || !regexpMatch(`(?m)^Multi-Region: +REPLICA$`, out) {
		t.Fatalf("kmsfs kms describe-key: %q %v", out, err)
	}

	// The audit logs record every operation, the servers' calls on each
	// other included; nothing holds the request bodies.
	for op, h := range map[string]*kmsHarness{
		`"operation":"ReplicateKey"`:                     a,
		`"operation":"UpdatePrimaryRegion"`:              a,
		`"operation":"KmsfsReplicaWrappingKey"`:          b,
		`"operation":"KmsfsImportReplica"`:               b,
		`"operation":"KmsfsSetMultiRegionConfiguration"`: b,
	} {
		if !strings.Contains(h.auditLog(), op) {
			t.Errorf("audit log %s has no %s", h.audit, op)
		}
	}
	for _, h := range []*kmsHarness{a, b} {
		if s := h.auditLog() + h.stderr.String(); strings.Contains(s, "EncryptedKeyMaterial") || strings.Contains(s, "PublicKey") {
			t.Errorf("the audit log or stderr of %s holds request or response bodies", h.url)
		}
	}
}

func regexpMatch(re, s string) bool { return regexp.MustCompile(re).MatchString(s) }

// TestKMSMultiRegionMountFailsOver: a volume whose key is a multi-Region
// key on the first region's server, with the second region's server as
// its replica. With a cold key cache (a fresh mount), the primary server
// is killed: existing files read and new files are written through the
// replica, and the mount logs the switch once. The primary comes back on
// the same address: the mount returns to it (logged, and seen in its
// audit log), and a remount reads everything, the files made during the
// outage included, through the primary alone.
func TestKMSMultiRegionMountFailsOver(t *testing.T) {
	kmsAWS(t)
	mountRequireFuse(t)
	bdir, adir := t.TempDir(), t.TempDir()
	b := mrkServer(t, bdir, kmsRegion2, "127.0.0.1:0", "")
	addrA := mrkFreeAddr(t)
	peers := mrkPeers(t, kmsRegion2, b.url)
	a := mrkServer(t, adir, kmsRegion, addrA, peers)

	var created mrkDescribe
	a.awsJSON(kmsAliceKey, &created, "create-key", "--multi-region")
	id := created.KeyMetadata.KeyId
	if _, err := a.aws(kmsAliceKey, "replicate-key", "--key-id", id, "--replica-region", kmsRegion2); err != nil {
		t.Fatal(err)
	}
	kmsSetAWSEnv(t, kmsAliceKey)

	// init checks the key: a single-Region key cannot fail over.
	single, _ := a.createKey(kmsAliceKey)
	if out, err := a.kmsfs(kmsAliceKey, "init", "--kms", a.url, "--kms-region", kmsRegion, "--key", single,
		"--kms-replica", kmsRegion2+"="+b.url, filepath.Join(t.TempDir(), "vol")); err == nil || !strings.Contains(err.Error(), "not a multi-Region key") {
		t.Fatalf("init with a single-Region key and a replica: %q %v", out, err)
	}

	v := mountNewVolume(t, "--kms", a.url, "--kms-region", kmsRegion, "--key", id, "--kms-replica", kmsRegion2+"="+b.url)
	cfg, err := os.ReadFile(filepath.Join(v.vault, ".kmsfs", "volume.json"))
	if err != nil || !strings.Contains(string(cfg), kmsRegion2+"="+b.url) {
		t.Fatalf("the volume config does not record the replica:\n%s", cfg)
	}
	v.mount()
	want := map[string]string{}
	for i := 0; i < 8; i++ {
		name := filepath.Join("before", "f"+string(rune('a'+i)))
		want[name] = strings.Repeat("before the outage "+name+"\n", 500*(i+1))
	}
	if err := os.Mkdir(v.path("before"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range want {
		if err := os.WriteFile(v.path(name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A fresh mount: nothing in the key cache, nothing in the page cache.
	v.remount()

	// Kill the primary (SIGKILL: no goodbye to anyone).
	a.cmd.Process.Kill()
	a.cmd.Wait()
	for name, content := range want {
		got, err := os.ReadFile(v.path(name))
		if err != nil || string(got) != content {
			t.Fatalf("read %s with the primary KMS down: %v", name, err)
		}
	}
	if err := os.Mkdir(v.path("during"), 0o755); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ {
		name := filepath.Join("during", "f"+string(rune('a'+i)))
		want[name] = strings.Repeat("during the outage "+name+"\n", 300*(i+1))
		if err := os.WriteFile(v.path(name), []byte(want[name]), 0o644); err != nil {
			t.Fatalf("create %s with the primary KMS down: %v", name, err)
		}
	}
	if n := strings.Count(v.log(), "is unreachable"); n != 1 {
		t.Fatalf("the mount logged the switch to the replica %d times, want once:\n%s", n, mountTail(v.log(), 20))
	}
	if out := v.run("stats", v.mnt); !strings.Contains(out, "KMS failover    primary "+kmsRegion+" unreachable since ") || !strings.Contains(out, "replica "+kmsRegion2+" answering") {
		t.Fatalf("kmsfs stats with the primary down:\n%s", out)
	}
	if !strings.Contains(b.auditLog(), `"operation":"GenerateDataKey"`) || !strings.Contains(b.auditLog(), `"operation":"Decrypt"`) {
		t.Fatal("the replica's audit log shows no Decrypt and GenerateDataKey: the mount did not use it")
	}

	// The primary returns on the same address: the mount goes back.
	a = mrkServer(t, adir, kmsRegion, addrA, peers)
	before := strings.Count(a.auditLog(), `"operation":"GenerateDataKey"`)
	n := 0
	mountWaitFor(t, 60*time.Second, "the mount to log the primary's return", func() bool {
		// Each new file asks the KMS for a data key: the calls that let
		// the mount notice the primary is back.
		n++
		name := filepath.Join("during", "g"+strings.Repeat("x", n%40)+string(rune('a'+n%26)))
		want[name] = "after " + name
		if err := os.WriteFile(v.path(name), []byte(want[name]), 0o644); err != nil {
			t.Fatalf("create %s while the primary returns: %v", name, err)
		}
		return strings.Contains(v.log(), "answers again")
	})
	if err := os.WriteFile(v.path("after"), []byte("after the outage"), 0o644); err != nil {
		t.Fatal(err)
	}
	want["after"] = "after the outage"
	if got := strings.Count(a.auditLog(), `"operation":"GenerateDataKey"`); got <= before {
		t.Fatalf("no GenerateDataKey reached the returned primary (%d before, %d after)", before, got)
	}
	if out := v.run("stats", v.mnt); !strings.Contains(out, "KMS failover    primary "+kmsRegion+" answering (replicas "+kmsRegion2+")") {
		t.Fatalf("kmsfs stats after the primary returned:\n%s", out)
	}

	// Every file, those written through the replica too, reads through the
	// primary alone: stop the replica and remount.
	b.stop()
	v.remount()
	for name, content := range want {
		got, err := os.ReadFile(v.path(name))
		if err != nil || string(got) != content {
			t.Fatalf("read %s through the primary after the outage: %v", name, err)
		}
	}
	mountRequireNoPlaintext(t, v.vault, "before the outage", "during the outage")
}
