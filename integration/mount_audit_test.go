package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestMountAuditLogOnTheEmbeddedKMS: with --audit-log, every call a mount
// makes to the embedded KMS is recorded, CloudTrail-style (operation, key,
// encryption context, principal, result), in the hash-chained format
// `kmsfs kms audit verify` checks: a GenerateDataKey per new file, a Decrypt
// per file read after a remount (cache hits are not KMS calls), nothing
// plaintext; an edited line breaks the chain.
func TestMountAuditLogOnTheEmbeddedKMS(t *testing.T) {
	v := mountNewVolume(t)
	audit := filepath.Join(t.TempDir(), "kms-audit.log")
	v.mount("--audit-log", audit)
	const files = 20
	for i := range files {
		if err := os.WriteFile(v.path(fmt.Sprintf("f%02d", i)), []byte(fmt.Sprintf("audited %d", i)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	v.remount("--audit-log", audit)
	for i := range files {
		if _, err := os.ReadFile(v.path(fmt.Sprintf("f%02d", i))); err != nil {
			t.Fatal(err)
		}
	}
	v.unmount()
	data, err := os.ReadFile(audit)
	if err != nil {
		t.Fatal(err)
	}
	log := string(data)
	gen := strings.Count(log, `"operation":"GenerateDataKey"`)
	dec := strings.Count(log, `"operation":"Decrypt","principal":"local:uid=0`)
	if gen < files || dec < files {
		t.Fatalf("%d GenerateDataKey and %d Decrypt recorded for %d files written and read back:\n%s", gen, dec, files, mountTail(log, 5))
	}
	if !strings.Contains(log, `"encryptionContext":{"kmsfs:file":`) || !strings.Contains(log, `"result":"Success"`) {
		t.Fatalf("entries lack context or result:\n%s", mountTail(log, 3))
	}
	if strings.Contains(log, "audited ") {
		t.Fatal("file content in the audit log")
	}
	v.run("kms", "audit", "verify", audit) // fails the test unless the chain is intact
	edited := strings.Replace(log, `"operation":"Decrypt"`, `"operation":"Encrypt"`, 1)
	if err := os.WriteFile(audit, []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := v.tryRun("kms", "audit", "verify", audit); err == nil {
		t.Fatalf("audit verify passed an edited log:\n%s", out)
	}
}
