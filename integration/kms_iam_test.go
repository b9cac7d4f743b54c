package integration

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Principals with IAM identity policies, alongside the harness's own.
const (
	kmsIAMDenyDecKey = "AKIAIAMDENYDEC0001" // alice's account: everything but Decrypt
	kmsIAMEncOnlyKey = "AKIAIAMENCONLY0001" // alice's account: Encrypt only
	kmsIAMXAllowKey  = "AKIAIAMXALLOW00001" // mallory's account: Encrypt and Decrypt on alice's account's keys
	kmsIAMXNoneKey   = "AKIAIAMXNONE000001" // mallory's account: no KMS permission
	kmsIAMSecret     = "iam-secret"
)

// kmsIAMCredentials writes a credentials file with the harness's principals
// and the identity-policy ones, and returns its path.
func kmsIAMCredentials(t *testing.T, extra map[string]any) string {
	t.Helper()
	policy := func(stmts ...string) json.RawMessage {
		return json.RawMessage(`{"Version":"2012-10-17","Statement":[` + strings.Join(stmts, ",") + `]}`)
	}
	entry := func(principal string, identity json.RawMessage) map[string]any {
		e := map[string]any{"SecretAccessKey": kmsIAMSecret, "Principal": principal}
		if identity != nil {
			e["IdentityPolicy"] = identity
		}
		return e
	}
	creds := map[string]any{
		kmsAliceKey:   map[string]string{"SecretAccessKey": kmsSecrets[kmsAliceKey], "Principal": kmsAliceARN},
		kmsMalloryKey: map[string]string{"SecretAccessKey": kmsSecrets[kmsMalloryKey], "Principal": kmsMalloryARN},
		kmsIAMDenyDecKey: entry("arn:aws:iam::"+kmsAccount+":user/denydec", policy(
			`{"Effect":"Allow","Action":"kms:*","Resource":"*"}`,
			`{"Effect":"Deny","Action":"kms:Decrypt","Resource":"*"}`)),
		kmsIAMEncOnlyKey: entry("arn:aws:iam::"+kmsAccount+":user/enconly", policy(
			`{"Effect":"Allow","Action":"kms:Encrypt","Resource":"arn:aws:kms:*:`+kmsAccount+`:key/*"}`)),
		kmsIAMXAllowKey: entry("arn:aws:iam::"+kmsOtherAcct+":user/xallow", policy(
			`{"Effect":"Allow","Action":["kms:Encrypt","kms:Decrypt"],"Resource":"arn:aws:kms:*:`+kmsAccount+`:key/*"}`)),
		kmsIAMXNoneKey: entry("arn:aws:iam::"+kmsOtherAcct+":user/xnone", policy(
			`{"Effect":"Allow","Action":"s3:*","Resource":"*"}`)),
	}
	for k, v := range extra {
		creds[k] = v
	}
	b, err := json.Marshal(creds)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "iam-credentials.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestKMSIdentityPolicies: the account root in the default key policy
// delegates to the caller's identity policy, with awscli against a real
// `kmsfs kms serve`: an identity Deny refuses what the key policy allows,
// an identity policy that allows only Encrypt allows only Encrypt, and
// across accounts both the key policy and the identity policy must allow.
func TestKMSIdentityPolicies(t *testing.T) {
	kmsAWS(t)
	// The last --credentials wins over the harness's own.
	h := kmsStartServer(t, "--credentials", kmsIAMCredentials(t, nil))
	keyID, keyARN := h.createKey(kmsAliceKey)
	if err := os.WriteFile(filepath.Join(h.dir, "plain.txt"), []byte("iam test"), 0o600); err != nil {
		t.Fatal(err)
	}
	as := func(akid string, args ...string) ([]byte, error) { return h.awsWithSecret(akid, kmsIAMSecret, args...) }
	encrypt := func(akid, key string) error {
		out, err := as(akid, "encrypt", "--key-id", key, "--plaintext", "fileb://plain.txt", "--query", "CiphertextBlob", "--output", "text")
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(h.dir, "blob.bin"), kmsB64(t, strings.TrimSpace(string(out))), 0o600)
	}
	decrypt := func(akid, key string) error {
		out, err := as(akid, "decrypt", "--key-id", key, "--ciphertext-blob", "fileb://blob.bin", "--query", "Plaintext", "--output", "text")
		if err == nil && string(kmsB64(t, strings.TrimSpace(string(out)))) != "iam test" {
			t.Fatalf("decrypt as %s: wrong plaintext %q", akid, out)
		}
		return err
	}
	refused := func(err error, why string) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), "AccessDeniedException") || !strings.Contains(err.Error(), why) {
			t.Fatalf("want AccessDeniedException %q, got %v", why, err)
		}
	}

	// Same account, default key policy (the account root may do anything).
	if err := encrypt(kmsIAMDenyDecKey, keyID); err != nil {
		t.Fatalf("denydec encrypt: %v", err)
	}
	refused(decrypt(kmsIAMDenyDecKey, keyID), "explicit deny in an identity-based policy")
	if err := encrypt(kmsIAMEncOnlyKey, keyID); err != nil {
		t.Fatalf("enconly encrypt: %v", err)
	}
	refused(decrypt(kmsIAMEncOnlyKey, keyID), "no identity-based policy allows the kms:Decrypt action")
	_, err := as(kmsIAMEncOnlyKey, "generate-data-key", "--key-id", keyID, "--key-spec", "AES_256")
	refused(err, "no identity-based policy allows")
	// CreateKey names no key: the identity policy alone decides.
	_, err = as(kmsIAMEncOnlyKey, "create-key")
	refused(err, "no identity-based policy allows the kms:CreateKey action")
	// A principal without an identity policy keeps the key policy's word.
	if _, err := h.aws(kmsAliceKey, "decrypt", "--ciphertext-blob", "fileb://blob.bin"); err != nil {
		t.Fatalf("alice decrypt: %v", err)
	}

	// Cross account: the key policy does not name mallory's account yet.
	refused(decrypt(kmsIAMXAllowKey, keyARN), "no resource-based policy or grant allows")
	if err := h.putPolicy(kmsAliceKey, keyID, `{"Version":"2012-10-17","Statement":[
	 {"Effect":"Allow","Principal":{"AWS":"`+kmsRootARN+`"},"Action":"kms:*","Resource":"*"},
	 {"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::`+kmsOtherAcct+`:root"},"Action":["kms:Encrypt","kms:Decrypt"],"Resource":"*"}]}`); err != nil {
		t.Fatal(err)
	}
	if err := decrypt(kmsIAMXAllowKey, keyARN); err != nil {
		t.Fatalf("xallow decrypt, both policies allow: %v", err)
	}
	refused(decrypt(kmsIAMXNoneKey, keyARN), "no identity-based policy allows the kms:Decrypt action")
	if _, err := h.aws(kmsMalloryKey, "decrypt", "--key-id", keyARN, "--ciphertext-blob", "fileb://blob.bin"); err != nil {
		t.Fatalf("mallory (no identity policy) decrypt: %v", err)
	}

	// Every refusal is in the audit log with the principal and its reason.
	log := h.auditLog()
	for _, want := range []string{"user/denydec", "user/enconly", "user/xnone", "explicit deny in an identity-based policy"} {
		if !strings.Contains(log, want) {
			t.Errorf("audit log lacks %q", want)
		}
	}

	// The admin commands over the server: tags, description, rotations.
	remote := []string{"--kms", h.url, "--kms-region", kmsRegion}
	for _, args := range [][]string{
		{"kms", "tag", keyID, "env=prod", "team=storage"},
		{"kms", "untag", keyARN, "team"},
		{"kms", "update-description", keyID, "via server"},
		{"kms", "rotate", keyID},
	} {
		if out, err := h.kmsfs(kmsAliceKey, append(args, remote...)...); err != nil {
			t.Fatalf("%v: %q %v", args, out, err)
		}
	}
	out, err := h.kmsfs(kmsAliceKey, append([]string{"kms", "list-tags", keyID}, remote...)...)
	if err != nil || out != "env\tprod\n" {
		t.Fatalf("list-tags via server: %q %v", out, err)
	}
	out, err = h.kmsfs(kmsAliceKey, append([]string{"kms", "list-rotations", keyID}, remote...)...)
	if err != nil || !strings.Contains(out, "ON_DEMAND") || strings.Count(out, "\n") != 2 {
		t.Fatalf("list-rotations via server: %q %v", out, err)
	}
	out, err = h.kmsfs(kmsAliceKey, append([]string{"kms", "describe-key", keyID}, remote...)...)
	if err != nil || !strings.Contains(out, "via server") {
		t.Fatalf("describe-key via server: %q %v", out, err)
	}
	out, err = h.kmsfs(kmsAliceKey, append([]string{"kms", "create-key", "--tag", "made=cli"}, remote...)...)
	if err != nil {
		t.Fatal(err)
	}
	out, err = h.kmsfs(kmsAliceKey, append([]string{"kms", "list-tags", strings.Fields(out)[0]}, remote...)...)
	if err != nil || out != "made\tcli\n" {
		t.Fatalf("create-key --tag via server: %q %v", out, err)
	}
}

