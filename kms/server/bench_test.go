package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"github.com/kmsfs/kmsfs/kms"
	"github.com/kmsfs/kmsfs/kms/auditlog"
	"github.com/kmsfs/kmsfs/kms/keystore"
)

// discardWriter is a ResponseWriter that throws the answer away.
type discardWriter struct {
	h      http.Header
	status int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *discardWriter) WriteHeader(s int)           { w.status = s }

// benchServer returns a server with SigV4, policy evaluation and the audit
// log all on (what `kmsfs kms serve` runs), and a key.
func benchServer(b *testing.B) (*Server, string) {
	dir := b.TempDir()
	ks, err := keystore.Open(filepath.Join(dir, "ks"), keystore.Options{Region: testRegion, Account: testAccount, Warn: func(string) {}})
	if err != nil {
		b.Fatal(err)
	}
	audit, err := auditlog.Open(filepath.Join(dir, "audit.log"), auditlog.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { audit.Close(); ks.Close() })
	s, err := New(Config{Store: ks, Credentials: testCreds, Region: testRegion, Audit: audit})
	if err != nil {
		b.Fatal(err)
	}
	md, err := ks.CreateKey(context.Background(), kms.CreateKeyInput{Policy: DefaultPolicy(testAccount)})
	if err != nil {
		b.Fatal(err)
	}
	return s, md.ARN
}

func signedRequest(b *testing.B, op string, body []byte) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "http://kms.local/", bytes.NewReader(body))
	r.Header.Set("Content-Type", "application/x-amz-json-1.1")
	r.Header.Set("X-Amz-Target", "TrentService."+op)
	sum := sha256.Sum256(body)
	if err := v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: "AKIDALICE", SecretAccessKey: "alice-secret"},
		r, hex.EncodeToString(sum[:]), "kms", testRegion, time.Now()); err != nil {
		b.Fatal(err)
	}
	return r
}

// benchOp measures the handler alone (no sockets): SigV4 verification, JSON,
// policy evaluation, the keystore's AES-GCM and the audit log.
func benchOp(b *testing.B, op string, body []byte) {
	s, _ := benchServer(b)
	benchOpOn(b, s, op, body)
}

func benchOpOn(b *testing.B, s *Server, op string, body []byte) {
	r := signedRequest(b, op, body)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		w := &discardWriter{h: http.Header{}}
		for pb.Next() {
			req := r.Clone(context.Background())
			req.Body = io.NopCloser(bytes.NewReader(body))
			w.status = 0
			s.ServeHTTP(w, req)
			if w.status != 0 {
				b.Fatalf("HTTP %d", w.status)
			}
		}
	})
}

func BenchmarkServeGenerateDataKey(b *testing.B) {
	s, arn := benchServer(b)
	body, _ := json.Marshal(map[string]any{"KeyId": arn, "KeySpec": "AES_256", "EncryptionContext": map[string]string{"volume": "v", "file": "f"}})
	benchOpOn(b, s, "GenerateDataKey", body)
}

func BenchmarkServeDecrypt(b *testing.B) {
	s, arn := benchServer(b)
	ec := kms.EncryptionContext{"volume": "v", "file": "f"}
	ct, _, err := s.store.GenerateDataKeyWithoutPlaintext(context.Background(), arn, 32, ec)
	if err != nil {
		b.Fatal(err)
	}
	body, _ := json.Marshal(map[string]any{"CiphertextBlob": ct, "EncryptionContext": ec})
	benchOpOn(b, s, "Decrypt", body)
}
