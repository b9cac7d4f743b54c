package keystore

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/crypto/argon2"

	"github.com/kmsfs/kmsfs/kms"
)

// Master key protection. Every key's backing material is stored sealed with
// AES-256-GCM under a key-encryption key (KEK). The KEK is either derived from
// a passphrase with argon2id (salt and cost parameters stored in the state
// file), or a random 256-bit root key kept in its own file next to the state.
const (
	protectionPassphrase = "passphrase-argon2id"
	protectionRootKey    = "root-key-file"
	protectionPKCS11     = "pkcs11"

	rootKeyName = "root.key"
	kekLen      = 32

	// argon2id cost: RFC 9106 section 4, second recommended option
	// (t=3, m=64 MiB, p=4) for memory-constrained environments.
	argonTime      = 3
	argonMemoryKiB = 64 * 1024
	argonThreads   = 4
	argonSaltLen   = 16

	// Upper bounds accepted from a state file, so a corrupt or hostile file
	// cannot make Open allocate without limit.
	maxArgonMemoryKiB = 4 * 1024 * 1024
	maxArgonTime      = 64

	checkPlaintext = "kmsfs keystore check v1"
	checkAADPrefix = "kmsfs/keystore/check/v1\x00"
	materialAAD    = "kmsfs/keystore/material/v1\x00"
	sealNonceLen   = 12
)

// protection is the persisted description of how the KEK is obtained, with a
// check value that authenticates it: Check is a nonce followed by
// checkPlaintext sealed under the KEK, so a wrong passphrase or a wrong
// root.key is detected on Open instead of surfacing later as undecryptable keys.
type protection struct {
	Kind   string        `json:"kind"`
	Argon2 *argon2Params `json:"argon2id,omitempty"`
	PKCS11 *pkcs11Params `json:"pkcs11,omitempty"`
	Check  []byte        `json:"check"`
}

// pkcs11Params name the token and the AES key in it that is the KEK. The
// module path and the PIN are not stored: they belong to the machine and the
// operator (Options.PKCS11).
type pkcs11Params struct {
	Token string `json:"token"`
	Key   string `json:"key"`
}

// kek is the key-encryption key in usable form: software AES-GCM (a
// passphrase-derived or root-file key) or an AES key inside a PKCS#11 token
// that never leaves it.
type kek interface {
	// seal returns nonce || AES-GCM(plaintext) bound to aad.
	seal(plaintext, aad []byte) ([]byte, error)
	open(sealed, aad []byte) ([]byte, error)
	// zero forgets the key (software) or logs out of the token.
	zero()
}

type argon2Params struct {
	Salt      []byte `json:"salt"`
	Time      uint32 `json:"time"`
	MemoryKiB uint32 `json:"memory_kib"`
	Threads   uint8  `json:"threads"`
}

func (p protection) equal(o protection) bool {
	if p.Kind != o.Kind || !bytes.Equal(p.Check, o.Check) || (p.Argon2 == nil) != (o.Argon2 == nil) || (p.PKCS11 == nil) != (o.PKCS11 == nil) {
		return false
	}
	if p.PKCS11 != nil && *p.PKCS11 != *o.PKCS11 {
		return false
	}
	if p.Argon2 == nil {
		return true
	}
	a, b := p.Argon2, o.Argon2
	return bytes.Equal(a.Salt, b.Salt) && a.Time == b.Time && a.MemoryKiB == b.MemoryKiB && a.Threads == b.Threads
}

// masterKey is the KEK in usable form. raw is kept only so Close can zero it.
type masterKey struct {
	raw  []byte
	aead cipher.AEAD
}

