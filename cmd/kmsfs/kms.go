package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/kmsfs/kmsfs/kms"
	"github.com/kmsfs/kmsfs/kms/auditlog"
	"github.com/kmsfs/kmsfs/kms/awskms"
	"github.com/kmsfs/kmsfs/kms/keystore"
	"github.com/kmsfs/kmsfs/kms/server"
)

const kmsUsage = `Usage: kmsfs kms SUBCOMMAND [flags] [args]

Serve a KMS:
  serve               serve a keystore over the AWS KMS API (see 'kmsfs kms serve --help')

Administer keys, on a keystore directly (--keystore DIR, default $KMSFS_KEYSTORE
or ~/.config/kmsfs/keystore) or through a KMS server (--kms URL, credentials from
the standard AWS chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws, ...):
  create-key [--description D] [--policy-file F] [--alias alias/NAME] [--origin EXTERNAL]
  import-key-material KEY FILE [--valid-for DUR]   BYOK: 32 bytes of key material into an EXTERNAL key
  delete-key-material KEY           the key becomes PendingImport: unusable until the same material is imported
  list-keys
  describe-key KEY
  rotate KEY                        new backing material now; old ciphertext still decrypts
  enable-rotation KEY [--period-days N]   automatic rotation every N days (90..2560, default 365)
  disable-rotation KEY
  disable KEY | enable KEY
  schedule-deletion KEY [--days N]  delete after N days (7..30, default 30)
  cancel-deletion KEY               cancel; the key is left disabled
  alias create NAME KEY | alias update NAME KEY | alias delete NAME | alias list [KEY]

Check an audit log:
  audit verify FILE [--head HASH]

KEY is a key ID, key ARN, alias name (alias/NAME) or alias ARN.
`

// kmsCommand runs `kmsfs kms ...`.
func kmsCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, kmsUsage)
		return errors.New("kms: missing subcommand")
	}
	sub, rest := args[0], args[1:]
	switch sub {
	case "help", "-h", "--help":
		fmt.Fprint(stdout, kmsUsage)
		return nil
	case "serve":
		return kmsServe(ctx, rest, stdout, stderr)
	case "audit":
		return kmsAudit(rest, stdout, stderr)
	case "alias":
		return kmsAlias(ctx, rest, stdout, stderr)
	}
	cmd, ok := kmsAdminCommands[sub]
	if !ok {
		fmt.Fprint(stderr, kmsUsage)
		return fmt.Errorf("kms: unknown subcommand %q", sub)
	}
	return kmsRunAdmin(ctx, sub, cmd, rest, stdout, stderr)
}

// kmsTarget says which KMS an admin command works on.
type kmsTarget struct {
	keystore       string
	passphraseFile string
	region         string
	account        string
	url            string
	urlRegion      string
	pkcs11         pkcs11Flags
}

func (t *kmsTarget) register(fs *pflag.FlagSet) {
	fs.StringVar(&t.keystore, "keystore", "", "keystore directory (default $KMSFS_KEYSTORE or ~/.config/kmsfs/keystore)")
	fs.StringVar(&t.passphraseFile, "passphrase-file", "", "file holding the keystore passphrase (or set $KMSFS_PASSPHRASE)")
	fs.StringVar(&t.region, "region", "", "region in the keystore's key ARNs (default \"local\")")
	fs.StringVar(&t.account, "account", "", "account ID in the keystore's key ARNs (default 000000000000)")
	fs.StringVar(&t.url, "kms", "", "work through this KMS server (AWS KMS API URL) instead of a keystore")
	fs.StringVar(&t.urlRegion, "kms-region", "", "region of the --kms server (default from the AWS config chain)")
	t.pkcs11.register(fs)
}

// kmsPassphrase reads the keystore passphrase from a file or $KMSFS_PASSPHRASE.
func kmsPassphrase(file string) ([]byte, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("passphrase file: %w", err)
		}
		return bytes.TrimRight(b, "\r\n"), nil
	}
	if p := os.Getenv("KMSFS_PASSPHRASE"); p != "" {
		return []byte(p), nil
	}
	return nil, nil
}

func kmsOpenKeystore(dir, passphraseFile, region, account string, hsmFlags *pkcs11Flags, stderr io.Writer) (*keystore.Keystore, error) {
	if dir == "" {
		var err error
		if dir, err = keystore.DefaultDir(); err != nil {
			return nil, err
		}
	}
	pass, err := kmsPassphrase(passphraseFile)
	if err != nil {
		return nil, err
	}
	defer kms.Zero(pass)
	hsm, err := hsmFlags.options()
	if err != nil {
		return nil, err
	}
	if hsm != nil {
		defer kms.Zero(hsm.PIN)
	}
	return keystore.Open(dir, keystore.Options{Passphrase: pass, Region: region, Account: account, PKCS11: hsm,
		Warn: func(msg string) { fmt.Fprintln(stderr, "kmsfs: warning:", msg) }})
}

