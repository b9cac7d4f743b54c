package keystore

import (
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"

	"github.com/kmsfs/kmsfs/kms"
)

// Ciphertext blob layout (what Encrypt, GenerateDataKey,
// GenerateDataKeyWithoutPlaintext and ReEncrypt return, and Decrypt accepts).
// All integers are big-endian.
//
//	offset  size  field
//	0       1     format byte, blobFormatV1 = 0x01
//	1       16    key ID: the KMS key's UUID as 16 raw bytes
//	17      4     material version (uint32, 1-based) of that key's backing key
//	21      12    AES-GCM nonce, random per blob
//	33      n     AES-256-GCM ciphertext of the plaintext (n = plaintext length)
//	33+n    16    AES-GCM authentication tag
//
// The total length is 49 + len(plaintext). The additional authenticated data
// is the blob's own 33-byte prefix (format, key ID, version, nonce) followed by
// the encryption context's canonical encoding (kms.EncryptionContext.Canonical).
// Editing any byte of the blob, or decrypting with a different encryption
// context, fails authentication and is reported as InvalidCiphertextException.
// The format byte lets a later version change the layout; an unknown format
// byte is an InvalidCiphertextException.
const (
	blobFormatV1   = 0x01
	blobKeyIDLen   = 16
	blobNonceLen   = 12
	blobTagLen     = 16
	blobHeaderLen  = 1 + blobKeyIDLen + 4 + blobNonceLen // 33
	blobOverhead   = blobHeaderLen + blobTagLen          // 49
	blobVersionOff = 1 + blobKeyIDLen
	blobNonceOff   = blobVersionOff + 4
)

// keyUUID is a key ID in binary form.
type keyUUID [16]byte

// String formats the UUID the way AWS prints key IDs: lowercase 8-4-4-4-12.
func (u keyUUID) String() string {
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:], u[10:])
	return string(b[:])
}

// parseUUID parses the canonical 36-character form (any hex case).
func parseUUID(s string) (keyUUID, bool) {
	var u keyUUID
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return u, false
	}
	var compact [32]byte
	n := 0
	for i := 0; i < len(s); i++ {
		if i == 8 || i == 13 || i == 18 || i == 23 {
			continue
		}
		compact[n] = s[i]
		n++
	}
	if _, err := hex.Decode(u[:], compact[:]); err != nil {
		return u, false
	}
	return u, true
}

// newUUID returns a random (version 4, RFC 9562) UUID.
func newUUID() (keyUUID, error) {
	var u keyUUID
	if _, err := rand.Read(u[:]); err != nil {
		return u, fmt.Errorf("generate key ID: %w", err)
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return u, nil
}

// blob is a parsed ciphertext blob. Its slices alias the input.
type blob struct {
	key        keyUUID
	version    uint32
	header     []byte // the 33-byte prefix, part of the AAD
	nonce      []byte
	sealedData []byte // ciphertext || tag
}

// parseBlob splits a ciphertext blob into its fields. It never panics on any
// input; a malformed blob is an InvalidCiphertextException.
func parseBlob(b []byte) (blob, error) {
	if len(b) < blobOverhead {
		return blob{}, kms.Errorf(kms.CodeInvalidCiphertext, "ciphertext blob is %d bytes, shorter than the minimum %d", len(b), blobOverhead)
	}
	if b[0] != blobFormatV1 {
		return blob{}, kms.Errorf(kms.CodeInvalidCiphertext, "ciphertext blob has unknown format byte 0x%02x", b[0])
	}
	var p blob
	copy(p.key[:], b[1:1+blobKeyIDLen])
	p.version = binary.BigEndian.Uint32(b[blobVersionOff:])
	if p.version == 0 {
		return blob{}, kms.Errorf(kms.CodeInvalidCiphertext, "ciphertext blob names key material version 0")
	}
	p.header = b[:blobHeaderLen]
	p.nonce = b[blobNonceOff:blobHeaderLen]
	p.sealedData = b[blobHeaderLen:]
	return p, nil
}

// blobAAD is the additional authenticated data of a blob: its header followed
// by the canonical encryption context.
func blobAAD(header []byte, ec kms.EncryptionContext) []byte {
	canon := ec.Canonical()
	aad := make([]byte, 0, len(header)+len(canon))
	aad = append(aad, header...)
	return append(aad, canon...)
}

// sealBlob encrypts plaintext under aead (the material of key/version) and
// returns the blob.
func sealBlob(aead cipher.AEAD, key keyUUID, version uint32, plaintext []byte, ec kms.EncryptionContext) ([]byte, error) {
	out := make([]byte, blobHeaderLen, blobOverhead+len(plaintext))
	out[0] = blobFormatV1
	copy(out[1:], key[:])
	binary.BigEndian.PutUint32(out[blobVersionOff:], version)
	if _, err := rand.Read(out[blobNonceOff:blobHeaderLen]); err != nil {
		return nil, fmt.Errorf("generate nonce: %w", err)
	}
	aad := blobAAD(out[:blobHeaderLen], ec)
	return aead.Seal(out, out[blobNonceOff:blobHeaderLen], plaintext, aad), nil
}

// openBlob authenticates and decrypts a parsed blob.
func openBlob(aead cipher.AEAD, p blob, ec kms.EncryptionContext) ([]byte, error) {
	pt, err := aead.Open(nil, p.nonce, p.sealedData, blobAAD(p.header, ec))
	if err != nil {
		return nil, kms.Errorf(kms.CodeInvalidCiphertext, "ciphertext does not authenticate under key %s version %d with the given encryption context", p.key, p.version)
	}
	return pt, nil
}
