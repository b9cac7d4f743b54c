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
	Check  []byte        `json:"check"`
}

type argon2Params struct {
	Salt      []byte `json:"salt"`
	Time      uint32 `json:"time"`
	MemoryKiB uint32 `json:"memory_kib"`
	Threads   uint8  `json:"threads"`
}

func (p protection) equal(o protection) bool {
	if p.Kind != o.Kind || !bytes.Equal(p.Check, o.Check) || (p.Argon2 == nil) != (o.Argon2 == nil) {
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
func newProtection(dir string, passphrase []byte) (protection, *masterKey, error) {
	var p protection
	var raw []byte
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
func unlock(dir string, p protection, passphrase []byte) (*masterKey, error) {
	var raw []byte
	switch p.Kind {
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
	if err := mk.verify(p); err != nil {
		mk.zero()
		if p.Kind == protectionPassphrase {
			return nil, fmt.Errorf("keystore %s: wrong passphrase", dir)
		}
		return nil, fmt.Errorf("keystore %s: root key file %s does not match this keystore", dir, filepath.Join(dir, rootKeyName))
	}
	return mk, nil
}

// verify checks that mk opens p's check value.
func (m *masterKey) verify(p protection) error {
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
