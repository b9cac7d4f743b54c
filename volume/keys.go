package volume

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/kms"
)

// Bucket-key reuse bounds. S3 Bucket Keys are "time-limited"; we bound both
// time and count so that disabling or rotating the KMS key reaches new files
// within minutes, and one bucket key never covers an unbounded number of
// files, while 10,000 new files still cost a single GenerateDataKey (the
// "up to 99% fewer calls" promise).
const (
	DefaultBucketKeyMaxAge   = 10 * time.Minute
	DefaultBucketKeyMaxFiles = 50000
)

type bucketKeySource struct {
	maxAge   time.Duration
	maxFiles int

	mu  sync.Mutex
	cur *bucketKey
}

type bucketKey struct {
	id      [envelope.IDLen]byte
	keyARN  string
	wrapped []byte
	plain   []byte
	created time.Time
	files   int
}

// newFileKey returns a new file's key derived from the current bucket key,
// first replacing the bucket key if it is too old or has served too many
// files. The caller zeroes fileKey.
func (s *bucketKeySource) newFileKey(ctx context.Context, v *Volume, fileID [envelope.IDLen]byte) (fileKey []byte, bk bucketKey, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil || time.Since(s.cur.created) > s.maxAge || s.cur.files >= s.maxFiles {
		if s.cur != nil {
			kms.Zero(s.cur.plain)
			s.cur = nil
		}
		dk, err := v.keys.GenerateDataKey(ctx, v.cfg.KeyID, envelope.KeySize, bucketContext(v.cfg.VolumeID))
		if err != nil {
			return nil, bk, err
		}
		nk := &bucketKey{keyARN: dk.KeyID, wrapped: dk.CiphertextBlob, plain: dk.Plaintext, created: time.Now()}
		if _, err := rand.Read(nk.id[:]); err != nil {
			dk.Zero()
			return nil, bk, err
		}
		s.cur = nk
	}
	s.cur.files++
	fileKey, err = envelope.BucketFileKey(s.cur.plain, fileID)
	return fileKey, bucketKey{id: s.cur.id, keyARN: s.cur.keyARN, wrapped: s.cur.wrapped}, err
}

func (s *bucketKeySource) zero() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur != nil {
		kms.Zero(s.cur.plain)
		s.cur = nil
	}
}

// metaKey is the volume metadata key (unwrapped on first use), from which
// the xattr value key and the name keys are derived.
type metaKey struct {
	mu    sync.Mutex
	aead  cipher.AEAD
	names *envelope.NameCipher
}

const labelXattrKey = "kmsfs v1 xattr key"

// unwrap unwraps the metadata key once and derives what is kept of it.
// Called with m.mu held.
func (m *metaKey) unwrap(ctx context.Context, v *Volume) error {
	if m.aead != nil {
		return nil
	}
	ctx, cancel := detachKeyWork(ctx)
	defer cancel()
	plain, _, err := v.keys.Decrypt(ctx, v.cfg.KeyID, v.cfg.WrappedMetaKey, metaContext(v.cfg.VolumeID))
	if err != nil {
		return fmt.Errorf("unwrap volume metadata key: %w", err)
	}
	defer kms.Zero(plain)
	key, err := hkdf.Key(sha256.New, plain, v.id[:], labelXattrKey, envelope.KeySize)
	if err != nil {
		return err
	}
	defer kms.Zero(key)
	blk, err := aes.NewCipher(key)
	if err != nil {
		return err
	}
	aead, err := cipher.NewGCM(blk)
	if err != nil {
		return err
	}
	names, err := envelope.NewNameCipher(plain, v.id)
	if err != nil {
		return err
	}
	m.aead, m.names = aead, names
	return nil
}

func (m *metaKey) xattrAEAD(ctx context.Context, v *Volume) (cipher.AEAD, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.unwrap(ctx, v); err != nil {
		return nil, err
	}
	return m.aead, nil
}

func (m *metaKey) nameCipher(ctx context.Context, v *Volume) (*envelope.NameCipher, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.unwrap(ctx, v); err != nil {
		return nil, err
	}
	return m.names, nil
}

func (m *metaKey) zero() {
	m.mu.Lock()
	m.aead, m.names = nil, nil
	m.mu.Unlock()
}

// encryptedXattr says which attributes have encrypted values: the user
// namespace. Others (security.*, trusted.*, system.posix_acl_*) are read by
// the kernel or the backing filesystem and must stay as they are.
func encryptedXattr(attr string) bool { return strings.HasPrefix(attr, "user.") }

// SealXattr encrypts a user xattr value: nonce || AES-GCM(value), with the
// attribute name as associated data so values cannot move between names.
func (v *Volume) SealXattr(ctx context.Context, attr string, value []byte) ([]byte, error) {
	if !encryptedXattr(attr) {
		return value, nil
	}
	aead, err := v.meta.xattrAEAD(ctx, v)
	if err != nil {
		return nil, err
	}
	out := make([]byte, envelope.NonceSize, envelope.NonceSize+len(value)+envelope.TagSize)
	if _, err := rand.Read(out); err != nil {
		return nil, err
	}
	return aead.Seal(out, out[:envelope.NonceSize], value, []byte(attr)), nil
}

// ErrXattrAuth is a stored xattr value that fails authentication.
var ErrXattrAuth = errors.New("xattr value authentication failed")

// OpenXattr decrypts a stored user xattr value.
func (v *Volume) OpenXattr(ctx context.Context, attr string, stored []byte) ([]byte, error) {
	if !encryptedXattr(attr) {
		return stored, nil
	}
	aead, err := v.meta.xattrAEAD(ctx, v)
	if err != nil {
		return nil, err
	}
	if len(stored) < envelope.NonceSize+envelope.TagSize {
		return nil, ErrXattrAuth
	}
	out, err := aead.Open(nil, stored[:envelope.NonceSize], stored[envelope.NonceSize:], []byte(attr))
	if err != nil {
		return nil, ErrXattrAuth
	}
	return out, nil
}

// XattrOverhead is how much longer a stored user xattr value is than its plaintext.
const XattrOverhead = envelope.NonceSize + envelope.TagSize
