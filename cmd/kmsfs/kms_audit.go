package main

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/pflag"

	"github.com/kmsfs/kmsfs/kms/auditlog"
)

// kmsAuditCommand is the `kmsfs kms audit` group.
func kmsAuditCommand() *command {
	return &command{
		name:    "audit",
		summary: "check a hash-chained audit log",
		about:   "Audit logs are written by 'kmsfs kms serve' and by --audit-log of the other commands.",
		subs: []*command{{
			name: "verify", args: "FILE", minArgs: 1, maxArgs: 1,
			summary: "check every line's hash and the chain between lines",
			about:   "Checks every line's hash and the chain between lines: an edited or removed line fails.",
			setup: func(fs *pflag.FlagSet) runFunc {
				head := fs.String("head", "", "also require the log's last hash to be `HASH` (recorded earlier), which detects lines removed from the end")
				return func(ctx context.Context, inv *invocation) error { return kmsAuditVerify(inv, inv.args[0], *head) }
			},
		}},
	}
}

func kmsAuditVerify(inv *invocation, path, head string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sum, err := auditlog.Verify(f)
	if err != nil {
		return fmt.Errorf("audit log %s is not intact: %w", path, err)
	}
	if head != "" && head != sum.Head {
		return fmt.Errorf("audit log %s: chain is intact but ends at %s, not the recorded %s (lines removed from the end, or appended since)", path, sum.Head, head)
	}
	fmt.Fprintf(inv.stdout, "audit log %s intact: %d entries, head %s\n", path, sum.Entries, sum.Head)
	return nil
}
