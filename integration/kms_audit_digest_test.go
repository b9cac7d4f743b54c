package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// With --audit-signing-key the server signs digests of its audit log, and
// `kmsfs kms audit verify --public-key` catches what the bare hash chain
// cannot: a log rewritten whole (a valid chain, no valid signature) and a
// log cut short (a valid chain whose last digest is old).
func TestKMSAuditSignedDigests(t *testing.T) {
	kmsAWS(t)
	signingKey := filepath.Join(t.TempDir(), "audit-signing.key")
	h := kmsStartServer(t, "--audit-signing-key", signingKey, "--audit-digest-interval", "300ms")
	pub := signingKey + ".pub"
	id, _ := h.createKey(kmsAliceKey)
	for range 3 {
		h.aws(kmsBobKey, "generate-data-key", "--key-id", id, "--key-spec", "AES_256")
	}
	// Wait for periodic digests (the interval is short here).
	deadline := time.Now().Add(20 * time.Second)
	for strings.Count(h.auditLog(), `"operation":"AuditDigest"`) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("no periodic digests in the audit log:\n%s", h.auditLog())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// A live log verifies, its last digest at most a few intervals old.
	out, err := h.kmsfs(kmsAliceKey, "kms", "audit", "verify", "--public-key", pub, "--max-age", "10s", h.audit)
	if err != nil || !strings.Contains(out, "digests verified") {
		t.Fatalf("verify of the live log: %q %v", out, err)
	}
	h.stop()
	lines := strings.SplitAfter(h.auditLog(), "\n")
	lines = lines[:len(lines)-1]
	if !strings.Contains(lines[len(lines)-1], `"operation":"AuditDigest"`) {
		t.Fatalf("the log does not end with the shutdown digest: %s", lines[len(lines)-1])
	}
	if out, err := h.kmsfs(kmsAliceKey, "kms", "audit", "verify", "--public-key", pub, h.audit); err != nil || !strings.Contains(out, "0 entries after it") {
		t.Fatalf("verify after shutdown: %q %v", out, err)
	}

	write := func(name string, ls []string) string {
		p := filepath.Join(h.dir, name)
		if err := os.WriteFile(p, []byte(strings.Join(ls, "")), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// Rewritten whole: the KMS calls, edited (hide who asked for the data
	// keys), hash-chained anew by a writer without the signing key.
	forged := filepath.Join(h.dir, "forged")
	if err := os.WriteFile(forged+".in", []byte(strings.ReplaceAll(strings.Join(lines, ""), kmsBobARN, kmsAliceARN)), 0o600); err != nil {
		t.Fatal(err)
	}
	rechained := rechainAuditLog(t, forged+".in", forged+".log")
	if out, err := h.kmsfs(kmsAliceKey, "kms", "audit", "verify", rechained); err != nil {
		t.Fatalf("test bug: the rechained log should pass the bare chain check: %q %v", out, err)
	}
	_, err = h.kmsfs(kmsAliceKey, "kms", "audit", "verify", "--public-key", pub, rechained)
	if err == nil || !strings.Contains(err.Error(), "does not verify") {
		t.Fatalf("rewritten log: %v", err)
	}
	// Cut short after the first digest: an intact chain, but its last
	// digest is older than the age allowed.
	first := 0
	for i, l := range lines {
		if strings.Contains(l, `"operation":"AuditDigest"`) {
			first = i
			break
		}
	}
	cut := write("cut.log", lines[:first+1])
	if _, err := h.kmsfs(kmsAliceKey, "kms", "audit", "verify", "--public-key", pub, cut); err != nil {
		t.Fatalf("the cut log's chain and signature are intact: %v", err)
	}
	// The allowed age: half of what has passed since that digest.
	m := regexp.MustCompile(`"time":"([^"]+)"`).FindStringSubmatch(lines[first])
	at, perr := time.Parse(time.RFC3339Nano, m[1])
	if perr != nil {
		t.Fatal(perr)
	}
	maxAge := time.Since(at) / 2
	_, err = h.kmsfs(kmsAliceKey, "kms", "audit", "verify", "--public-key", pub, "--max-age", maxAge.String(), cut)
	if err == nil || !strings.Contains(err.Error(), "lines were removed from the end") {
		t.Fatalf("cut log with --max-age: %v", err)
	}
	if strings.Count(strings.TrimSpace(err.Error()), "\n") != 0 {
		t.Fatalf("multi-line error: %q", err)
	}
}

// rechainAuditLog rewrites the hash chain of the log in `in` as a writer
// without the signing key could: each line's "prev" set to the hash of the
// line before, and its "hash" recomputed (SHA-256 of the line without it).
func rechainAuditLog(t *testing.T, in, out string) string {
	t.Helper()
	data, err := os.ReadFile(in)
	if err != nil {
		t.Fatal(err)
	}
	prev := strings.Repeat("0", 64)
	var b strings.Builder
	for _, line := range strings.SplitAfter(string(data), "\n") {
		if line == "" {
			continue
		}
		i := strings.LastIndex(line, `,"hash":"`)
		j := strings.LastIndex(line, `"prev":"`)
		if i < 0 || j < 0 {
			t.Fatalf("not an audit line: %q", line)
		}
		body := line[:j+8] + prev + line[j+8+64:i] + "}"
		sum := sha256.Sum256([]byte(body))
		prev = hex.EncodeToString(sum[:])
		b.WriteString(body[:len(body)-1] + `,"hash":"` + prev + "\"}\n")
	}
	if err := os.WriteFile(out, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return out
}
