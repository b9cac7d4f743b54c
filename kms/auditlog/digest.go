package auditlog

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"
)

// DigestOperation is the Operation of a digest line.
const DigestOperation = "AuditDigest"

// DefaultDigestInterval is how often a signing log writes a digest.
const DefaultDigestInterval = time.Minute

// digestContext separates these signatures from any other use of the key.
const digestContext = "kmsfs-audit-digest-v1\n"

// digestMessage is what a digest line's signature covers: the hash of the
// line before it (which commits to every earlier line through the chain),
// the number of lines before it, and its time.
func digestMessage(prev string, signedEntries uint64, at string) []byte {
	m := []byte(digestContext)
	m = append(m, prev...)
	m = append(m, '\n')
	m = strconv.AppendUint(m, signedEntries, 10)
	m = append(m, '\n')
	m = append(m, at...)
	return append(m, '\n')
}

// KeyFingerprint names a signing key in digest lines: the first 16 bytes of
// the SHA-256 of the public key, in hex.
func KeyFingerprint(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:16])
}

// digestEntry is a digest line to queue; it is signed when written.
func (l *Log) digestEntry() *Entry {
	return &Entry{
		Time: l.now().UTC().Format(time.RFC3339Nano), RequestID: "digest",
		Operation: DigestOperation, Result: ResultSuccess, SigningKey: l.signerID, digest: true,
	}
}

// sign fills in a digest line, now that its Prev and position are known.
func (l *Log) sign(e *Entry, linesBefore uint64) {
	e.SignedEntries = linesBefore
	sig := ed25519.Sign(l.signer, digestMessage(e.Prev, linesBefore, e.Time))
	e.Signature = base64.StdEncoding.EncodeToString(sig)
}

// digestEvery records a digest every interval until Close.
func (l *Log) digestEvery(interval time.Duration) {
	defer close(l.digestDone)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-l.stopDigest:
			return
		case <-tick.C:
			// A failed write is sticky in l.err: every later request fails
			// and says why, so there is nothing more to do here.
			_ = l.Record(l.digestEntry())
		}
	}
}

// countLines counts the newlines of f from its start.
func countLines(f *os.File) (uint64, error) {
	buf := make([]byte, 1<<20)
	var n uint64
	for off := int64(0); ; {
		k, err := f.ReadAt(buf, off)
		n += uint64(bytes.Count(buf[:k], []byte{'\n'}))
		off += int64(k)
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return 0, err
		}
	}
}

// LoadOrCreateSigningKey reads the Ed25519 key in path (PKCS #8, PEM), or
// creates one there (mode 0600) with its public key beside it in
// path+".pub" (PKIX, PEM), the file verifiers are given.
func LoadOrCreateSigningKey(path string) (ed25519.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return createSigningKey(path)
	}
	if err != nil {
		return nil, fmt.Errorf("audit signing key: %w", err)
	}
	blk, _ := pem.Decode(data)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("audit signing key %s: not a PEM private key", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("audit signing key %s: %w", path, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("audit signing key %s: %T, want an Ed25519 key", path, k)
	}
	return priv, nil
}

func createSigningKey(path string) (ed25519.PrivateKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	if err := writeNew(path+".pub", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644); err != nil {
		return nil, err
	}
	if err := writeNew(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, err
	}
	return priv, nil
}

// writeNew writes a file that must not exist yet, durably.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("audit signing key: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("audit signing key %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("audit signing key %s: %w", path, err)
	}
	return f.Close()
}

// ReadPublicKey reads an Ed25519 public key (PKIX, PEM), as written beside
// the signing key.
func ReadPublicKey(path string) (ed25519.PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("audit public key: %w", err)
	}
	blk, _ := pem.Decode(data)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, fmt.Errorf("audit public key %s: not a PEM public key", path)
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("audit public key %s: %w", path, err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("audit public key %s: %T, want an Ed25519 key", path, k)
	}
	return pub, nil
}

// VerifyOptions ask Verify to check digests too.
type VerifyOptions struct {
	// PublicKeys are the keys digests may be signed with. With none, digest
	// lines are only checked for their place in the log.
	PublicKeys []ed25519.PublicKey
	// MaxAge, with PublicKeys: the last signed digest must be at most this
	// old (against Now). A log cut short loses its last digests; a running
	// server writes one every interval, so a last digest older than a few
	// intervals means lines were removed, or the server stopped.
	MaxAge time.Duration
	// Now is the verifier's clock; nil means time.Now.
	Now func() time.Time
}

// checkDigest checks the digest line e, line n of the log (1-based).
func checkDigest(e *Entry, n int, keys map[string]ed25519.PublicKey) (signed bool, at time.Time, err error) {
	if e.SignedEntries != uint64(n-1) {
		return false, at, fmt.Errorf("line %d: digest covers %d lines, but %d come before it (lines were removed or inserted)", n, e.SignedEntries, n-1)
	}
	at, err = time.Parse(time.RFC3339Nano, e.Time)
	if err != nil {
		return false, at, fmt.Errorf("line %d: digest time %q: %v", n, e.Time, err)
	}
	if len(keys) == 0 {
		return false, at, nil
	}
	pub, ok := keys[e.SigningKey]
	if !ok {
		return false, at, fmt.Errorf("line %d: digest signed by key %s, which is not one of the public keys given", n, e.SigningKey)
	}
	sig, err := base64.StdEncoding.DecodeString(e.Signature)
	if err != nil || !ed25519.Verify(pub, digestMessage(e.Prev, e.SignedEntries, e.Time), sig) {
		return false, at, fmt.Errorf("line %d: digest signature does not verify: the log was rewritten", n)
	}
	return true, at, nil
}
