package server

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/kmsfs/kmsfs/kms"
	"github.com/kmsfs/kmsfs/kms/auditlog"
	"github.com/kmsfs/kmsfs/kms/awskms"
	"github.com/kmsfs/kmsfs/kms/keystore"
)

const (
	testRegion  = "us-test-1"
	testAccount = "111122223333"
	otherAcct   = "444455556666"
	aliceARN    = "arn:aws:iam::" + testAccount + ":user/alice"
	bobARN      = "arn:aws:iam::" + testAccount + ":user/bob"
	malloryARN  = "arn:aws:iam::" + otherAcct + ":user/mallory"
)

var testCreds = Credentials{
	"AKIDALICE": {AccessKeyID: "AKIDALICE", SecretAccessKey: "alice-secret", Principal: aliceARN, Account: testAccount},
	"AKIDBOB":   {AccessKeyID: "AKIDBOB", SecretAccessKey: "bob-secret", Principal: bobARN, Account: testAccount},
	"AKIDMAL":   {AccessKeyID: "AKIDMAL", SecretAccessKey: "mal-secret", Principal: malloryARN, Account: otherAcct},
}

// harness is a server on a real keystore behind httptest, and a client per
// principal.
type harness struct {
	t        *testing.T
	srv      *Server
	http     *httptest.Server
	audit    string
	auditLog *auditlog.Log
	creds    Credentials
	mu       sync.Mutex
	now      time.Time // server clock offset base; zero means time.Now
}

func newHarness(t *testing.T, rate float64) *harness {
	t.Helper()
	return newHarnessWith(t, rate, testCreds)
}

// newHarnessWith is newHarness serving creds.
func newHarnessWith(t *testing.T, rate float64, creds Credentials) *harness {
	t.Helper()
	dir := t.TempDir()
	ks, err := keystore.Open(filepath.Join(dir, "ks"), keystore.Options{Region: testRegion, Account: testAccount, Warn: func(string) {}})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, audit: filepath.Join(dir, "audit.log"), creds: creds}
	h.auditLog, err = auditlog.Open(h.audit, auditlog.Options{})
	if err != nil {
		t.Fatal(err)
	}
	h.srv, err = New(Config{Store: ks, Credentials: creds, Region: testRegion, Audit: h.auditLog, Rate: rate, Now: h.clock})
	if err != nil {
		t.Fatal(err)
	}
	h.http = httptest.NewServer(h.srv)
	t.Cleanup(func() {
		h.http.Close()
		h.auditLog.Close()
		ks.Close()
	})
	return h
}

func (h *harness) clock() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.now.IsZero() {
		return time.Now()
	}
	return h.now
}

func (h *harness) client(akid string, opts awskms.Options) *awskms.Client {
	h.t.Helper()
	secret := "wrong"
	if c, ok := h.creds[akid]; ok {
		secret = c.SecretAccessKey
	}
	return h.clientWith(akid, secret, opts)
}

func (h *harness) clientWith(akid, secret string, opts awskms.Options) *awskms.Client {
	h.t.Helper()
	opts.Endpoint = h.http.URL
	opts.Region = testRegion
	opts.Credentials = credentials.NewStaticCredentialsProvider(akid, secret, "")
	c, err := awskms.New(context.Background(), opts)
	if err != nil {
		h.t.Fatal(err)
	}
	return c
}

func wantCode(t *testing.T, err error, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("got error %v, want %v", err, target)
	}
}