// open returns the admin surface and a function that releases it.
func (t *kmsTarget) open(ctx context.Context, stderr io.Writer) (kms.Admin, func(), error) {
	if t.url != "" {
		c, err := awskms.New(ctx, awskms.Options{Endpoint: t.url, Region: t.urlRegion})
		if err != nil {
			return nil, nil, err
		}
		return c, func() {}, nil
	}
	ks, err := kmsOpenKeystore(t.keystore, t.passphraseFile, t.region, t.account, &t.pkcs11, stderr)
	if err != nil {
		return nil, nil, err
	}
	return ks, func() { ks.Close() }, nil
}

// kmsAdminCommand is one key administration subcommand.
type kmsAdminCommand struct {
	args  string // usage of the positional arguments
	nargs int
	flags func(fs *pflag.FlagSet) func(ctx context.Context, a kms.Admin, args []string, out io.Writer) error
}

var kmsAdminCommands = map[string]kmsAdminCommand{
	"create-key": {args: "", nargs: 0, flags: func(fs *pflag.FlagSet) func(context.Context, kms.Admin, []string, io.Writer) error {
		desc := fs.String("description", "", "key description")
		policyFile := fs.String("policy-file", "", "JSON key policy (default: the owning account may administer and use the key)")
		alias := fs.String("alias", "", "also create this alias (alias/NAME) for the key")
		origin := fs.String("origin", "AWS_KMS", "AWS_KMS: the KMS generates the material; EXTERNAL: import it (import-key-material)")
		return func(ctx context.Context, a kms.Admin, _ []string, out io.Writer) error {
			var policy string
			if *policyFile != "" {
				b, err := os.ReadFile(*policyFile)
				if err != nil {
					return fmt.Errorf("policy file: %w", err)
				}
				policy = string(b)
			}
			md, err := a.CreateKey(ctx, kms.CreateKeyInput{Description: *desc, Policy: policy, Origin: *origin})
			if err != nil {
				return err
			}
			if *alias != "" {
				if err := a.CreateAlias(ctx, *alias, md.KeyID); err != nil {
					return fmt.Errorf("key %s created, but alias: %w", md.ARN, err)
				}
			}
			fmt.Fprintf(out, "%s\t%s\n", md.KeyID, md.ARN)
			return nil
		}
	}},
	"list-keys": {nargs: 0, flags: func(fs *pflag.FlagSet) func(context.Context, kms.Admin, []string, io.Writer) error {
		return func(ctx context.Context, a kms.Admin, _ []string, out io.Writer) error {
			keys, err := a.ListKeys(ctx)
			if err != nil {
				return err
			}
			aliases, err := a.ListAliases(ctx, "")
			if err != nil {
				return err
			}
			byKey := map[string][]string{}
			for _, al := range aliases {
				byKey[al.TargetKeyID] = append(byKey[al.TargetKeyID], al.Name)
			}
			tw := tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
			fmt.Fprintln(tw, "KEY ID\tSTATE\tROTATION\tALIASES\tDESCRIPTION")
			for _, k := range keys {
				rot := "off"
				if k.RotationEnabled {
					rot = fmt.Sprintf("%dd", k.RotationPeriodDays)
				}
				names := append(byKey[k.KeyID], byKey[k.ARN]...)
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", k.KeyID, k.State, rot, strings.Join(names, ","), k.Description)
			}
			return tw.Flush()
		}
	}},
	"describe-key": {args: "KEY", nargs: 1, flags: func(fs *pflag.FlagSet) func(context.Context, kms.Admin, []string, io.Writer) error {
		return func(ctx context.Context, a kms.Admin, args []string, out io.Writer) error {
			k, err := a.DescribeKey(ctx, args[0])
			if err != nil {
				return err
			}
			kmsPrintMetadata(out, k)
			return nil
		}
	}},
	"rotate": {args: "KEY", nargs: 1, flags: func(fs *pflag.FlagSet) func(context.Context, kms.Admin, []string, io.Writer) error {
		return func(ctx context.Context, a kms.Admin, args []string, out io.Writer) error {
			if err := a.RotateKeyOnDemand(ctx, args[0]); err != nil {
				return err
			}
			k, err := a.DescribeKey(ctx, args[0])
			if err != nil {
				return err
			}
			if k.CurrentVersion > 0 {
				fmt.Fprintf(out, "rotated %s: new ciphertext uses material version %d; %d versions kept for decryption\n", k.ARN, k.CurrentVersion, k.Versions)
			} else {
				fmt.Fprintf(out, "rotated %s\n", k.ARN)
			}
			return nil
		}
	}},
	"enable-rotation": {args: "KEY", nargs: 1, flags: func(fs *pflag.FlagSet) func(context.Context, kms.Admin, []string, io.Writer) error {
		period := fs.Int("period-days", kms.DefaultRotationPeriodDays, fmt.Sprintf("rotation period in days (%d..%d)", kms.MinRotationPeriodDays, kms.MaxRotationPeriodDays))
		return func(ctx context.Context, a kms.Admin, args []string, out io.Writer) error {
			if err := a.EnableKeyRotation(ctx, args[0], *period); err != nil {
				return err
			}
			_, _, next, err := a.GetKeyRotationStatus(ctx, args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "automatic rotation of %s every %d days; next on %s\n", args[0], *period, next.UTC().Format(time.DateOnly))
			return nil
		}
	}},
	"disable-rotation":    kmsSimple(func(ctx context.Context, a kms.Admin, key string) error { return a.DisableKeyRotation(ctx, key) }, "automatic rotation of %s disabled"),
	"import-key-material": {args: "KEY FILE", nargs: 2, flags: kmsImportCommand},
	"delete-key-material": kmsSimple(kmsDeleteMaterial, "key material of %s deleted; the key is PendingImport until the same material is imported again"),
	"disable":             kmsSimple(func(ctx context.Context, a kms.Admin, key string) error { return a.DisableKey(ctx, key) }, "%s disabled"),
	"enable":              kmsSimple(func(ctx context.Context, a kms.Admin, key string) error { return a.EnableKey(ctx, key) }, "%s enabled"),
	"cancel-deletion":     kmsSimple(func(ctx context.Context, a kms.Admin, key string) error { return a.CancelKeyDeletion(ctx, key) }, "deletion of %s cancelled; the key is disabled ('kmsfs kms enable' to use it)"),
	"schedule-deletion": {args: "KEY", nargs: 1, flags: func(fs *pflag.FlagSet) func(context.Context, kms.Admin, []string, io.Writer) error {
		days := fs.Int("days", kms.DefaultDeletionWindowDays, fmt.Sprintf("waiting period in days (%d..%d)", kms.MinDeletionWindowDays, kms.MaxDeletionWindowDays))
		return func(ctx context.Context, a kms.Admin, args []string, out io.Writer) error {
			when, err := a.ScheduleKeyDeletion(ctx, args[0], *days)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "%s is pending deletion and unusable; its material is destroyed on %s unless you run 'kmsfs kms cancel-deletion'\n",
				args[0], when.UTC().Format(time.RFC3339))
			return nil
		}
	}},
}

