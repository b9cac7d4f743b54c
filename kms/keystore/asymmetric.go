package keystore

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"fmt"
	"hash"
	"slices"
	"time"

	"github.com/kmsfs/kmsfs/kms"
)

// Asymmetric and HMAC keys: one version of material each (they never
// rotate), sealed under the KEK like symmetric material: a PKCS #8 DER
// private key for RSA and ECC specs, the raw key for HMAC specs. The
// private and HMAC keys are opened only for the operation that needs them
// and zeroed after; only GenerateDataKeyPair hands a private key out, and
// that is a new key pair, not a KMS key.

var _ kms.Asymmetric = (*Keystore)(nil)

// Signing, encryption and MAC algorithms, with AWS's names.
const (
	algPSS256   = "RSASSA_PSS_SHA_256"
	algPSS384   = "RSASSA_PSS_SHA_384"
	algPSS512   = "RSASSA_PSS_SHA_512"
	algPKCS256  = "RSASSA_PKCS1_V1_5_SHA_256"
	algPKCS384  = "RSASSA_PKCS1_V1_5_SHA_384"
	algPKCS512  = "RSASSA_PKCS1_V1_5_SHA_512"
	algECDSA256 = "ECDSA_SHA_256"
	algECDSA384 = "ECDSA_SHA_384"
	algECDSA512 = "ECDSA_SHA_512"
	algOAEP1    = "RSAES_OAEP_SHA_1"
	algOAEP256  = "RSAES_OAEP_SHA_256"
	algHMAC224  = "HMAC_SHA_224"
	algHMAC256  = "HMAC_SHA_256"
	algHMAC384  = "HMAC_SHA_384"
	algHMAC512  = "HMAC_SHA_512"
)

// specInfo is what a key spec allows.
type specInfo struct {
	rsaBits int
	curve   elliptic.Curve
	k1      bool // secp256k1 (secp256k1.go)
	hmacLen int  // HMAC key length in bytes
	usages  []string
	signing []string
	macAlg  string
}

func rsaSigning() []string {
	return []string{algPSS256, algPSS384, algPSS512, algPKCS256, algPKCS384, algPKCS512}
}

// specFor says what the key specs this keystore creates allow.
func specFor(spec string) (specInfo, bool) {
	switch spec {
	case kms.KeySpecRSA2048, kms.KeySpecRSA3072, kms.KeySpecRSA4096:
		bits := map[string]int{kms.KeySpecRSA2048: 2048, kms.KeySpecRSA3072: 3072, kms.KeySpecRSA4096: 4096}[spec]
		return specInfo{rsaBits: bits, usages: []string{kms.KeyUsageEncryptDecrypt, kms.KeyUsageSignVerify}, signing: rsaSigning()}, true
	case kms.KeySpecP256:
		return specInfo{curve: elliptic.P256(), usages: []string{kms.KeyUsageSignVerify}, signing: []string{algECDSA256}}, true
	case kms.KeySpecP384:
		return specInfo{curve: elliptic.P384(), usages: []string{kms.KeyUsageSignVerify}, signing: []string{algECDSA384}}, true
	case kms.KeySpecP521:
		return specInfo{curve: elliptic.P521(), usages: []string{kms.KeyUsageSignVerify}, signing: []string{algECDSA512}}, true
	case kms.KeySpecSecp256k1:
		return specInfo{k1: true, usages: []string{kms.KeyUsageSignVerify}, signing: []string{algECDSA256}}, true
	case kms.KeySpecHMAC224:
		return specInfo{hmacLen: 28, usages: []string{kms.KeyUsageGenerateVerifyMac}, macAlg: algHMAC224}, true
	case kms.KeySpecHMAC256:
		return specInfo{hmacLen: 32, usages: []string{kms.KeyUsageGenerateVerifyMac}, macAlg: algHMAC256}, true
	case kms.KeySpecHMAC384:
		return specInfo{hmacLen: 48, usages: []string{kms.KeyUsageGenerateVerifyMac}, macAlg: algHMAC384}, true
	case kms.KeySpecHMAC512:
		return specInfo{hmacLen: 64, usages: []string{kms.KeyUsageGenerateVerifyMac}, macAlg: algHMAC512}, true
	}
	return specInfo{}, false
}

