package keystore

import (
	"bytes"
	"context"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/kms"
)

var bg = context.Background()

func TestGenerateDataKeyRoundTripAllKeyForms(t *testing.T) {
	f := newFixture(t)
	md := createKey(t, f.ks)
	if err := f.ks.CreateAlias(bg, "alias/vol", md.KeyID); err != nil {
		t.Fatal(err)
	}
	ec := kms.EncryptionContext{"volume": "v1", "file": "f1"}
	wantARN := "arn:aws:kms:local:000000000000:key/" + md.KeyID
	if md.ARN != wantARN {
		t.Fatalf("ARN %q, want %q", md.ARN, wantARN)
	}
	forms := []string{md.KeyID, md.ARN, "alias/vol", "arn:aws:kms:local:000000000000:alias/vol", strings.ToUpper(md.KeyID)}
	for _, form := range forms {
		dk, err := f.ks.GenerateDataKey(bg, form, 32, ec)
		if err != nil {
			t.Fatalf("GenerateDataKey(%s): %v", form, err)
		}
		if dk.KeyID != wantARN || len(dk.Plaintext) != 32 || len(dk.CiphertextBlob) != blobOverhead+32 {
			t.Fatalf("GenerateDataKey(%s): KeyID %q, %d plaintext bytes, %d blob bytes", form, dk.KeyID, len(dk.Plaintext), len(dk.CiphertextBlob))
		}
		for _, decryptWith := range append([]string{""}, forms...) {
			pt, arn, err := f.ks.Decrypt(bg, decryptWith, dk.CiphertextBlob, ec)
			if err != nil {
				t.Fatalf("Decrypt(%q): %v", decryptWith, err)
			}
			if !bytes.Equal(pt, dk.Plaintext) || arn != wantARN {
				t.Fatalf("Decrypt(%q) returned different plaintext or ARN %q", decryptWith, arn)
			}
		}
	}
}

func TestEncryptDecryptRoundTrip(t *testing.T) {
	f := newFixture(t)
	md := createKey(t, f.ks)
	for _, n := range []int{1, 17, kms.MaxEncryptPlaintext} {
		pt := bytes.Repeat([]byte{0xa5}, n)
		blob, arn, err := f.ks.Encrypt(bg, md.KeyID, pt, nil)
		if err != nil {
			t.Fatalf("Encrypt %d bytes: %v", n, err)
		}
		if arn != md.ARN {
			t.Fatalf("Encrypt ARN %q, want %q", arn, md.ARN)
		}
		got, _, err := f.ks.Decrypt(bg, "", blob, kms.EncryptionContext{})
		if err != nil {
			t.Fatalf("Decrypt %d bytes: %v", n, err)
		}
		if !bytes.Equal(got, pt) {
			t.Fatalf("Decrypt %d bytes: plaintext differs", n)
		}
	}
	ct, _, err := f.ks.GenerateDataKeyWithoutPlaintext(bg, md.KeyID, 64, nil)
	if err != nil {
		t.Fatal(err)
	}
	pt, _, err := f.ks.Decrypt(bg, "", ct, nil)
	if err != nil || len(pt) != 64 {
		t.Fatalf("Decrypt of GenerateDataKeyWithoutPlaintext: %d bytes, %v", len(pt), err)
	}
}

func TestContextMismatchFails(t *testing.T) {
	f := newFixture(t)
	md := createKey(t, f.ks)
	ec := kms.EncryptionContext{"volume": "v1", "file": "f1"}
	dk, err := f.ks.GenerateDataKey(bg, md.KeyID, 32, ec)
	if err != nil {
		t.Fatal(err)
	}
	for _, other := range []kms.EncryptionContext{
		nil,
		{"volume": "v1"},
		{"volume": "v1", "file": "f2"},
		{"volume": "v1", "file": "f1", "extra": ""},
		{"volume": "v1", "fil": "ef1"},
	} {
		_, _, err := f.ks.Decrypt(bg, "", dk.CiphertextBlob, other)
		wantCode(t, err, kms.ErrInvalidCiphertext)
	}
}