func kmsSimple(fn func(ctx context.Context, a kms.Admin, key string) error, done string) kmsAdminCommand {
	return kmsAdminCommand{args: "KEY", nargs: 1, flags: func(fs *pflag.FlagSet) func(context.Context, kms.Admin, []string, io.Writer) error {
		return func(ctx context.Context, a kms.Admin, args []string, out io.Writer) error {
			if err := fn(ctx, a, args[0]); err != nil {
				return err
			}
			fmt.Fprintf(out, done+"\n", args[0])
			return nil
		}
	}}
}

func kmsPrintMetadata(out io.Writer, k kms.KeyMetadata) {
	tw := tabwriter.NewWriter(out, 0, 8, 1, ' ', 0)
	row := func(name, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", name, v)
		}
	}
	date := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format(time.RFC3339)
	}
	row("Key ID", k.KeyID)
	row("ARN", k.ARN)
	row("State", string(k.State))
	row("Description", k.Description)
	row("Created", date(k.CreationDate))
	row("Origin", k.Origin)
	row("Deletion date", date(k.DeletionDate))
	if k.RotationEnabled {
		row("Rotation", fmt.Sprintf("every %d days, next %s", k.RotationPeriodDays, date(k.NextRotationDate)))
	} else {
		row("Rotation", "off")
	}
	switch {
	case k.ExpirationModel == "KEY_MATERIAL_DOES_NOT_EXPIRE":
		row("Material", "imported, does not expire")
	case k.ExpirationModel != "":
		row("Material", "imported, expires "+k.ValidTo.UTC().Format(time.RFC3339))
	case k.Origin == "EXTERNAL":
		row("Material", "none (import it with import-key-material)")
	case k.CurrentVersion > 0:
		row("Material", fmt.Sprintf("version %d current, %d kept", k.CurrentVersion, k.Versions))
	}
	row("Last rotation", date(k.LastRotationDate))
	row("Created by", k.CreatingPrincipalARN)
	tw.Flush()
}

