package keystore

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	_ "crypto/sha1" // RSAES_OAEP_SHA_1
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/kmsfs/kmsfs/kms"
)

// Imported key material (BYOK), as AWS KMS does it: GetParametersForImport
// hands out a fresh RSA public key and a token naming its private key;
// ImportKeyMaterial takes the 256-bit material encrypted to it with RSA-OAEP.
// The private key lives in the state file, sealed under the KEK like key
// material, until it is used or 24 hours old.

var _ kms.Importer = (*Keystore)(nil)

// pendingImport is one outstanding GetParametersForImport.
type pendingImport struct {
	KeyID     string    `json:"key_id"`
	Algorithm string    `json:"algorithm"`
	ValidTo   time.Time `json:"valid_to"`
	// PrivateKey is the PKCS #8 DER private key, sealed under the KEK with
	// importAADFor(token ID) as additional data.
	PrivateKey []byte `json:"private_key"`
}

// importedMaterial is what a key with imported material remembers of it.
type importedMaterial struct {
	// Digest identifies the material without revealing it (SHA-256 over a
	// label, the key ID and the 256-bit material): re-imports must match.
	Digest []byte `json:"digest"`
	// ValidTo is when the material expires and is deleted; zero: never.
	ValidTo time.Time `json:"valid_to,omitzero"`
}

const (
	importTokenPrefix = "kmsfs-import-token-v1:"
	importAAD         = "kmsfs/keystore/import/v1\x00"
	materialDigestTag = "kmsfs keystore imported material v1\x00"
)

func importAADFor(tokenID string) []byte { return []byte(importAAD + tokenID) }

func materialDigest(keyID string, material []byte) []byte {
	h := sha256.New()
	h.Write([]byte(materialDigestTag))
	h.Write([]byte(keyID))
	h.Write([]byte{0})
	h.Write(material)
	return h.Sum(nil)
}

// hasMaterial reports whether the key can encrypt or decrypt at all: it has
// a version whose material was not deleted.
func (r *keyRecord) hasMaterial() bool {
	return len(r.Versions) > 0 && (r.Versions[r.CurrentVersion-1].Material != nil || r.CustomKeyStore != "")
}

// materialExpires reports whether imported material has an expiry date.
func (r *keyRecord) materialExpires() bool {
	return r.Import != nil && !r.Import.ValidTo.IsZero()
}

// deleteMaterial drops imported material from rec and from the cipher
// cache; the key is PendingImport until the same material is imported
// again (a key pending deletion stays so). Caller holds mu.
func (k *Keystore) deleteMaterial(rec *keyRecord) {
	for i := range rec.Versions {
		rec.Versions[i].Material = nil
	}
	for ak := range k.aeads {
		if ak.key == rec.uuid {
			delete(k.aeads, ak)
		}
	}
	if rec.State != kms.KeyPendingDeletion {
		rec.State = kms.KeyPendingImport
	}
}

func wrappingHash(alg string) (crypto.Hash, error) {
	switch alg {
	case kms.WrappingRSAOAEPSHA256:
		return crypto.SHA256, nil
	case kms.WrappingRSAOAEPSHA1:
		return crypto.SHA1, nil
	}
	return 0, kms.Errorf(kms.CodeValidation, "WrappingAlgorithm %q is not supported (use %s or %s)", alg, kms.WrappingRSAOAEPSHA256, kms.WrappingRSAOAEPSHA1)
}

func wrappingBits(spec string) (int, error) {
	switch spec {
	case kms.WrappingKeyRSA2048:
		return 2048, nil
	case kms.WrappingKeyRSA3072:
		return 3072, nil
	case kms.WrappingKeyRSA4096:
		return 4096, nil
	}
	return 0, kms.Errorf(kms.CodeValidation, "WrappingKeySpec %q is not supported (use %s, %s or %s)", spec, kms.WrappingKeyRSA2048, kms.WrappingKeyRSA3072, kms.WrappingKeyRSA4096)
}

// externalKey checks that rec takes imported material.
func externalKey(rec *keyRecord) error {
	if rec.Origin != originExternal {
		return kms.Errorf(kms.CodeUnsupportedOperation, "key %s has origin %s; only %s keys take imported material", rec.ID, rec.Origin, originExternal)
	}
	if rec.State == kms.KeyPendingDeletion {
		return kms.Errorf(kms.CodeInvalidState, "key %s is pending deletion", rec.ID)
	}
	return nil
}

// GetParametersForImport returns a new RSA public key of wrappingKeySpec and
// an import token for it, valid 24 hours, for importing material into the
// EXTERNAL key keyID.
func (k *Keystore) GetParametersForImport(ctx context.Context, keyID, wrappingAlgorithm, wrappingKeySpec string) (kms.ImportParameters, error) {
	if _, err := wrappingHash(wrappingAlgorithm); err != nil {
		return kms.ImportParameters{}, err
	}
	bits, err := wrappingBits(wrappingKeySpec)
	if err != nil {
		return kms.ImportParameters{}, err
	}
	// Generated outside the lock: RSA key generation takes up to seconds.
	priv, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		return kms.ImportParameters{}, fmt.Errorf("generate wrapping key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return kms.ImportParameters{}, err
	}
	defer clear(der)
	pub, err := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	if err != nil {
		return kms.ImportParameters{}, err
	}
	tokenID, err := randomHex(16)
	if err != nil {
		return kms.ImportParameters{}, err
	}
	var out kms.ImportParameters
	err = k.changeKey(ctx, keyID, func(st *state, rec *keyRecord, now time.Time) (bool, error) {
		if err := externalKey(rec); err != nil {
			return false, err
		}
		sealed, err := k.mk.seal(der, importAADFor(tokenID))
		if err != nil {
			return false, err
		}
		validTo := now.Add(kms.ImportParametersValidity)
		st.Imports[tokenID] = &pendingImport{KeyID: rec.ID, Algorithm: wrappingAlgorithm, ValidTo: validTo, PrivateKey: sealed}
		out = kms.ImportParameters{KeyARN: k.keyARN(rec), ImportToken: []byte(importTokenPrefix + tokenID), PublicKey: pub, ValidTo: validTo}
		return true, nil
	})
	if err != nil {
		return kms.ImportParameters{}, fmt.Errorf("GetParametersForImport: %w", err)
	}
	return out, nil
}