// checkSpec validates CreateKey's KeySpec and KeyUsage and returns them as
// recorded: "" and "" for a symmetric key.
func checkSpec(spec, usage, origin string) (string, string, error) {
	if spec == "" || spec == kms.KeySpecSymmetric {
		if usage != "" && usage != kms.KeyUsageEncryptDecrypt {
			return "", "", kms.Errorf(kms.CodeValidation, "KeyUsage %s is not valid for KeySpec %s", usage, kms.KeySpecSymmetric)
		}
		return "", "", nil
	}
	info, ok := specFor(spec)
	if !ok {
		return "", "", kms.Errorf(kms.CodeValidation, "KeySpec %s is not a valid key spec", spec)
	}
	if usage == "" {
		// AWS's default usage is ENCRYPT_DECRYPT; for specs that do not
		// support it that is an error, as in AWS.
		usage = kms.KeyUsageEncryptDecrypt
	}
	if !slices.Contains(info.usages, usage) {
		return "", "", kms.Errorf(kms.CodeValidation, "KeyUsage %s is not valid for KeySpec %s (valid: %v)", usage, spec, info.usages)
	}
	if origin != originAWSKMS {
		return "", "", kms.Errorf(kms.CodeUnsupportedOperation, "origin %s is supported only for %s keys", origin, kms.KeySpecSymmetric)
	}
	return spec, usage, nil
}

// newAsymmetricMaterial generates a key of spec: PKCS #8 DER for RSA and
// ECC, raw bytes for HMAC.
func newAsymmetricMaterial(spec string) ([]byte, error) {
	info, ok := specFor(spec)
	if !ok {
		return nil, kms.Errorf(kms.CodeValidation, "KeySpec %s is not a valid key spec", spec)
	}
	if info.hmacLen > 0 {
		b := make([]byte, info.hmacLen)
		if _, err := rand.Read(b); err != nil {
			return nil, fmt.Errorf("generate HMAC key: %w", err)
		}
		return b, nil
	}
	priv, err := generatePrivate(info)
	if err != nil {
		return nil, err
	}
	der, err := marshalPrivate(priv)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return der, nil
}

// marshalPrivate encodes a private key as PKCS #8 DER.
func marshalPrivate(priv crypto.Signer) ([]byte, error) {
	if k, ok := priv.(k1Private); ok {
		return marshalK1PKCS8(k)
	}
	return x509.MarshalPKCS8PrivateKey(priv)
}

// marshalPublic encodes a public key as a DER SubjectPublicKeyInfo.
func marshalPublic(pub crypto.PublicKey) ([]byte, error) {
	if k, ok := pub.(k1Public); ok {
		return marshalK1SPKI(k)
	}
	return x509.MarshalPKIXPublicKey(pub)
}

func generatePrivate(info specInfo) (crypto.Signer, error) {
	if info.rsaBits > 0 {
		k, err := rsa.GenerateKey(rand.Reader, info.rsaBits)
		if err != nil {
			return nil, fmt.Errorf("generate RSA key: %w", err)
		}
		return k, nil
	}
	if info.k1 {
		return generateK1()
	}
	k, err := ecdsa.GenerateKey(info.curve, rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate ECC key: %w", err)
	}
	return k, nil
}

// addAsymmetricVersion gives rec its only material version. Caller holds
// mu (inside change).
func (k *Keystore) addAsymmetricVersion(rec *keyRecord, now time.Time) error {
	raw, err := newAsymmetricMaterial(rec.KeySpec)
	if err != nil {
		return err
	}
	defer kms.Zero(raw)
	sealed, err := k.mk.seal(raw, materialAADFor(rec.ID, 1))
	if err != nil {
		return err
	}
	rec.Versions = []versionRecord{{Version: 1, Created: now, Material: sealed}}
	rec.CurrentVersion = 1
	return nil
}

// algorithms fills the metadata fields that depend on the key spec.
func algorithms(rec *keyRecord, md *kms.KeyMetadata) {
	md.KeySpec, md.KeyUsage = kms.KeySpecSymmetric, kms.KeyUsageEncryptDecrypt
	if rec.KeySpec == "" {
		md.EncryptionAlgorithms = []string{kms.KeySpecSymmetric}
		return
	}
	md.KeySpec, md.KeyUsage = rec.KeySpec, rec.KeyUsage
	info, _ := specFor(rec.KeySpec)
	switch rec.KeyUsage {
	case kms.KeyUsageEncryptDecrypt:
		md.EncryptionAlgorithms = []string{algOAEP1, algOAEP256}
	case kms.KeyUsageSignVerify:
		md.SigningAlgorithms = slices.Clone(info.signing)
	case kms.KeyUsageGenerateVerifyMac:
		md.MacAlgorithms = []string{info.macAlg}
	}
}

