//go:build cgo

package server

import (
	"bufio"
	"bytes"
	"context"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/kms"
	"github.com/kmsfs/kmsfs/kms/auditlog"
	"github.com/kmsfs/kmsfs/kms/awskms"
	"github.com/kmsfs/kmsfs/kms/keystore"
)

const softHSMModule = "/usr/lib/softhsm/libsofthsm2.so"

// newSoftHSMToken initialises a SoftHSM2 token in a fresh directory and
// returns its serial number.
func newSoftHSMToken(t *testing.T, label, pin string) string {
	t.Helper()
	if _, err := os.Stat(softHSMModule); err != nil {
		// In CI a missing prerequisite fails: a skipped test proves nothing.
		if os.Getenv("CI") == "true" {
			t.Fatalf("SoftHSM2 is not installed (apt install softhsm2), and CI=true: %v", err)
		}
		t.Skip("SoftHSM2 is not installed (apt install softhsm2)")
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "softhsm2.conf")
	if err := os.Mkdir(filepath.Join(dir, "tokens"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+filepath.Join(dir, "tokens")+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", conf)
	if out, err := exec.Command("softhsm2-util", "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", "so-"+pin).CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util --init-token: %v\n%s", err, out)
	}
	out, err := exec.Command("softhsm2-util", "--show-slots").Output()
	if err != nil {
		t.Fatal(err)
	}
	serial := ""
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		k, v, _ := strings.Cut(strings.TrimSpace(sc.Text()), ":")
		switch k {
		case "Serial number":
			serial = strings.TrimSpace(v)
		case "Label":
			if strings.TrimSpace(v) == label {
				return serial
			}
		}
	}
	t.Fatalf("softhsm2-util --show-slots does not list token %s:\n%s", label, out)
	return ""
}

