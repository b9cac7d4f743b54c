package keystore

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"

	"github.com/kmsfs/kmsfs/kms"
)

func createSpec(t *testing.T, ks *Keystore, spec, usage string) kms.KeyMetadata {
	t.Helper()
	md, err := ks.CreateKey(context.Background(), kms.CreateKeyInput{KeySpec: spec, KeyUsage: usage})
	if err != nil {
		t.Fatalf("CreateKey %s %s: %v", spec, usage, err)
	}
	if md.KeySpec != spec || md.KeyUsage != usage {
		t.Fatalf("CreateKey %s %s: metadata says %s %s", spec, usage, md.KeySpec, md.KeyUsage)
	}
	return md
}

func publicKey(t *testing.T, ks *Keystore, keyID string) any {
	t.Helper()
	pk, err := ks.GetPublicKey(context.Background(), keyID)
	if err != nil {
		t.Fatalf("GetPublicKey: %v", err)
	}
	pub, err := x509.ParsePKIXPublicKey(pk.PublicKey)
	if err != nil {
		t.Fatalf("GetPublicKey: not DER SubjectPublicKeyInfo: %v", err)
	}
	return pub
}

func TestSignVerifyEverySpecAndAlgorithm(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	msg := []byte("message to sign")
	cases := []struct {
		spec string
		algs []string
	}{
		{kms.KeySpecRSA2048, []string{algPSS256, algPSS384, algPSS512, algPKCS256, algPKCS384, algPKCS512}},
		{kms.KeySpecP256, []string{algECDSA256}},
		{kms.KeySpecP384, []string{algECDSA384}},
		{kms.KeySpecP521, []string{algECDSA512}},
	}
	for _, c := range cases {
		md := createSpec(t, f.ks, c.spec, kms.KeyUsageSignVerify)
		if strings.Join(md.SigningAlgorithms, ",") != strings.Join(c.algs, ",") || md.EncryptionAlgorithms != nil {
			t.Fatalf("%s: algorithms %v / %v", c.spec, md.SigningAlgorithms, md.EncryptionAlgorithms)
		}
		pub := publicKey(t, f.ks, md.ARN)
		for _, alg := range c.algs {
			h, pss, _ := hashFor(alg)
			sig, arn, err := f.ks.Sign(ctx, md.KeyID, msg, kms.MessageTypeRaw, alg)
			if err != nil || arn != md.ARN {
				t.Fatalf("%s %s: Sign: %v (%s)", c.spec, alg, err, arn)
			}
			d := h.New()
			d.Write(msg)
			digest := d.Sum(nil)
			// An independent check with the public key alone.
			switch p := pub.(type) {
			case *rsa.PublicKey:
				if pss {
					err = rsa.VerifyPSS(p, h, digest, sig, &rsa.PSSOptions{SaltLength: h.Size(), Hash: h})
				} else {
					err = rsa.VerifyPKCS1v15(p, h, digest, sig)
				}
			case *ecdsa.PublicKey:
				if !ecdsa.VerifyASN1(p, digest, sig) {
					err = kms.ErrKMSInvalidSignature
				}
			}
			if err != nil {
				t.Fatalf("%s %s: signature does not verify with the public key: %v", c.spec, alg, err)
			}
			if _, err := f.ks.Verify(ctx, md.KeyID, msg, "", sig, alg); err != nil {
				t.Fatalf("%s %s: Verify: %v", c.spec, alg, err)
			}
			// DIGEST message type: the same digest verifies.
			if _, err := f.ks.Verify(ctx, md.KeyID, digest, kms.MessageTypeDigest, sig, alg); err != nil {
				t.Fatalf("%s %s: Verify DIGEST: %v", c.spec, alg, err)
			}
			_, err = f.ks.Verify(ctx, md.KeyID, []byte("another message"), "", sig, alg)
			wantCode(t, err, kms.ErrKMSInvalidSignature)
		}
	}
}

