//go:build cgo

package keystore

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/kmsfs/kmsfs/kms"
)

// tokenObject is what the token says about a KMS key's AES key.
type tokenObject struct {
	found                  int
	label                  string
	sensitive, extractable bool
	valueDisclosed         bool
}

// inspectToken looks a key up in the token the way an operator with the PIN
// would, in a session of its own. It never finalises the library: that
// would end the keystore's sessions in this process too.
func inspectToken(t *testing.T, label, pin string, id keyUUID) tokenObject {
	t.Helper()
	p := pkcs11.New(softHSMModule)
	if err := p.Initialize(); err != nil && err != pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		t.Fatal(err)
	}
	slots, err := p.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	var s pkcs11.SessionHandle
	found := false
	for _, slot := range slots {
		info, err := p.GetTokenInfo(slot)
		if err == nil && strings.TrimRight(info.Label, " \x00") == label {
			if s, err = p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION); err != nil {
				t.Fatal(err)
			}
			found = true
		}
	}
	if !found {
		t.Fatalf("no token %q", label)
	}
	defer p.CloseSession(s)
	if err := p.Login(s, pkcs11.CKU_USER, pin); err != nil && err != pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN) {
		t.Fatal(err)
	}
	if err := p.FindObjectsInit(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, id[:])}); err != nil {
		t.Fatal(err)
	}
	objs, _, err := p.FindObjects(s, 4)
	p.FindObjectsFinal(s)
	if err != nil {
		t.Fatal(err)
	}
	var o tokenObject
	o.found = len(objs)
	if len(objs) != 1 {
		return o
	}
	attrs, err := p.GetAttributeValue(s, objs[0], []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
	})
	if err != nil {
		t.Fatal(err)
	}
	o.label = string(attrs[0].Value)
	o.sensitive = len(attrs[1].Value) == 1 && attrs[1].Value[0] == 1
	o.extractable = len(attrs[2].Value) == 1 && attrs[2].Value[0] == 1
	if v, err := p.GetAttributeValue(s, objs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)}); err == nil && len(v) > 0 && len(v[0].Value) > 0 {
		o.valueDisclosed = true
	}
	return o
}

func describeStore(t *testing.T, ks *Keystore, id string) kms.CustomKeyStore {
	t.Helper()
	got, err := ks.DescribeCustomKeyStores(context.Background(), "", id, "")
	if err != nil || len(got) != 1 {
		t.Fatalf("DescribeCustomKeyStores(%s): %v, %v", id, got, err)
	}
	return got[0]
}