func TestCryptoRoundTripAndKeyRules(t *testing.T) {
	h := newHarness(t, 0)
	ctx := context.Background()
	alice := h.client("AKIDALICE", awskms.Options{})
	md, err := alice.CreateKey(ctx, kms.CreateKeyInput{Description: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if md.State != kms.KeyEnabled || !strings.HasPrefix(md.ARN, "arn:aws:kms:"+testRegion+":"+testAccount+":key/") {
		t.Fatalf("metadata %+v", md)
	}
	ec := kms.EncryptionContext{"volume": "v1", "file": "f1"}
	dk, err := alice.GenerateDataKey(ctx, md.KeyID, 32, ec)
	if err != nil {
		t.Fatal(err)
	}
	if len(dk.Plaintext) != 32 || dk.KeyID != md.ARN {
		t.Fatalf("data key %d bytes, key %s", len(dk.Plaintext), dk.KeyID)
	}
	pt, arn, err := alice.Decrypt(ctx, "", dk.CiphertextBlob, ec)
	if err != nil || !bytes.Equal(pt, dk.Plaintext) || arn != md.ARN {
		t.Fatalf("decrypt: %v, same=%v arn=%s", err, bytes.Equal(pt, dk.Plaintext), arn)
	}
	_, _, err = alice.Decrypt(ctx, "", dk.CiphertextBlob, kms.EncryptionContext{"volume": "v1"})
	wantCode(t, err, kms.ErrInvalidCiphertext)

	_, _, err = alice.Encrypt(ctx, md.KeyID, make([]byte, 4097), nil)
	wantCode(t, err, kms.ErrValidation)
	ct, _, err := alice.Encrypt(ctx, md.KeyID, make([]byte, 4096), nil)
	if err != nil {
		t.Fatal(err)
	}

	if err := alice.CreateAlias(ctx, "alias/test", md.KeyID); err != nil {
		t.Fatal(err)
	}
	if err := alice.DisableKey(ctx, "alias/test"); err != nil {
		t.Fatal(err)
	}
	_, _, err = alice.Decrypt(ctx, "", ct, nil)
	wantCode(t, err, kms.ErrDisabled)
	if err := alice.EnableKey(ctx, md.ARN); err != nil {
		t.Fatal(err)
	}
	if _, _, err := alice.Decrypt(ctx, "alias/test", ct, nil); err != nil {
		t.Fatal(err)
	}

	if err := alice.RotateKeyOnDemand(ctx, md.KeyID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := alice.Decrypt(ctx, "", dk.CiphertextBlob, ec); err != nil {
		t.Fatalf("old ciphertext after rotation: %v", err)
	}

	for _, days := range []int{6, 31} {
		_, err := alice.ScheduleKeyDeletion(ctx, md.KeyID, days)
		wantCode(t, err, kms.ErrValidation)
	}
	when, err := alice.ScheduleKeyDeletion(ctx, md.KeyID, 7)
	if err != nil || time.Until(when) < 6*24*time.Hour {
		t.Fatalf("schedule: %v %v", when, err)
	}
	_, _, err = alice.Decrypt(ctx, "", ct, nil)
	wantCode(t, err, kms.ErrInvalidState)
	if err := alice.CancelKeyDeletion(ctx, md.KeyID); err != nil {
		t.Fatal(err)
	}
	got, err := alice.DescribeKey(ctx, md.KeyID)
	if err != nil || got.State != kms.KeyDisabled {
		t.Fatalf("after cancel: %+v %v", got, err)
	}

	// The audit log names every operation and never holds the plaintext.
	h.auditLog.Close()
	data, err := os.ReadFile(h.audit)
	if err != nil {
		t.Fatal(err)
	}
	sum, err := auditlog.Verify(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if sum.Entries < 15 {
		t.Fatalf("only %d audit entries", sum.Entries)
	}
	for _, op := range []string{`"operation":"GenerateDataKey"`, `"operation":"Decrypt"`, `"result":"DisabledException"`, `"file":"f1"`} {
		if !bytes.Contains(data, []byte(op)) {
			t.Errorf("audit log lacks %s", op)
		}
	}
	if bytes.Contains(data, dk.Plaintext) || bytes.Contains(data, []byte(b64(dk.Plaintext))) {
		t.Fatal("audit log contains the data key")
	}
}

func TestAuthenticationFailures(t *testing.T) {
	h := newHarness(t, 0)
	ctx := context.Background()
	_, err := h.client("AKIDNOBODY", awskms.Options{MaxAttempts: 1}).ListKeys(ctx)
	if kms.Code(err) != kms.CodeUnrecognizedClient {
		t.Fatalf("unknown key: %v", err)
	}
	// A known key ID with the wrong secret: a forged signature.
	forger := h.clientWith("AKIDALICE", "guess", awskms.Options{MaxAttempts: 1})
	_, err = forger.ListKeys(ctx)
	if kms.Code(err) != kms.CodeInvalidSignature {
		t.Fatalf("forged: %v", err)
	}
	// Clock skew beyond 5 minutes.
	h.mu.Lock()
	h.now = time.Now().Add(6 * time.Minute)
	h.mu.Unlock()
	_, err = h.client("AKIDALICE", awskms.Options{MaxAttempts: 1}).ListKeys(ctx)
	if kms.Code(err) != kms.CodeInvalidSignature || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("skew: %v", err)
	}
	h.mu.Lock()
	h.now = time.Now().Add(4 * time.Minute)
	h.mu.Unlock()
	if _, err = h.client("AKIDALICE", awskms.Options{MaxAttempts: 1}).ListKeys(ctx); err != nil {
		t.Fatalf("4 minutes of skew refused: %v", err)
	}
	h.auditLog.Close()
	data, _ := os.ReadFile(h.audit)
	if !bytes.Contains(data, []byte(`"principal":"`+aliceARN+`","accessKeyId":"AKIDALICE","sourceAddress":"127.0.0.1`)) ||
		!bytes.Contains(data, []byte(`"result":"InvalidSignatureException"`)) ||
		!bytes.Contains(data, []byte(`"result":"UnrecognizedClientException"`)) {
		t.Fatalf("refusals not audited:\n%s", data)
	}
}

func TestPolicyDenyBeatsAllowAndGrants(t *testing.T) {
	h := newHarness(t, 0)
	ctx := context.Background()
	alice := h.client("AKIDALICE", awskms.Options{})
	bob := h.client("AKIDBOB", awskms.Options{MaxAttempts: 1})
	mallory := h.client("AKIDMAL", awskms.Options{MaxAttempts: 1})
	md, err := alice.CreateKey(ctx, kms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	ec := kms.EncryptionContext{"volume": "v1"}
	// Default policy: the account (alice and bob) may use the key; mallory's
	// account may not.
	if _, err := bob.GenerateDataKey(ctx, md.KeyID, 32, ec); err != nil {
		t.Fatal(err)
	}
	_, err = mallory.GenerateDataKey(ctx, md.ARN, 32, ec)
	wantCode(t, err, kms.ErrAccessDenied)

	policy := `{"Version":"2012-10-17","Statement":[
	 {"Sid":"Admin","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::` + testAccount + `:root"},"Action":"kms:*","Resource":"*"},
	 {"Sid":"NoBobOnV2","Effect":"Deny","Principal":{"AWS":"` + bobARN + `"},"Action":["kms:GenerateDataKey*","kms:Decrypt"],"Resource":"*",
	  "Condition":{"StringEquals":{"kms:EncryptionContext:volume":"v2"}}}]}`
	if err := alice.PutKeyPolicy(ctx, md.KeyID, policy); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.GenerateDataKey(ctx, md.KeyID, 32, ec); err != nil {
		t.Fatalf("bob on v1: %v", err)
	}
	_, err = bob.GenerateDataKey(ctx, md.KeyID, 32, kms.EncryptionContext{"volume": "v2"})
	wantCode(t, err, kms.ErrAccessDenied)
	if !strings.Contains(err.Error(), "explicit deny") {
		t.Fatalf("deny message: %v", err)
	}
	if _, err := alice.GenerateDataKey(ctx, md.KeyID, 32, kms.EncryptionContext{"volume": "v2"}); err != nil {
		t.Fatalf("alice on v2: %v", err)
	}

	// A policy that would lock the caller out is refused.
	lockout := `{"Statement":[{"Effect":"Allow","Principal":{"AWS":"` + bobARN + `"},"Action":"kms:Decrypt","Resource":"*"}]}`
	wantCode(t, alice.PutKeyPolicy(ctx, md.KeyID, lockout), &kms.Error{Code: kms.CodeMalformedPolicy})

	// Grants: mallory gets Decrypt and GenerateDataKey with a constraint,
	// then loses them when the grant is revoked.
	id, token, err := alice.CreateGrant(ctx, kms.Grant{KeyID: md.ARN, GranteePrincipal: malloryARN,
		Operations: []string{"GenerateDataKey", "Decrypt"}, ContextSubset: map[string]string{"volume": "v1"}})
	if err != nil || id == "" || token == "" {
		t.Fatalf("create grant: %q %q %v", id, token, err)
	}
	dk, err := mallory.GenerateDataKey(ctx, md.ARN, 32, ec)
	if err != nil {
		t.Fatalf("granted: %v", err)
	}
	_, err = mallory.GenerateDataKey(ctx, md.ARN, 32, kms.EncryptionContext{"volume": "v9"})
	wantCode(t, err, kms.ErrAccessDenied)
	_, _, err = mallory.Encrypt(ctx, md.ARN, []byte("x"), ec)
	wantCode(t, err, kms.ErrAccessDenied)
	grants, err := alice.ListGrants(ctx, md.KeyID)
	if err != nil || len(grants) != 1 || grants[0].GranteePrincipal != malloryARN {
		t.Fatalf("list grants: %+v %v", grants, err)
	}
	if err := alice.RevokeGrant(ctx, md.KeyID, id); err != nil {
		t.Fatal(err)
	}
	_, _, err = mallory.Decrypt(ctx, "", dk.CiphertextBlob, ec)
	wantCode(t, err, kms.ErrAccessDenied)

	// RetireGrant: by the retiring principal only.
	id, _, err = alice.CreateGrant(ctx, kms.Grant{KeyID: md.ARN, GranteePrincipal: malloryARN, RetiringPrincipal: bobARN, Operations: []string{"Decrypt"}})
	if err != nil {
		t.Fatal(err)
	}
	wantCode(t, mallory.RetireGrant(ctx, "", md.ARN, id), kms.ErrAccessDenied)
	if err := bob.RetireGrant(ctx, "", md.ARN, id); err != nil {
		t.Fatal(err)
	}
	if grants, _ := alice.ListGrants(ctx, md.KeyID); len(grants) != 0 {
		t.Fatalf("grant not retired: %+v", grants)
	}
}

func TestThrottlingThenSuccess(t *testing.T) {
	h := newHarness(t, 20)
	ctx := context.Background()
	alice := h.client("AKIDALICE", awskms.Options{MaxAttempts: 1})
	md, err := alice.CreateKey(ctx, kms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	throttled := 0
	for range 40 {
		if _, err := alice.GenerateDataKey(ctx, md.KeyID, 32, nil); errors.Is(err, kms.ErrThrottling) {
			throttled++
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if throttled == 0 {
		t.Fatal("40 back-to-back calls at a 20/s quota were never throttled")
	}
	// With retries and backoff, every call of a burst succeeds.
	patient := h.client("AKIDALICE", awskms.Options{MaxAttempts: 30})
	var wg sync.WaitGroup
	errs := make(chan error, 60)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 15 {
				if _, err := patient.GenerateDataKey(ctx, md.KeyID, 32, nil); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("with backoff: %v", err)
	}
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func TestListPageResumesAfterTheMarkedItem(t *testing.T) {
	id := func(s *string) string { return *s }
	items := []string{"d", "b", "f"}
	pg, next, err := listPage(items, id, 2, "")
	if err != nil || strings.Join(pg, "") != "bd" || next == "" {
		t.Fatalf("first page %v %q %v", pg, next, err)
	}
	if next == "2" || strings.Contains(next, "d") {
		t.Fatalf("marker %q is a position or the plain key", next)
	}
	// "a" and "e" arrive, "d" (the marked item) goes: the next page holds
	// what follows "d" in order, nothing repeated or skipped.
	pg, next2, err := listPage([]string{"f", "a", "e", "b"}, id, 2, next)
	if err != nil || strings.Join(pg, "") != "ef" || next2 != "" {
		t.Fatalf("second page %v %q %v", pg, next2, err)
	}
	if _, _, err := listPage(items, id, 2, "%%%"); kms.Code(err) != "InvalidMarkerException" {
		t.Fatalf("bad marker: %v", err)
	}
	if _, _, err := listPage(items, id, 1001, ""); !errors.Is(err, kms.ErrValidation) {
		t.Fatalf("limit 1001: %v", err)
	}
}
