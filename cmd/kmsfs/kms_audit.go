package main

import (
	"context"
	"fmt"
	"os"
	"time"

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
			summary: "check every line's hash, the chain between lines and signed digests",
			about: `Checks every line's hash and the chain between lines: an edited, removed or
reordered line fails. With --public-key (the FILE.pub written beside
'kmsfs kms serve --audit-signing-key FILE') it also checks the signed digests:
a log rewritten without the signing key fails, and with --max-age so does a
log whose last digest is too old (lines cut off its end).`,
			setup: func(fs *pflag.FlagSet) runFunc {
				var o auditVerifyFlags
				fs.StringVar(&o.head, "head", "", "also require the log's last hash to be `HASH` (recorded earlier), which detects lines removed from the end")
				fs.StringArrayVar(&o.publicKeys, "public-key", nil, "check digest signatures against the Ed25519 public key in `FILE` (PEM; repeatable, e.g. across a key change)")
				fs.DurationVar(&o.maxAge, "max-age", 0, "with --public-key, fail if the last signed digest is older than `DURATION` (a server writes one every --audit-digest-interval)")
				return func(ctx context.Context, inv *invocation) error { return kmsAuditVerify(inv, inv.args[0], &o) }
			},
		}},
	}
}

type auditVerifyFlags struct {
	head       string
	publicKeys []string
	maxAge     time.Duration
}

func kmsAuditVerify(inv *invocation, path string, o *auditVerifyFlags) error {
	if o.maxAge > 0 && len(o.publicKeys) == 0 {
		return usagef("--max-age needs --public-key: only signed digests tell how current a log is")
	}
	var vo auditlog.VerifyOptions
	vo.MaxAge = o.maxAge
	for _, p := range o.publicKeys {
		pub, err := auditlog.ReadPublicKey(p)
		if err != nil {
			return err
		}
		vo.PublicKeys = append(vo.PublicKeys, pub)
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sum, err := auditlog.VerifyWith(f, vo)
	if err != nil {
		return fmt.Errorf("audit log %s is not intact: %w", path, err)
	}
	if o.head != "" && o.head != sum.Head {
		return fmt.Errorf("audit log %s: chain is intact but ends at %s, not the recorded %s (lines removed from the end, or appended since)", path, sum.Head, o.head)
	}
	fmt.Fprintf(inv.stdout, "audit log %s intact: %d entries, head %s\n", path, sum.Entries, sum.Head)
	if len(vo.PublicKeys) > 0 {
		fmt.Fprintf(inv.stdout, "signed: %d digests verified, the last at %s; %d entries after it are not yet covered by a signature\n",
			sum.Signed, sum.LastSigned.Format(time.RFC3339), sum.Unsigned)
	}
	return nil
}
