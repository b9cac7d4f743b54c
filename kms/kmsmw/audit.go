package kmsmw

import (
	"context"

	"github.com/kmsfs/kmsfs/kms"
)

// AuditRecord describes one call that reached the KMS, for an audit log. It
// never carries plaintext or key material.
type AuditRecord struct {
	Operation   string
	KeyARN      string // the key used (as the KMS named it), else as asked for
	DestKeyARN  string // ReEncrypt only
	Context     kms.EncryptionContext
	DestContext kms.EncryptionContext // ReEncrypt only
	Err         error                 // nil: success
	// Speculative: the call was made ahead of need (a data key unwrapped
	// before its file was opened, kms.WithSpeculative), not for a request
	// that waited for it.
	Speculative bool
}

// Audit wraps inner so that every call is passed to record once it has
// returned, the way CloudTrail records every use of a key. When record
// fails, a successful call is failed too (its plaintext zeroed): a key use
// that could not be recorded must not happen unrecorded.
func Audit(inner kms.Crypto, record func(AuditRecord) error) kms.Crypto {
	return &audited{inner: inner, record: record}
}

type audited struct {
	inner  kms.Crypto
	record func(AuditRecord) error
}

// done records one call and returns the error the caller sees.
func (a *audited) done(r AuditRecord, asked string, zero func()) error {
	if r.KeyARN == "" {
		r.KeyARN = asked
	}
	if err := a.record(r); err != nil {
		if r.Err == nil && zero != nil {
			zero()
		}
		if r.Err != nil {
			return r.Err
		}
		return kms.Errorf(kms.CodeInternal, "%s not performed: audit log: %v", r.Operation, err)
	}
	return r.Err
}

func (a *audited) GenerateDataKey(ctx context.Context, keyID string, n int, ec kms.EncryptionContext) (kms.DataKey, error) {
	dk, err := a.inner.GenerateDataKey(ctx, keyID, n, ec)
	if err = a.done(AuditRecord{Operation: "GenerateDataKey", KeyARN: dk.KeyID, Context: ec, Err: err}, keyID, dk.Zero); err != nil {
		return kms.DataKey{}, err
	}
	return dk, nil
}

func (a *audited) GenerateDataKeyWithoutPlaintext(ctx context.Context, keyID string, n int, ec kms.EncryptionContext) ([]byte, string, error) {
	blob, arn, err := a.inner.GenerateDataKeyWithoutPlaintext(ctx, keyID, n, ec)
	if err = a.done(AuditRecord{Operation: "GenerateDataKeyWithoutPlaintext", KeyARN: arn, Context: ec, Err: err}, keyID, nil); err != nil {
		return nil, "", err
	}
	return blob, arn, nil
}

func (a *audited) Encrypt(ctx context.Context, keyID string, pt []byte, ec kms.EncryptionContext) ([]byte, string, error) {
	blob, arn, err := a.inner.Encrypt(ctx, keyID, pt, ec)
	if err = a.done(AuditRecord{Operation: "Encrypt", KeyARN: arn, Context: ec, Err: err}, keyID, nil); err != nil {
		return nil, "", err
	}
	return blob, arn, nil
}

func (a *audited) Decrypt(ctx context.Context, keyID string, blob []byte, ec kms.EncryptionContext) ([]byte, string, error) {
	pt, arn, err := a.inner.Decrypt(ctx, keyID, blob, ec)
	r := AuditRecord{Operation: "Decrypt", KeyARN: arn, Context: ec, Err: err, Speculative: kms.IsSpeculative(ctx)}
	if err = a.done(r, keyID, func() { kms.Zero(pt) }); err != nil {
		return nil, "", err
	}
	return pt, arn, nil
}

func (a *audited) ReEncrypt(ctx context.Context, blob []byte, srcEC kms.EncryptionContext, dest string, destEC kms.EncryptionContext) ([]byte, string, string, error) {
	out, src, dst, err := a.inner.ReEncrypt(ctx, blob, srcEC, dest, destEC)
	r := AuditRecord{Operation: "ReEncrypt", KeyARN: src, DestKeyARN: dst, Context: srcEC, DestContext: destEC, Err: err}
	if r.DestKeyARN == "" {
		r.DestKeyARN = dest
	}
	if err = a.done(r, "", nil); err != nil {
		return nil, "", "", err
	}
	return out, src, dst, nil
}
