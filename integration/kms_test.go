package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/kmsfs/kmsfs/kms"
	"github.com/kmsfs/kmsfs/kms/awskms"
)

// The principals the test server knows. alice and bob share an account;
// mallory is in another.
const (
	kmsRegion      = "us-test-1"
	kmsAccount     = "111122223333"
	kmsOtherAcct   = "444455556666"
	kmsAliceARN    = "arn:aws:iam::" + kmsAccount + ":user/alice"
	kmsBobARN      = "arn:aws:iam::" + kmsAccount + ":user/bob"
	kmsMalloryARN  = "arn:aws:iam::" + kmsOtherAcct + ":user/mallory"
	kmsAliceKey    = "AKIAALICE000000001"
	kmsBobKey      = "AKIABOB00000000001"
	kmsMalloryKey  = "AKIAMALLORY0000001"
	kmsAliceSecret = "alice/secret+key"
	// A session of the role deployer in alice's account.
	kmsSessionARN = "arn:aws:sts::" + kmsAccount + ":assumed-role/deployer/ci-run"
	kmsRoleARN    = "arn:aws:iam::" + kmsAccount + ":role/deployer"
	kmsSessionKey = "ASIASESSION0000001"
	// The account root of alice's account.
	kmsRootARN = "arn:aws:iam::" + kmsAccount + ":root"
	kmsRootKey = "AKIAROOT0000000001"
)

var kmsSecrets = map[string]string{
	kmsAliceKey:   kmsAliceSecret,
	kmsBobKey:     "bob-secret",
	kmsMalloryKey: "mallory-secret",
	kmsSessionKey: "session-secret",
	kmsRootKey:    "root-secret",
}

// kmsHarness is a `kmsfs kms serve` process on a fresh keystore.
type kmsHarness struct {
	t        *testing.T
	dir      string
	keystore string
	audit    string
	url      string
	cmd      *exec.Cmd
	stderr   *bytes.Buffer
}

// kmsAWS returns the Debian awscli (a missing prerequisite otherwise).
func kmsAWS(t *testing.T) string {
	t.Helper()
	mountRequireFile(t, "/usr/bin/aws", "awscli")
	return "/usr/bin/aws"
}

// kmsB64 decodes a base64 field of a KMS response.
func kmsB64(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatalf("base64 %q: %v", s, err)
	}
	return b
}

func kmsStartServer(t *testing.T, extra ...string) *kmsHarness {
	t.Helper()
	return kmsStartServerScheme(t, "http", extra...)
}

// kmsStartServerScheme starts the server; scheme is what it announces
// (https with --tls-cert).
func kmsStartServerScheme(t *testing.T, scheme string, extra ...string) *kmsHarness {
	t.Helper()
	dir := t.TempDir()
	h := &kmsHarness{t: t, dir: dir, keystore: filepath.Join(dir, "keystore"), audit: filepath.Join(dir, "audit.log")}
	creds := map[string]map[string]string{
		kmsAliceKey:   {"SecretAccessKey": kmsSecrets[kmsAliceKey], "Principal": kmsAliceARN},
		kmsBobKey:     {"SecretAccessKey": kmsSecrets[kmsBobKey], "Principal": kmsBobARN},
		kmsMalloryKey: {"SecretAccessKey": kmsSecrets[kmsMalloryKey], "Principal": kmsMalloryARN},
		kmsSessionKey: {"SecretAccessKey": kmsSecrets[kmsSessionKey], "Principal": kmsSessionARN},
		kmsRootKey:    {"SecretAccessKey": kmsSecrets[kmsRootKey], "Principal": kmsRootARN},
	}
	b, _ := json.Marshal(creds)
	credFile := filepath.Join(dir, "credentials.json")
	if err := os.WriteFile(credFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"kms", "serve", "--listen", "127.0.0.1:0", "--keystore", h.keystore,
		"--credentials", credFile, "--audit-log", h.audit, "--region", kmsRegion, "--account", kmsAccount}, extra...)
	h.cmd = exec.Command(kmsfsBinary(), args...)
	h.stderr = &bytes.Buffer{}
	h.cmd.Stderr = h.stderr
	out, err := h.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.stop)
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
	}()
	select {
	case line := <-lines:
		m := regexp.MustCompile(`listening on (` + scheme + `://\S+)`).FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("unexpected first line from kmsfs kms serve: %q", line)
		}
		h.url = m[1]
	case <-time.After(20 * time.Second):
		t.Fatalf("kmsfs kms serve did not start; stderr:\n%s", h.stderr)
	}
	return h
}

// stop ends the server with SIGTERM (a clean shutdown that closes the audit log).
func (h *kmsHarness) stop() {
	if h.cmd == nil || h.cmd.Process == nil || h.cmd.ProcessState != nil {
		return
	}
	h.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- h.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			h.t.Errorf("kmsfs kms serve exited with %v; stderr:\n%s", err, h.stderr)
		}
	case <-time.After(15 * time.Second):
		h.cmd.Process.Kill()
		<-done
		h.t.Errorf("kmsfs kms serve did not stop on SIGTERM")
	}
}

func kmsAWSEnv(akid, secret string) []string {
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + os.Getenv("HOME"),
		"AWS_ACCESS_KEY_ID=" + akid,
		"AWS_SECRET_ACCESS_KEY=" + secret,
		"AWS_DEFAULT_REGION=" + kmsRegion,
		"AWS_REGION=" + kmsRegion,
		"AWS_CONFIG_FILE=/dev/null",
		"AWS_SHARED_CREDENTIALS_FILE=/dev/null",
		"AWS_PAGER=",
		"AWS_EC2_METADATA_DISABLED=true",
	}
	if ca := os.Getenv("AWS_CA_BUNDLE"); ca != "" {
		env = append(env, "AWS_CA_BUNDLE="+ca)
	}
	return env
}

// kmsSetAWSEnv gives this test process (and the kmsfs processes it starts,
// which take their credentials from the standard AWS chain) akid's
// credentials and the test region, for the test's duration.
func kmsSetAWSEnv(t *testing.T, akid string) {
	for _, kv := range kmsAWSEnv(akid, kmsSecrets[akid]) {
		k, val, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "AWS_") {
			t.Setenv(k, val)
		}
	}
}