// TestCustomKeyStore: a custom key store on a SoftHSM2 token goes through
// AWS's connection states; a key created in it is a sensitive,
// non-extractable token key whose ciphertext has the software keys' blob
// layout; a disconnected store makes its keys Unavailable (in another
// process too) until it is connected again; a wrong PIN leaves it FAILED
// with INVALID_CREDENTIALS; the token object goes when the key is deleted.
func TestCustomKeyStore(t *testing.T) {
	ctx := context.Background()
	const label, pin = "kmsfs-cks-test", "cks-pin-1234"
	newSoftHSMToken(t, label, pin)
	clock := newFakeClock()
	warn := &warnings{}
	dir := filepath.Join(t.TempDir(), "ks")
	open := func() *Keystore {
		ks, err := Open(dir, Options{CustomKeyStoreModule: softHSMModule, Now: clock.Now, Warn: warn.Warn})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ks.Close() })
		return ks
	}
	ks := open()
	stateFormat := func() int {
		data, err := os.ReadFile(filepath.Join(dir, stateName))
		if err != nil {
			t.Fatal(err)
		}
		var st struct {
			Format int `json:"format"`
		}
		if err := json.Unmarshal(data, &st); err != nil {
			t.Fatal(err)
		}
		return st.Format
	}

	// Refusals before anything exists.
	_, err := ks.CreateCustomKeyStore(ctx, kms.CreateCustomKeyStoreInput{Name: "s", CloudHsmClusterID: "no-such-token", KeyStorePassword: []byte(pin)})
	wantCodeName(t, err, kms.CodeCloudHsmClusterNotFound)
	_, err = ks.CreateCustomKeyStore(ctx, kms.CreateCustomKeyStoreInput{Name: "s", CloudHsmClusterID: label, KeyStorePassword: []byte(pin), TrustAnchorCertificate: "pkcs11:token=" + label + ";serial=0000"})
	wantCodeName(t, err, kms.CodeIncorrectTrustAnchor)
	_, err = ks.CreateCustomKeyStore(ctx, kms.CreateCustomKeyStoreInput{Name: "s", CloudHsmClusterID: label, KeyStorePassword: []byte(pin), TrustAnchorCertificate: "pkcs11:token=" + label + "?module-path=/tmp/evil.so"})
	wantCodeName(t, err, kms.CodeIncorrectTrustAnchor)
	_, err = ks.CreateCustomKeyStore(ctx, kms.CreateCustomKeyStoreInput{Name: "s", Type: "EXTERNAL_KEY_STORE", CloudHsmClusterID: label, KeyStorePassword: []byte(pin)})
	wantCodeName(t, err, kms.CodeUnsupportedOperation)

	// Create: DISCONNECTED, the token pinned by its serial, the PIN sealed.
	id, err := ks.CreateCustomKeyStore(ctx, kms.CreateCustomKeyStoreInput{Name: "hsm", CloudHsmClusterID: label, KeyStorePassword: []byte(pin)})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(id, "cks-") || len(id) != 21 {
		t.Fatalf("store ID %q is not of AWS's form cks-<17 hex>", id)
	}
	d := describeStore(t, ks, id)
	if d.ConnectionState != kms.ConnectionDisconnected || d.CloudHsmClusterID != label || d.Type != kms.CustomKeyStoreTypeCloudHSM || !strings.Contains(d.TrustAnchorCertificate, ";serial=") {
		t.Fatalf("new store: %+v", d)
	}
	if _, err := parseTrustAnchor(d.TrustAnchorCertificate); err != nil {
		t.Fatalf("pinned trust anchor does not parse: %v", err)
	}
	if raw, _ := os.ReadFile(filepath.Join(dir, stateName)); bytes.Contains(raw, []byte(pin)) {
		t.Fatal("keystore.json holds the PIN in the clear")
	}
	if f := stateFormat(); f != stateFormatCustomKeyStores {
		t.Fatalf("state with a custom key store has format %d, want %d", f, stateFormatCustomKeyStores)
	}
	_, err = ks.CreateCustomKeyStore(ctx, kms.CreateCustomKeyStoreInput{Name: "hsm", CloudHsmClusterID: "other", KeyStorePassword: []byte(pin)})
	wantCodeName(t, err, kms.CodeCustomKeyStoreNameInUse)
	_, err = ks.CreateCustomKeyStore(ctx, kms.CreateCustomKeyStoreInput{Name: "hsm2", CloudHsmClusterID: label, KeyStorePassword: []byte(pin)})
	wantCodeName(t, err, kms.CodeCloudHsmClusterInUse)

	// Another account's store is not found.
	const other = "111122223333"
	_, err = ks.DescribeCustomKeyStores(ctx, other, id, "")
	wantCodeName(t, err, kms.CodeCustomKeyStoreNotFound)
	wantCodeName(t, ks.ConnectCustomKeyStore(ctx, other, id), kms.CodeCustomKeyStoreNotFound)
	if all, err := ks.DescribeCustomKeyStores(ctx, other, "", ""); err != nil || len(all) != 0 {
		t.Fatalf("another account lists %v, %v", all, err)
	}

	// No keys in a disconnected store; DISCONNECTED cannot be disconnected.
	_, err = ks.CreateKey(ctx, kms.CreateKeyInput{Origin: kms.OriginCloudHSM, CustomKeyStoreID: id})
	wantCodeName(t, err, kms.CodeCustomKeyStoreInvalidState)
	wantCodeName(t, ks.DisconnectCustomKeyStore(ctx, "", id), kms.CodeCustomKeyStoreInvalidState)
	_, err = ks.CreateKey(ctx, kms.CreateKeyInput{Origin: kms.OriginCloudHSM})
	wantCodeName(t, err, kms.CodeValidation)

	if err := ks.ConnectCustomKeyStore(ctx, "", id); err != nil {
		t.Fatal(err)
	}
	if d := describeStore(t, ks, id); d.ConnectionState != kms.ConnectionConnected || d.ConnectionErrorCode != "" {
		t.Fatalf("after connect: %+v", d)
	}
	if err := ks.ConnectCustomKeyStore(ctx, "", id); err != nil {
		t.Fatalf("connecting a CONNECTED store is a no-op: %v", err)
	}
	_, err = ks.CreateKey(ctx, kms.CreateKeyInput{Origin: kms.OriginCloudHSM, CustomKeyStoreID: id, Account: other})
	wantCodeName(t, err, kms.CodeCustomKeyStoreNotFound)
	_, err = ks.CreateKey(ctx, kms.CreateKeyInput{Origin: kms.OriginCloudHSM, CustomKeyStoreID: id, KeySpec: kms.KeySpecRSA2048})
	wantCodeName(t, err, kms.CodeUnsupportedOperation)
	md, err := ks.CreateKey(ctx, kms.CreateKeyInput{Origin: kms.OriginCloudHSM, CustomKeyStoreID: id, Description: "in the token"})
	if err != nil {
		t.Fatal(err)
	}
	if md.Origin != kms.OriginCloudHSM || md.CustomKeyStoreID != id || md.CloudHsmClusterID != label || md.State != kms.KeyEnabled {
		t.Fatalf("key metadata: %+v", md)
	}
	u, _ := parseUUID(md.KeyID)
	obj := inspectToken(t, label, pin, u)
	if obj.found != 1 || !obj.sensitive || obj.extractable || obj.valueDisclosed || obj.label != tokenKeyLabel(u) {
		t.Fatalf("token object of the key: %+v", obj)
	}
	if raw, _ := os.ReadFile(filepath.Join(dir, stateName)); !bytes.Contains(raw, []byte(`"custom_key_store": "`+id+`"`)) {
		t.Fatalf("state does not tie the key to its store:\n%s", raw)
	}

	// Cryptography in the token, blobs of the software layout.
	soft := createKey(t, ks)
	ec := kms.EncryptionContext{"volume": "v1", "file": "f1"}
	ct, arn, err := ks.Encrypt(ctx, md.KeyID, []byte("token secret"), ec)
	if err != nil {
		t.Fatal(err)
	}
	if arn != md.ARN || len(ct) != blobOverhead+len("token secret") || ct[0] != blobFormatV1 || !bytes.Equal(ct[1:17], u[:]) {
		t.Fatalf("token blob: arn %s, %d bytes, % x", arn, len(ct), ct[:17])
	}
	if pt, _, err := ks.Decrypt(ctx, "", ct, ec); err != nil || string(pt) != "token secret" {
		t.Fatalf("Decrypt: %q, %v", pt, err)
	}
	_, _, err = ks.Decrypt(ctx, "", ct, kms.EncryptionContext{"volume": "v2", "file": "f1"})
	wantCode(t, err, kms.ErrInvalidCiphertext)
	flipped := bytes.Clone(ct)
	flipped[len(flipped)-1] ^= 1
	_, _, err = ks.Decrypt(ctx, "", flipped, ec)
	wantCode(t, err, kms.ErrInvalidCiphertext)
	dk, err := ks.GenerateDataKey(ctx, md.KeyID, 32, ec)
	if err != nil {
		t.Fatal(err)
	}
	if pt, _, err := ks.Decrypt(ctx, md.KeyID, dk.CiphertextBlob, ec); err != nil || !bytes.Equal(pt, dk.Plaintext) {
		t.Fatalf("data key does not decrypt: %v", err)
	}
	wo, _, err := ks.GenerateDataKeyWithoutPlaintext(ctx, md.KeyID, 16, ec)
	if err != nil || len(wo) != blobOverhead+16 {
		t.Fatalf("GenerateDataKeyWithoutPlaintext: %d bytes, %v", len(wo), err)
	}
	// ReEncrypt from the token to software and back.
	toSoft, src, dst, err := ks.ReEncrypt(ctx, dk.CiphertextBlob, ec, soft.KeyID, nil)
	if err != nil || src != md.ARN || dst != soft.ARN {
		t.Fatalf("ReEncrypt to software: %s -> %s, %v", src, dst, err)
	}
	back, _, _, err := ks.ReEncrypt(ctx, toSoft, nil, md.KeyID, ec)
	if err != nil {
		t.Fatal(err)
	}
	if pt, _, err := ks.Decrypt(ctx, "", back, ec); err != nil || !bytes.Equal(pt, dk.Plaintext) {
		t.Fatalf("after ReEncrypt both ways: %v", err)
	}
	// The software key's material would decrypt a software blob; it cannot
	// open the token blob (the key is not in this process).
	k2 := ks.st.Keys[md.KeyID]
	if k2.Versions[0].Material != nil {
		t.Fatal("a key in a custom key store has material in keystore.json")
	}

	// No rotation, as AWS.
	wantCodeName(t, ks.EnableKeyRotation(ctx, md.KeyID, 0), kms.CodeUnsupportedOperation)
	wantCodeName(t, ks.RotateKeyOnDemand(ctx, md.KeyID), kms.CodeUnsupportedOperation)

	// A second process uses the key, then sees the store disconnected.
	ks2 := open()
	if pt, _, err := ks2.Decrypt(ctx, "", ct, ec); err != nil || string(pt) != "token secret" {
		t.Fatalf("second keystore: %q, %v", pt, err)
	}
	wantCodeName(t, ks.UpdateCustomKeyStore(ctx, kms.UpdateCustomKeyStoreInput{ID: id, KeyStorePassword: []byte("x")}), kms.CodeCustomKeyStoreInvalidState)
	wantCodeName(t, ks.DeleteCustomKeyStore(ctx, "", id), kms.CodeCustomKeyStoreInvalidState)
	if err := ks.UpdateCustomKeyStore(ctx, kms.UpdateCustomKeyStoreInput{ID: id, NewName: "hsm-renamed"}); err != nil {
		t.Fatalf("renaming a connected store: %v", err)
	}
	if err := ks.DisconnectCustomKeyStore(ctx, "", id); err != nil {
		t.Fatal(err)
	}
	for name, k := range map[string]*Keystore{"this": ks, "other": ks2} {
		_, _, err = k.Decrypt(ctx, "", ct, ec)
		wantCode(t, err, kms.ErrInvalidState)
		_, err = k.GenerateDataKey(ctx, md.KeyID, 32, ec)
		wantCode(t, err, kms.ErrInvalidState)
		_, _, _, err = k.ReEncrypt(ctx, toSoft, nil, md.KeyID, ec)
		wantCode(t, err, kms.ErrInvalidState)
		got, err := k.DescribeKey(ctx, md.KeyID)
		if err != nil || got.State != kms.KeyUnavailable {
			t.Fatalf("%s keystore: key in a disconnected store: %s, %v", name, got.State, err)
		}
	}
	if _, _, err := ks.Decrypt(ctx, "", toSoft, nil); err != nil {
		t.Fatalf("software keys are unaffected: %v", err)
	}
	_, err = ks.CreateKey(ctx, kms.CreateKeyInput{Origin: kms.OriginCloudHSM, CustomKeyStoreID: id})
	wantCodeName(t, err, kms.CodeCustomKeyStoreInvalidState)
	wantCodeName(t, ks.DeleteCustomKeyStore(ctx, "", id), kms.CodeCustomKeyStoreHasCMKs)
	ks2.Close()

	// A wrong PIN: FAILED, INVALID_CREDENTIALS; FAILED must be
	// disconnected before connecting again.
	if err := ks.UpdateCustomKeyStore(ctx, kms.UpdateCustomKeyStoreInput{ID: id, KeyStorePassword: []byte("wrong-pin")}); err != nil {
		t.Fatal(err)
	}
	if err := ks.ConnectCustomKeyStore(ctx, "", id); err != nil {
		t.Fatal(err)
	}
	if d := describeStore(t, ks, id); d.ConnectionState != kms.ConnectionFailed || d.ConnectionErrorCode != kms.ConnErrInvalidCredentials {
		t.Fatalf("connect with a wrong PIN: %+v", d)
	}
	_, _, err = ks.Decrypt(ctx, "", ct, ec)
	wantCode(t, err, kms.ErrInvalidState)
	wantCodeName(t, ks.ConnectCustomKeyStore(ctx, "", id), kms.CodeCustomKeyStoreInvalidState)
	if err := ks.DisconnectCustomKeyStore(ctx, "", id); err != nil {
		t.Fatal(err)
	}
	if err := ks.UpdateCustomKeyStore(ctx, kms.UpdateCustomKeyStoreInput{ID: id, KeyStorePassword: []byte(pin)}); err != nil {
		t.Fatal(err)
	}
	wantCodeName(t, ks.UpdateCustomKeyStore(ctx, kms.UpdateCustomKeyStoreInput{ID: id, CloudHsmClusterID: "no-such-token"}), kms.CodeCloudHsmClusterNotFound)
	if err := ks.ConnectCustomKeyStore(ctx, "", id); err != nil {
		t.Fatal(err)
	}
	if pt, _, err := ks.Decrypt(ctx, "", ct, ec); err != nil || string(pt) != "token secret" {
		t.Fatalf("after reconnecting: %q, %v", pt, err)
	}

	// Reopened: the store and its key are still there.
	ks.Close()
	ks = open()
	if pt, _, err := ks.Decrypt(ctx, "", ct, ec); err != nil || string(pt) != "token secret" {
		t.Fatalf("after reopening: %q, %v", pt, err)
	}
	if d := describeStore(t, ks, id); d.Name != "hsm-renamed" {
		t.Fatalf("rename lost: %+v", d)
	}

	// Deletion destroys the token object at the end of the window.
	if _, err := ks.ScheduleKeyDeletion(ctx, md.KeyID, 7); err != nil {
		t.Fatal(err)
	}
	if got, _ := ks.DescribeKey(ctx, md.KeyID); got.State != kms.KeyPendingDeletion {
		t.Fatalf("pending deletion: %s", got.State)
	}
	if err := ks.CancelKeyDeletion(ctx, md.KeyID); err != nil {
		t.Fatal(err)
	}
	if got, _ := ks.DescribeKey(ctx, md.KeyID); got.State != kms.KeyDisabled {
		t.Fatalf("cancelled deletion of a token key leaves it %s, want Disabled", got.State)
	}
	if _, err := ks.ScheduleKeyDeletion(ctx, md.KeyID, 7); err != nil {
		t.Fatal(err)
	}
	if o := inspectToken(t, label, pin, u); o.found != 1 {
		t.Fatalf("token object gone before the deletion date: %+v", o)
	}
	clock.Advance(7*24*time.Hour + time.Second)
	_, err = ks.DescribeKey(ctx, md.KeyID)
	wantCode(t, err, kms.ErrNotFound)
	if o := inspectToken(t, label, pin, u); o.found != 0 {
		t.Fatalf("token object left after the key was deleted: %+v", o)
	}
	if err := ks.DisconnectCustomKeyStore(ctx, "", id); err != nil {
		t.Fatal(err)
	}
	if err := ks.DeleteCustomKeyStore(ctx, "", id); err != nil {
		t.Fatal(err)
	}
	_, err = ks.DescribeCustomKeyStores(ctx, "", id, "")
	wantCodeName(t, err, kms.CodeCustomKeyStoreNotFound)
	if f := stateFormat(); f != stateFormatV1 {
		t.Fatalf("state without custom key stores has format %d, want 1", f)
	}
	if w := warn.all(); strings.Contains(w, pin) {
		t.Fatalf("a warning shows the PIN: %s", w)
	}
}