// wrongUsage is AWS's InvalidKeyUsageException for an operation the key's
// spec or usage does not allow.
func wrongUsage(rec *keyRecord, op string) error {
	spec, usage := rec.KeySpec, rec.KeyUsage
	if spec == "" {
		spec, usage = kms.KeySpecSymmetric, kms.KeyUsageEncryptDecrypt
	}
	return kms.Errorf(kms.CodeInvalidKeyUsage, "%s is not valid for key %s (KeySpec %s, KeyUsage %s)", op, rec.ID, spec, usage)
}

// asymmetricKey is an opened key, taken out from under mu.
type asymmetricKey struct {
	arn  string
	spec string
	raw  []byte          // PKCS #8 DER or HMAC key; the caller zeroes it
	md   kms.KeyMetadata // KeySpec, KeyUsage and algorithms only
}

// openAsymmetric resolves keyID to an enabled key of usage and opens its
// material.
func (k *Keystore) openAsymmetric(ctx context.Context, keyID, usage, op string) (asymmetricKey, error) {
	return k.openKey(ctx, keyID, func(rec *keyRecord) error {
		if rec.KeySpec == "" || rec.KeyUsage != usage {
			return wrongUsage(rec, op)
		}
		return nil
	})
}

// openKey resolves keyID to an enabled key that check accepts and opens its
// material.
func (k *Keystore) openKey(ctx context.Context, keyID string, check func(*keyRecord) error) (asymmetricKey, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.refresh(ctx); err != nil {
		return asymmetricKey{}, err
	}
	rec, err := k.resolve(k.st, keyID, k.now())
	if err != nil {
		return asymmetricKey{}, err
	}
	if err := check(rec); err != nil {
		return asymmetricKey{}, err
	}
	if err := usable(rec); err != nil {
		return asymmetricKey{}, err
	}
	raw, err := k.mk.open(rec.Versions[0].Material, materialAADFor(rec.ID, 1))
	if err != nil {
		return asymmetricKey{}, kms.Errorf(kms.CodeInternal, "key %s material does not authenticate under the keystore's key-encryption key", rec.ID)
	}
	a := asymmetricKey{arn: k.keyARN(rec), spec: rec.KeySpec, raw: raw}
	algorithms(rec, &a.md)
	return a, nil
}

func (a asymmetricKey) private() (crypto.Signer, error) {
	if k, ok, err := parseK1PKCS8(a.raw); ok {
		if err != nil {
			return nil, kms.Errorf(kms.CodeInternal, "key %s: private key: %v", a.arn, err)
		}
		return k, nil
	}
	p, err := x509.ParsePKCS8PrivateKey(a.raw)
	if err != nil {
		return nil, kms.Errorf(kms.CodeInternal, "key %s: private key: %v", a.arn, err)
	}
	s, ok := p.(crypto.Signer)
	if !ok {
		return nil, kms.Errorf(kms.CodeInternal, "key %s: private key of type %T", a.arn, p)
	}
	return s, nil
}

// GetPublicKey returns the public key of an asymmetric key (DER
// SubjectPublicKeyInfo); UnsupportedOperationException for symmetric and
// HMAC keys, as in AWS.
func (k *Keystore) GetPublicKey(ctx context.Context, keyID string) (kms.PublicKey, error) {
	a, err := k.openKey(ctx, keyID, func(rec *keyRecord) error {
		if rec.KeySpec == "" || rec.KeyUsage == kms.KeyUsageGenerateVerifyMac {
			return kms.Errorf(kms.CodeUnsupportedOperation, "key %s is not asymmetric; it has no public key", rec.ID)
		}
		return nil
	})
	if err != nil {
		return kms.PublicKey{}, err
	}
	defer kms.Zero(a.raw)
	priv, err := a.private()
	if err != nil {
		return kms.PublicKey{}, err
	}
	der, err := marshalPublic(priv.Public())
	if err != nil {
		return kms.PublicKey{}, fmt.Errorf("GetPublicKey: %w", err)
	}
	return kms.PublicKey{KeyARN: a.arn, KeySpec: a.md.KeySpec, KeyUsage: a.md.KeyUsage, PublicKey: der,
		EncryptionAlgorithms: a.md.EncryptionAlgorithms, SigningAlgorithms: a.md.SigningAlgorithms}, nil
}

