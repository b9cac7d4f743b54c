package keystore

import (
	"bytes"
	"testing"

	"github.com/kmsfs/kmsfs/kms"
)

// FuzzDecryptBlob feeds arbitrary bytes to Decrypt: it must never panic, and
// it must succeed only on the genuine blob (anything else would be a forgery).
func FuzzDecryptBlob(f *testing.F) {
	fx := newFixture(f)
	md := createKey(f, fx.ks)
	ec := kms.EncryptionContext{"volume": "v"}
	genuine, _, err := fx.ks.Encrypt(bg, md.KeyID, []byte("fuzz plaintext"), ec)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(genuine)
	f.Add(genuine[:blobOverhead])
	f.Add(genuine[:blobHeaderLen])
	f.Add([]byte{})
	f.Add([]byte{blobFormatV1})
	f.Add(append([]byte{0x02}, genuine[1:]...))
	f.Fuzz(func(t *testing.T, data []byte) {
		if p, err := parseBlob(data); err == nil {
			if len(p.header) != blobHeaderLen || len(p.nonce) != blobNonceLen || len(p.sealedData) < blobTagLen || p.version == 0 {
				t.Fatalf("parseBlob accepted a malformed blob: %+v", p)
			}
		}
		pt, _, err := fx.ks.Decrypt(bg, "", data, ec)
		if err == nil && !bytes.Equal(data, genuine) {
			t.Fatalf("Decrypt accepted a blob that is not the genuine one (plaintext %q)", pt)
		}
		if err != nil && kms.Code(err) == "" {
			t.Fatalf("Decrypt error without a KMS code: %v", err)
		}
	})
}

func BenchmarkGenerateDataKey(b *testing.B) {
	fx := newFixture(b)
	md := createKey(b, fx.ks)
	ec := kms.EncryptionContext{"volume": "vol-1", "file": "0123456789abcdef"}
	b.ReportAllocs()
	for b.Loop() {
		dk, err := fx.ks.GenerateDataKey(bg, md.KeyID, 32, ec)
		if err != nil {
			b.Fatal(err)
		}
		dk.Zero()
	}
}

func BenchmarkDecrypt(b *testing.B) {
	fx := newFixture(b)
	md := createKey(b, fx.ks)
	ec := kms.EncryptionContext{"volume": "vol-1", "file": "0123456789abcdef"}
	dk, err := fx.ks.GenerateDataKey(bg, md.KeyID, 32, ec)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		pt, _, err := fx.ks.Decrypt(bg, "", dk.CiphertextBlob, ec)
		if err != nil {
			b.Fatal(err)
		}
		kms.Zero(pt)
	}
}

// BenchmarkDecryptParallel measures the fast path under contention for the
// keystore mutex (the stat and the cached AEAD lookup happen under it).
func BenchmarkDecryptParallel(b *testing.B) {
	fx := newFixture(b)
	md := createKey(b, fx.ks)
	ec := kms.EncryptionContext{"volume": "vol-1", "file": "0123456789abcdef"}
	dk, err := fx.ks.GenerateDataKey(bg, md.KeyID, 32, ec)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			pt, _, err := fx.ks.Decrypt(bg, "", dk.CiphertextBlob, ec)
			if err != nil {
				b.Error(err)
				return
			}
			kms.Zero(pt)
		}
	})
}

// BenchmarkStatCheck isolates the per-call change detection (one stat).
func BenchmarkStatCheck(b *testing.B) {
	fx := newFixture(b)
	for b.Loop() {
		if _, err := statID(fx.ks.statePath); err != nil {
			b.Fatal(err)
		}
	}
}