// TestCustomKeyStoreWithoutModule: a process with no PKCS#11 module for
// custom key stores cannot create one, and a key of a CONNECTED store is
// KMSInvalidStateException there, not a crash or a software fallback.
func TestCustomKeyStoreWithoutModule(t *testing.T) {
	ctx := context.Background()
	const label, pin = "kmsfs-cks-nomod", "cks-pin-5678"
	newSoftHSMToken(t, label, pin)
	dir := filepath.Join(t.TempDir(), "ks")
	ks, err := Open(dir, Options{Warn: func(string) {}})
	if err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	_, err = ks.CreateCustomKeyStore(ctx, kms.CreateCustomKeyStoreInput{Name: "s", CloudHsmClusterID: label, KeyStorePassword: []byte(pin)})
	if kms.Code(err) != kms.CodeCloudHsmClusterNotFound || !strings.Contains(err.Error(), "no PKCS#11 module") {
		t.Fatalf("create without a module: %v", err)
	}
	withMod, err := Open(dir, Options{CustomKeyStoreModule: softHSMModule, Warn: func(string) {}})
	if err != nil {
		t.Fatal(err)
	}
	defer withMod.Close()
	id, err := withMod.CreateCustomKeyStore(ctx, kms.CreateCustomKeyStoreInput{Name: "s", CloudHsmClusterID: label, KeyStorePassword: []byte(pin)})
	if err != nil {
		t.Fatal(err)
	}
	if err := withMod.ConnectCustomKeyStore(ctx, "", id); err != nil {
		t.Fatal(err)
	}
	md, err := withMod.CreateKey(ctx, kms.CreateKeyInput{Origin: kms.OriginCloudHSM, CustomKeyStoreID: id})
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = ks.Encrypt(ctx, md.KeyID, []byte("x"), nil)
	if kms.Code(err) != kms.CodeInvalidState || !strings.Contains(err.Error(), "cannot reach its token") {
		t.Fatalf("use without a module: %v", err)
	}
}

