package auditlog

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func testKey(t *testing.T) (ed25519.PrivateKey, ed25519.PublicKey) {
	t.Helper()
	priv, err := LoadOrCreateSigningKey(filepath.Join(t.TempDir(), "signing.key"))
	if err != nil {
		t.Fatal(err)
	}
	return priv, priv.Public().(ed25519.PublicKey)
}

func entry(i int) *Entry {
	return &Entry{Time: time.Unix(1_700_000_000+int64(i), 0).UTC().Format(time.RFC3339Nano), RequestID: "r", Operation: "Decrypt",
		SourceAddress: "127.0.0.1", Result: ResultSuccess, EncryptionContext: map[string]string{"n": string(rune('a' + i%26))}}
}

// writeSigned writes n entries to a new signing log (digests every interval,
// and one at Close) and returns its path.
func writeSigned(t *testing.T, priv ed25519.PrivateKey, n int, interval time.Duration) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path, Options{Signer: priv, DigestInterval: interval})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		if err := l.Record(entry(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func verifyFile(t *testing.T, path string, o VerifyOptions) (Summary, error) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return VerifyWith(f, o)
}

func readEntries(t *testing.T, path string) []*Entry {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []*Entry
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		var e Entry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatal(err)
		}
		out = append(out, &e)
	}
	return out
}

// rechain writes entries as a new, intact chain (what someone who can write
// the file but has no signing key can produce).
func rechain(t *testing.T, entries []*Entry) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "forged.log")
	l, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if err := l.Record(e); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestSignedLogVerifies(t *testing.T) {
	priv, pub := testKey(t)
	path := writeSigned(t, priv, 10, time.Hour)
	sum, err := verifyFile(t, path, VerifyOptions{PublicKeys: []ed25519.PublicKey{pub}, MaxAge: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Entries != 11 || sum.Signed != 1 || sum.Unsigned != 0 {
		t.Fatalf("summary %+v, want 10 entries and a closing digest covering them", sum)
	}
	// Without keys the digest is only checked for its place.
	if sum, err := verifyFile(t, path, VerifyOptions{}); err != nil || sum.Digests != 1 || sum.Signed != 0 {
		t.Fatalf("unkeyed verify: %+v, %v", sum, err)
	}
}

// A signing log writes a digest every interval even when nothing else
// happens, so a verifier can tell how current the log is.
func TestDigestEveryInterval(t *testing.T) {
	priv, pub := testKey(t)
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path, Options{Signer: priv, DigestInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Count(data, []byte("\n")) >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no periodic digests written")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if sum, err := verifyFile(t, path, VerifyOptions{PublicKeys: []ed25519.PublicKey{pub}}); err != nil || sum.Signed < 2 {
		t.Fatalf("verify: %+v, %v", sum, err)
	}
}

func TestRewrittenLogFails(t *testing.T) {
	priv, pub := testKey(t)
	keys := VerifyOptions{PublicKeys: []ed25519.PublicKey{pub}}
	entries := readEntries(t, writeSigned(t, priv, 5, time.Hour))

	// An edited entry, with the chain recomputed after it: the digest's
	// signature covers the old chain.
	edited := append([]*Entry(nil), entries...)
	edited[2].Result = "AccessDeniedException"
	if _, err := verifyFile(t, rechain(t, edited), keys); err == nil || !strings.Contains(err.Error(), "does not verify") {
		t.Fatalf("edited and rechained log: %v", err)
	}
	// The digests dropped and the chain rebuilt: nothing is signed.
	if _, err := verifyFile(t, rechain(t, entries[:5]), keys); err == nil || !strings.Contains(err.Error(), "no digest signed") {
		t.Fatalf("log rewritten without digests: %v", err)
	}
	// A digest signed by another key.
	other, _ := testKey(t)
	if _, err := verifyFile(t, writeSigned(t, other, 3, time.Hour), keys); err == nil || !strings.Contains(err.Error(), "not one of the public keys") {
		t.Fatalf("log signed by another key: %v", err)
	}
	// A line removed from the middle, rechained: the digest counts lines.
	if _, err := verifyFile(t, rechain(t, append(append([]*Entry(nil), entries[:1]...), entries[2:]...)), keys); err == nil {
		t.Fatal("log with a line removed and rechained verifies")
	}
}

// Cutting lines off the end leaves an intact, shorter chain; the age of its
// last signed digest gives it away.
func TestTruncatedLogFailsByDigestAge(t *testing.T) {
	priv, pub := testKey(t)
	path := filepath.Join(t.TempDir(), "audit.log")
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := func() time.Time { return clock }
	for round := 0; round < 2; round++ {
		l, err := Open(path, Options{Signer: priv, DigestInterval: time.Hour, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 3; i++ {
			if err := l.Record(entry(i)); err != nil {
				t.Fatal(err)
			}
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		clock = clock.Add(10 * time.Minute)
	}
	keys := VerifyOptions{PublicKeys: []ed25519.PublicKey{pub}, MaxAge: 15 * time.Minute, Now: now}
	sum, err := verifyFile(t, path, keys)
	if err != nil || sum.Signed != 2 || sum.Entries != 8 {
		t.Fatalf("whole log (reopened once): %+v, %v", sum, err)
	}
	// Keep the first run of the writer only: the chain is intact, its last digest is
	// 20 minutes old.
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(data), "\n")
	cut := filepath.Join(t.TempDir(), "cut.log")
	if err := os.WriteFile(cut, []byte(strings.Join(lines[:4], "")), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := verifyFile(t, cut, VerifyOptions{}); err != nil {
		t.Fatalf("the cut log's chain should be intact: %v", err)
	}
	if _, err := verifyFile(t, cut, keys); err == nil || !strings.Contains(err.Error(), "lines were removed from the end") {
		t.Fatalf("cut log: %v", err)
	}
}

// Old logs, written before digests existed, verify as before.
func TestUnsignedLogNeedsNoKey(t *testing.T) {
	path := rechain(t, []*Entry{entry(1), entry(2)})
	if sum, err := verifyFile(t, path, VerifyOptions{}); err != nil || sum.Entries != 2 || sum.Digests != 0 {
		t.Fatalf("%+v, %v", sum, err)
	}
	_, pub := testKey(t)
	if _, err := verifyFile(t, path, VerifyOptions{PublicKeys: []ed25519.PublicKey{pub}}); err == nil {
		t.Fatal("an unsigned log passes a signature check")
	}
}

func TestSigningKeyFiles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k")
	priv, err := LoadOrCreateSigningKey(path)
	if err != nil {
		t.Fatal(err)
	}
	again, err := LoadOrCreateSigningKey(path)
	if err != nil || !priv.Equal(again) {
		t.Fatalf("reloaded key differs: %v", err)
	}
	pub, err := ReadPublicKey(path + ".pub")
	if err != nil || !pub.Equal(priv.Public()) {
		t.Fatalf("public key file: %v", err)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("signing key mode: %v, %v", st.Mode(), err)
	}
	if _, err := ReadPublicKey(path); err == nil {
		t.Fatal("a private key file read as a public key")
	}
}
