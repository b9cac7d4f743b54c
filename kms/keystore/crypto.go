package keystore

import (
	"context"
	"crypto/rand"
	"fmt"
	"strings"
	"time"

	"github.com/kmsfs/kmsfs/kms"
)

// AWS limits on data key and random byte counts (GenerateDataKey NumberOfBytes,
// GenerateRandom NumberOfBytes).
const (
	maxDataKeyBytes = 1024
	maxRandomBytes  = 1024
)

// accountOf is the account that owns rec: the one recorded with it, or the
// keystore's account for keys created in it (and every key of a state file
// written before keys recorded an account).
func (k *Keystore) accountOf(rec *keyRecord) string {
	if rec.Account != "" {
		return rec.Account
	}
	return k.account
}

// owner is how account is recorded in the state: "" for the keystore's own
// account, the account ID for any other.
func (k *Keystore) owner(account string) string {
	if account == k.account {
		return ""
	}
	return account
}

// keyARN is the key's ARN: arn:aws:kms:<region>:<account>:key/<uuid>.
func (k *Keystore) keyARN(rec *keyRecord) string {
	return "arn:aws:kms:" + k.region + ":" + k.accountOf(rec) + ":key/" + rec.ID
}

// aliasARN is an alias's ARN: arn:aws:kms:<region>:<account>:alias/<name>.
func (k *Keystore) aliasARN(account, name string) string {
	return "arn:aws:kms:" + k.region + ":" + account + ":" + name
}

// resolve finds the key that keyID names: a key ID, key ARN, alias name or
// alias ARN. A key ID or alias name names a key of the keystore's account; a
// key ARN or alias ARN names a key of the account in the ARN, and only a key
// that account owns. Keys past their deletion window are gone even before
// the purge is written. Caller holds mu.
func (k *Keystore) resolve(st *state, keyID string, now time.Time) (*keyRecord, error) {
	return k.resolveForm(st, keyID, now, true)
}

// resolveKey is resolve without alias forms, for the operations where AWS
// accepts only a key ID or key ARN (CreateAlias target, grants).
func (k *Keystore) resolveKey(st *state, keyID string, now time.Time) (*keyRecord, error) {
	return k.resolveForm(st, keyID, now, false)
}

// splitName splits a key or alias name into the account it names (the
// keystore's for a bare name) and the resource ("key/ID" is returned as
// "ID"; "alias/NAME" as is).
func (k *Keystore) splitName(name string) (account, ref string, err error) {
	if !strings.HasPrefix(name, "arn:") {
		return k.account, name, nil
	}
	// arn:partition:service:region:account:resource
	parts := strings.SplitN(name, ":", 6)
	if len(parts) != 6 || parts[1] != "aws" || parts[2] != "kms" || !isAccountID(parts[4]) {
		return "", "", kms.Errorf(kms.CodeNotFound, "%s is not a KMS key or alias ARN", name)
	}
	if parts[3] != k.region {
		return "", "", kms.Errorf(kms.CodeNotFound, "%s is not in region %s", name, k.region)
	}
	ref = parts[5]
	if id, ok := strings.CutPrefix(ref, "key/"); ok {
		if strings.HasPrefix(id, "alias/") {
			return "", "", kms.Errorf(kms.CodeNotFound, "key %s not found", name)
		}
		return parts[4], id, nil
	}
	if !strings.HasPrefix(ref, "alias/") {
		return "", "", kms.Errorf(kms.CodeNotFound, "%s is not a KMS key or alias ARN", name)
	}
	return parts[4], ref, nil
}

func (k *Keystore) resolveForm(st *state, keyID string, now time.Time, aliases bool) (*keyRecord, error) {
	if keyID == "" {
		return nil, kms.Errorf(kms.CodeValidation, "key ID is required")
	}
	account, ref, err := k.splitName(keyID)
	if err != nil {
		return nil, err
	}
	id := ref
	if strings.HasPrefix(ref, "alias/") {
		if !aliases {
			return nil, kms.Errorf(kms.CodeValidation, "%s: an alias is not accepted here; give a key ID or key ARN", keyID)
		}
		target, ok := st.aliases(k.owner(account))[ref]
		if !ok {
			return nil, kms.Errorf(kms.CodeNotFound, "alias %s not found", keyID)
		}
		id = target
	}
	rec, ok := st.Keys[strings.ToLower(id)]
	if !ok || rec.expired(now) || k.accountOf(rec) != account {
		return nil, kms.Errorf(kms.CodeNotFound, "key %s not found", keyID)
	}
	return rec, nil
}

// usable reports whether rec may be used for cryptographic operations:
// Disabled is a DisabledException; PendingDeletion and PendingImport are
// KMSInvalidStateException, as in AWS's key state table.
func usable(rec *keyRecord) error {
	switch rec.State {
	case kms.KeyEnabled:
		return nil
	case kms.KeyDisabled:
		return kms.Errorf(kms.CodeDisabled, "key %s is disabled", rec.ID)
	default:
		return kms.Errorf(kms.CodeInvalidState, "key %s is %s", rec.ID, rec.State)
	}
}