func TestParseTrustAnchor(t *testing.T) {
	ta, err := parseTrustAnchor("pkcs11:token=My%20Token;serial=abc;manufacturer=SoftHSM%20project")
	if err != nil || ta["token"] != "My Token" || ta["serial"] != "abc" || ta["manufacturer"] != "SoftHSM project" {
		t.Fatalf("%v, %v", ta, err)
	}
	if err := ta.check(tokenInfo{Label: "My Token", Serial: "abc", Manufacturer: "SoftHSM project", Model: "x"}); err != nil {
		t.Fatal(err)
	}
	if err := ta.check(tokenInfo{Label: "My Token", Serial: "abd", Manufacturer: "SoftHSM project"}); err == nil {
		t.Fatal("a different serial passed")
	}
	info := tokenInfo{Label: "a;b=c", Serial: "1 2", Manufacturer: "m%", Model: "x/y"}
	back, err := parseTrustAnchor(anchorFor(info))
	if err != nil || back.check(info) != nil {
		t.Fatalf("anchorFor does not round-trip: %s: %v", anchorFor(info), err)
	}
	for _, bad := range []string{"", "pkcs11:token=x", "https://x", "pkcs11:serial=1;pin-value=1234", "pkcs11:serial=1?module-path=/x.so", "pkcs11:serial=1;serial=2"} {
		if _, err := parseTrustAnchor(bad); kms.Code(err) != kms.CodeIncorrectTrustAnchor {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

// TestCustomKeyStoreConcurrentUseAndDisconnect: many goroutines share the
// store's session pool; a disconnect in the middle of their work makes each
// later call fail with KMSInvalidStateException, never with anything else
// (no use of a closed session, no hang), and a reconnect serves them again.
// Half the workers wait at their midpoint until the disconnect has happened,
// so refusals are certain; the other half run on through it, so the
// disconnect races live calls.
func TestCustomKeyStoreConcurrentUseAndDisconnect(t *testing.T) {
	ctx := context.Background()
	const label, pin = "kmsfs-cks-conc", "cks-pin-9753"
	newSoftHSMToken(t, label, pin)
	ks, err := Open(filepath.Join(t.TempDir(), "ks"), Options{CustomKeyStoreModule: softHSMModule, Warn: func(string) {}})
	if err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	id, err := ks.CreateCustomKeyStore(ctx, kms.CreateCustomKeyStoreInput{Name: "s", CloudHsmClusterID: label, KeyStorePassword: []byte(pin)})
	if err != nil {
		t.Fatal(err)
	}
	if err := ks.ConnectCustomKeyStore(ctx, "", id); err != nil {
		t.Fatal(err)
	}
	md, err := ks.CreateKey(ctx, kms.CreateKeyInput{Origin: kms.OriginCloudHSM, CustomKeyStoreID: id})
	if err != nil {
		t.Fatal(err)
	}
	ec := kms.EncryptionContext{"k": "v"}
	const workers, rounds = 24, 40
	var ok, refused atomicCount
	errs := make(chan error, workers)
	start := make(chan struct{})
	half := make(chan struct{}, workers)
	disconnected := make(chan struct{})
	for w := 0; w < workers; w++ {
		waits := w%2 == 0
		go func() {
			<-start
			for i := 0; i < rounds; i++ {
				if i == rounds/2 {
					half <- struct{}{}
					if waits {
						<-disconnected
					}
				}
				dk, err := ks.GenerateDataKey(ctx, md.KeyID, 32, ec)
				if err == nil {
					var pt []byte
					pt, _, err = ks.Decrypt(ctx, "", dk.CiphertextBlob, ec)
					if err == nil && !bytes.Equal(pt, dk.Plaintext) {
						errs <- errorString("a data key decrypted to other bytes")
						return
					}
				}
				switch {
				case err == nil:
					ok.add()
				case kms.Code(err) == kms.CodeInvalidState:
					refused.add()
				default:
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	close(start)
	for w := 0; w < workers; w++ {
		<-half
	}
	if err := ks.DisconnectCustomKeyStore(ctx, "", id); err != nil {
		t.Fatal(err)
	}
	close(disconnected)
	for w := 0; w < workers; w++ {
		if err := <-errs; err != nil {
			t.Fatalf("a worker failed: %v", err)
		}
	}
	if ok.get() < workers*rounds/2 || refused.get() < workers/2*rounds/2 {
		t.Fatalf("%d calls succeeded and %d were refused; want about half of %d each", ok.get(), refused.get(), workers*rounds)
	}
	if err := ks.ConnectCustomKeyStore(ctx, "", id); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.GenerateDataKey(ctx, md.KeyID, 32, ec); err != nil {
		t.Fatalf("after reconnecting: %v", err)
	}
}

type errorString string

func (e errorString) Error() string { return string(e) }

type atomicCount struct {
	mu sync.Mutex
	n  int
}

func (c *atomicCount) add() { c.mu.Lock(); c.n++; c.mu.Unlock() }
func (c *atomicCount) get() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// TestCustomKeyStoreLeftConnecting: a store left CONNECTING (a process that
// stopped between recording the attempt and its outcome) keeps its keys
// Unavailable and can be connected, or disconnected, again.
func TestCustomKeyStoreLeftConnecting(t *testing.T) {
	ctx := context.Background()
	const label, pin = "kmsfs-cks-connecting", "cks-pin-1470"
	newSoftHSMToken(t, label, pin)
	ks, err := Open(filepath.Join(t.TempDir(), "ks"), Options{CustomKeyStoreModule: softHSMModule, Warn: func(string) {}})
	if err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	id, err := ks.CreateCustomKeyStore(ctx, kms.CreateCustomKeyStoreInput{Name: "s", CloudHsmClusterID: label, KeyStorePassword: []byte(pin)})
	if err != nil {
		t.Fatal(err)
	}
	if err := ks.ConnectCustomKeyStore(ctx, "", id); err != nil {
		t.Fatal(err)
	}
	md, err := ks.CreateKey(ctx, kms.CreateKeyInput{Origin: kms.OriginCloudHSM, CustomKeyStoreID: id})
	if err != nil {
		t.Fatal(err)
	}
	setState := func(conn string) {
		t.Helper()
		if err := ks.change(ctx, func(st *state, now time.Time) (bool, error) {
			st.CustomKeyStores[id].State = conn
			return true, nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	setState(kms.ConnectionConnecting)
	if d := describeStore(t, ks, id); d.ConnectionState != kms.ConnectionConnecting {
		t.Fatalf("store: %+v", d)
	}
	_, err = ks.GenerateDataKey(ctx, md.KeyID, 32, nil)
	wantCode(t, err, kms.ErrInvalidState)
	if got, _ := ks.DescribeKey(ctx, md.KeyID); got.State != kms.KeyUnavailable {
		t.Fatalf("key of a CONNECTING store: %s", got.State)
	}
	if err := ks.ConnectCustomKeyStore(ctx, "", id); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.GenerateDataKey(ctx, md.KeyID, 32, nil); err != nil {
		t.Fatalf("after connecting a CONNECTING store: %v", err)
	}
	setState(kms.ConnectionConnecting)
	if err := ks.DisconnectCustomKeyStore(ctx, "", id); err != nil {
		t.Fatalf("disconnecting a CONNECTING store: %v", err)
	}
}

// TestCustomKeyStoreLoginAgainAfterLosingSessions: when the token drops
// every session of the process (and so its login), the call that finds out
// fails with KMSInvalidStateException and the next one logs in again.
func TestCustomKeyStoreLoginAgainAfterLosingSessions(t *testing.T) {
	ctx := context.Background()
	const label, pin = "kmsfs-cks-relogin", "cks-pin-8642"
	newSoftHSMToken(t, label, pin)
	ks, err := Open(filepath.Join(t.TempDir(), "ks"), Options{CustomKeyStoreModule: softHSMModule, Warn: func(string) {}})
	if err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	id, err := ks.CreateCustomKeyStore(ctx, kms.CreateCustomKeyStoreInput{Name: "s", CloudHsmClusterID: label, KeyStorePassword: []byte(pin)})
	if err != nil {
		t.Fatal(err)
	}
	if err := ks.ConnectCustomKeyStore(ctx, "", id); err != nil {
		t.Fatal(err)
	}
	md, err := ks.CreateKey(ctx, kms.CreateKeyInput{Origin: kms.OriginCloudHSM, CustomKeyStoreID: id})
	if err != nil {
		t.Fatal(err)
	}
	ct, _, err := ks.Encrypt(ctx, md.KeyID, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	p := pkcs11.New(softHSMModule)
	if err := p.Initialize(); err != nil && err != pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		t.Fatal(err)
	}
	slots, err := p.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	for _, slot := range slots {
		if err := p.CloseAllSessions(slot); err != nil {
			t.Fatal(err)
		}
	}
	_, _, err = ks.Decrypt(ctx, "", ct, nil)
	wantCode(t, err, kms.ErrInvalidState)
	if pt, _, err := ks.Decrypt(ctx, "", ct, nil); err != nil || string(pt) != "x" {
		t.Fatalf("the call after the sessions were lost: %q, %v", pt, err)
	}
	if d := describeStore(t, ks, id); d.ConnectionState != kms.ConnectionConnected {
		t.Fatalf("store: %+v", d)
	}
}
