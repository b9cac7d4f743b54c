package server

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"os"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/kms"
	"github.com/kmsfs/kmsfs/kms/awskms"
)

func TestAsymmetricKeysOverTheAPI(t *testing.T) {
	h := newHarness(t, 0)
	ctx := context.Background()
	alice := h.client("AKIDALICE", awskms.Options{})
	mallory := h.client("AKIDMAL", awskms.Options{MaxAttempts: 1})
	msg := []byte("signed over the wire")
	digest := sha256.Sum256(msg)

	// RSA PSS and ECDSA P-256: signatures verify with the public key
	// alone, and through Verify.
	for _, c := range []struct{ spec, alg string }{
		{kms.KeySpecRSA2048, "RSASSA_PSS_SHA_256"},
		{kms.KeySpecRSA2048, "RSASSA_PKCS1_V1_5_SHA_256"},
		{kms.KeySpecP256, "ECDSA_SHA_256"},
	} {
		md, err := alice.CreateKey(ctx, kms.CreateKeyInput{KeySpec: c.spec, KeyUsage: kms.KeyUsageSignVerify})
		if err != nil {
			t.Fatalf("%s: CreateKey: %v", c.spec, err)
		}
		got, err := alice.DescribeKey(ctx, md.KeyID)
		if err != nil || got.KeySpec != c.spec || got.KeyUsage != kms.KeyUsageSignVerify || len(got.SigningAlgorithms) == 0 || len(got.EncryptionAlgorithms) != 0 {
			t.Fatalf("%s: DescribeKey %+v %v", c.spec, got, err)
		}
		pk, err := alice.GetPublicKey(ctx, md.KeyID)
		if err != nil || pk.KeySpec != c.spec || pk.KeyUsage != kms.KeyUsageSignVerify {
			t.Fatalf("%s: GetPublicKey %+v %v", c.spec, pk, err)
		}
		pub, err := x509.ParsePKIXPublicKey(pk.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		sig, arn, err := alice.Sign(ctx, md.KeyID, msg, kms.MessageTypeRaw, c.alg)
		if err != nil || arn != md.ARN {
			t.Fatalf("%s %s: Sign: %v", c.spec, c.alg, err)
		}
		switch p := pub.(type) {
		case *rsa.PublicKey:
			if strings.Contains(c.alg, "PSS") {
				err = rsa.VerifyPSS(p, crypto.SHA256, digest[:], sig, &rsa.PSSOptions{SaltLength: 32})
			} else {
				err = rsa.VerifyPKCS1v15(p, crypto.SHA256, digest[:], sig)
			}
		case *ecdsa.PublicKey:
			if !ecdsa.VerifyASN1(p, digest[:], sig) {
				err = kms.ErrKMSInvalidSignature
			}
		}
		if err != nil {
			t.Fatalf("%s %s: signature does not verify with the public key: %v", c.spec, c.alg, err)
		}
		if _, err := alice.Verify(ctx, md.KeyID, digest[:], kms.MessageTypeDigest, sig, c.alg); err != nil {
			t.Fatalf("%s %s: Verify: %v", c.spec, c.alg, err)
		}
		_, err = alice.Verify(ctx, md.KeyID, []byte("tampered"), kms.MessageTypeRaw, sig, c.alg)
		wantCode(t, err, kms.ErrKMSInvalidSignature)
		// Another account may not sign with it.
		_, _, err = mallory.Sign(ctx, md.ARN, msg, kms.MessageTypeRaw, c.alg)
		wantCode(t, err, kms.ErrAccessDenied)
		// Symmetric operations and rotation are refused.
		_, err = alice.GenerateDataKey(ctx, md.KeyID, 32, nil)
		wantCode(t, err, kms.ErrInvalidKeyUsage)
		wantCode(t, alice.EnableKeyRotation(ctx, md.KeyID, 0), &kms.Error{Code: kms.CodeUnsupportedOperation})
	}

	// A grant gives another account Sign, and only Sign.
	p256, err := alice.CreateKey(ctx, kms.CreateKeyInput{KeySpec: kms.KeySpecP256, KeyUsage: kms.KeyUsageSignVerify})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := alice.CreateGrant(ctx, kms.Grant{KeyID: p256.ARN, GranteePrincipal: malloryARN, Operations: []string{"Sign"}}); err != nil {
		t.Fatal(err)
	}
	sig, _, err := mallory.Sign(ctx, p256.ARN, msg, kms.MessageTypeRaw, "ECDSA_SHA_256")
	if err != nil {
		t.Fatalf("granted Sign: %v", err)
	}
	_, err = mallory.Verify(ctx, p256.ARN, msg, kms.MessageTypeRaw, sig, "ECDSA_SHA_256")
	wantCode(t, err, kms.ErrAccessDenied)
	_, _, err = alice.Sign(ctx, p256.KeyID, msg, kms.MessageTypeRaw, "ECDSA_SHA_384")
	wantCode(t, err, kms.ErrInvalidKeyUsage)

	// RSA-OAEP: ciphertext made with the public key decrypts; too long a
	// plaintext is a ValidationException.
	enc, err := alice.CreateKey(ctx, kms.CreateKeyInput{KeySpec: kms.KeySpecRSA3072, KeyUsage: kms.KeyUsageEncryptDecrypt})
	if err != nil {
		t.Fatal(err)
	}
	pk, err := alice.GetPublicKey(ctx, enc.KeyID)
	if err != nil || strings.Join(pk.EncryptionAlgorithms, ",") != "RSAES_OAEP_SHA_1,RSAES_OAEP_SHA_256" {
		t.Fatalf("GetPublicKey: %+v %v", pk, err)
	}
	pub, _ := x509.ParsePKIXPublicKey(pk.PublicKey)
	ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub.(*rsa.PublicKey), []byte("to the KMS"), nil)
	if err != nil {
		t.Fatal(err)
	}
	pt, _, err := alice.DecryptAsymmetric(ctx, enc.KeyID, ct, "RSAES_OAEP_SHA_256")
	if err != nil || string(pt) != "to the KMS" {
		t.Fatalf("DecryptAsymmetric: %q %v", pt, err)
	}
	ct, _, err = alice.EncryptAsymmetric(ctx, enc.KeyID, bytes.Repeat([]byte{1}, 318), "RSAES_OAEP_SHA_256")
	if err != nil {
		t.Fatalf("318 bytes under RSA_3072: %v", err)
	}
	if pt, _, err := alice.DecryptAsymmetric(ctx, enc.ARN, ct, "RSAES_OAEP_SHA_256"); err != nil || len(pt) != 318 {
		t.Fatalf("round trip: %v", err)
	}
	_, _, err = alice.EncryptAsymmetric(ctx, enc.KeyID, bytes.Repeat([]byte{1}, 319), "RSAES_OAEP_SHA_256")
	wantCode(t, err, kms.ErrValidation)
	_, _, err = alice.Encrypt(ctx, enc.KeyID, []byte("x"), nil)
	wantCode(t, err, kms.ErrInvalidKeyUsage)

	// HMAC.
	hm, err := alice.CreateKey(ctx, kms.CreateKeyInput{KeySpec: kms.KeySpecHMAC384, KeyUsage: kms.KeyUsageGenerateVerifyMac})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := alice.DescribeKey(ctx, hm.KeyID); strings.Join(got.MacAlgorithms, ",") != "HMAC_SHA_384" {
		t.Fatalf("MacAlgorithms %v", got.MacAlgorithms)
	}
	mac, _, err := alice.GenerateMac(ctx, hm.KeyID, msg, "HMAC_SHA_384")
	if err != nil || len(mac) != 48 {
		t.Fatalf("GenerateMac: %v", err)
	}
	if _, err := alice.VerifyMac(ctx, hm.KeyID, msg, mac, "HMAC_SHA_384"); err != nil {
		t.Fatalf("VerifyMac: %v", err)
	}
	mac[0] ^= 1
	_, err = alice.VerifyMac(ctx, hm.KeyID, msg, mac, "HMAC_SHA_384")
	wantCode(t, err, kms.ErrKMSInvalidMac)
	_, err = alice.GetPublicKey(ctx, hm.KeyID)
	wantCode(t, err, &kms.Error{Code: kms.CodeUnsupportedOperation})

	// Data key pairs under a symmetric key.
	sym, err := alice.CreateKey(ctx, kms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	ec := kms.EncryptionContext{"pair": "1"}
	dk, err := alice.GenerateDataKeyPair(ctx, sym.KeyID, kms.KeySpecP384, ec, false)
	if err != nil {
		t.Fatal(err)
	}
	priv, err := x509.ParsePKCS8PrivateKey(dk.PrivateKeyPlaintext)
	if err != nil {
		t.Fatal(err)
	}
	if der, _ := x509.MarshalPKIXPublicKey(priv.(crypto.Signer).Public()); !bytes.Equal(der, dk.PublicKey) {
		t.Fatal("data key pair: public key does not match the private key")
	}
	if pt, _, err := alice.Decrypt(ctx, "", dk.PrivateKeyCiphertextBlob, ec); err != nil || !bytes.Equal(pt, dk.PrivateKeyPlaintext) {
		t.Fatalf("wrapped private key: %v", err)
	}
	dk2, err := alice.GenerateDataKeyPair(ctx, sym.KeyID, kms.KeySpecRSA2048, nil, true)
	if err != nil || dk2.PrivateKeyPlaintext != nil || len(dk2.PublicKey) == 0 {
		t.Fatalf("without plaintext: %v", err)
	}
	_, err = alice.GenerateDataKeyPair(ctx, p256.KeyID, kms.KeySpecP256, nil, false)
	wantCode(t, err, kms.ErrInvalidKeyUsage)
	_, err = mallory.GenerateDataKeyPair(ctx, sym.ARN, kms.KeySpecP256, nil, false)
	wantCode(t, err, kms.ErrAccessDenied)

	// Every operation is audited.
	data, err := os.ReadFile(h.audit)
	if err != nil {
		t.Fatal(err)
	}
	for _, op := range []string{"GetPublicKey", "Sign", "Verify", "GenerateMac", "VerifyMac", "GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext"} {
		if !bytes.Contains(data, []byte(`"`+op+`"`)) {
			t.Fatalf("audit log has no %s entry", op)
		}
	}
}

func TestCreateKeySpecValidation(t *testing.T) {
	h := newHarness(t, 0)
	ctx := context.Background()
	alice := h.client("AKIDALICE", awskms.Options{MaxAttempts: 1})
	k1, err := alice.CreateKey(ctx, kms.CreateKeyInput{KeySpec: kms.KeySpecSecp256k1, KeyUsage: kms.KeyUsageSignVerify})
	if err != nil || k1.KeySpec != kms.KeySpecSecp256k1 || strings.Join(k1.SigningAlgorithms, ",") != "ECDSA_SHA_256" {
		t.Fatalf("secp256k1: %+v %v", k1, err)
	}
	_, err = alice.CreateKey(ctx, kms.CreateKeyInput{KeySpec: kms.KeySpecP521, KeyUsage: kms.KeyUsageGenerateVerifyMac})
	wantCode(t, err, kms.ErrValidation)
	md, err := alice.CreateKey(ctx, kms.CreateKeyInput{KeySpec: kms.KeySpecP521, KeyUsage: kms.KeyUsageSignVerify})
	if err != nil || md.KeySpec != kms.KeySpecP521 || strings.Join(md.SigningAlgorithms, ",") != "ECDSA_SHA_512" {
		t.Fatalf("P-521: %+v %v", md, err)
	}
	wantCode(t, alice.RotateKeyOnDemand(ctx, md.KeyID), &kms.Error{Code: kms.CodeUnsupportedOperation})
}

// The asymmetric operations' request parameters are condition keys a key
// policy can name: here a Deny of PKCS #1 v1.5 signatures.
func TestAsymmetricConditionKeys(t *testing.T) {
	h := newHarness(t, 0)
	ctx := context.Background()
	alice := h.client("AKIDALICE", awskms.Options{MaxAttempts: 1})
	md, err := alice.CreateKey(ctx, kms.CreateKeyInput{KeySpec: kms.KeySpecRSA2048, KeyUsage: kms.KeyUsageSignVerify})
	if err != nil {
		t.Fatal(err)
	}
	policy := `{"Version":"2012-10-17","Statement":[
		{"Effect":"Allow","Principal":{"AWS":"` + aliceARN + `"},"Action":"kms:*","Resource":"*"},
		{"Effect":"Deny","Principal":{"AWS":"` + aliceARN + `"},"Action":"kms:Sign","Resource":"*",
		 "Condition":{"StringLike":{"kms:SigningAlgorithm":"RSASSA_PKCS1_*"},"StringEquals":{"kms:MessageType":"RAW"}}}]}`
	if err := alice.PutKeyPolicy(ctx, md.KeyID, policy); err != nil {
		t.Fatalf("a policy naming kms:SigningAlgorithm and kms:MessageType: %v", err)
	}
	msg := []byte("m")
	if _, _, err := alice.Sign(ctx, md.KeyID, msg, kms.MessageTypeRaw, "RSASSA_PSS_SHA_256"); err != nil {
		t.Fatalf("PSS signature outside the Deny: %v", err)
	}
	_, _, err = alice.Sign(ctx, md.KeyID, msg, kms.MessageTypeRaw, "RSASSA_PKCS1_V1_5_SHA_256")
	wantCode(t, err, kms.ErrAccessDenied)
}