func kmsRunAdmin(ctx context.Context, name string, cmd kmsAdminCommand, args []string, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("kmsfs kms "+name, pflag.ContinueOnError)
	fs.SortFlags = false
	fs.SetOutput(stderr)
	var t kmsTarget
	run := cmd.flags(fs)
	t.register(fs)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: kmsfs kms %s [flags] %s\n\nFlags:\n%s", name, cmd.args, fs.FlagUsages())
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("kms %s: %w", name, err)
	}
	if fs.NArg() != cmd.nargs {
		fs.Usage()
		return fmt.Errorf("kms %s: want %d argument(s) (%s), got %d", name, cmd.nargs, cmd.args, fs.NArg())
	}
	admin, done, err := t.open(ctx, stderr)
	if err != nil {
		return fmt.Errorf("kms %s: %w", name, err)
	}
	defer done()
	if err := run(ctx, admin, fs.Args(), stdout); err != nil {
		return fmt.Errorf("kms %s: %w", name, err)
	}
	return nil
}

func kmsAlias(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const usage = "alias create NAME KEY | alias update NAME KEY | alias delete NAME | alias list [KEY]"
	if len(args) == 0 {
		return fmt.Errorf("kms alias: want %s", usage)
	}
	op := args[0]
	want := map[string][2]int{"create": {2, 2}, "update": {2, 2}, "delete": {1, 1}, "list": {0, 1}}
	n, ok := want[op]
	if !ok {
		return fmt.Errorf("kms alias: unknown action %q: want %s", op, usage)
	}
	cmd := kmsAdminCommand{args: usage, flags: func(fs *pflag.FlagSet) func(context.Context, kms.Admin, []string, io.Writer) error {
		return func(ctx context.Context, a kms.Admin, args []string, out io.Writer) error {
			switch op {
			case "create":
				return a.CreateAlias(ctx, args[0], args[1])
			case "update":
				return a.UpdateAlias(ctx, args[0], args[1])
			case "delete":
				return a.DeleteAlias(ctx, args[0])
			}
			key := ""
			if len(args) == 1 {
				key = args[0]
			}
			aliases, err := a.ListAliases(ctx, key)
			if err != nil {
				return err
			}
			for _, al := range aliases {
				fmt.Fprintf(out, "%s\t%s\n", al.Name, al.TargetKeyID)
			}
			return nil
		}
	}}
	// Positional count is checked per action: parse, then check.
	fs := pflag.NewFlagSet("kmsfs kms alias "+op, pflag.ContinueOnError)
	fs.SetOutput(stderr)
	var t kmsTarget
	run := cmd.flags(fs)
	t.register(fs)
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("kms alias %s: %w", op, err)
	}
	if fs.NArg() < n[0] || fs.NArg() > n[1] {
		return fmt.Errorf("kms alias %s: wrong number of arguments: want %s", op, usage)
	}
	admin, done, err := t.open(ctx, stderr)
	if err != nil {
		return fmt.Errorf("kms alias %s: %w", op, err)
	}
	defer done()
	if err := run(ctx, admin, fs.Args(), stdout); err != nil {
		return fmt.Errorf("kms alias %s: %w", op, err)
	}
	return nil
}

func kmsAudit(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "verify" {
		return errors.New("kms audit: want 'audit verify FILE'")
	}
	fs := pflag.NewFlagSet("kmsfs kms audit verify", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	head := fs.String("head", "", "also require the log's last hash to be this value (recorded earlier), which detects lines removed from the end")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: kmsfs kms audit verify [--head HASH] FILE\n\nChecks every line's hash and the chain between lines.\n\nFlags:\n%s", fs.FlagUsages())
	}
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("kms audit verify: %w", err)
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errors.New("kms audit verify: want one FILE")
	}
	f, err := os.Open(fs.Arg(0))
	if err != nil {
		return fmt.Errorf("kms audit verify: %w", err)
	}
	defer f.Close()
	sum, err := auditlog.Verify(f)
	if err != nil {
		return fmt.Errorf("audit log %s is not intact: %w", fs.Arg(0), err)
	}
	if *head != "" && *head != sum.Head {
		return fmt.Errorf("audit log %s: chain is intact but ends at %s, not the recorded %s (lines removed from the end, or appended since)", fs.Arg(0), sum.Head, *head)
	}
	fmt.Fprintf(stdout, "audit log %s intact: %d entries, head %s\n", fs.Arg(0), sum.Entries, sum.Head)
	return nil
}