// aws runs `aws kms ARGS` as akid and returns stdout, or an error holding stderr.
func (h *kmsHarness) aws(akid string, args ...string) ([]byte, error) {
	return h.awsWithSecret(akid, kmsSecrets[akid], args...)
}

func (h *kmsHarness) awsWithSecret(akid, secret string, args ...string) ([]byte, error) {
	h.t.Helper()
	cmd := exec.Command(kmsAWS(h.t), append([]string{"kms", "--endpoint-url", h.url, "--output", "json"}, args...)...)
	cmd.Env = append(kmsAWSEnv(akid, secret), "AWS_MAX_ATTEMPTS=1")
	cmd.Dir = h.dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("aws %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// awsJSON runs aws and decodes its JSON output.
func (h *kmsHarness) awsJSON(akid string, v any, args ...string) {
	h.t.Helper()
	out, err := h.aws(akid, args...)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := json.Unmarshal(out, v); err != nil {
		h.t.Fatalf("aws %s: bad JSON %q: %v", strings.Join(args, " "), out, err)
	}
}

// awsFails runs aws and requires it to fail with the AWS error code.
func (h *kmsHarness) awsFails(akid, code string, args ...string) {
	h.t.Helper()
	_, err := h.aws(akid, args...)
	if err == nil || !strings.Contains(err.Error(), "("+code+")") {
		h.t.Fatalf("want %s, got %v", code, err)
	}
}

// client is the Go SDK client (kms/awskms) signed as akid.
func (h *kmsHarness) client(akid string, opts awskms.Options) *awskms.Client {
	h.t.Helper()
	opts.Endpoint = h.url
	opts.Region = kmsRegion
	opts.Credentials = credentials.NewStaticCredentialsProvider(akid, kmsSecrets[akid], "")
	c, err := awskms.New(context.Background(), opts)
	if err != nil {
		h.t.Fatal(err)
	}
	return c
}

// kmsfs runs a kmsfs command with the AWS credential chain set to akid.
func (h *kmsHarness) kmsfs(akid string, args ...string) (string, error) {
	cmd := exec.Command(kmsfsBinary(), args...)
	cmd.Env = append(kmsAWSEnv(akid, kmsSecrets[akid]), "KMSFS_KEYSTORE="+filepath.Join(h.dir, "nonexistent"))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String(), fmt.Errorf("kmsfs %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// rawRequest sends one SigV4-signed request built by hand, so tests can
// forge, tamper with and back-date requests; it returns the HTTP status and
// the AWS error type ("" on success).
func (h *kmsHarness) rawRequest(akid, secret, op string, body []byte, signedAt time.Time, tamper func(*http.Request)) (int, string) {
	h.t.Helper()
	status, b := h.rawResponse(akid, secret, op, body, signedAt, tamper)
	var e struct {
		Type string `json:"__type"`
	}
	if status != http.StatusOK {
		if err := json.Unmarshal(b, &e); err != nil {
			h.t.Fatalf("error response %d is not KMS JSON (%v): %s", status, err, b)
		}
	}
	return status, e.Type
}

// rawResponse is rawRequest returning the response body.
func (h *kmsHarness) rawResponse(akid, secret, op string, body []byte, signedAt time.Time, tamper func(*http.Request)) (int, []byte) {
	h.t.Helper()
	req, err := http.NewRequest(http.MethodPost, h.url+"/", bytes.NewReader(body))
	if err != nil {
		h.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "TrentService."+op)
	sum := sha256.Sum256(body)
	err = v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: akid, SecretAccessKey: secret},
		req, hex.EncodeToString(sum[:]), "kms", kmsRegion, signedAt)
	if err != nil {
		h.t.Fatal(err)
	}
	if tamper != nil {
		tamper(req)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatal(err)
	}
	return resp.StatusCode, b
}

// call sends op with a JSON body as akid, now.
func (h *kmsHarness) call(akid, op string, in any) (int, []byte) {
	h.t.Helper()
	body, err := json.Marshal(in)
	if err != nil {
		h.t.Fatal(err)
	}
	return h.rawResponse(akid, kmsSecrets[akid], op, body, time.Now(), nil)
}

func (h *kmsHarness) createKey(akid string) (id, arn string) {
	h.t.Helper()
	var out struct{ KeyMetadata struct{ KeyId, Arn string } }
	h.awsJSON(akid, &out, "create-key", "--description", h.t.Name())
	return out.KeyMetadata.KeyId, out.KeyMetadata.Arn
}

func (h *kmsHarness) auditLog() string {
	h.t.Helper()
	b, err := os.ReadFile(h.audit)
	if err != nil {
		h.t.Fatal(err)
	}
	return string(b)
}

func TestKMSServeCLIRoundTripAndEncryptLimit(t *testing.T) {
	kmsAWS(t)
	h := kmsStartServer(t)
	id, arn := h.createKey(kmsAliceKey)
	if !strings.HasPrefix(arn, "arn:aws:kms:"+kmsRegion+":"+kmsAccount+":key/") {
		t.Fatalf("key ARN %q", arn)
	}
	var dk struct{ CiphertextBlob, Plaintext, KeyId string }
	h.awsJSON(kmsAliceKey, &dk, "generate-data-key", "--key-id", id, "--key-spec", "AES_256", "--encryption-context", "volume=v1,file=f1")
	blob := kmsB64(t, dk.CiphertextBlob)
	if err := os.WriteFile(filepath.Join(h.dir, "dk.bin"), blob, 0o600); err != nil {
		t.Fatal(err)
	}
	var dec struct{ Plaintext, KeyId string }
	h.awsJSON(kmsAliceKey, &dec, "decrypt", "--ciphertext-blob", "fileb://dk.bin", "--encryption-context", "volume=v1,file=f1")
	if dec.Plaintext != dk.Plaintext || dec.KeyId != arn {
		t.Fatalf("decrypt gave another key (%v) or ARN %s", dec.Plaintext == dk.Plaintext, dec.KeyId)
	}
	// The encryption context must match exactly.
	h.awsFails(kmsAliceKey, "InvalidCiphertextException", "decrypt", "--ciphertext-blob", "fileb://dk.bin", "--encryption-context", "volume=v1")

	// Encrypt takes at most 4096 bytes of plaintext.
	if err := os.WriteFile(filepath.Join(h.dir, "4096"), bytes.Repeat([]byte{'a'}, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(h.dir, "4097"), bytes.Repeat([]byte{'a'}, 4097), 0o600); err != nil {
		t.Fatal(err)
	}
	var enc struct{ CiphertextBlob string }
	h.awsJSON(kmsAliceKey, &enc, "encrypt", "--key-id", id, "--plaintext", "fileb://4096")
	h.awsFails(kmsAliceKey, "ValidationException", "encrypt", "--key-id", id, "--plaintext", "fileb://4097")

	// Aliases work as key IDs; the Go SDK client reads what the CLI wrote.
	if _, err := h.aws(kmsAliceKey, "create-alias", "--alias-name", "alias/cli", "--target-key-id", id); err != nil {
		t.Fatal(err)
	}
	ct := kmsB64(t, enc.CiphertextBlob)
	pt, _, err := h.client(kmsAliceKey, awskms.Options{}).Decrypt(context.Background(), "alias/cli", ct, nil)
	if err != nil || !bytes.Equal(pt, bytes.Repeat([]byte{'a'}, 4096)) {
		t.Fatalf("Go SDK decrypt of CLI ciphertext: %v", err)
	}
	if strings.Contains(h.auditLog(), dk.Plaintext) {
		t.Fatal("the audit log contains a plaintext data key")
	}
}

func TestKMSServeDisableEnableAndDeletionWindow(t *testing.T) {
	kmsAWS(t)
	h := kmsStartServer(t)
	ctx := context.Background()
	c := h.client(kmsAliceKey, awskms.Options{})
	id, _ := h.createKey(kmsAliceKey)
	ct, _, err := c.Encrypt(ctx, id, []byte("secret"), kms.EncryptionContext{"k": "v"})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(h.dir, "ct.bin"), ct, 0o600); err != nil {
		t.Fatal(err)
	}
	decrypt := []string{"decrypt", "--ciphertext-blob", "fileb://ct.bin", "--encryption-context", "k=v"}

	// A disabled key refuses use at once, and works again when enabled.
	if _, err := h.aws(kmsAliceKey, "disable-key", "--key-id", id); err != nil {
		t.Fatal(err)
	}
	h.awsFails(kmsAliceKey, "DisabledException", decrypt...)
	if _, _, err := c.Decrypt(ctx, "", ct, kms.EncryptionContext{"k": "v"}); !errors.Is(err, kms.ErrDisabled) {
		t.Fatalf("Go client on a disabled key: %v", err)
	}
	if _, err := h.aws(kmsAliceKey, "enable-key", "--key-id", id); err != nil {
		t.Fatal(err)
	}
	if _, err := h.aws(kmsAliceKey, decrypt...); err != nil {
		t.Fatalf("after enable: %v", err)
	}

	// The deletion window is 7..30 days, default 30.
	h.awsFails(kmsAliceKey, "ValidationException", "schedule-key-deletion", "--key-id", id, "--pending-window-in-days", "6")
	h.awsFails(kmsAliceKey, "ValidationException", "schedule-key-deletion", "--key-id", id, "--pending-window-in-days", "31")
	var sched struct {
		PendingWindowInDays int
		KeyState            string
	}
	h.awsJSON(kmsAliceKey, &sched, "schedule-key-deletion", "--key-id", id)
	if sched.PendingWindowInDays != 30 || sched.KeyState != "PendingDeletion" {
		t.Fatalf("default window: %+v", sched)
	}
	h.awsFails(kmsAliceKey, "KMSInvalidStateException", decrypt...)
	if _, err := h.aws(kmsAliceKey, "cancel-key-deletion", "--key-id", id); err != nil {
		t.Fatal(err)
	}
	var desc struct{ KeyMetadata struct{ KeyState string } }
	h.awsJSON(kmsAliceKey, &desc, "describe-key", "--key-id", id)
	if desc.KeyMetadata.KeyState != "Disabled" {
		t.Fatalf("after cancel-key-deletion: %s, want Disabled", desc.KeyMetadata.KeyState)
	}
	h.awsJSON(kmsAliceKey, &sched, "schedule-key-deletion", "--key-id", id, "--pending-window-in-days", "7")
	if sched.PendingWindowInDays != 7 {
		t.Fatalf("7-day window: %+v", sched)
	}
}

func TestKMSServeRotationKeepsOldCiphertext(t *testing.T) {
	kmsAWS(t)
	h := kmsStartServer(t)
	ctx := context.Background()
	c := h.client(kmsAliceKey, awskms.Options{})
	id, _ := h.createKey(kmsAliceKey)
	ec := kms.EncryptionContext{"volume": "v"}
	old, err := c.GenerateDataKey(ctx, id, 32, ec)
	if err != nil {
		t.Fatal(err)
	}
	// Rotate on demand through the admin command and the server.
	out, err := h.kmsfs(kmsAliceKey, "kms", "rotate", "--kms", h.url, "--kms-region", kmsRegion, id)
	if err != nil || !strings.Contains(out, "rotated") {
		t.Fatalf("kmsfs kms rotate: %q %v", out, err)
	}
	fresh, err := c.GenerateDataKey(ctx, id, 32, ec)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(old.CiphertextBlob[:21], fresh.CiphertextBlob[:21]) {
		t.Fatal("after rotation new ciphertext still names the old material version")
	}
	for _, dk := range []kms.DataKey{old, fresh} {
		if err := os.WriteFile(filepath.Join(h.dir, "dk.bin"), dk.CiphertextBlob, 0o600); err != nil {
			t.Fatal(err)
		}
		var dec struct{ Plaintext string }
		h.awsJSON(kmsAliceKey, &dec, "decrypt", "--ciphertext-blob", "fileb://dk.bin", "--encryption-context", "volume=v")
		if dec.Plaintext != base64.StdEncoding.EncodeToString(dk.Plaintext) {
			t.Fatal("decrypt after rotation returned another key")
		}
	}
	// Automatic rotation: the period must be 90..2560 days (awscli 2.9
	// predates RotationPeriodInDays, so the Go SDK sets it).
	for _, bad := range []int{89, 2561} {
		if err := c.EnableKeyRotation(ctx, id, bad); !errors.Is(err, kms.ErrValidation) {
			t.Fatalf("rotation period %d: %v", bad, err)
		}
	}
	if err := c.EnableKeyRotation(ctx, id, 90); err != nil {
		t.Fatal(err)
	}
	var st struct{ KeyRotationEnabled bool }
	h.awsJSON(kmsAliceKey, &st, "get-key-rotation-status", "--key-id", id)
	on, period, next, err := c.GetKeyRotationStatus(ctx, id)
	if !st.KeyRotationEnabled || !on || period != 90 || time.Until(next) < 89*24*time.Hour || err != nil {
		t.Fatalf("rotation status: cli %+v, sdk %v %d %v %v", st, on, period, next, err)
	}
}

func TestKMSServeForgedSignatureRefusedAndAudited(t *testing.T) {
	kmsAWS(t)
	h := kmsStartServer(t)
	body := []byte(`{}`)
	// A correctly signed request passes.
	if status, typ := h.rawRequest(kmsAliceKey, kmsAliceSecret, "ListKeys", body, time.Now(), nil); status != 200 {
		t.Fatalf("signed request: %d %s", status, typ)
	}
	// Wrong secret (the CLI's and a hand-made one), a body changed after
	// signing, an unknown key, and a signature 6 minutes old are refused.
	_, err := h.awsWithSecret(kmsAliceKey, "not-the-secret", "list-keys")
	if err == nil || !strings.Contains(err.Error(), "InvalidSignatureException") {
		t.Fatalf("CLI with a wrong secret: %v", err)
	}
	cases := []struct {
		name     string
		akid     string
		secret   string
		at       time.Time
		tamper   func(*http.Request)
		wantType string
	}{
		{"wrong secret", kmsAliceKey, "guess", time.Now(), nil, "InvalidSignatureException"},
		{"body changed", kmsAliceKey, kmsAliceSecret, time.Now(), func(r *http.Request) {
			r.Body = io.NopCloser(strings.NewReader(`{"Limit":1}`))
			r.ContentLength = int64(len(`{"Limit":1}`))
		}, "InvalidSignatureException"},
		{"target changed", kmsAliceKey, kmsAliceSecret, time.Now(), func(r *http.Request) {
			r.Header.Set("X-Amz-Target", "TrentService.ListAliases")
		}, "InvalidSignatureException"},
		{"unknown access key", "AKIANOBODY00000001", "x", time.Now(), nil, "UnrecognizedClientException"},
		{"6 minutes old", kmsAliceKey, kmsAliceSecret, time.Now().Add(-6 * time.Minute), nil, "InvalidSignatureException"},
		{"6 minutes ahead", kmsAliceKey, kmsAliceSecret, time.Now().Add(6 * time.Minute), nil, "InvalidSignatureException"},
		{"no signature", kmsAliceKey, kmsAliceSecret, time.Now(), func(r *http.Request) { r.Header.Del("Authorization") }, "MissingAuthenticationTokenException"},
	}
	for _, tc := range cases {
		status, typ := h.rawRequest(tc.akid, tc.secret, "ListKeys", body, tc.at, tc.tamper)
		if status != 400 || typ != tc.wantType {
			t.Errorf("%s: HTTP %d %s, want 400 %s", tc.name, status, typ, tc.wantType)
		}
	}
	log := h.auditLog()
	if n := strings.Count(log, `"principal":"`+kmsAliceARN+`","accessKeyId":"`+kmsAliceKey+`","sourceAddress":"127.0.0.1:`); n != 7 {
		t.Errorf("want every request of alice's key audited, found %d:\n%s", n, log)
	}
	if n := strings.Count(log, `"result":"InvalidSignatureException"`); n != 6 {
		t.Errorf("want 6 audited InvalidSignatureException, found %d", n)
	}
	if !strings.Contains(log, `"accessKeyId":"AKIANOBODY00000001"`) {
		t.Error("refused unknown access key not audited")
	}
	if out, err := h.kmsfs(kmsAliceKey, "kms", "audit", "verify", h.audit); err != nil || !strings.Contains(out, "intact") {
		t.Fatalf("audit verify: %q %v", out, err)
	}
}

func TestKMSServePolicyDenyBeatsAllow(t *testing.T) {
	kmsAWS(t)
	h := kmsStartServer(t)
	id, arn := h.createKey(kmsAliceKey)
	var enc struct{ CiphertextBlob string }
	h.awsJSON(kmsBobKey, &enc, "encrypt", "--key-id", id, "--plaintext", "aGVsbG8=", "--encryption-context", "team=red")
	ct := kmsB64(t, enc.CiphertextBlob)
	if err := os.WriteFile(filepath.Join(h.dir, "ct.bin"), ct, 0o600); err != nil {
		t.Fatal(err)
	}
	decrypt := []string{"decrypt", "--ciphertext-blob", "fileb://ct.bin", "--encryption-context", "team=red"}
	if _, err := h.aws(kmsBobKey, decrypt...); err != nil {
		t.Fatalf("bob under the default policy: %v", err)
	}
	// The other account is refused by default.
	h.awsFails(kmsMalloryKey, "AccessDeniedException", decrypt...)

	// Allow the whole account everything, and deny bob Decrypt when the
	// context says team=red: the Deny wins for bob only.
	policy := `{"Version":"2012-10-17","Statement":[
	 {"Sid":"AccountAdmin","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::` + kmsAccount + `:root"},"Action":"kms:*","Resource":"*"},
	 {"Sid":"BobAlsoAllowed","Effect":"Allow","Principal":{"AWS":"` + kmsBobARN + `"},"Action":"kms:Decrypt","Resource":"` + arn + `"},
	 {"Sid":"NoRedForBob","Effect":"Deny","Principal":{"AWS":"` + kmsBobARN + `"},"Action":"kms:Decrypt","Resource":"*",
	  "Condition":{"ForAnyValue:StringLike":{"kms:EncryptionContextKeys":"te*"},"StringEquals":{"kms:EncryptionContext:team":"red"}}}]}`
	if err := os.WriteFile(filepath.Join(h.dir, "policy.json"), []byte(policy), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := h.aws(kmsAliceKey, "put-key-policy", "--key-id", id, "--policy-name", "default", "--policy", "file://policy.json"); err != nil {
		t.Fatal(err)
	}
	h.awsFails(kmsBobKey, "AccessDeniedException", decrypt...)
	if _, err := h.aws(kmsAliceKey, decrypt...); err != nil {
		t.Fatalf("alice: %v", err)
	}
	// Bob may still decrypt other contexts.
	var enc2 struct{ CiphertextBlob string }
	h.awsJSON(kmsBobKey, &enc2, "encrypt", "--key-id", id, "--plaintext", "aGVsbG8=", "--encryption-context", "team=blue")
	ct2 := kmsB64(t, enc2.CiphertextBlob)
	if err := os.WriteFile(filepath.Join(h.dir, "ct2.bin"), ct2, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := h.aws(kmsBobKey, "decrypt", "--ciphertext-blob", "fileb://ct2.bin", "--encryption-context", "team=blue"); err != nil {
		t.Fatalf("bob on team=blue: %v", err)
	}
	if !strings.Contains(h.auditLog(), `"operation":"Decrypt","principal":"`+kmsBobARN+`","accessKeyId":"`+kmsBobKey+`","keyArn":"`+arn+`","encryptionContext":{"team":"red"}`) {
		t.Error("the denied Decrypt is not audited with its key and context")
	}
}

func TestKMSServeGrantThenRevoke(t *testing.T) {
	kmsAWS(t)
	h := kmsStartServer(t)
	id, arn := h.createKey(kmsAliceKey)
	if err := os.WriteFile(filepath.Join(h.dir, "pt"), []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	var enc struct{ CiphertextBlob string }
	h.awsJSON(kmsAliceKey, &enc, "encrypt", "--key-id", id, "--plaintext", "fileb://pt", "--encryption-context", "app=x")
	ct := kmsB64(t, enc.CiphertextBlob)
	if err := os.WriteFile(filepath.Join(h.dir, "ct.bin"), ct, 0o600); err != nil {
		t.Fatal(err)
	}
	decrypt := []string{"decrypt", "--ciphertext-blob", "fileb://ct.bin", "--encryption-context", "app=x"}
	h.awsFails(kmsMalloryKey, "AccessDeniedException", decrypt...)

	var grant struct{ GrantId, GrantToken string }
	h.awsJSON(kmsAliceKey, &grant, "create-grant", "--key-id", arn, "--grantee-principal", kmsMalloryARN,
		"--operations", "Decrypt", "--constraints", "EncryptionContextSubset={app=x}")
	if _, err := h.aws(kmsMalloryKey, decrypt...); err != nil {
		t.Fatalf("mallory with a grant: %v", err)
	}
	// The grant gives Decrypt only.
	h.awsFails(kmsMalloryKey, "AccessDeniedException", "encrypt", "--key-id", arn, "--plaintext", "fileb://pt", "--encryption-context", "app=x")
	var list struct {
		Grants []struct{ GrantId, GranteePrincipal string }
	}
	h.awsJSON(kmsAliceKey, &list, "list-grants", "--key-id", id)
	if len(list.Grants) != 1 || list.Grants[0].GrantId != grant.GrantId || list.Grants[0].GranteePrincipal != kmsMalloryARN {
		t.Fatalf("list-grants: %+v", list)
	}
	// Mallory cannot revoke; alice can, and the access ends.
	h.awsFails(kmsMalloryKey, "AccessDeniedException", "revoke-grant", "--key-id", arn, "--grant-id", grant.GrantId)
	if _, err := h.aws(kmsAliceKey, "revoke-grant", "--key-id", id, "--grant-id", grant.GrantId); err != nil {
		t.Fatal(err)
	}
	h.awsFails(kmsMalloryKey, "AccessDeniedException", decrypt...)
}

func TestKMSServeThrottlingThenSuccessAfterBackoff(t *testing.T) {
	kmsAWS(t)
	h := kmsStartServer(t, "--rate", "25")
	id, _ := h.createKey(kmsAliceKey)
	body, _ := json.Marshal(map[string]any{"KeyId": id, "KeySpec": "AES_256"})
	throttled := 0
	for range 60 {
		status, typ := h.rawRequest(kmsAliceKey, kmsAliceSecret, "GenerateDataKey", body, time.Now(), nil)
		switch {
		case status == 200:
		case status == 400 && typ == "ThrottlingException":
			throttled++
		default:
			t.Fatalf("HTTP %d %s", status, typ)
		}
	}
	if throttled == 0 {
		t.Fatal("60 back-to-back GenerateDataKey at --rate 25 were never throttled")
	}
	// Another account has its own quota.
	var out struct{ KeyId string }
	h.awsJSON(kmsMalloryKey, &out, "generate-random", "--number-of-bytes", "16")

	// The Go client backs off and every call of a 4x25 burst succeeds.
	c := h.client(kmsAliceKey, awskms.Options{MaxAttempts: 40})
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	start := time.Now()
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 25 {
				dk, err := c.GenerateDataKey(context.Background(), id, 32, nil)
				if err != nil {
					errs <- err
					return
				}
				dk.Zero()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Go client under the quota: %v", err)
	}
	if time.Since(start) < 2*time.Second {
		t.Errorf("100 calls at 25/s took only %v: the quota was not enforced", time.Since(start))
	}
	if !strings.Contains(h.auditLog(), `"result":"ThrottlingException"`) {
		t.Error("throttled requests not audited")
	}
}

func TestKMSAuditVerifyDetectsEditedAndRemovedLines(t *testing.T) {
	kmsAWS(t)
	h := kmsStartServer(t)
	id, arn := h.createKey(kmsAliceKey)
	for range 3 {
		h.aws(kmsBobKey, "generate-data-key", "--key-id", id, "--key-spec", "AES_256")
	}
	h.awsFails(kmsMalloryKey, "AccessDeniedException", "describe-key", "--key-id", arn) // another account: by ARN
	h.stop()
	lines := strings.SplitAfter(h.auditLog(), "\n")
	lines = lines[:len(lines)-1] // after the final newline
	if len(lines) != 5 {
		t.Fatalf("want 5 audit lines, got %d", len(lines))
	}
	out, err := h.kmsfs(kmsAliceKey, "kms", "audit", "verify", h.audit)
	if err != nil || !strings.Contains(out, "5 entries") {
		t.Fatalf("intact log: %q %v", out, err)
	}
	head := regexp.MustCompile(`head ([0-9a-f]{64})`).FindStringSubmatch(out)[1]

	write := func(name string, ls []string) string {
		p := filepath.Join(h.dir, name)
		if err := os.WriteFile(p, []byte(strings.Join(ls, "")), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	edited := append([]string(nil), lines...)
	edited[4] = strings.Replace(edited[4], kmsMalloryARN, kmsBobARN, 1) // hide who was refused
	if edited[4] == lines[4] {
		t.Fatal("test bug: nothing edited")
	}
	_, err = h.kmsfs(kmsAliceKey, "kms", "audit", "verify", write("edited.log", edited))
	if err == nil || !strings.Contains(err.Error(), "line 5: hash mismatch") {
		t.Fatalf("edited line: %v", err)
	}
	removed := append(append([]string(nil), lines[:2]...), lines[3:]...)
	_, err = h.kmsfs(kmsAliceKey, "kms", "audit", "verify", write("removed.log", removed))
	if err == nil || !strings.Contains(err.Error(), "line 3: chain broken") {
		t.Fatalf("removed line: %v", err)
	}
	swapped := []string{lines[0], lines[2], lines[1], lines[3], lines[4]}
	if _, err = h.kmsfs(kmsAliceKey, "kms", "audit", "verify", write("swapped.log", swapped)); err == nil {
		t.Fatal("reordered lines pass verification")
	}
	// Truncation keeps a valid chain; the recorded head catches it.
	_, err = h.kmsfs(kmsAliceKey, "kms", "audit", "verify", "--head", head, write("truncated.log", lines[:4]))
	if err == nil || !strings.Contains(err.Error(), "not the recorded") {
		t.Fatalf("truncated log with --head: %v", err)
	}
	// Every error is one line.
	if strings.Count(strings.TrimSpace(err.Error()), "\n") != 0 {
		t.Fatalf("multi-line error: %q", err)
	}
}

func TestKMSAdminCommandsOnKeystoreAndServer(t *testing.T) {
	kmsAWS(t)
	h := kmsStartServer(t)
	ks := []string{"--keystore", h.keystore, "--region", kmsRegion, "--account", kmsAccount}
	// Directly on the keystore the server is serving (shared state).
	out, err := h.kmsfs(kmsAliceKey, append([]string{"kms", "create-key", "--description", "direct", "--alias", "alias/direct"}, ks...)...)
	if err != nil {
		t.Fatal(err)
	}
	keyID := strings.Fields(out)[0]
	out, err = h.kmsfs(kmsAliceKey, append([]string{"kms", "list-keys"}, ks...)...)
	if err != nil || !strings.Contains(out, keyID) || !strings.Contains(out, "alias/direct") {
		t.Fatalf("list-keys: %q %v", out, err)
	}
	// Through the server: the key made on the keystore is there.
	remote := []string{"--kms", h.url, "--kms-region", kmsRegion}
	out, err = h.kmsfs(kmsAliceKey, append([]string{"kms", "describe-key", "alias/direct"}, remote...)...)
	if err != nil || !strings.Contains(out, keyID) || !strings.Contains(out, "Enabled") {
		t.Fatalf("describe-key via server: %q %v", out, err)
	}
	for _, args := range [][]string{
		{"kms", "disable", "alias/direct"},
		{"kms", "enable", keyID},
		{"kms", "enable-rotation", "--period-days", "180", keyID},
		{"kms", "alias", "create", "alias/second", keyID},
		{"kms", "schedule-deletion", "--days", "7", keyID},
		{"kms", "cancel-deletion", keyID},
	} {
		if out, err := h.kmsfs(kmsAliceKey, append(args, remote...)...); err != nil {
			t.Fatalf("%v: %q %v", args, out, err)
		}
	}
	out, err = h.kmsfs(kmsAliceKey, append([]string{"kms", "alias", "list", keyID}, ks...)...)
	if err != nil || !strings.Contains(out, "alias/second") {
		t.Fatalf("alias list on the keystore: %q %v", out, err)
	}
	out, err = h.kmsfs(kmsAliceKey, append([]string{"kms", "describe-key", keyID}, ks...)...)
	if err != nil || !strings.Contains(out, "Disabled") || !strings.Contains(out, "every 180 days") {
		t.Fatalf("describe-key on the keystore after remote changes: %q %v", out, err)
	}
	// Errors are one clear line with the AWS error code.
	for _, args := range [][]string{
		append([]string{"kms", "schedule-deletion", "--days", "6", keyID}, remote...),
		append([]string{"kms", "describe-key", "alias/nope"}, remote...),
		append([]string{"kms", "enable", keyID}, "--kms", "http://127.0.0.1:1", "--kms-region", kmsRegion),
	} {
		_, err := h.kmsfs(kmsMalloryKey, args...)
		if err == nil {
			t.Fatalf("%v succeeded", args)
		}
		msg := err.Error()
		if strings.Count(msg, "\n") != 0 || !regexp.MustCompile(`(ValidationException|NotFoundException|AccessDeniedException|KMSUnavailable)`).MatchString(msg) {
			t.Errorf("%v: error %q is not one line with a code", args, msg)
		}
	}
}

func TestKMSServeGrantRules(t *testing.T) {
	kmsAWS(t)
	h := kmsStartServer(t)
	id, arn := h.createKey(kmsAliceKey)
	if _, err := h.aws(kmsAliceKey, "create-alias", "--alias-name", "alias/g", "--target-key-id", id); err != nil {
		t.Fatal(err)
	}
	// CreateGrant takes a key ID or key ARN, not an alias.
	h.awsFails(kmsAliceKey, "ValidationException", "create-grant", "--key-id", "alias/g", "--grantee-principal", kmsBobARN, "--operations", "Encrypt")
	var grant struct{ GrantId, GrantToken string }
	h.awsJSON(kmsAliceKey, &grant, "create-grant", "--key-id", id, "--grantee-principal", kmsMalloryARN, "--operations", "Encrypt")
	var list struct {
		Grants []struct{ GrantId, IssuingAccount string }
	}
	h.awsJSON(kmsAliceKey, &list, "list-grants", "--key-id", arn)
	if len(list.Grants) != 1 || list.Grants[0].IssuingAccount != kmsRootARN {
		t.Fatalf("list-grants: %+v", list)
	}
	// A grant token must name a grant.
	h.awsFails(kmsMalloryKey, "InvalidGrantTokenException", "encrypt", "--key-id", arn, "--plaintext", "aGVsbG8=", "--grant-tokens", "bogus-token")
	if _, err := h.aws(kmsMalloryKey, "encrypt", "--key-id", arn, "--plaintext", "aGVsbG8=", "--grant-tokens", grant.GrantToken); err != nil {
		t.Fatalf("encrypt with the grant's token: %v", err)
	}
	// The issuing account's root may retire it; then the grant is gone.
	if _, err := h.aws(kmsRootKey, "retire-grant", "--key-id", arn, "--grant-id", grant.GrantId); err != nil {
		t.Fatalf("retire-grant by the account root: %v", err)
	}
	h.awsFails(kmsMalloryKey, "AccessDeniedException", "encrypt", "--key-id", arn, "--plaintext", "aGVsbG8=")
}

func TestKMSServeKeyStateRulesAndLimits(t *testing.T) {
	kmsAWS(t)
	h := kmsStartServer(t)
	ctx := context.Background()
	c := h.client(kmsAliceKey, awskms.Options{})
	id, _ := h.createKey(kmsAliceKey)
	dryRun := func(keyID string) (int, string) {
		status, b := h.call(kmsAliceKey, "GenerateDataKey", map[string]any{"KeyId": keyID, "KeySpec": "AES_256", "DryRun": true})
		var e struct {
			Type string `json:"__type"`
		}
		json.Unmarshal(b, &e)
		return status, e.Type
	}
	if status, typ := dryRun(id); status != 400 || typ != "DryRunOperationException" {
		t.Fatalf("DryRun on an enabled key: %d %s", status, typ)
	}
	// DryRun fails where the real call would, with AWS's 409 for key states.
	if err := c.DisableKey(ctx, id); err != nil {
		t.Fatal(err)
	}
	if status, typ := dryRun(id); status != 409 || typ != "DisabledException" {
		t.Fatalf("DryRun on a disabled key: %d %s", status, typ)
	}
	ext, err := c.CreateKey(ctx, kms.CreateKeyInput{Origin: "EXTERNAL"})
	if err != nil {
		t.Fatal(err)
	}
	if status, typ := dryRun(ext.KeyID); status != 409 || typ != "KMSInvalidStateException" {
		t.Fatalf("DryRun on a key pending import: %d %s", status, typ)
	}
	// Imported key material expires at most 365 days ahead.
	status, b := h.call(kmsAliceKey, "ImportKeyMaterial", map[string]any{"KeyId": ext.KeyID, "ImportToken": []byte("t"),
		"EncryptedKeyMaterial": []byte("m"), "ValidTo": time.Now().Add(366 * 24 * time.Hour).Unix()})
	if status != 400 || !strings.Contains(string(b), "ValidationException") || !strings.Contains(string(b), "365 days") {
		t.Fatalf("ValidTo 366 days ahead: %d %s", status, b)
	}
	// Imported keys do not rotate; others rotate on demand at most 10 times.
	if err := c.RotateKeyOnDemand(ctx, ext.KeyID); kms.Code(err) != kms.CodeUnsupportedOperation {
		t.Fatalf("rotating an imported key: %v", err)
	}
	if err := c.EnableKey(ctx, id); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if err := c.RotateKeyOnDemand(ctx, id); err != nil {
			t.Fatalf("on-demand rotation %d: %v", i+1, err)
		}
	}
	if err := c.RotateKeyOnDemand(ctx, id); kms.Code(err) != kms.CodeLimitExceeded {
		t.Fatalf("11th on-demand rotation: %v", err)
	}
	// ListKeyRotations pages through the ten.
	var marker string
	n := 0
	for {
		in := map[string]any{"KeyId": id, "Limit": 4}
		if marker != "" {
			in["Marker"] = marker
		}
		status, b := h.call(kmsAliceKey, "ListKeyRotations", in)
		var out struct {
			Rotations  []struct{ KeyId, RotationType string }
			Truncated  bool
			NextMarker string
		}
		if status != 200 || json.Unmarshal(b, &out) != nil {
			t.Fatalf("ListKeyRotations: %d %s", status, b)
		}
		for _, r := range out.Rotations {
			if r.RotationType != "ON_DEMAND" || !strings.HasSuffix(r.KeyId, id) {
				t.Fatalf("rotation %+v", r)
			}
		}
		n += len(out.Rotations)
		if !out.Truncated {
			break
		}
		marker = out.NextMarker
	}
	if n != 10 {
		t.Fatalf("ListKeyRotations listed %d rotations, want 10", n)
	}
}

// TestKMSServeListMarkersResumeAfterAnItem: an alias created between two
// pages of list-aliases neither repeats nor hides an entry.
func TestKMSServeListMarkersResumeAfterAnItem(t *testing.T) {
	kmsAWS(t)
	h := kmsStartServer(t)
	id, _ := h.createKey(kmsAliceKey)
	for _, name := range []string{"alias/b", "alias/d", "alias/f"} {
		if _, err := h.aws(kmsAliceKey, "create-alias", "--alias-name", name, "--target-key-id", id); err != nil {
			t.Fatal(err)
		}
	}
	type page struct {
		Aliases    []struct{ AliasName string }
		Truncated  bool
		NextMarker string
	}
	list := func(in map[string]any) page {
		status, b := h.call(kmsAliceKey, "ListAliases", in)
		var p page
		if status != 200 || json.Unmarshal(b, &p) != nil {
			t.Fatalf("ListAliases: %d %s", status, b)
		}
		return p
	}
	first := list(map[string]any{"Limit": 2})
	if len(first.Aliases) != 2 || first.Aliases[1].AliasName != "alias/d" || !first.Truncated {
		t.Fatalf("first page: %+v", first)
	}
	if _, err := h.aws(kmsAliceKey, "create-alias", "--alias-name", "alias/a", "--target-key-id", id); err != nil {
		t.Fatal(err)
	}
	second := list(map[string]any{"Limit": 2, "Marker": first.NextMarker})
	if len(second.Aliases) != 1 || second.Aliases[0].AliasName != "alias/f" || second.Truncated {
		t.Fatalf("second page after an insertion before the marker: %+v", second)
	}
	if status, b := h.call(kmsAliceKey, "ListAliases", map[string]any{"Marker": "!!"}); status != 400 || !strings.Contains(string(b), "InvalidMarkerException") {
		t.Fatalf("bad marker: %d %s", status, b)
	}
}

// TestKMSServeCreateKeyRefusesWhatItCannotHonour: CreateKey never creates
// something other than what was asked for.
func TestKMSServeCreateKeyRefusesWhatItCannotHonour(t *testing.T) {
	kmsAWS(t)
	h := kmsStartServer(t)
	for _, args := range [][]string{
		{"--origin", "EXTERNAL_KEY_STORE", "--custom-key-store-id", "cks-1234567890abcdef0", "--xks-key-id", "xks-key-1"},
	} {
		_, err := h.aws(kmsAliceKey, append([]string{"create-key"}, args...)...)
		if err == nil || !strings.Contains(err.Error(), "(UnsupportedOperationException)") {
			t.Errorf("create-key %v: %v", args, err)
		}
	}
	// A custom key store key needs its origin, and the store.
	h.awsFails(kmsAliceKey, "ValidationException", "create-key", "--custom-key-store-id", "cks-1234567890abcdef0")
	h.awsFails(kmsAliceKey, "CustomKeyStoreNotFoundException", "create-key", "--origin", "AWS_CLOUDHSM", "--custom-key-store-id", "cks-1234567890abcdef0")
	h.awsFails(kmsAliceKey, "TagException", "create-key", "--tags", "TagKey=aws:team,TagValue=red")
	var keys struct{ Keys []struct{ KeyId string } }
	h.awsJSON(kmsAliceKey, &keys, "list-keys")
	if len(keys.Keys) != 0 {
		t.Fatalf("refused create-key calls left keys behind: %+v", keys)
	}
}

// TestKMSServeControlPlane: tags (on CreateKey too), descriptions, key
// policy names and retirable grants round-trip through awscli.
func TestKMSServeControlPlane(t *testing.T) {
	kmsAWS(t)
	h := kmsStartServer(t)
	var created struct{ KeyMetadata struct{ KeyId, Arn string } }
	h.awsJSON(kmsAliceKey, &created, "create-key", "--description", "first", "--tags", "TagKey=team,TagValue=red", "TagKey=env,TagValue=test")
	id, arn := created.KeyMetadata.KeyId, created.KeyMetadata.Arn
	type tags struct {
		Tags []struct{ TagKey, TagValue string }
	}
	var got tags
	h.awsJSON(kmsAliceKey, &got, "list-resource-tags", "--key-id", id)
	if len(got.Tags) != 2 || got.Tags[0].TagKey != "env" || got.Tags[1].TagValue != "red" {
		t.Fatalf("tags from create-key: %+v", got)
	}
	if _, err := h.aws(kmsAliceKey, "tag-resource", "--key-id", arn, "--tags", "TagKey=team,TagValue=blue", "TagKey=owner,TagValue=alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.aws(kmsAliceKey, "untag-resource", "--key-id", id, "--tag-keys", "env"); err != nil {
		t.Fatal(err)
	}
	h.awsJSON(kmsAliceKey, &got, "list-resource-tags", "--key-id", id)
	if len(got.Tags) != 2 || got.Tags[0] != (struct{ TagKey, TagValue string }{"owner", "alice"}) || got.Tags[1].TagValue != "blue" {
		t.Fatalf("tags after tag/untag: %+v", got)
	}
	h.awsFails(kmsAliceKey, "TagException", "tag-resource", "--key-id", id, "--tags", "TagKey=aws:x,TagValue=y")
	h.awsFails(kmsMalloryKey, "AccessDeniedException", "list-resource-tags", "--key-id", arn)

	if _, err := h.aws(kmsAliceKey, "update-key-description", "--key-id", id, "--description", "second"); err != nil {
		t.Fatal(err)
	}
	var desc struct{ KeyMetadata struct{ Description string } }
	h.awsJSON(kmsAliceKey, &desc, "describe-key", "--key-id", id)
	if desc.KeyMetadata.Description != "second" {
		t.Fatalf("description %q", desc.KeyMetadata.Description)
	}
	if _, err := h.aws(kmsAliceKey, "create-alias", "--alias-name", "alias/cp", "--target-key-id", id); err != nil {
		t.Fatal(err)
	}
	var aliases struct {
		Aliases []struct {
			AliasName                     string
			CreationDate, LastUpdatedDate time.Time // awscli prints ISO 8601
		}
	}
	h.awsJSON(kmsAliceKey, &aliases, "list-aliases")
	if len(aliases.Aliases) != 1 || time.Since(aliases.Aliases[0].CreationDate) > time.Minute || aliases.Aliases[0].LastUpdatedDate.IsZero() {
		t.Fatalf("list-aliases CreationDate: %+v", aliases)
	}
	var pols struct{ PolicyNames []string }
	h.awsJSON(kmsAliceKey, &pols, "list-key-policies", "--key-id", id)
	if len(pols.PolicyNames) != 1 || pols.PolicyNames[0] != "default" {
		t.Fatalf("list-key-policies: %+v", pols)
	}

	var grant struct{ GrantId string }
	h.awsJSON(kmsAliceKey, &grant, "create-grant", "--key-id", id, "--grantee-principal", kmsMalloryARN,
		"--retiring-principal", kmsBobARN, "--operations", "Decrypt")
	if _, err := h.aws(kmsAliceKey, "create-grant", "--key-id", id, "--grantee-principal", kmsMalloryARN, "--operations", "Encrypt"); err != nil {
		t.Fatal(err)
	}
	var ret struct {
		Grants []struct{ GrantId, KeyId, RetiringPrincipal string }
	}
	h.awsJSON(kmsBobKey, &ret, "list-retirable-grants", "--retiring-principal", kmsBobARN)
	if len(ret.Grants) != 1 || ret.Grants[0].GrantId != grant.GrantId || ret.Grants[0].KeyId != arn {
		t.Fatalf("list-retirable-grants: %+v", ret)
	}
	h.awsJSON(kmsMalloryKey, &ret, "list-retirable-grants", "--retiring-principal", kmsBobARN)
	if len(ret.Grants) != 0 {
		t.Fatalf("another account sees the grants: %+v", ret)
	}
}