func newMasterKey(raw []byte) (*masterKey, error) {
	if len(raw) != kekLen {
		return nil, fmt.Errorf("key-encryption key is %d bytes, want %d", len(raw), kekLen)
	}
	block, err := aes.NewCipher(raw)
	if err != nil {
		return nil, fmt.Errorf("key-encryption key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("key-encryption key: %w", err)
	}
	return &masterKey{raw: raw, aead: aead}, nil
}

func (m *masterKey) zero() { kms.Zero(m.raw) }

// seal returns nonce || AES-GCM(plaintext) bound to aad.
func (m *masterKey) seal(plaintext, aad []byte) ([]byte, error) {
	out := make([]byte, sealNonceLen, sealNonceLen+len(plaintext)+m.aead.Overhead())
	if _, err := rand.Read(out); err != nil {
		return nil, fmt.Errorf("generate nonce: %w", err)
	}
	return m.aead.Seal(out, out[:sealNonceLen], plaintext, aad), nil
}

func (m *masterKey) open(sealed, aad []byte) ([]byte, error) {
	if len(sealed) < sealNonceLen+m.aead.Overhead() {
		return nil, errors.New("sealed value too short")
	}
	return m.aead.Open(nil, sealed[:sealNonceLen], sealed[sealNonceLen:], aad)
}

func checkAAD(kind string) []byte { return []byte(checkAADPrefix + kind) }

// materialAADFor binds sealed material to its key and version, so material
// cannot be moved to another key or version inside the state file.
func materialAADFor(key string, version int) []byte {
	aad := make([]byte, 0, len(materialAAD)+len(key)+5)
	aad = append(aad, materialAAD...)
	aad = append(aad, key...)
	aad = append(aad, 0)
	return binary.BigEndian.AppendUint32(aad, uint32(version))
}

// newProtection creates the KEK for a new keystore. With a passphrase it is
// derived with argon2id under a fresh salt; without one it is the root key in
// dir/root.key, created if absent (an existing root.key is reused: it is what
// a crash between writing root.key and the first state file leaves behind).
func newProtection(dir string, passphrase []byte, hsm *PKCS11Options) (protection, kek, error) {
	var p protection
	var raw []byte
	if hsm != nil {
		if len(passphrase) > 0 {
			return p, nil, errors.New("a keystore is protected by a PKCS#11 token or by a passphrase, not both")
		}
		p.Kind = protectionPKCS11
		p.PKCS11 = &pkcs11Params{Token: hsm.Token, Key: hsm.keyLabel()}
		mk, err := openTokenKEK(hsm, true)
		if err != nil {
			return p, nil, err
		}
		if p.Check, err = mk.seal([]byte(checkPlaintext), checkAAD(p.Kind)); err != nil {
			mk.zero()
			return p, nil, err
		}
		return p, mk, nil
	}
	if len(passphrase) > 0 {
		salt := make([]byte, argonSaltLen)
		if _, err := rand.Read(salt); err != nil {
			return p, nil, fmt.Errorf("generate salt: %w", err)
		}
		p.Kind = protectionPassphrase
		p.Argon2 = &argon2Params{Salt: salt, Time: argonTime, MemoryKiB: argonMemoryKiB, Threads: argonThreads}
		raw = argon2.IDKey(passphrase, salt, argonTime, argonMemoryKiB, argonThreads, kekLen)
	} else {
		p.Kind = protectionRootKey
		var err error
		raw, err = readRootKey(dir)
		if errors.Is(err, fs.ErrNotExist) {
			raw, err = createRootKey(dir)
		}
		if err != nil {
			return p, nil, err
		}
	}
	mk, err := newMasterKey(raw)
	if err != nil {
		kms.Zero(raw)
		return p, nil, err
	}
	p.Check, err = mk.seal([]byte(checkPlaintext), checkAAD(p.Kind))
	if err != nil {
		mk.zero()
		return p, nil, err
	}
	return p, mk, nil
}

// unlock obtains the KEK of an existing keystore and verifies it against the
// stored check value.
func unlock(dir string, p protection, passphrase []byte, hsm *PKCS11Options) (kek, error) {
	var raw []byte
	if p.Kind != protectionPKCS11 && hsm != nil {
		return nil, fmt.Errorf("keystore %s is not protected by a PKCS#11 token (it uses %s); PKCS#11 options were given", dir, p.Kind)
	}
	switch p.Kind {
	case protectionPKCS11:
		if hsm == nil {
			return nil, fmt.Errorf("keystore %s is protected by PKCS#11 token %q; give the module and PIN (--pkcs11-module, --pkcs11-pin-file)", dir, p.PKCS11.tokenLabel())
		}
		if p.PKCS11 == nil || p.PKCS11.Token != hsm.Token {
			return nil, fmt.Errorf("keystore %s is protected by PKCS#11 token %q, not %q", dir, p.PKCS11.tokenLabel(), hsm.Token)
		}
		o := *hsm
		o.KeyLabel = p.PKCS11.Key
		mk, err := openTokenKEK(&o, false)
		if err != nil {
			return nil, err
		}
		if err := verifyKEK(mk, p); err != nil {
			mk.zero()
			return nil, fmt.Errorf("keystore %s: the key %q in PKCS#11 token %q does not match this keystore", dir, p.PKCS11.Key, p.PKCS11.Token)
		}
		return mk, nil
	case protectionPassphrase:
		if len(passphrase) == 0 {
			return nil, fmt.Errorf("keystore %s is protected by a passphrase and none was given", dir)
		}
		a := p.Argon2
		if a == nil || len(a.Salt) < 8 || a.Time == 0 || a.Time > maxArgonTime || a.MemoryKiB < 8 || a.MemoryKiB > maxArgonMemoryKiB || a.Threads == 0 {
			return nil, fmt.Errorf("keystore %s: invalid argon2id parameters in state file", dir)
		}
		raw = argon2.IDKey(passphrase, a.Salt, a.Time, a.MemoryKiB, a.Threads, kekLen)
	case protectionRootKey:
		if len(passphrase) > 0 {
			// Refuse rather than ignore: a user who believes the keystore is
			// passphrase-protected must learn that it is not.
			return nil, fmt.Errorf("keystore %s is not passphrase-protected (its root key is in %s); a passphrase was given", dir, filepath.Join(dir, rootKeyName))
		}
		var err error
		raw, err = readRootKey(dir)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("keystore %s: root key file %s is missing; the keystore cannot be unlocked", dir, filepath.Join(dir, rootKeyName))
		}
		if err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("keystore %s: unknown protection kind %q", dir, p.Kind)
	}
	mk, err := newMasterKey(raw)
	if err != nil {
		kms.Zero(raw)
		return nil, err
	}
	if err := verifyKEK(mk, p); err != nil {
		mk.zero()
		if p.Kind == protectionPassphrase {
			return nil, fmt.Errorf("keystore %s: wrong passphrase", dir)
		}
		return nil, fmt.Errorf("keystore %s: root key file %s does not match this keystore", dir, filepath.Join(dir, rootKeyName))
	}
	return mk, nil
}