const kmsServeUsage = `Usage: kmsfs kms serve --credentials FILE [flags]

Serves the keys of a keystore over the AWS KMS API (JSON 1.1 protocol, SigV4),
so that the AWS SDKs, 'aws kms ... --endpoint-url URL' and 'kmsfs mount --kms URL'
can use them. Every request must be signed with an access key from the
credentials file; each request, allowed or refused, is appended to the
hash-chained audit log ('kmsfs kms audit verify' checks it).

Clients sign for the server's --region; key ARNs are
arn:aws:kms:REGION:ACCOUNT:key/ID. Keys created without a policy (by
'kmsfs kms create-key' on the keystore, or by CreateKey) let every principal of
the owning account administer and use them.

`

func kmsServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("kmsfs kms serve", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:8900", "address to listen on (port 0: any free port; the address is printed)")
	ksDir := fs.String("keystore", "", "keystore directory (default $KMSFS_KEYSTORE or ~/.config/kmsfs/keystore)")
	passFile := fs.String("passphrase-file", "", "file holding the keystore passphrase (or set $KMSFS_PASSPHRASE)")
	var hsmFlags pkcs11Flags
	hsmFlags.register(fs)
	credFile := fs.String("credentials", "", "JSON file of access keys and their principals (required; format below)")
	auditPath := fs.String("audit-log", "", "audit log file (default KEYSTORE/audit.log)")
	auditFsync := fs.Bool("audit-fsync", false, "fsync the audit log before answering (group commit) instead of only writing it")
	rate := fs.Float64("rate", 0, "cryptographic requests per second allowed per account (0: unlimited); above it, ThrottlingException")
	burst := fs.Int("burst", 0, "token bucket size for --rate (default: one second's worth)")
	region := fs.String("region", "local", "region of the key ARNs, and the region clients must sign for")
	account := fs.String("account", "000000000000", "account ID that owns the keys (in key ARNs)")
	tlsCert := fs.String("tls-cert", "", "serve HTTPS with this certificate (PEM)")
	tlsKey := fs.String("tls-key", "", "private key for --tls-cert (PEM)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "%sFlags:\n%s\n%s\n", kmsServeUsage, fs.FlagUsages(), server.CredentialsFileHelp)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("kms serve: %w", err)
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("kms serve: unexpected arguments %q", fs.Args())
	}
	if *credFile == "" {
		return errors.New("kms serve: --credentials FILE is required: nothing is served unauthenticated (see --help for the format)")
	}
	if (*tlsCert == "") != (*tlsKey == "") {
		return errors.New("kms serve: --tls-cert and --tls-key go together")
	}
	creds, err := server.LoadCredentials(*credFile)
	if err != nil {
		return fmt.Errorf("kms serve: %w", err)
	}
	ks, err := kmsOpenKeystore(*ksDir, *passFile, *region, *account, &hsmFlags, stderr)
	if err != nil {
		return fmt.Errorf("kms serve: %w", err)
	}
	defer ks.Close()
	if *auditPath == "" {
		*auditPath = filepath.Join(ks.Dir(), "audit.log")
	}
	audit, err := auditlog.Open(*auditPath, auditlog.Options{Fsync: *auditFsync})
	if err != nil {
		return fmt.Errorf("kms serve: %w", err)
	}
	defer audit.Close()
	srv, err := server.New(server.Config{
		Store:       ks,
		Credentials: creds,
		Region:      *region,
		Audit:       audit,
		Rate:        *rate,
		Burst:       *burst,
		Logf:        func(format string, a ...any) { fmt.Fprintf(stderr, "kmsfs kms serve: "+format+"\n", a...) },
	})
	if err != nil {
		return fmt.Errorf("kms serve: %w", err)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("kms serve: %w", err)
	}
	hs := &http.Server{
		Handler:           srv,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          nil,
	}
	scheme := "http"
	if *tlsCert != "" {
		scheme = "https"
	}
	fmt.Fprintf(stdout, "kmsfs kms serve: listening on %s://%s (region %s, keystore %s, audit log %s)\n",
		scheme, ln.Addr(), *region, ks.Dir(), *auditPath)
	errc := make(chan error, 1)
	go func() {
		if *tlsCert != "" {
			errc <- hs.ServeTLS(ln, *tlsCert, *tlsKey)
		} else {
			errc <- hs.Serve(ln)
		}
	}()
	select {
	case err := <-errc:
		return fmt.Errorf("kms serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		return fmt.Errorf("kms serve: shutdown: %w", err)
	}
	return nil
}
