package envelope

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// Name encryption (docs/FORMAT.md section 10). A name is encrypted
// deterministically under its directory's ID, so that a lookup can compute
// the stored name without listing the directory, while equal names in two
// directories look unrelated:
//
//	tag    = HMAC-SHA256(nameMACKey, dirID || name)[:16]
//	stored = base64url-nopad(tag || AES-256-CTR(nameEncKey, iv = tag, name))
//
// after the SIV construction (RFC 5297), with one HMAC in place of S2V and
// the whole tag as the CTR counter block (no bits cleared): the tag is both
// the synthetic IV and the authenticator. Symlink targets need no
// determinism; they are nonce || AES-GCM(targetKey, target), base64url.

// DirIDLen is the length of a directory ID.
const DirIDLen = 16

// MaxStoredName is the longest stored name component (NAME_MAX of the
// backing filesystem); MaxShortName the longest plaintext name whose stored
// form fits in it. Longer names, up to MaxPlainName, are stored under
// LongName of their stored form, which is kept in a side file (FORMAT.md
// section 10).
const (
	MaxStoredName = 255
	MaxShortName  = MaxStoredName*3/4 - nameTagLen
	MaxPlainName  = 255
)

// LongNamePrefix starts the stored name of a long name; LongNameSuffix ends
// its side file's name. Neither '~' nor '.' is in the base64url alphabet, so
// neither can start a short stored name.
const (
	LongNamePrefix = "~"
	LongNameSuffix = ".name"
)

// LongName is the name a stored form longer than MaxStoredName is stored
// under: "~" and the base64url SHA-256 of the stored form.
func LongName(stored string) string {
	sum := sha256.Sum256([]byte(stored))
	return LongNamePrefix + b64.EncodeToString(sum[:])
}

const (
	nameTagLen       = 16
	labelNameKeys    = "kmsfs v1 name keys"
	labelRootDirID   = "kmsfs v1 root directory"
	maxSymlinkTarget = 4095 // PATH_MAX - 1: what the backend can store
)

// ErrNameTooLong is returned for a name whose stored form would exceed
// MaxStoredName (ENAMETOOLONG at the FUSE boundary).
var ErrNameTooLong = errors.New("name too long to encrypt")

var b64 = base64.RawURLEncoding

// NameCipher encrypts and decrypts the names and symlink targets of a volume.
type NameCipher struct {
	enc    cipher.Block
	macKey []byte
	target cipher.AEAD
	root   [DirIDLen]byte
}

// NewNameCipher derives the name keys from the volume's metadata key.
func NewNameCipher(metaKey []byte, volumeID [IDLen]byte) (*NameCipher, error) {
	keys, err := hkdf.Key(sha256.New, metaKey, volumeID[:], labelNameKeys, 3*KeySize)
	if err != nil {
		return nil, err
	}
	defer clear(keys)
	blk, err := aes.NewCipher(keys[:KeySize])
	if err != nil {
		return nil, err
	}
	tblk, err := aes.NewCipher(keys[2*KeySize:])
	if err != nil {
		return nil, err
	}
	target, err := cipher.NewGCM(tblk)
	if err != nil {
		return nil, err
	}
	c := &NameCipher{enc: blk, macKey: append([]byte(nil), keys[KeySize:2*KeySize]...), target: target}
	m := hmac.New(sha256.New, c.macKey)
	m.Write([]byte(labelRootDirID))
	copy(c.root[:], m.Sum(nil))
	return c, nil
}

// RootDirID is the ID of the volume's root directory, which has no ID file.
func (c *NameCipher) RootDirID() [DirIDLen]byte { return c.root }

func (c *NameCipher) tag(dirID [DirIDLen]byte, name string) []byte {
	m := hmac.New(sha256.New, c.macKey)
	m.Write(dirID[:])
	m.Write([]byte(name))
	return m.Sum(nil)[:nameTagLen]
}

// EncryptName returns the stored form of name in the directory dirID.
func (c *NameCipher) EncryptName(dirID [DirIDLen]byte, name string) (string, error) {
	if err := checkPlainName(name); err != nil {
		return "", err
	}
	if len(name) > MaxPlainName {
		return "", fmt.Errorf("%w: %d bytes, at most %d", ErrNameTooLong, len(name), MaxPlainName)
	}
	out := make([]byte, nameTagLen+len(name))
	copy(out, c.tag(dirID, name))
	cipher.NewCTR(c.enc, out[:nameTagLen]).XORKeyStream(out[nameTagLen:], []byte(name))
	return b64.EncodeToString(out), nil
}

// DecryptName returns the plaintext of a stored name of directory dirID;
// ErrAuth if it was not made by EncryptName with this key and directory.
func (c *NameCipher) DecryptName(dirID [DirIDLen]byte, stored string) (string, error) {
	raw, err := b64.DecodeString(stored)
	if err != nil || len(raw) <= nameTagLen {
		return "", fmt.Errorf("name %q: %w", stored, ErrAuth)
	}
	plain := make([]byte, len(raw)-nameTagLen)
	cipher.NewCTR(c.enc, raw[:nameTagLen]).XORKeyStream(plain, raw[nameTagLen:])
	if !hmac.Equal(c.tag(dirID, string(plain)), raw[:nameTagLen]) || checkPlainName(string(plain)) != nil {
		return "", fmt.Errorf("name %q: %w", stored, ErrAuth)
	}
	return string(plain), nil
}

func checkPlainName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("invalid name %q", name)
	}
	return nil
}

// EncryptTarget returns the stored form of a symlink target.
func (c *NameCipher) EncryptTarget(target string) (string, error) {
	sealed := make([]byte, NonceSize, NonceSize+len(target)+TagSize)
	if _, err := rand.Read(sealed); err != nil {
		return "", err
	}
	sealed = c.target.Seal(sealed, sealed[:NonceSize], []byte(target), nil)
	out := b64.EncodeToString(sealed)
	if len(out) > maxSymlinkTarget {
		return "", fmt.Errorf("%w: symlink target of %d bytes", ErrNameTooLong, len(target))
	}
	return out, nil
}

// TargetLen returns the length of the plaintext target whose stored form is
// storedLen bytes long, without reading it: base64url without padding turns
// m bytes into ceil(4m/3), and the sealed form is 28 bytes longer than the
// target. (A stat must not read the link: readlink(2) would update the
// backing symlink's atime, which a stat may not change.)
func TargetLen(storedLen int64) int64 {
	return max(storedLen*3/4-NonceSize-TagSize, 0)
}

// DecryptTarget returns the plaintext of a stored symlink target.
func (c *NameCipher) DecryptTarget(stored string) (string, error) {
	raw, err := b64.DecodeString(stored)
	if err != nil || len(raw) < NonceSize+TagSize {
		return "", fmt.Errorf("symlink target: %w", ErrAuth)
	}
	plain, err := c.target.Open(nil, raw[:NonceSize], raw[NonceSize:], nil)
	if err != nil {
		return "", fmt.Errorf("symlink target: %w", ErrAuth)
	}
	return string(plain), nil
}
