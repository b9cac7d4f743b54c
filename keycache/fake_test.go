package keycache

import (
	"context"
	"crypto/rand"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kmsfs/kmsfs/kms"
)

const (
	testARN   = "arn:aws:kms:us-east-1:111122223333:key/test"
	testAlias = "alias/test"
)

// fakeKMS is a kms.Crypto that wraps keys by remembering them. It checks the
// encryption context and the key ID the way AWS KMS Decrypt does, counts
// Decrypt calls, and can be made to block (gate) or fail (err).
type fakeKMS struct {
	mu    sync.Mutex
	blobs map[string]fakeBlob
	next  int
	gate  chan struct{} // when non-nil, Decrypt waits for it to close (or ctx)
	err   error         // when non-nil, every call returns it

	decrypts    atomic.Int64
	speculative atomic.Int64 // Decrypt calls made with kms.WithSpeculative
}

type fakeBlob struct {
	plain []byte
	ec    string
}

func newFakeKMS() *fakeKMS { return &fakeKMS{blobs: make(map[string]fakeBlob)} }

func (f *fakeKMS) setErr(err error) {
	f.mu.Lock()
	f.err = err
	f.mu.Unlock()
}

func (f *fakeKMS) setGate(g chan struct{}) {
	f.mu.Lock()
	f.gate = g
	f.mu.Unlock()
}

func (f *fakeKMS) checkKey(keyID string) error {
	switch keyID {
	case "", testARN, testAlias:
		return nil
	}
	return kms.Errorf(kms.CodeIncorrectKey, "key %s did not wrap this blob", keyID)
}

func (f *fakeKMS) GenerateDataKey(ctx context.Context, keyID string, numBytes int, ec kms.EncryptionContext) (kms.DataKey, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return kms.DataKey{}, f.err
	}
	if err := f.checkKey(keyID); err != nil || keyID == "" {
		return kms.DataKey{}, kms.Errorf(kms.CodeNotFound, "no key %q", keyID)
	}
	plain := make([]byte, numBytes)
	if _, err := rand.Read(plain); err != nil {
		return kms.DataKey{}, err
	}
	f.next++
	blob := fmt.Sprintf("blob-%d", f.next)
	f.blobs[blob] = fakeBlob{plain: clone(plain), ec: string(ec.Canonical())}
	return kms.DataKey{KeyID: testARN, Plaintext: plain, CiphertextBlob: []byte(blob)}, nil
}

func (f *fakeKMS) GenerateDataKeyWithoutPlaintext(ctx context.Context, keyID string, numBytes int, ec kms.EncryptionContext) ([]byte, string, error) {
	dk, err := f.GenerateDataKey(ctx, keyID, numBytes, ec)
	if err != nil {
		return nil, "", err
	}
	dk.Zero()
	return dk.CiphertextBlob, dk.KeyID, nil
}

func (f *fakeKMS) Encrypt(ctx context.Context, keyID string, plaintext []byte, ec kms.EncryptionContext) ([]byte, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, "", f.err
	}
	f.next++
	blob := fmt.Sprintf("blob-%d", f.next)
	f.blobs[blob] = fakeBlob{plain: clone(plaintext), ec: string(ec.Canonical())}
	return []byte(blob), testARN, nil
}

func (f *fakeKMS) Decrypt(ctx context.Context, keyID string, ciphertext []byte, ec kms.EncryptionContext) ([]byte, string, error) {
	f.decrypts.Add(1)
	if kms.IsSpeculative(ctx) {
		f.speculative.Add(1)
	}
	f.mu.Lock()
	gate := f.gate
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, "", ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, "", f.err
	}
	if err := f.checkKey(keyID); err != nil {
		return nil, "", err
	}
	b, ok := f.blobs[string(ciphertext)]
	if !ok || b.ec != string(ec.Canonical()) {
		return nil, "", kms.Errorf(kms.CodeInvalidCiphertext, "")
	}
	return clone(b.plain), testARN, nil
}

func (f *fakeKMS) ReEncrypt(ctx context.Context, ciphertext []byte, srcEC kms.EncryptionContext, destKeyID string, destEC kms.EncryptionContext) ([]byte, string, string, error) {
	plain, src, err := f.Decrypt(ctx, "", ciphertext, srcEC)
	if err != nil {
		return nil, "", "", err
	}
	blob, dst, err := f.Encrypt(ctx, destKeyID, plain, destEC)
	return blob, src, dst, err
}

// fakeClock is an injectable clock for MaxAge and Grace.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}