func TestTamperedBlobFails(t *testing.T) {
	f := newFixture(t)
	md := createKey(t, f.ks)
	blob, _, err := f.ks.Encrypt(bg, md.KeyID, []byte("secret"), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range blob {
		for _, bit := range []byte{0x01, 0x80} {
			edited := bytes.Clone(blob)
			edited[i] ^= bit
			_, _, err := f.ks.Decrypt(bg, "", edited, nil)
			switch {
			case i >= 1 && i < 1+blobKeyIDLen:
				// The blob now names a key that does not exist.
				wantCode(t, err, kms.ErrNotFound)
			default:
				wantCode(t, err, kms.ErrInvalidCiphertext)
			}
		}
	}
	for n := 0; n < len(blob); n++ {
		_, _, err := f.ks.Decrypt(bg, "", blob[:n], nil)
		wantCode(t, err, kms.ErrInvalidCiphertext)
	}
	_, _, err = f.ks.Decrypt(bg, "", append(bytes.Clone(blob), 0), nil)
	wantCode(t, err, kms.ErrInvalidCiphertext)
}

func TestBlobLayout(t *testing.T) {
	f := newFixture(t)
	md := createKey(t, f.ks)
	pt := []byte("twelve bytes")
	blob, _, err := f.ks.Encrypt(bg, md.KeyID, pt, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(blob) != 49+len(pt) || blob[0] != 0x01 {
		t.Fatalf("blob length %d format 0x%02x", len(blob), blob[0])
	}
	u, _ := parseUUID(md.KeyID)
	if !bytes.Equal(blob[1:17], u[:]) {
		t.Fatalf("blob key ID bytes %x, want %x", blob[1:17], u[:])
	}
	if v := binary.BigEndian.Uint32(blob[17:21]); v != 1 {
		t.Fatalf("blob version %d, want 1", v)
	}
	if bytes.Contains(blob, pt) {
		t.Fatal("blob contains the plaintext")
	}
}

func TestSizeLimits(t *testing.T) {
	f := newFixture(t)
	md := createKey(t, f.ks)
	for _, n := range []int{0, kms.MaxEncryptPlaintext + 1} {
		_, _, err := f.ks.Encrypt(bg, md.KeyID, make([]byte, n), nil)
		wantCode(t, err, kms.ErrValidation)
	}
	for _, n := range []int{-1, 0, 1025} {
		_, err := f.ks.GenerateDataKey(bg, md.KeyID, n, nil)
		wantCode(t, err, kms.ErrValidation)
		_, _, err = f.ks.GenerateDataKeyWithoutPlaintext(bg, md.KeyID, n, nil)
		wantCode(t, err, kms.ErrValidation)
		_, err = f.ks.GenerateRandom(bg, n)
		wantCode(t, err, kms.ErrValidation)
	}
	for _, n := range []int{1, 1024} {
		dk, err := f.ks.GenerateDataKey(bg, md.KeyID, n, nil)
		if err != nil || len(dk.Plaintext) != n {
			t.Fatalf("GenerateDataKey(%d): %d bytes, %v", n, len(dk.Plaintext), err)
		}
		r, err := f.ks.GenerateRandom(bg, n)
		if err != nil || len(r) != n {
			t.Fatalf("GenerateRandom(%d): %d bytes, %v", n, len(r), err)
		}
	}
	r1, _ := f.ks.GenerateRandom(bg, 32)
	r2, _ := f.ks.GenerateRandom(bg, 32)
	if bytes.Equal(r1, r2) {
		t.Fatal("GenerateRandom returned the same bytes twice")
	}
	_, err := f.ks.GenerateDataKey(bg, md.KeyID, 32, kms.EncryptionContext{"k": strings.Repeat("v", 70000)})
	wantCode(t, err, kms.ErrValidation)
}

func TestDecryptWithWrongKeyID(t *testing.T) {
	f := newFixture(t)
	a := createKey(t, f.ks)
	b := createKey(t, f.ks)
	blob, _, err := f.ks.Encrypt(bg, a.KeyID, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = f.ks.Decrypt(bg, b.KeyID, blob, nil)
	wantCode(t, err, kms.ErrIncorrectKey)
	_, _, err = f.ks.Decrypt(bg, b.ARN, blob, nil)
	wantCode(t, err, kms.ErrIncorrectKey)
	_, _, err = f.ks.Decrypt(bg, "00000000-0000-4000-8000-000000000000", blob, nil)
	wantCode(t, err, kms.ErrNotFound)
	_, _, err = f.ks.Encrypt(bg, "alias/nope", []byte("x"), nil)
	wantCode(t, err, kms.ErrNotFound)
	_, _, err = f.ks.Encrypt(bg, "", []byte("x"), nil)
	wantCode(t, err, kms.ErrValidation)
	// An ARN for another region or account is not this keystore's key.
	_, _, err = f.ks.Encrypt(bg, strings.Replace(a.ARN, ":local:", ":us-east-1:", 1), []byte("x"), nil)
	wantCode(t, err, kms.ErrNotFound)
	_, _, err = f.ks.Encrypt(bg, strings.Replace(a.ARN, "000000000000", "111111111111", 1), []byte("x"), nil)
	wantCode(t, err, kms.ErrNotFound)
}

func TestReEncrypt(t *testing.T) {
	f := newFixture(t)
	a := createKey(t, f.ks)
	b := createKey(t, f.ks)
	srcEC := kms.EncryptionContext{"file": "1"}
	dstEC := kms.EncryptionContext{"file": "2"}
	dk, err := f.ks.GenerateDataKey(bg, a.KeyID, 32, srcEC)
	if err != nil {
		t.Fatal(err)
	}
	out, srcARN, dstARN, err := f.ks.ReEncrypt(bg, dk.CiphertextBlob, srcEC, b.KeyID, dstEC)
	if err != nil {
		t.Fatal(err)
	}
	if srcARN != a.ARN || dstARN != b.ARN {
		t.Fatalf("ReEncrypt ARNs %s %s", srcARN, dstARN)
	}
	pt, arn, err := f.ks.Decrypt(bg, b.KeyID, out, dstEC)
	if err != nil || arn != b.ARN || !bytes.Equal(pt, dk.Plaintext) {
		t.Fatalf("Decrypt of re-encrypted blob: %v", err)
	}
	_, _, err = f.ks.Decrypt(bg, "", out, srcEC)
	wantCode(t, err, kms.ErrInvalidCiphertext)
	_, _, _, err = f.ks.ReEncrypt(bg, dk.CiphertextBlob, dstEC, b.KeyID, dstEC)
	wantCode(t, err, kms.ErrInvalidCiphertext)
	_, _, _, err = f.ks.ReEncrypt(bg, dk.CiphertextBlob, srcEC, "alias/missing", dstEC)
	wantCode(t, err, kms.ErrNotFound)
	if err := f.ks.DisableKey(bg, a.KeyID); err != nil {
		t.Fatal(err)
	}
	_, _, _, err = f.ks.ReEncrypt(bg, dk.CiphertextBlob, srcEC, b.KeyID, dstEC)
	wantCode(t, err, kms.ErrDisabled)
	if err := f.ks.EnableKey(bg, a.KeyID); err != nil {
		t.Fatal(err)
	}
	if err := f.ks.DisableKey(bg, b.KeyID); err != nil {
		t.Fatal(err)
	}
	_, _, _, err = f.ks.ReEncrypt(bg, dk.CiphertextBlob, srcEC, b.KeyID, dstEC)
	wantCode(t, err, kms.ErrDisabled)
}

func TestCiphertextKeyARNAndARNForKey(t *testing.T) {
	f := newFixture(t)
	md := createKey(t, f.ks)
	if err := f.ks.CreateAlias(bg, "alias/x", md.KeyID); err != nil {
		t.Fatal(err)
	}
	for _, form := range []string{md.KeyID, md.ARN, "alias/x", "arn:aws:kms:local:000000000000:alias/x"} {
		arn, err := f.ks.ARNForKey(form)
		if err != nil || arn != md.ARN {
			t.Fatalf("ARNForKey(%s) = %q, %v", form, arn, err)
		}
	}
	_, err := f.ks.ARNForKey("alias/y")
	wantCode(t, err, kms.ErrNotFound)
	_, err = f.ks.ARNForKey("not-a-key")
	wantCode(t, err, kms.ErrNotFound)
	blob, _, err := f.ks.Encrypt(bg, md.KeyID, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	arn, err := f.ks.CiphertextKeyARN(blob)
	if err != nil || arn != md.ARN {
		t.Fatalf("CiphertextKeyARN = %q, %v", arn, err)
	}
	_, err = f.ks.CiphertextKeyARN(blob[:10])
	wantCode(t, err, kms.ErrInvalidCiphertext)
}

func TestContextCancelled(t *testing.T) {
	f := newFixture(t)
	md := createKey(t, f.ks)
	ctx, cancel := context.WithCancel(bg)
	cancel()
	if _, err := f.ks.GenerateDataKey(ctx, md.KeyID, 32, nil); err == nil {
		t.Fatal("GenerateDataKey with a cancelled context succeeded")
	}
	if _, err := f.ks.CreateKey(ctx, kms.CreateKeyInput{}); err == nil {
		t.Fatal("CreateKey with a cancelled context succeeded")
	}
}
