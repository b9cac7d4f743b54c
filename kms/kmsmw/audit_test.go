package kmsmw

import (
	"context"
	"errors"
	"testing"

	"github.com/kmsfs/kmsfs/kms"
)

// TestAuditRecordsEveryCallAndRefusesUnrecorded: successes and failures are
// both recorded, with key and context; when the record cannot be written a
// successful call fails and its plaintext key is zeroed.
func TestAuditRecordsEveryCallAndRefusesUnrecorded(t *testing.T) {
	ctx := context.Background()
	var got []AuditRecord
	var failRecord bool
	record := func(r AuditRecord) error {
		if failRecord {
			return errors.New("disk full")
		}
		got = append(got, r)
		return nil
	}
	ec := kms.EncryptionContext{"kmsfs:volume": "v"}
	k := Audit(&fakeKMS{}, record)
	if _, err := k.GenerateDataKey(ctx, "alias/x", 32, ec); err != nil {
		t.Fatal(err)
	}
	denied := Audit(errKMS{Crypto: &fakeKMS{}, fn: func() error { return kms.Errorf(kms.CodeAccessDenied, "no") }}, record)
	if _, _, err := denied.Decrypt(ctx, "key-1", []byte("blob"), ec); !errors.Is(err, kms.ErrAccessDenied) {
		t.Fatalf("denied decrypt: %v", err)
	}
	k.ReEncrypt(ctx, []byte("blob"), ec, "key-2", ec)
	if len(got) != 3 {
		t.Fatalf("%d records, want 3", len(got))
	}
	if got[0].Operation != "GenerateDataKey" || got[0].KeyARN != "arn" || got[0].Context["kmsfs:volume"] != "v" || got[0].Err != nil {
		t.Fatalf("first record %+v", got[0])
	}
	if got[1].Operation != "Decrypt" || got[1].KeyARN != "key-1" || !errors.Is(got[1].Err, kms.ErrAccessDenied) {
		t.Fatalf("refused call's record %+v", got[1])
	}
	if got[2].Operation != "ReEncrypt" || got[2].DestKeyARN != "arn" {
		t.Fatalf("ReEncrypt record %+v", got[2])
	}

	failRecord = true
	plain := []byte("secret-key-bytes")
	inner := &plainKMS{fakeKMS: &fakeKMS{}, plain: plain}
	if pt, _, err := Audit(inner, record).Decrypt(ctx, "", []byte("blob"), ec); err == nil || pt != nil {
		t.Fatalf("decrypt that could not be audited: %q, %v", pt, err)
	}
	for _, b := range plain {
		if b != 0 {
			t.Fatal("the plaintext of an unrecorded decrypt was not zeroed")
		}
	}
}

// plainKMS returns the same plaintext slice from Decrypt, so a test can see
// whether the caller zeroed it.
type plainKMS struct {
	*fakeKMS
	plain []byte
}

func (p *plainKMS) Decrypt(context.Context, string, []byte, kms.EncryptionContext) ([]byte, string, error) {
	return p.plain, "arn", nil
}