// hashFor maps a signing algorithm to its hash and whether it is PSS.
func hashFor(alg string) (crypto.Hash, bool, bool) {
	switch alg {
	case algPSS256:
		return crypto.SHA256, true, true
	case algPSS384:
		return crypto.SHA384, true, true
	case algPSS512:
		return crypto.SHA512, true, true
	case algPKCS256, algECDSA256:
		return crypto.SHA256, false, true
	case algPKCS384, algECDSA384:
		return crypto.SHA384, false, true
	case algPKCS512, algECDSA512:
		return crypto.SHA512, false, true
	}
	return 0, false, false
}

// signingDigest checks the request and returns the digest to sign or
// verify.
func signingDigest(spec string, message []byte, messageType, alg string) ([]byte, crypto.Hash, bool, error) {
	h, pss, ok := hashFor(alg)
	if !ok {
		return nil, 0, false, kms.Errorf(kms.CodeValidation, "SigningAlgorithm %q is not a valid signing algorithm", alg)
	}
	info, _ := specFor(spec)
	if !slices.Contains(info.signing, alg) {
		return nil, 0, false, kms.Errorf(kms.CodeInvalidKeyUsage, "SigningAlgorithm %s is not supported by KeySpec %s (supported: %v)", alg, spec, info.signing)
	}
	if len(message) < 1 || len(message) > kms.MaxSignMessage {
		return nil, 0, false, kms.Errorf(kms.CodeValidation, "message is %d bytes, outside 1..%d", len(message), kms.MaxSignMessage)
	}
	switch messageType {
	case "", kms.MessageTypeRaw:
		d := h.New()
		d.Write(message)
		return d.Sum(nil), h, pss, nil
	case kms.MessageTypeDigest:
		if len(message) != h.Size() {
			return nil, 0, false, kms.Errorf(kms.CodeValidation, "digest is %d bytes; %s takes a %d-byte digest", len(message), alg, h.Size())
		}
		return slices.Clone(message), h, pss, nil
	}
	return nil, 0, false, kms.Errorf(kms.CodeValidation, "MessageType %q is not RAW or DIGEST", messageType)
}

// Sign signs message (or, with MessageType DIGEST, the digest in message)
// with an asymmetric SIGN_VERIFY key. RSASSA-PSS uses a salt as long as the
// hash; ECDSA signatures are DER, as AWS returns them.
func (k *Keystore) Sign(ctx context.Context, keyID string, message []byte, messageType, alg string) ([]byte, string, error) {
	a, err := k.openAsymmetric(ctx, keyID, kms.KeyUsageSignVerify, "Sign")
	if err != nil {
		return nil, "", err
	}
	defer kms.Zero(a.raw)
	digest, h, pss, err := signingDigest(a.spec, message, messageType, alg)
	if err != nil {
		return nil, "", err
	}
	priv, err := a.private()
	if err != nil {
		return nil, "", err
	}
	var opts crypto.SignerOpts = h
	if pss {
		opts = &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: h}
	}
	if ek, ok := priv.(*ecdsa.PrivateKey); ok {
		sig, err := ecdsa.SignASN1(rand.Reader, ek, digest)
		if err != nil {
			return nil, "", fmt.Errorf("Sign: %w", err)
		}
		return sig, a.arn, nil
	}
	sig, err := priv.Sign(rand.Reader, digest, opts)
	if err != nil {
		return nil, "", fmt.Errorf("Sign: %w", err)
	}
	return sig, a.arn, nil
}