// TestKMSIdentityPolicyRefusedAtLoad: a malformed identity policy stops
// `kmsfs kms serve` with one line naming the file and the principal.
func TestKMSIdentityPolicyRefusedAtLoad(t *testing.T) {
	const principal = "arn:aws:iam::" + kmsAccount + ":user/broken"
	creds := kmsIAMCredentials(t, map[string]any{
		"AKIAIAMBROKEN00001": map[string]any{"SecretAccessKey": "x", "Principal": principal,
			"IdentityPolicy": json.RawMessage(`{"Statement":[{"Effect":"Allow","Action":"kms:Decrypt","Resource":"*",
			  "Condition":{"StringEquals":{"kms:NoSuchKey":"x"}}}]}`)},
	})
	cmd := exec.Command(kmsfsBinary(), "kms", "serve", "--listen", "127.0.0.1:0", "--keystore", filepath.Join(t.TempDir(), "ks"),
		"--credentials", creds, "--region", kmsRegion, "--account", kmsAccount)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err == nil {
		t.Fatal("kmsfs kms serve started with a malformed identity policy")
	}
	msg := strings.TrimSpace(stderr.String())
	for _, want := range []string{creds, principal, "MalformedPolicyDocumentException", "kms:NoSuchKey"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not name %q", msg, want)
		}
	}
	if strings.Contains(msg, "\n") {
		t.Errorf("error is not one line: %q", msg)
	}
}
