package keystore

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"os"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/kms"
)

// wrapForImport does the caller's side of an import: encrypt material to the
// public key with RSA-OAEP-SHA-256.
func wrapForImport(t *testing.T, p kms.ImportParameters, material []byte) []byte {
	t.Helper()
	pub, err := x509.ParsePKIXPublicKey(p.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub.(*rsa.PublicKey), material, nil)
	if err != nil {
		t.Fatal(err)
	}
	return enc
}

// TestImportedKeyMaterialLifecycle follows a BYOK key through AWS's rules:
// PendingImport until material arrives; usable after; deleting the material
// makes it PendingImport and its ciphertext unreadable; only the same
// material can come back, each token once, within 24 hours; material with an
// expiry is deleted when it passes; such keys do not rotate.
func TestImportedKeyMaterialLifecycle(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	ks := f.open(t, nil)
	md, err := ks.CreateKey(ctx, kms.CreateKeyInput{Origin: "EXTERNAL"})
	if err != nil {
		t.Fatal(err)
	}
	if md.State != kms.KeyPendingImport {
		t.Fatalf("new EXTERNAL key is %s", md.State)
	}
	_, _, err = ks.Encrypt(ctx, md.KeyID, []byte("x"), nil)
	wantCode(t, err, kms.ErrInvalidState)

	material := bytes.Repeat([]byte{0x5A}, 32)
	params, err := ks.GetParametersForImport(ctx, md.KeyID, kms.WrappingRSAOAEPSHA256, kms.WrappingKeyRSA2048)
	if err != nil {
		t.Fatal(err)
	}
	if params.KeyARN != md.ARN || !params.ValidTo.Equal(f.clock.Now().Add(24*time.Hour)) {
		t.Fatalf("import parameters %+v", params)
	}
	state, _ := os.ReadFile(f.dir + "/keystore.json")
	if bytes.Contains(state, []byte("PRIVATE KEY")) {
		t.Fatal("the wrapping private key is stored in the clear")
	}
	// Material of the wrong length, and garbage, are refused.
	wantCode(t, ks.ImportKeyMaterial(ctx, md.KeyID, params.ImportToken, wrapForImport(t, params, material[:16]), time.Time{}), kms.ErrValidation)
	wantCode(t, ks.ImportKeyMaterial(ctx, md.KeyID, params.ImportToken, bytes.Repeat([]byte{1}, 256), time.Time{}), kms.ErrInvalidCiphertext)
	if err := ks.ImportKeyMaterial(ctx, md.KeyID, params.ImportToken, wrapForImport(t, params, material), time.Time{}); err != nil {
		t.Fatal(err)
	}
	ct, _, err := ks.Encrypt(ctx, md.KeyID, []byte("secret"), kms.EncryptionContext{"a": "b"})
	if err != nil {
		t.Fatalf("encrypt after import: %v", err)
	}
	got, err := ks.DescribeKey(ctx, md.KeyID)
	if err != nil || got.State != kms.KeyEnabled || got.ExpirationModel != "KEY_MATERIAL_DOES_NOT_EXPIRE" {
		t.Fatalf("after import: %+v, %v", got, err)
	}
	// A token works once.
	wantCode(t, ks.ImportKeyMaterial(ctx, md.KeyID, params.ImportToken, wrapForImport(t, params, material), time.Time{}), kms.ErrInvalidImportToken)
	wantCodeName(t, ks.RotateKeyOnDemand(ctx, md.KeyID), kms.CodeUnsupportedOperation)

	if err := ks.DeleteImportedKeyMaterial(ctx, md.KeyID); err != nil {
		t.Fatal(err)
	}
	_, _, err = ks.Decrypt(ctx, md.KeyID, ct, kms.EncryptionContext{"a": "b"})
	wantCode(t, err, kms.ErrInvalidState)
	// A second process sharing the keystore sees the deletion too.
	other := f.open(t, nil)
	_, _, err = other.Decrypt(ctx, "", ct, kms.EncryptionContext{"a": "b"})
	wantCode(t, err, kms.ErrInvalidState)

	params2, err := ks.GetParametersForImport(ctx, md.KeyID, kms.WrappingRSAOAEPSHA256, kms.WrappingKeyRSA2048)
	if err != nil {
		t.Fatal(err)
	}
	wantCode(t, ks.ImportKeyMaterial(ctx, md.KeyID, params2.ImportToken, wrapForImport(t, params2, bytes.Repeat([]byte{0x33}, 32)), time.Time{}), kms.ErrIncorrectKeyMaterial)
	// The token of a refused import can be used again (nothing changed);
	// now with the right material and an expiry.
	expiry := f.clock.Now().Add(48 * time.Hour)
	if err := ks.ImportKeyMaterial(ctx, md.KeyID, params2.ImportToken, wrapForImport(t, params2, material), expiry); err != nil {
		t.Fatal(err)
	}
	if pt, _, err := ks.Decrypt(ctx, "", ct, kms.EncryptionContext{"a": "b"}); err != nil || string(pt) != "secret" {
		t.Fatalf("decrypt after re-import: %q, %v", pt, err)
	}
	got, _ = ks.DescribeKey(ctx, md.KeyID)
	if got.ExpirationModel != "KEY_MATERIAL_EXPIRES" || !got.ValidTo.Equal(expiry) {
		t.Fatalf("expiry not reported: %+v", got)
	}

	// Tokens expire after 24 hours; material at its ValidTo.
	params3, err := ks.GetParametersForImport(ctx, md.KeyID, kms.WrappingRSAOAEPSHA1, kms.WrappingKeyRSA2048)
	if err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(25 * time.Hour)
	wantCode(t, ks.ImportKeyMaterial(ctx, md.KeyID, params3.ImportToken, []byte("x"), time.Time{}), kms.ErrExpiredImportToken)
	f.clock.Advance(24 * time.Hour)
	_, _, err = ks.Decrypt(ctx, "", ct, kms.EncryptionContext{"a": "b"})
	wantCode(t, err, kms.ErrInvalidState)
	if got, _ := ks.DescribeKey(ctx, md.KeyID); got.State != kms.KeyPendingImport {
		t.Fatalf("after the material expired the key is %s, want PendingImport", got.State)
	}

	// Keys whose material KMS generated take no imports.
	plain := createKey(t, ks)
	_, err = ks.GetParametersForImport(ctx, plain.KeyID, kms.WrappingRSAOAEPSHA256, kms.WrappingKeyRSA2048)
	wantCodeName(t, err, kms.CodeUnsupportedOperation)
	_, err = ks.GetParametersForImport(ctx, md.KeyID, "RSAES_PKCS1_V1_5", kms.WrappingKeyRSA2048)
	wantCode(t, err, kms.ErrValidation)
}