// verifyKEK checks that m opens p's check value.
func verifyKEK(m kek, p protection) error {
	pt, err := m.open(p.Check, checkAAD(p.Kind))
	if err != nil {
		return err
	}
	if string(pt) != checkPlaintext {
		return errors.New("check value mismatch")
	}
	return nil
}

func readRootKey(dir string) ([]byte, error) {
	path := filepath.Join(dir, rootKeyName)
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	defer kms.Zero(text)
	raw := make([]byte, kekLen)
	trimmed := bytes.TrimSpace(text)
	if len(trimmed) != 2*kekLen {
		return nil, fmt.Errorf("root key file %s: want %d hex characters, found %d bytes", path, 2*kekLen, len(trimmed))
	}
	if _, err := hex.Decode(raw, trimmed); err != nil {
		kms.Zero(raw)
		return nil, fmt.Errorf("root key file %s: %w", path, err)
	}
	return raw, nil
}

// createRootKey writes a new random root key to dir/root.key (0600), hex
// encoded so it can be backed up as text, atomically and durably.
func createRootKey(dir string) ([]byte, error) {
	raw := make([]byte, kekLen)
	if _, err := rand.Read(raw); err != nil {
		return nil, fmt.Errorf("generate root key: %w", err)
	}
	text := make([]byte, 2*kekLen+1)
	hex.Encode(text, raw)
	text[2*kekLen] = '\n'
	defer kms.Zero(text)
	f, err := writeFileAtomic(dir, rootKeyName, text)
	if err != nil {
		kms.Zero(raw)
		return nil, fmt.Errorf("write root key: %w", err)
	}
	f.Close()
	return raw, nil
}

func (p *pkcs11Params) tokenLabel() string {
	if p == nil {
		return ""
	}
	return p.Token
}

// PKCS11Options say where the KEK of a PKCS#11-protected keystore lives.
type PKCS11Options struct {
	Module   string // the token's PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so
	Token    string // token label
	PIN      []byte // user PIN
	KeyLabel string // label of the AES key in the token; default "kmsfs-keystore-kek"
}

const defaultKEKLabel = "kmsfs-keystore-kek"

func (o *PKCS11Options) keyLabel() string {
	if o.KeyLabel == "" {
		return defaultKEKLabel
	}
	return o.KeyLabel
}