func TestSignErrors(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	p256 := createSpec(t, f.ks, kms.KeySpecP256, kms.KeyUsageSignVerify)
	rsaEnc := createSpec(t, f.ks, kms.KeySpecRSA2048, kms.KeyUsageEncryptDecrypt)
	sym := createKey(t, f.ks)

	_, _, err := f.ks.Sign(ctx, p256.KeyID, []byte("m"), "", algECDSA384)
	wantCode(t, err, kms.ErrInvalidKeyUsage) // P-256 pairs with SHA-256 only
	_, _, err = f.ks.Sign(ctx, p256.KeyID, []byte("m"), "", "ECDSA_SHA_1")
	wantCode(t, err, kms.ErrValidation)
	_, _, err = f.ks.Sign(ctx, p256.KeyID, make([]byte, kms.MaxSignMessage+1), "", algECDSA256)
	wantCode(t, err, kms.ErrValidation)
	_, _, err = f.ks.Sign(ctx, p256.KeyID, make([]byte, 20), kms.MessageTypeDigest, algECDSA256)
	wantCode(t, err, kms.ErrValidation)
	_, _, err = f.ks.Sign(ctx, rsaEnc.KeyID, []byte("m"), "", algPSS256)
	wantCode(t, err, kms.ErrInvalidKeyUsage)
	_, _, err = f.ks.Sign(ctx, sym.KeyID, []byte("m"), "", algPSS256)
	wantCode(t, err, kms.ErrInvalidKeyUsage)
	_, err = f.ks.GetPublicKey(ctx, sym.KeyID)
	wantCodeName(t, err, kms.CodeUnsupportedOperation)

	// Symmetric operations refuse asymmetric keys.
	_, err = f.ks.GenerateDataKey(ctx, p256.KeyID, 32, nil)
	wantCode(t, err, kms.ErrInvalidKeyUsage)
	_, _, err = f.ks.Encrypt(ctx, rsaEnc.KeyID, []byte("x"), nil)
	wantCode(t, err, kms.ErrInvalidKeyUsage)
	ct, _, err := f.ks.Encrypt(ctx, sym.KeyID, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _, _, err = f.ks.ReEncrypt(ctx, ct, nil, p256.KeyID, nil)
	wantCode(t, err, kms.ErrInvalidKeyUsage)

	// They do not rotate.
	wantCodeName(t, f.ks.EnableKeyRotation(ctx, p256.KeyID, 0), kms.CodeUnsupportedOperation)
	wantCodeName(t, f.ks.RotateKeyOnDemand(ctx, rsaEnc.KeyID), kms.CodeUnsupportedOperation)

	// Disabled keys do not sign.
	if err := f.ks.DisableKey(ctx, p256.KeyID); err != nil {
		t.Fatal(err)
	}
	_, _, err = f.ks.Sign(ctx, p256.KeyID, []byte("m"), "", algECDSA256)
	wantCode(t, err, kms.ErrDisabled)

	// Invalid specs.
	_, err = f.ks.CreateKey(ctx, kms.CreateKeyInput{KeySpec: kms.KeySpecSecp256k1, KeyUsage: kms.KeyUsageEncryptDecrypt})
	wantCode(t, err, kms.ErrValidation)
	_, err = f.ks.CreateKey(ctx, kms.CreateKeyInput{KeySpec: kms.KeySpecP256, KeyUsage: kms.KeyUsageEncryptDecrypt})
	wantCode(t, err, kms.ErrValidation)
	_, err = f.ks.CreateKey(ctx, kms.CreateKeyInput{KeySpec: kms.KeySpecHMAC256})
	wantCode(t, err, kms.ErrValidation) // default usage ENCRYPT_DECRYPT does not fit
	_, err = f.ks.CreateKey(ctx, kms.CreateKeyInput{KeySpec: "RSA_1024", KeyUsage: kms.KeyUsageSignVerify})
	wantCode(t, err, kms.ErrValidation)
}

func TestRSAOAEP(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	md := createSpec(t, f.ks, kms.KeySpecRSA2048, kms.KeyUsageEncryptDecrypt)
	if strings.Join(md.EncryptionAlgorithms, ",") != "RSAES_OAEP_SHA_1,RSAES_OAEP_SHA_256" {
		t.Fatalf("EncryptionAlgorithms %v", md.EncryptionAlgorithms)
	}
	pub := publicKey(t, f.ks, md.KeyID).(*rsa.PublicKey)
	for _, c := range []struct {
		alg   string
		h     crypto.Hash
		limit int
	}{{algOAEP1, crypto.SHA1, 214}, {algOAEP256, crypto.SHA256, 190}} {
		pt := bytes.Repeat([]byte{7}, c.limit)
		ct, _, err := f.ks.EncryptAsymmetric(ctx, md.KeyID, pt, c.alg)
		if err != nil {
			t.Fatalf("%s: Encrypt %d bytes: %v", c.alg, c.limit, err)
		}
		got, arn, err := f.ks.DecryptAsymmetric(ctx, md.KeyID, ct, c.alg)
		if err != nil || !bytes.Equal(got, pt) || arn != md.ARN {
			t.Fatalf("%s: round trip: %v", c.alg, err)
		}
		_, _, err = f.ks.EncryptAsymmetric(ctx, md.KeyID, append(pt, 1), c.alg)
		wantCode(t, err, kms.ErrValidation)
		// Ciphertext made outside with the public key decrypts.
		ext, err := rsa.EncryptOAEP(c.h.New(), rand.Reader, pub, []byte("outside"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if got, _, err := f.ks.DecryptAsymmetric(ctx, md.KeyID, ext, c.alg); err != nil || string(got) != "outside" {
			t.Fatalf("%s: external ciphertext: %q %v", c.alg, got, err)
		}
		ext[10] ^= 1
		_, _, err = f.ks.DecryptAsymmetric(ctx, md.KeyID, ext, c.alg)
		wantCode(t, err, kms.ErrInvalidCiphertext)
	}
	_, _, err := f.ks.EncryptAsymmetric(ctx, md.KeyID, []byte("x"), kms.KeySpecSymmetric)
	wantCode(t, err, kms.ErrInvalidKeyUsage)
	sign := createSpec(t, f.ks, kms.KeySpecRSA3072, kms.KeyUsageSignVerify)
	_, _, err = f.ks.EncryptAsymmetric(ctx, sign.KeyID, []byte("x"), algOAEP256)
	wantCode(t, err, kms.ErrInvalidKeyUsage)
}

func TestHMAC(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	for _, c := range []struct {
		spec, alg string
		size      int
	}{{kms.KeySpecHMAC224, algHMAC224, 28}, {kms.KeySpecHMAC256, algHMAC256, 32}, {kms.KeySpecHMAC384, algHMAC384, 48}, {kms.KeySpecHMAC512, algHMAC512, 64}} {
		md := createSpec(t, f.ks, c.spec, kms.KeyUsageGenerateVerifyMac)
		if len(md.MacAlgorithms) != 1 || md.MacAlgorithms[0] != c.alg {
			t.Fatalf("%s: MacAlgorithms %v", c.spec, md.MacAlgorithms)
		}
		mac, arn, err := f.ks.GenerateMac(ctx, md.KeyID, []byte("msg"), c.alg)
		if err != nil || len(mac) != c.size || arn != md.ARN {
			t.Fatalf("%s: GenerateMac: %d bytes, %v", c.spec, len(mac), err)
		}
		if _, err := f.ks.VerifyMac(ctx, md.KeyID, []byte("msg"), mac, c.alg); err != nil {
			t.Fatalf("%s: VerifyMac: %v", c.spec, err)
		}
		_, err = f.ks.VerifyMac(ctx, md.KeyID, []byte("msh"), mac, c.alg)
		wantCode(t, err, kms.ErrKMSInvalidMac)
		_, _, err = f.ks.GenerateMac(ctx, md.KeyID, []byte("msg"), algHMAC256+map[bool]string{true: "X"}[c.alg == algHMAC256])
		if c.alg == algHMAC256 {
			wantCode(t, err, kms.ErrValidation)
		} else {
			wantCode(t, err, kms.ErrInvalidKeyUsage)
		}
		_, err = f.ks.GetPublicKey(ctx, md.KeyID)
		wantCodeName(t, err, kms.CodeUnsupportedOperation)
	}
}

func TestGenerateDataKeyPair(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	sym := createKey(t, f.ks)
	ec := kms.EncryptionContext{"purpose": "test"}
	for _, spec := range []string{kms.KeySpecRSA2048, kms.KeySpecP256, kms.KeySpecP384, kms.KeySpecP521} {
		dk, err := f.ks.GenerateDataKeyPair(ctx, sym.KeyID, spec, ec, false)
		if err != nil {
			t.Fatalf("%s: %v", spec, err)
		}
		priv, err := x509.ParsePKCS8PrivateKey(dk.PrivateKeyPlaintext)
		if err != nil {
			t.Fatalf("%s: private key: %v", spec, err)
		}
		pubDER, _ := x509.MarshalPKIXPublicKey(priv.(crypto.Signer).Public())
		if !bytes.Equal(pubDER, dk.PublicKey) {
			t.Fatalf("%s: public key does not match the private key", spec)
		}
		unwrapped, _, err := f.ks.Decrypt(ctx, sym.KeyID, dk.PrivateKeyCiphertextBlob, ec)
		if err != nil || !bytes.Equal(unwrapped, dk.PrivateKeyPlaintext) {
			t.Fatalf("%s: wrapped private key does not decrypt to the private key: %v", spec, err)
		}
	}
	dk, err := f.ks.GenerateDataKeyPair(ctx, sym.KeyID, kms.KeySpecP256, nil, true)
	if err != nil || dk.PrivateKeyPlaintext != nil || len(dk.PrivateKeyCiphertextBlob) == 0 {
		t.Fatalf("without plaintext: %v", err)
	}
	p256 := createSpec(t, f.ks, kms.KeySpecP256, kms.KeyUsageSignVerify)
	_, err = f.ks.GenerateDataKeyPair(ctx, p256.KeyID, kms.KeySpecP256, nil, false)
	wantCode(t, err, kms.ErrInvalidKeyUsage)
	_, err = f.ks.GenerateDataKeyPair(ctx, sym.KeyID, kms.KeySpecHMAC256, nil, false)
	wantCode(t, err, kms.ErrValidation)
}

// TestAsymmetricStateFormat: an asymmetric key makes the state format 3, its
// material is sealed (no private key in the file), and it survives reopen;
// a state without one keeps format 1.
func TestAsymmetricStateFormat(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	createKey(t, f.ks)
	if got := stateFormatOf(t, f.dir); got != 1 {
		t.Fatalf("symmetric-only state is format %d", got)
	}
	md := createSpec(t, f.ks, kms.KeySpecP384, kms.KeyUsageSignVerify)
	if got := stateFormatOf(t, f.dir); got != 3 {
		t.Fatalf("state with an ECC key is format %d", got)
	}
	data, err := os.ReadFile(filepath.Join(f.dir, stateName))
	if err != nil {
		t.Fatal(err)
	}
	var raw struct {
		Keys map[string]struct {
			Versions []struct{ Material []byte } `json:"versions"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		t.Fatal(err)
	}
	if _, err := x509.ParsePKCS8PrivateKey(raw.Keys[md.KeyID].Versions[0].Material); err == nil {
		t.Fatal("private key stored in plaintext")
	}
	sig, _, err := f.ks.Sign(ctx, md.KeyID, []byte("m"), "", algECDSA384)
	if err != nil {
		t.Fatal(err)
	}
	f.ks.Close()
	ks := f.open(t, nil)
	got, err := ks.DescribeKey(ctx, md.KeyID)
	if err != nil || got.KeySpec != kms.KeySpecP384 || got.KeyUsage != kms.KeyUsageSignVerify {
		t.Fatalf("after reopen: %+v %v", got, err)
	}
	if _, err := ks.Verify(ctx, md.KeyID, []byte("m"), "", sig, algECDSA384); err != nil {
		t.Fatalf("after reopen: Verify: %v", err)
	}
	digest := sha512.Sum384([]byte("m"))
	sig2, _, err := ks.Sign(ctx, md.KeyID, digest[:], kms.MessageTypeDigest, algECDSA384)
	if err != nil {
		t.Fatal(err)
	}
	pub := publicKey(t, ks, md.KeyID).(*ecdsa.PublicKey)
	if !ecdsa.VerifyASN1(pub, digest[:], sig2) {
		t.Fatal("DIGEST signature does not verify with the public key")
	}
}

// TestFormat1KeystoreTakesAsymmetricKeys: an old keystore opens, takes an
// asymmetric key (becoming format 3) and still decrypts its old ciphertext
// after a reopen; a state from a newer kmsfs is refused.
func TestFormat1KeystoreTakesAsymmetricKeys(t *testing.T) {
	ks, dir := openFormat1(t)
	ctx := context.Background()
	md, err := ks.CreateKey(ctx, kms.CreateKeyInput{KeySpec: kms.KeySpecHMAC512, KeyUsage: kms.KeyUsageGenerateVerifyMac})
	if err != nil {
		t.Fatal(err)
	}
	if f := stateFormatOf(t, dir); f != 3 {
		t.Fatalf("format %d with an HMAC key, want 3", f)
	}
	ks.Close()
	ks, err = Open(dir, Options{Region: testRegion, Account: homeAccount, Warn: func(string) {}})
	if err != nil {
		t.Fatalf("reopen of a format 3 keystore: %v", err)
	}
	defer ks.Close()
	b64, _ := os.ReadFile("testdata/format1-ciphertext.b64")
	ct, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b64)))
	if err != nil {
		t.Fatal(err)
	}
	if pt, _, err := ks.Decrypt(ctx, "alias/old", ct, kms.EncryptionContext{"v": "1"}); err != nil || string(pt) != "old plaintext" {
		t.Fatalf("old ciphertext after the upgrade: %q %v", pt, err)
	}
	mac, _, err := ks.GenerateMac(ctx, md.KeyID, []byte("m"), algHMAC512)
	if err != nil || len(mac) != 64 {
		t.Fatalf("GenerateMac after reopen: %v", err)
	}
	ks.Close()

	state := filepath.Join(dir, stateName)
	data, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	newer := strings.Replace(string(data), `"format": 3`, `"format": 99`, 1)
	if newer == string(data) {
		t.Fatal("state has no format 3 field")
	}
	if err := os.WriteFile(state, []byte(newer), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, Options{Region: testRegion, Account: homeAccount, Warn: func(string) {}}); err == nil || !strings.Contains(err.Error(), "format 99") {
		t.Fatalf("Open of a format 99 state: %v", err)
	}
}

// secp256k1 keys sign and verify through the keystore; the public key is
// an uncompressed point on secp256k1 in a SubjectPublicKeyInfo, and a
// signature made outside the keystore with the same key verifies too.
func TestSecp256k1(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	md, err := f.ks.CreateKey(ctx, kms.CreateKeyInput{KeySpec: kms.KeySpecSecp256k1, KeyUsage: kms.KeyUsageSignVerify})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(md.SigningAlgorithms, ",") != algECDSA256 {
		t.Fatalf("signing algorithms %v", md.SigningAlgorithms)
	}
	msg := []byte("pay 1 BTC to nobody")
	sig, _, err := f.ks.Sign(ctx, md.KeyID, msg, kms.MessageTypeRaw, algECDSA256)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ks.Verify(ctx, md.KeyID, msg, kms.MessageTypeRaw, sig, algECDSA256); err != nil {
		t.Fatalf("verify: %v", err)
	}
	if _, err := f.ks.Verify(ctx, md.KeyID, []byte("pay 2 BTC"), kms.MessageTypeRaw, sig, algECDSA256); !errors.Is(err, kms.ErrKMSInvalidSignature) {
		t.Fatalf("verify of another message: %v", err)
	}
	_, _, err = f.ks.Sign(ctx, md.KeyID, msg, kms.MessageTypeRaw, algECDSA384)
	wantCodeName(t, err, kms.CodeInvalidKeyUsage)

	pk, err := f.ks.GetPublicKey(ctx, md.KeyID)
	if err != nil {
		t.Fatal(err)
	}
	var spki k1SPKI
	if rest, err := asn1.Unmarshal(pk.PublicKey, &spki); err != nil || len(rest) != 0 ||
		!spki.Algorithm.Curve.Equal(oidSecp256k1) || len(spki.PublicKey.Bytes) != 65 {
		t.Fatalf("public key: %x, %v", pk.PublicKey, err)
	}
	pub, err := secp256k1.ParsePubKey(spki.PublicKey.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256(msg)
	if !verifyK1(k1Public{pub}, digest[:], sig) {
		t.Fatal("the signature does not verify with the exported public key")
	}
	// A data key pair of the spec: its private key parses back and signs.
	sym, err := f.ks.CreateKey(ctx, kms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := f.ks.GenerateDataKeyPair(ctx, sym.KeyID, kms.KeySpecSecp256k1, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	priv, ok, err := parseK1PKCS8(pair.PrivateKeyPlaintext)
	if !ok || err != nil {
		t.Fatalf("data key pair private key: %v %v", ok, err)
	}
	s, _ := priv.Sign(nil, digest[:], nil)
	if !verifyK1(priv.Public().(k1Public), digest[:], s) {
		t.Fatal("data key pair signature does not verify")
	}
}