// Verify checks a signature from Sign (or any signature by the key's
// private key); KMSInvalidSignatureException when it does not verify.
func (k *Keystore) Verify(ctx context.Context, keyID string, message []byte, messageType string, signature []byte, alg string) (string, error) {
	a, err := k.openAsymmetric(ctx, keyID, kms.KeyUsageSignVerify, "Verify")
	if err != nil {
		return "", err
	}
	defer kms.Zero(a.raw)
	digest, h, pss, err := signingDigest(a.spec, message, messageType, alg)
	if err != nil {
		return "", err
	}
	if len(signature) == 0 {
		return "", kms.Errorf(kms.CodeValidation, "signature is empty")
	}
	priv, err := a.private()
	if err != nil {
		return "", err
	}
	var ok bool
	switch pub := priv.Public().(type) {
	case *rsa.PublicKey:
		if pss {
			ok = rsa.VerifyPSS(pub, h, digest, signature, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: h}) == nil
		} else {
			ok = rsa.VerifyPKCS1v15(pub, h, digest, signature) == nil
		}
	case *ecdsa.PublicKey:
		ok = ecdsa.VerifyASN1(pub, digest, signature)
	case k1Public:
		ok = verifyK1(pub, digest, signature)
	}
	if !ok {
		return "", kms.Errorf(kms.CodeKMSInvalidSignature, "the signature does not verify with key %s and %s", a.arn, alg)
	}
	return a.arn, nil
}

// oaepHash maps an RSA encryption algorithm to its hash.
func oaepHash(alg string) (hash.Hash, error) {
	switch alg {
	case algOAEP1:
		return sha1.New(), nil
	case algOAEP256:
		return sha256.New(), nil
	case "", kms.KeySpecSymmetric:
		return nil, kms.Errorf(kms.CodeInvalidKeyUsage, "EncryptionAlgorithm %s is not valid for an RSA key; use %s or %s", kms.KeySpecSymmetric, algOAEP1, algOAEP256)
	}
	return nil, kms.Errorf(kms.CodeValidation, "EncryptionAlgorithm %q is not a valid encryption algorithm", alg)
}

// EncryptAsymmetric encrypts with RSAES-OAEP (MGF1 with the same hash, no
// label) under an RSA ENCRYPT_DECRYPT key. The plaintext limit is AWS's:
// the modulus size less twice the hash size less 2 (190 bytes for RSA_2048
// with SHA-256).
func (k *Keystore) EncryptAsymmetric(ctx context.Context, keyID string, plaintext []byte, alg string) ([]byte, string, error) {
	h, err := oaepHash(alg)
	if err != nil {
		return nil, "", err
	}
	a, err := k.openAsymmetric(ctx, keyID, kms.KeyUsageEncryptDecrypt, "Encrypt")
	if err != nil {
		return nil, "", err
	}
	defer kms.Zero(a.raw)
	priv, err := a.private()
	if err != nil {
		return nil, "", err
	}
	pub := priv.Public().(*rsa.PublicKey)
	limit := pub.Size() - 2*h.Size() - 2
	if len(plaintext) < 1 || len(plaintext) > limit {
		return nil, "", kms.Errorf(kms.CodeValidation, "plaintext is %d bytes; %s with %s takes 1..%d", len(plaintext), a.spec, alg, limit)
	}
	ct, err := rsa.EncryptOAEP(h, rand.Reader, pub, plaintext, nil)
	if err != nil {
		return nil, "", fmt.Errorf("Encrypt: %w", err)
	}
	return ct, a.arn, nil
}

// DecryptAsymmetric decrypts RSAES-OAEP ciphertext made with the key's
// public key (here or anywhere else); InvalidCiphertextException when it
// does not decrypt.
func (k *Keystore) DecryptAsymmetric(ctx context.Context, keyID string, ciphertext []byte, alg string) ([]byte, string, error) {
	if _, err := oaepHash(alg); err != nil {
		return nil, "", err
	}
	a, err := k.openAsymmetric(ctx, keyID, kms.KeyUsageEncryptDecrypt, "Decrypt")
	if err != nil {
		return nil, "", err
	}
	defer kms.Zero(a.raw)
	priv, err := a.private()
	if err != nil {
		return nil, "", err
	}
	pt, err := priv.(*rsa.PrivateKey).Decrypt(nil, ciphertext, &rsa.OAEPOptions{Hash: hashID(alg)})
	if err != nil {
		return nil, "", kms.Errorf(kms.CodeInvalidCiphertext, "ciphertext does not decrypt with key %s and %s", a.arn, alg)
	}
	return pt, a.arn, nil
}

func hashID(alg string) crypto.Hash {
	if alg == algOAEP1 {
		return crypto.SHA1
	}
	return crypto.SHA256
}