// TestCustomKeyStoreOverTheWire: the custom key store operations and a key
// in the store, through the AWS SDK against the server: AWS's error types
// for each state, the store's keys usable only while it is connected,
// stores scoped to their account, the audit log naming the store and never
// the PIN.
func TestCustomKeyStoreOverTheWire(t *testing.T) {
	ctx := context.Background()
	const label, pin = "kmsfs-srv-cks", "srv-pin-2468"
	serial := newSoftHSMToken(t, label, pin)
	dir := t.TempDir()
	ks, err := keystore.Open(filepath.Join(dir, "ks"), keystore.Options{Region: testRegion, Account: testAccount, CustomKeyStoreModule: softHSMModule, Warn: func(string) {}})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, audit: filepath.Join(dir, "audit.log"), creds: testCreds}
	if h.auditLog, err = auditlog.Open(h.audit, auditlog.Options{}); err != nil {
		t.Fatal(err)
	}
	if h.srv, err = New(Config{Store: ks, Credentials: testCreds, Region: testRegion, Audit: h.auditLog, Now: h.clock}); err != nil {
		t.Fatal(err)
	}
	h.http = httptest.NewServer(h.srv)
	t.Cleanup(func() {
		h.http.Close()
		h.auditLog.Close()
		ks.Close()
	})
	alice := h.client("AKIDALICE", awskms.Options{MaxAttempts: 1})
	mallory := h.client("AKIDMAL", awskms.Options{MaxAttempts: 1})

	anchor := "pkcs11:token=" + label + ";serial=" + serial
	in := kms.CreateCustomKeyStoreInput{Name: "hsm", CloudHsmClusterID: label, TrustAnchorCertificate: anchor, KeyStorePassword: []byte(pin)}
	bad := in
	bad.TrustAnchorCertificate = ""
	_, err = alice.CreateCustomKeyStore(ctx, bad)
	wantCode(t, err, kms.ErrValidation)
	bad.TrustAnchorCertificate = "pkcs11:serial=0123456789abcdef"
	_, err = alice.CreateCustomKeyStore(ctx, bad)
	wantCodeName(t, err, kms.CodeIncorrectTrustAnchor)
	id, err := alice.CreateCustomKeyStore(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	stores, err := alice.DescribeCustomKeyStores(ctx, "", "", "")
	if err != nil || len(stores) != 1 || stores[0].ID != id || stores[0].ConnectionState != kms.ConnectionDisconnected ||
		stores[0].TrustAnchorCertificate != anchor || stores[0].CloudHsmClusterID != label || stores[0].Type != kms.CustomKeyStoreTypeCloudHSM || stores[0].CreationDate.IsZero() {
		t.Fatalf("DescribeCustomKeyStores: %+v, %v", stores, err)
	}
	if got, err := mallory.DescribeCustomKeyStores(ctx, "", "", ""); err != nil || len(got) != 0 {
		t.Fatalf("another account sees %+v, %v", got, err)
	}
	wantCodeName(t, mallory.ConnectCustomKeyStore(ctx, "", id), kms.CodeCustomKeyStoreNotFound)

	_, err = alice.CreateKey(ctx, kms.CreateKeyInput{Origin: kms.OriginCloudHSM, CustomKeyStoreID: id})
	wantCodeName(t, err, kms.CodeCustomKeyStoreInvalidState)
	if err := alice.ConnectCustomKeyStore(ctx, "", id); err != nil {
		t.Fatal(err)
	}
	if got, _ := alice.DescribeCustomKeyStores(ctx, "", id, ""); len(got) != 1 || got[0].ConnectionState != kms.ConnectionConnected {
		t.Fatalf("after connect: %+v", got)
	}
	md, err := alice.CreateKey(ctx, kms.CreateKeyInput{Origin: kms.OriginCloudHSM, CustomKeyStoreID: id, Description: "hsm key"})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := alice.DescribeKey(ctx, md.KeyID); err != nil || got.Origin != kms.OriginCloudHSM || got.CustomKeyStoreID != id || got.CloudHsmClusterID != label {
		t.Fatalf("DescribeKey: %+v, %v", got, err)
	}
	ec := kms.EncryptionContext{"volume": "v"}
	dk, err := alice.GenerateDataKey(ctx, md.KeyID, 32, ec)
	if err != nil {
		t.Fatal(err)
	}
	if pt, _, err := alice.Decrypt(ctx, "", dk.CiphertextBlob, ec); err != nil || !bytes.Equal(pt, dk.Plaintext) {
		t.Fatalf("Decrypt: %v", err)
	}
	soft, err := alice.CreateKey(ctx, kms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	re, _, _, err := alice.ReEncrypt(ctx, dk.CiphertextBlob, ec, soft.KeyID, ec)
	if err != nil {
		t.Fatal(err)
	}
	if pt, _, err := alice.Decrypt(ctx, "", re, ec); err != nil || !bytes.Equal(pt, dk.Plaintext) {
		t.Fatalf("ReEncrypt out of the token: %v", err)
	}
	wantCodeName(t, alice.EnableKeyRotation(ctx, md.KeyID, 0), kms.CodeUnsupportedOperation)
	if b, err := alice.GenerateRandomInStore(ctx, id, 48); err != nil || len(b) != 48 {
		t.Fatalf("GenerateRandom in the store: %d bytes, %v", len(b), err)
	}

	wantCodeName(t, alice.DeleteCustomKeyStore(ctx, "", id), kms.CodeCustomKeyStoreInvalidState)
	if err := alice.DisconnectCustomKeyStore(ctx, "", id); err != nil {
		t.Fatal(err)
	}
	_, _, err = alice.Decrypt(ctx, "", dk.CiphertextBlob, ec)
	wantCode(t, err, kms.ErrInvalidState)
	_, err = alice.GenerateDataKey(ctx, md.KeyID, 32, ec)
	wantCode(t, err, kms.ErrInvalidState)
	_, err = alice.GenerateRandomInStore(ctx, id, 8)
	wantCodeName(t, err, kms.CodeCustomKeyStoreInvalidState)
	if got, err := alice.DescribeKey(ctx, md.KeyID); err != nil || got.State != kms.KeyUnavailable {
		t.Fatalf("key in a disconnected store: %+v, %v", got, err)
	}
	wantCodeName(t, alice.DeleteCustomKeyStore(ctx, "", id), kms.CodeCustomKeyStoreHasCMKs)
	wantCodeName(t, alice.DisconnectCustomKeyStore(ctx, "", id), kms.CodeCustomKeyStoreInvalidState)
	if err := alice.UpdateCustomKeyStore(ctx, kms.UpdateCustomKeyStoreInput{ID: id, NewName: "hsm-2", KeyStorePassword: []byte(pin)}); err != nil {
		t.Fatal(err)
	}
	if err := alice.ConnectCustomKeyStore(ctx, "", id); err != nil {
		t.Fatal(err)
	}
	if pt, _, err := alice.Decrypt(ctx, "", dk.CiphertextBlob, ec); err != nil || !bytes.Equal(pt, dk.Plaintext) {
		t.Fatalf("Decrypt after reconnecting: %v", err)
	}

	h.auditLog.Close()
	log, err := os.ReadFile(h.audit)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(log, []byte(pin)) {
		t.Fatal("the audit log holds the PIN")
	}
	for _, op := range []string{"CreateCustomKeyStore", "ConnectCustomKeyStore", "DisconnectCustomKeyStore", "DescribeCustomKeyStores", "UpdateCustomKeyStore", "DeleteCustomKeyStore"} {
		if !bytes.Contains(log, []byte(`"operation":"`+op+`"`)) {
			t.Errorf("no %s in the audit log", op)
		}
	}
	if !bytes.Contains(log, []byte(`"customKeyStoreId":"`+id+`"`)) {
		t.Error("the audit log does not name the custom key store")
	}
}

func wantCodeName(t *testing.T, err error, code string) {
	t.Helper()
	if kms.Code(err) != code {
		t.Fatalf("got error %v, want %s", err, code)
	}
}
