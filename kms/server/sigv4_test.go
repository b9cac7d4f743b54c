package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"github.com/kmsfs/kmsfs/kms"
)

// signed builds a request signed by the SDK's own SigV4 signer.
func signed(t *testing.T, target, secret string, body []byte, at time.Time, prep func(*http.Request)) *http.Request {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, target, bytes.NewReader(body))
	r.Header.Set("Content-Type", "application/x-amz-json-1.1")
	r.Header.Set("X-Amz-Target", "TrentService.ListKeys")
	if prep != nil {
		prep(r)
	}
	sum := sha256.Sum256(body)
	if err := v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: "AKIDALICE", SecretAccessKey: secret},
		r, hex.EncodeToString(sum[:]), "kms", testRegion, at); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestSigV4AcceptsSDKSignatures(t *testing.T) {
	v := newSigV4Verifier(testCreds, testRegion)
	now := time.Now()
	body := []byte(`{"Limit":5}`)
	for name, tc := range map[string]struct {
		target string
		prep   func(*http.Request)
	}{
		"plain":           {"http://kms.local/", nil},
		"query string":    {"http://kms.local/?b=2&a=1&a=0&sp=x%20y", nil},
		"escaped path":    {"http://kms.local/a%20b/c~d", nil},
		"multi-value hdr": {"http://kms.local/", func(r *http.Request) { r.Header.Add("X-Amz-Meta", "a  b "); r.Header.Add("X-Amz-Meta", " c") }},
		"with sha256 hdr": {"http://kms.local/", func(r *http.Request) {
			s := sha256.Sum256(body)
			r.Header.Set("X-Amz-Content-Sha256", hex.EncodeToString(s[:]))
		}},
		"port in host":      {"http://127.0.0.1:8900/", nil},
		"security token hd": {"http://kms.local/", func(r *http.Request) { r.Header.Set("X-Amz-Security-Token", "tok") }},
	} {
		r := signed(t, tc.target, "alice-secret", body, now, tc.prep)
		cred, err := v.verify(r, body, now)
		if err != nil || cred.Principal != aliceARN {
			t.Errorf("%s: %v (%q)", name, err, r.Header.Get("Authorization"))
		}
	}
}

func TestSigV4Refusals(t *testing.T) {
	v := newSigV4Verifier(testCreds, testRegion)
	now := time.Now()
	body := []byte(`{}`)
	cases := []struct {
		name   string
		r      *http.Request
		body   []byte
		at     time.Time
		code   string
		tamper func(*http.Request)
	}{
		{name: "wrong secret", r: signed(t, "http://kms.local/", "nope", body, now, nil), code: kms.CodeInvalidSignature},
		{name: "body changed", r: signed(t, "http://kms.local/", "alice-secret", body, now, nil), body: []byte(`{"a":1}`), code: kms.CodeInvalidSignature},
		{name: "signed header changed", r: signed(t, "http://kms.local/", "alice-secret", body, now, nil), code: kms.CodeInvalidSignature,
			tamper: func(r *http.Request) { r.Header.Set("X-Amz-Target", "TrentService.Decrypt") }},
		{name: "host changed", r: signed(t, "http://kms.local/", "alice-secret", body, now, nil), code: kms.CodeInvalidSignature,
			tamper: func(r *http.Request) { r.Host = "evil.local" }},
		{name: "skew", r: signed(t, "http://kms.local/", "alice-secret", body, now.Add(-MaxClockSkew-time.Second), nil), code: kms.CodeInvalidSignature},
		{name: "no auth", r: httptest.NewRequest(http.MethodPost, "http://kms.local/", nil), code: codeMissingAuthToken},
		{name: "not sigv4", r: signed(t, "http://kms.local/", "alice-secret", body, now, nil), code: codeIncompleteSignature,
			tamper: func(r *http.Request) { r.Header.Set("Authorization", "Basic YTpi") }},
		{name: "unknown key", r: signed(t, "http://kms.local/", "alice-secret", body, now, nil), code: kms.CodeUnrecognizedClient,
			tamper: func(r *http.Request) {
				r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), "AKIDALICE", "AKIDEVE", 1))
			}},
		{name: "wrong region", r: signed(t, "http://kms.local/", "alice-secret", body, now, nil), code: kms.CodeInvalidSignature,
			tamper: func(r *http.Request) {
				r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), testRegion, "eu-west-1", 1))
			}},
	}
	for _, tc := range cases {
		if tc.tamper != nil {
			tc.tamper(tc.r)
		}
		b := body
		if tc.body != nil {
			b = tc.body
		}
		if _, err := v.verify(tc.r, b, now); kms.Code(err) != tc.code {
			t.Errorf("%s: got %v, want %s", tc.name, err, tc.code)
		}
	}
}

func TestRateLimiter(t *testing.T) {
	l := newRateLimiter(10, 5)
	t0 := time.Unix(1000, 0)
	for i := range 5 {
		if !l.allow("a", t0) {
			t.Fatalf("burst request %d refused", i)
		}
	}
	if l.allow("a", t0) {
		t.Fatal("6th request within the burst allowed")
	}
	if !l.allow("b", t0) {
		t.Fatal("accounts share a bucket")
	}
	if !l.allow("a", t0.Add(100*time.Millisecond)) || l.allow("a", t0.Add(100*time.Millisecond)) {
		t.Fatal("refill is not 10/s")
	}
}