// validateContext rejects encryption contexts the canonical encoding cannot
// represent unambiguously (it length-prefixes with uint16).
func validateContext(ec kms.EncryptionContext) error {
	if len(ec) > 0xffff {
		return kms.Errorf(kms.CodeValidation, "encryption context has %d pairs, more than %d", len(ec), 0xffff)
	}
	for key, v := range ec {
		if len(key) > 0xffff || len(v) > 0xffff {
			return kms.Errorf(kms.CodeValidation, "encryption context entry longer than %d bytes", 0xffff)
		}
	}
	return nil
}

// encryptingKey is what an encrypting operation needs, gathered under mu so
// the AEAD work runs without it.
type encryptingKey struct {
	uuid    keyUUID
	arn     string
	version uint32
	aead    blobCipher
}

// forEncrypt resolves keyID to an enabled key and its current material.
// Caller holds mu and has refreshed.
func (k *Keystore) forEncrypt(keyID string) (encryptingKey, error) {
	rec, err := k.resolve(k.st, keyID, k.now())
	if err != nil {
		return encryptingKey{}, err
	}
	if rec.KeySpec != "" {
		return encryptingKey{}, wrongUsage(rec, "a symmetric operation")
	}
	if err := usable(rec); err != nil {
		return encryptingKey{}, err
	}
	a, err := k.blobCipherFor(rec, rec.CurrentVersion)
	if err != nil {
		return encryptingKey{}, err
	}
	return encryptingKey{uuid: rec.uuid, arn: k.keyARN(rec), version: uint32(rec.CurrentVersion), aead: a}, nil
}

// encryptingKeyFor is forEncrypt behind a refresh, with mu taken and released.
func (k *Keystore) encryptingKeyFor(ctx context.Context, keyID string) (encryptingKey, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.refresh(ctx); err != nil {
		return encryptingKey{}, err
	}
	return k.forEncrypt(keyID)
}

// forDecrypt finds the key and material a parsed blob names. When keyID is
// given it must name the same key (IncorrectKeyException otherwise). Caller
// holds mu and has refreshed.
func (k *Keystore) forDecrypt(p blob, keyID string) (blobCipher, string, error) {
	now := k.now()
	rec, ok := k.st.blobKey(p.key)
	id := p.key.String()
	if ok {
		id = rec.ID
	}
	if !ok || rec.expired(now) {
		return nil, "", kms.Errorf(kms.CodeNotFound, "key %s named by the ciphertext not found", id)
	}
	if keyID != "" {
		want, err := k.resolve(k.st, keyID, now)
		if err != nil {
			return nil, "", err
		}
		if want.ID != rec.ID {
			return nil, "", kms.Errorf(kms.CodeIncorrectKey, "ciphertext was encrypted under key %s, not %s", k.keyARN(rec), keyID)
		}
	}
	if rec.KeySpec != "" {
		return nil, "", wrongUsage(rec, "symmetric ciphertext")
	}
	if err := usable(rec); err != nil {
		return nil, "", err
	}
	if int64(p.version) > int64(len(rec.Versions)) {
		return nil, "", kms.Errorf(kms.CodeInvalidCiphertext, "ciphertext names material version %d of key %s, which has %d", p.version, id, len(rec.Versions))
	}
	a, err := k.blobCipherFor(rec, int(p.version))
	if err != nil {
		return nil, "", err
	}
	return a, k.keyARN(rec), nil
}

// GenerateDataKey returns a new random data key of numBytes (1..1024) bytes,
// in plaintext and encrypted under keyID's current material.
func (k *Keystore) GenerateDataKey(ctx context.Context, keyID string, numBytes int, ec kms.EncryptionContext) (kms.DataKey, error) {
	if numBytes < 1 || numBytes > maxDataKeyBytes {
		return kms.DataKey{}, kms.Errorf(kms.CodeValidation, "GenerateDataKey: NumberOfBytes %d outside 1..%d", numBytes, maxDataKeyBytes)
	}
	if err := validateContext(ec); err != nil {
		return kms.DataKey{}, err
	}
	ek, err := k.encryptingKeyFor(ctx, keyID)
	if err != nil {
		return kms.DataKey{}, err
	}
	pt := make([]byte, numBytes)
	if _, err := rand.Read(pt); err != nil {
		return kms.DataKey{}, fmt.Errorf("GenerateDataKey: %w", err)
	}
	blob, err := ek.aead.seal(ek.uuid, ek.version, pt, ec)
	if err != nil {
		kms.Zero(pt)
		return kms.DataKey{}, fmt.Errorf("GenerateDataKey: %w", err)
	}
	return kms.DataKey{KeyID: ek.arn, Plaintext: pt, CiphertextBlob: blob}, nil
}

// GenerateDataKeyWithoutPlaintext is GenerateDataKey returning only the
// encrypted data key; the plaintext is zeroed before returning.
func (k *Keystore) GenerateDataKeyWithoutPlaintext(ctx context.Context, keyID string, numBytes int, ec kms.EncryptionContext) ([]byte, string, error) {
	dk, err := k.GenerateDataKey(ctx, keyID, numBytes, ec)
	if err != nil {
		return nil, "", err
	}
	dk.Zero()
	return dk.CiphertextBlob, dk.KeyID, nil
}

