//go:build cgo

package keystore

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/kmsfs/kmsfs/kms"
)

const softHSMModule = "/usr/lib/softhsm/libsofthsm2.so"

// newSoftHSMToken initialises a SoftHSM2 token in a fresh directory (the
// Debian softhsm2 package) and points this process at it.
func newSoftHSMToken(t *testing.T, label, pin string) {
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
	out, err := exec.Command("softhsm2-util", "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", "so-"+pin).CombinedOutput()
	if err != nil {
		t.Fatalf("softhsm2-util --init-token: %v\n%s", err, out)
	}
}

// TestKEKInAPKCS11Token: a keystore whose KEK is a non-extractable AES key
// in a SoftHSM2 token works across reopenings, refuses to open without the
// token or with a wrong PIN, and the token will not hand out the KEK.
func TestKEKInAPKCS11Token(t *testing.T) {
	ctx := context.Background()
	newSoftHSMToken(t, "kmsfs-test", "1234")
	hsm := &PKCS11Options{Module: softHSMModule, Token: "kmsfs-test", PIN: []byte("1234")}
	dir := filepath.Join(t.TempDir(), "ks")
	ks, err := Open(dir, Options{PKCS11: hsm, Warn: func(string) {}})
	if err != nil {
		t.Fatal(err)
	}
	md, err := ks.CreateKey(ctx, kms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	ec := kms.EncryptionContext{"volume": "v"}
	ct, _, err := ks.Encrypt(ctx, md.KeyID, []byte("sealed by the token"), ec)
	if err != nil {
		t.Fatal(err)
	}
	ks.Close()
	if _, err := os.Stat(filepath.Join(dir, rootKeyName)); err == nil {
		t.Fatal("a token-protected keystore wrote a root key file")
	}
	state, _ := os.ReadFile(filepath.Join(dir, stateName))
	if !strings.Contains(string(state), `"kind": "pkcs11"`) && !strings.Contains(string(state), `"kind":"pkcs11"`) {
		t.Fatalf("state does not record PKCS#11 protection:\n%.400s", state)
	}

	ks, err = Open(dir, Options{PKCS11: hsm, Warn: func(string) {}})
	if err != nil {
		t.Fatalf("reopen with the token: %v", err)
	}
	if pt, _, err := ks.Decrypt(ctx, "", ct, ec); err != nil || string(pt) != "sealed by the token" {
		t.Fatalf("decrypt after reopening: %q, %v", pt, err)
	}
	ks.Close()

	if _, err := Open(dir, Options{Warn: func(string) {}}); err == nil || !strings.Contains(err.Error(), `PKCS#11 token "kmsfs-test"`) {
		t.Fatalf("open without the token: %v", err)
	}
	bad := *hsm
	bad.PIN = []byte("4321")
	if _, err := Open(dir, Options{PKCS11: &bad, Warn: func(string) {}}); err == nil || !strings.Contains(err.Error(), "login") {
		t.Fatalf("open with a wrong PIN: %v", err)
	}

	// Ask the token for the KEK's value, as an attacker with the PIN would.
	p := pkcs11.New(softHSMModule)
	if err := p.Initialize(); err != nil {
		t.Fatal(err)
	}
	defer func() { p.Finalize(); p.Destroy() }()
	slots, _ := p.GetSlotList(true)
	s, err := p.OpenSession(slots[0], pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Login(s, pkcs11.CKU_USER, "1234"); err != nil {
		t.Fatal(err)
	}
	p.FindObjectsInit(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, defaultKEKLabel)})
	objs, _, _ := p.FindObjects(s, 1)
	p.FindObjectsFinal(s)
	if len(objs) != 1 {
		t.Fatalf("%d keys labelled %s in the token", len(objs), defaultKEKLabel)
	}
	if attrs, err := p.GetAttributeValue(s, objs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)}); err == nil && len(attrs) > 0 && len(attrs[0].Value) > 0 {
		t.Fatal("the token disclosed the KEK's value")
	}
}
