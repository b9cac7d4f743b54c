package auditlog

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestClientAuditDoesNotLinkServer: a mount that keeps an audit log links
// this package and kms/kmsmw, never the KMS server (its HTTP stack, SigV4 and
// policy engine).
func TestClientAuditDoesNotLinkServer(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("go tool not found: %v", err)
		}
		t.Skipf("go tool not found: %v", err)
	}
	out, err := exec.Command(goTool, "list", "-deps", "github.com/kmsfs/kmsfs/kms/auditlog", "github.com/kmsfs/kmsfs/kms/kmsmw").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 2 {
		t.Fatalf("go list printed %q", out)
	}
	for _, p := range deps {
		if p == "github.com/kmsfs/kmsfs/kms/server" {
			t.Fatalf("kms/auditlog or kms/kmsmw depends on kms/server:\n%s", out)
		}
	}
}