// ImportKeyMaterial decrypts encryptedMaterial with the private key
// importToken names and makes it the key's material. The first import
// enables a PendingImport key; later imports (after a deletion or expiry)
// must bring the same material, as in AWS. The token is single-use.
func (k *Keystore) ImportKeyMaterial(ctx context.Context, keyID string, importToken, encryptedMaterial []byte, validTo time.Time) error {
	tokenID, ok := strings.CutPrefix(string(importToken), importTokenPrefix)
	if _, err := hex.DecodeString(tokenID); !ok || err != nil || len(tokenID) != 32 {
		return kms.Errorf(kms.CodeInvalidImportToken, "the import token is not one this KMS issued")
	}
	err := k.changeKey(ctx, keyID, func(st *state, rec *keyRecord, now time.Time) (bool, error) {
		if err := externalKey(rec); err != nil {
			return false, err
		}
		p := st.Imports[tokenID]
		if p == nil {
			return false, kms.Errorf(kms.CodeInvalidImportToken, "the import token is unknown or was already used")
		}
		if p.KeyID != rec.ID {
			return false, kms.Errorf(kms.CodeInvalidImportToken, "the import token was issued for another key")
		}
		if !now.Before(p.ValidTo) {
			return false, kms.Errorf(kms.CodeExpiredImportToken, "the import token expired at %s", p.ValidTo.Format(time.RFC3339))
		}
		if !validTo.IsZero() && !validTo.After(now) {
			return false, kms.Errorf(kms.CodeValidation, "ValidTo %s is not in the future", validTo.Format(time.RFC3339))
		}
		material, err := k.unwrapImport(tokenID, p, encryptedMaterial)
		if err != nil {
			return false, err
		}
		defer clear(material)
		digest := materialDigest(rec.ID, material)
		if rec.Import != nil && subtle.ConstantTimeCompare(rec.Import.Digest, digest) != 1 {
			return false, kms.Errorf(kms.CodeIncorrectKeyMaterial, "key %s was created with other key material; only the same material can be imported again", rec.ID)
		}
		sealed, err := k.mk.seal(material, materialAADFor(rec.ID, 1))
		if err != nil {
			return false, err
		}
		if len(rec.Versions) == 0 {
			rec.Versions = []versionRecord{{Version: 1, Created: now}}
			rec.CurrentVersion = 1
		}
		rec.Versions[0].Material = sealed
		rec.Import = &importedMaterial{Digest: digest, ValidTo: validTo.UTC()}
		if rec.State == kms.KeyPendingImport {
			rec.State = kms.KeyEnabled
		}
		delete(st.Imports, tokenID)
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("ImportKeyMaterial: %w", err)
	}
	return nil
}

// unwrapImport opens the sealed private key of a pending import and
// decrypts the material with it.
func (k *Keystore) unwrapImport(tokenID string, p *pendingImport, encrypted []byte) ([]byte, error) {
	der, err := k.mk.open(p.PrivateKey, importAADFor(tokenID))
	if err != nil {
		return nil, kms.Errorf(kms.CodeInternal, "import token %s: the wrapping key does not authenticate under the keystore's key-encryption key", tokenID)
	}
	defer clear(der)
	key, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, kms.Errorf(kms.CodeInternal, "import token %s: %v", tokenID, err)
	}
	priv, ok := key.(*rsa.PrivateKey)
	if !ok {
		return nil, kms.Errorf(kms.CodeInternal, "import token %s: not an RSA key", tokenID)
	}
	h, err := wrappingHash(p.Algorithm)
	if err != nil {
		return nil, err
	}
	material, err := priv.Decrypt(rand.Reader, encrypted, &rsa.OAEPOptions{Hash: h})
	if err != nil {
		return nil, kms.Errorf(kms.CodeInvalidCiphertext, "the encrypted key material does not decrypt with the wrapping key of this import token (%s)", p.Algorithm)
	}
	if len(material) != 32 {
		clear(material)
		return nil, kms.Errorf(kms.CodeValidation, "imported key material is %d bytes; a symmetric key takes 32 (256 bits)", len(material))
	}
	if bytes.Equal(material, make([]byte, 32)) {
		return nil, kms.Errorf(kms.CodeValidation, "imported key material is all zeros")
	}
	return material, nil
}

// DeleteImportedKeyMaterial deletes the key's imported material: the key
// becomes PendingImport and nothing encrypted under it can be decrypted
// until the same material is imported again.
func (k *Keystore) DeleteImportedKeyMaterial(ctx context.Context, keyID string) error {
	return k.changeKey(ctx, keyID, func(st *state, rec *keyRecord, now time.Time) (bool, error) {
		if rec.Origin != originExternal {
			return false, kms.Errorf(kms.CodeUnsupportedOperation, "key %s has origin %s; only imported material can be deleted", rec.ID, rec.Origin)
		}
		if !rec.hasMaterial() {
			return false, nil
		}
		k.deleteMaterial(rec)
		return true, nil
	})
}
