package envelope

// Key derivation (docs/FORMAT.md section 5): a file's block and header MAC
// keys from its file key, and a file key from a bucket key.

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"fmt"
)

// HKDF labels. Each subkey is HKDF-SHA256(ikm, salt = file ID, info = label).
const (
	labelBlockKey      = "kmsfs v1 block key"
	labelHeaderMACKey  = "kmsfs v1 header mac key"
	labelBucketFileKey = "kmsfs v1 bucket-key file key"
)

// FileKeys holds the keys derived from one file's key. It is what an open
// file keeps; Zero it on release.
type FileKeys struct {
	fileID   [IDLen]byte
	version  uint8 // the header format version: how blocks are bound (block.go)
	blockKey []byte
	macKey   []byte
	aead     cipher.AEAD
}

// DeriveFileKeys derives the block and header keys from a file key (the
// per-object data key, or the output of BucketFileKey), for a file of header
// format version (Version1 to Version4), which decides how its blocks (or
// units) are bound (docs/FORMAT.md section 4).
func DeriveFileKeys(fileKey []byte, fileID [IDLen]byte, version uint8) (*FileKeys, error) {
	if !knownVersion(version) {
		return nil, fmt.Errorf("%w %d", ErrVersion, version)
	}
	if len(fileKey) != KeySize {
		return nil, fmt.Errorf("file key has %d bytes, want %d", len(fileKey), KeySize)
	}
	blockKey, err := hkdf.Key(sha256.New, fileKey, fileID[:], labelBlockKey, KeySize)
	if err != nil {
		return nil, err
	}
	macKey, err := hkdf.Key(sha256.New, fileKey, fileID[:], labelHeaderMACKey, KeySize)
	if err != nil {
		return nil, err
	}
	blk, err := aes.NewCipher(blockKey)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(blk)
	if err != nil {
		return nil, err
	}
	return &FileKeys{fileID: fileID, version: version, blockKey: blockKey, macKey: macKey, aead: aead}, nil
}

// BucketFileKey derives a file's own key from a volume-level bucket key and
// the file's random ID (bucket-key mode). The caller zeroes the result.
func BucketFileKey(bucketKey []byte, fileID [IDLen]byte) ([]byte, error) {
	if len(bucketKey) != KeySize {
		return nil, fmt.Errorf("bucket key has %d bytes, want %d", len(bucketKey), KeySize)
	}
	return hkdf.Key(sha256.New, bucketKey, fileID[:], labelBucketFileKey, KeySize)
}

// MACKey is the header authentication key, for Header.Marshal.
func (k *FileKeys) MACKey() []byte { return k.macKey }

// Zero wipes the derived key bytes. The AES key schedule inside the
// cipher.AEAD cannot be reached from Go; dropping the last reference is the
// best the standard library allows.
func (k *FileKeys) Zero() {
	clear(k.blockKey)
	clear(k.macKey)
	k.aead = nil
}

// FileID is the ID of the file these keys belong to.
func (k *FileKeys) FileID() [IDLen]byte { return k.fileID }

// Version is the header format version of the file these keys belong to.
func (k *FileKeys) Version() uint8 { return k.version }

// MarksEnd says whether the file's blocks carry the final-block flag
// (version 2): its last block must then be sealed final, and every other
// block not, so that a file cut at a block boundary or extended with a
// block from elsewhere fails authentication.
func (k *FileKeys) MarksEnd() bool { return k.version == Version2 || k.version == Version3 }

// HasHoles says whether the file may hold holes (version 3): all-zero
// stored blocks that read as zeros, each stored block naming the stored
// block before it.
func (k *FileKeys) HasHoles() bool { return k.version == Version3 }
