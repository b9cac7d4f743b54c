package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/kms/awskms"
)

// kmsSelfSignedCert writes a certificate for 127.0.0.1 and its key.
func kmsSelfSignedCert(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kmsfs test KMS"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TestKMSServeTLS: with --tls-cert/--tls-key the server speaks HTTPS, and
// the Go client trusts it through AWS_CA_BUNDLE (the SDK's standard way).
func TestKMSServeTLS(t *testing.T) {
	certFile, keyFile := kmsSelfSignedCert(t, t.TempDir())
	h := kmsStartServerScheme(t, "https", "--tls-cert", certFile, "--tls-key", keyFile)
	t.Setenv("AWS_CA_BUNDLE", certFile)
	c := h.client(kmsAliceKey, awskms.Options{MaxAttempts: 1})
	if _, err := c.ListKeys(context.Background()); err != nil {
		t.Fatalf("ListKeys over TLS: %v", err)
	}
	// Plain HTTP to the TLS port is refused.
	plain := *h
	plain.url = strings.Replace(h.url, "https://", "http://", 1)
	if _, err := plain.client(kmsAliceKey, awskms.Options{MaxAttempts: 1}).ListKeys(context.Background()); err == nil {
		t.Fatal("plain HTTP to the TLS listener succeeded")
	}
}