// macFor checks a MAC request and returns the HMAC.
func macFor(a asymmetricKey, message []byte, alg string) (hash.Hash, error) {
	var h func() hash.Hash
	switch alg {
	case algHMAC224:
		h = sha256.New224
	case algHMAC256:
		h = sha256.New
	case algHMAC384:
		h = sha512.New384
	case algHMAC512:
		h = sha512.New
	default:
		return nil, kms.Errorf(kms.CodeValidation, "MacAlgorithm %q is not a valid MAC algorithm", alg)
	}
	if info, _ := specFor(a.spec); info.macAlg != alg {
		return nil, kms.Errorf(kms.CodeInvalidKeyUsage, "MacAlgorithm %s is not supported by KeySpec %s (supported: %s)", alg, a.spec, info.macAlg)
	}
	if len(message) < 1 || len(message) > kms.MaxSignMessage {
		return nil, kms.Errorf(kms.CodeValidation, "message is %d bytes, outside 1..%d", len(message), kms.MaxSignMessage)
	}
	m := hmac.New(h, a.raw)
	m.Write(message)
	return m, nil
}

// GenerateMac computes an HMAC of message with an HMAC key.
func (k *Keystore) GenerateMac(ctx context.Context, keyID string, message []byte, alg string) ([]byte, string, error) {
	a, err := k.openAsymmetric(ctx, keyID, kms.KeyUsageGenerateVerifyMac, "GenerateMac")
	if err != nil {
		return nil, "", err
	}
	defer kms.Zero(a.raw)
	m, err := macFor(a, message, alg)
	if err != nil {
		return nil, "", err
	}
	return m.Sum(nil), a.arn, nil
}

// VerifyMac recomputes the HMAC and compares in constant time;
// KMSInvalidMacException when it differs.
func (k *Keystore) VerifyMac(ctx context.Context, keyID string, message, mac []byte, alg string) (string, error) {
	a, err := k.openAsymmetric(ctx, keyID, kms.KeyUsageGenerateVerifyMac, "VerifyMac")
	if err != nil {
		return "", err
	}
	defer kms.Zero(a.raw)
	m, err := macFor(a, message, alg)
	if err != nil {
		return "", err
	}
	if len(mac) == 0 {
		return "", kms.Errorf(kms.CodeValidation, "Mac is empty")
	}
	if !hmac.Equal(m.Sum(nil), mac) {
		return "", kms.Errorf(kms.CodeKMSInvalidMac, "the MAC does not verify with key %s and %s", a.arn, alg)
	}
	return a.arn, nil
}

// GenerateDataKeyPair makes a new key pair of keyPairSpec (an RSA or ECC
// spec) and returns its public key, its private key (PKCS #8 DER) encrypted
// under the symmetric key keyID with ec bound, and, unless
// withoutPlaintext, the private key in plaintext.
func (k *Keystore) GenerateDataKeyPair(ctx context.Context, keyID, keyPairSpec string, ec kms.EncryptionContext, withoutPlaintext bool) (kms.DataKeyPair, error) {
	info, ok := specFor(keyPairSpec)
	if !ok || info.hmacLen > 0 {
		return kms.DataKeyPair{}, kms.Errorf(kms.CodeValidation, "KeyPairSpec %q is not a valid key pair spec", keyPairSpec)
	}
	if err := validateContext(ec); err != nil {
		return kms.DataKeyPair{}, err
	}
	ek, err := k.encryptingKeyFor(ctx, keyID)
	if err != nil {
		return kms.DataKeyPair{}, err
	}
	priv, err := generatePrivate(info)
	if err != nil {
		return kms.DataKeyPair{}, fmt.Errorf("GenerateDataKeyPair: %w", err)
	}
	pub, err := marshalPublic(priv.Public())
	if err != nil {
		return kms.DataKeyPair{}, fmt.Errorf("GenerateDataKeyPair: %w", err)
	}
	der, err := marshalPrivate(priv)
	if err != nil {
		return kms.DataKeyPair{}, fmt.Errorf("GenerateDataKeyPair: %w", err)
	}
	blob, err := ek.aead.seal(ek.uuid, ek.version, der, ec)
	if err != nil {
		kms.Zero(der)
		return kms.DataKeyPair{}, fmt.Errorf("GenerateDataKeyPair: %w", err)
	}
	out := kms.DataKeyPair{KeyARN: ek.arn, KeyPairSpec: keyPairSpec, PublicKey: pub, PrivateKeyPlaintext: der, PrivateKeyCiphertextBlob: blob}
	if withoutPlaintext {
		kms.Zero(der)
		out.PrivateKeyPlaintext = nil
	}
	return out, nil
}