// Encrypt encrypts up to 4096 bytes (kms.MaxEncryptPlaintext) under keyID.
func (k *Keystore) Encrypt(ctx context.Context, keyID string, plaintext []byte, ec kms.EncryptionContext) ([]byte, string, error) {
	if len(plaintext) < 1 || len(plaintext) > kms.MaxEncryptPlaintext {
		return nil, "", kms.Errorf(kms.CodeValidation, "Encrypt: plaintext is %d bytes, outside 1..%d", len(plaintext), kms.MaxEncryptPlaintext)
	}
	if err := validateContext(ec); err != nil {
		return nil, "", err
	}
	ek, err := k.encryptingKeyFor(ctx, keyID)
	if err != nil {
		return nil, "", err
	}
	blob, err := ek.aead.seal(ek.uuid, ek.version, plaintext, ec)
	if err != nil {
		return nil, "", fmt.Errorf("Encrypt: %w", err)
	}
	return blob, ek.arn, nil
}

// Decrypt decrypts a blob from Encrypt or GenerateDataKey. keyID is optional;
// when given it must name the key the blob was encrypted under.
func (k *Keystore) Decrypt(ctx context.Context, keyID string, ciphertext []byte, ec kms.EncryptionContext) ([]byte, string, error) {
	p, err := parseBlob(ciphertext)
	if err != nil {
		return nil, "", err
	}
	if err := validateContext(ec); err != nil {
		return nil, "", err
	}
	k.mu.Lock()
	if err := k.refresh(ctx); err != nil {
		k.mu.Unlock()
		return nil, "", err
	}
	a, arn, err := k.forDecrypt(p, keyID)
	k.mu.Unlock()
	if err != nil {
		return nil, "", err
	}
	pt, err := a.open(p, ec)
	if err != nil {
		return nil, "", err
	}
	return pt, arn, nil
}

// ReEncrypt decrypts ciphertext under its own key and encrypts the plaintext
// under destKeyID, without the plaintext leaving the keystore; the
// intermediate plaintext is zeroed.
func (k *Keystore) ReEncrypt(ctx context.Context, ciphertext []byte, srcEC kms.EncryptionContext, destKeyID string, destEC kms.EncryptionContext) ([]byte, string, string, error) {
	p, err := parseBlob(ciphertext)
	if err != nil {
		return nil, "", "", err
	}
	if err := validateContext(srcEC); err != nil {
		return nil, "", "", err
	}
	if err := validateContext(destEC); err != nil {
		return nil, "", "", err
	}
	k.mu.Lock()
	if err := k.refresh(ctx); err != nil {
		k.mu.Unlock()
		return nil, "", "", err
	}
	srcAEAD, srcARN, err := k.forDecrypt(p, "")
	if err != nil {
		k.mu.Unlock()
		return nil, "", "", err
	}
	dest, err := k.forEncrypt(destKeyID)
	k.mu.Unlock()
	if err != nil {
		return nil, "", "", err
	}
	pt, err := srcAEAD.open(p, srcEC)
	if err != nil {
		return nil, "", "", err
	}
	defer kms.Zero(pt)
	out, err := dest.aead.seal(dest.uuid, dest.version, pt, destEC)
	if err != nil {
		return nil, "", "", fmt.Errorf("ReEncrypt: %w", err)
	}
	return out, srcARN, dest.arn, nil
}

// GenerateRandom returns numBytes (1..1024) random bytes.
func (k *Keystore) GenerateRandom(ctx context.Context, numBytes int) ([]byte, error) {
	if numBytes < 1 || numBytes > maxRandomBytes {
		return nil, kms.Errorf(kms.CodeValidation, "GenerateRandom: NumberOfBytes %d outside 1..%d", numBytes, maxRandomBytes)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b := make([]byte, numBytes)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("GenerateRandom: %w", err)
	}
	return b, nil
}

// ARNForKey resolves a key ID, key ARN, alias name or alias ARN to the key's
// ARN (any key state); NotFoundException if there is no such key.
func (k *Keystore) ARNForKey(keyID string) (string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.refresh(context.Background()); err != nil {
		return "", err
	}
	rec, err := k.resolve(k.st, keyID, k.now())
	if err != nil {
		return "", err
	}
	return k.keyARN(rec), nil
}

// CiphertextKeyARN returns the ARN of the key a ciphertext blob names, without
// decrypting it, so a server can authorise Decrypt/ReEncrypt against that
// key's policy first. InvalidCiphertextException if the blob is malformed,
// NotFoundException if the key does not exist.
func (k *Keystore) CiphertextKeyARN(ciphertext []byte) (string, error) {
	p, err := parseBlob(ciphertext)
	if err != nil {
		return "", err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.refresh(context.Background()); err != nil {
		return "", err
	}
	rec, ok := k.st.blobKey(p.key)
	if !ok || rec.expired(k.now()) {
		return "", kms.Errorf(kms.CodeNotFound, "key %s named by the ciphertext not found", p.key)
	}
	return k.keyARN(rec), nil
}
