package main

import (
	"context"
	"encoding/pem"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/kmsfs/kmsfs/internal/compose"
	"github.com/kmsfs/kmsfs/kms"
)

// kmsCommand is the `kmsfs kms` group: the KMS server, key administration
// and the audit log check.
func kmsCommand() *command {
	subs := []*command{kmsServeCommand()}
	subs = append(subs, kmsAdminCommands()...)
	subs = append(subs, kmsMultiRegionCommands()...)
	subs = append(subs, kmsCustomKeyStoreCommands()...)
	subs = append(subs, kmsAliasCommand(), kmsAuditCommand())
	return &command{
		name:    "kms",
		summary: "KMS server and key administration",
		about: `Serve a keystore over the AWS KMS API (serve), administer its keys, check an
audit log. Key administration works on a keystore directly (--keystore DIR,
default $KMSFS_KEYSTORE or ~/.config/kmsfs/keystore) or through a KMS server
(--kms URL, credentials from the standard AWS chain: AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY, ~/.aws, ...).`,
		footer: kmsKeyHelp,
		subs:   subs,
	}
}

// kmsTarget says which KMS an admin command works on.
type kmsTarget struct {
	keystore  keystoreFlags
	region    string
	account   string
	url       string
	urlRegion string
}

func (t *kmsTarget) register(fs *pflag.FlagSet) {
	t.keystore.register(fs)
	fs.StringVar(&t.region, "region", "", "`REGION` in the keystore's key ARNs (default \"local\")")
	fs.StringVar(&t.account, "account", "", "`ACCOUNT` ID in the keystore's key ARNs (default 000000000000)")
	fs.StringVar(&t.url, "kms", "", "work through the KMS server at `URL` (AWS KMS API) instead of a keystore")
	fs.StringVar(&t.urlRegion, "kms-region", "", "`REGION` the --kms server signs for (default from the AWS config chain)")
}

// open returns the KMS the flags name.
func (t *kmsTarget) open(ctx context.Context, stderr io.Writer) (compose.KMS, error) {
	o := compose.KMSOptions{URL: t.url, Region: t.urlRegion}
	if o.Embedded() {
		ks, err := t.keystore.options(stderr)
		if err != nil {
			return nil, err
		}
		ks.Region, ks.Account = t.region, t.account
		o.Keystore = ks
	}
	return compose.OpenKMS(ctx, o)
}

// adminRun runs a key administration command on the KMS its flags named.
type adminRun = func(ctx context.Context, a kms.Admin, args []string, out io.Writer) error

// adminCommand is a key administration command: setup registers its own
// flags; the flags that say which KMS it works on follow them.
func adminCommand(name, args, summary string, minArgs, maxArgs int, setup func(fs *pflag.FlagSet) adminRun) *command {
	return &command{
		name: name, args: args, summary: summary, minArgs: minArgs, maxArgs: maxArgs,
		footer: kmsKeyHelp,
		setup: func(fs *pflag.FlagSet) runFunc {
			run := setup(fs)
			var t kmsTarget
			t.register(fs)
			return func(ctx context.Context, inv *invocation) error {
				admin, err := t.open(ctx, inv.stderr)
				if err != nil {
					return err
				}
				defer admin.Close()
				return run(ctx, admin, inv.args, inv.stdout)
			}
		},
	}
}

const kmsKeyHelp = "KEY is a key ID, key ARN, alias name (alias/NAME) or alias ARN."

// kmsAdminCommands are the key administration commands, in the order
// `kmsfs kms --help` lists them.
func kmsAdminCommands() []*command {
	return []*command{
		adminCommand("create-key", "", "create a key; prints its ID and ARN", 0, 0, func(fs *pflag.FlagSet) adminRun {
			desc := fs.String("description", "", "key description `TEXT`")
			policyFile := fs.String("policy-file", "", "`FILE` holding the JSON key policy (default: the owning account may administer and use the key)")
			alias := fs.String("alias", "", "also create this alias (`alias/NAME`) for the key")
			origin := fs.String("origin", "AWS_KMS", "where the material comes from (`ORIGIN`): AWS_KMS, the KMS generates it; EXTERNAL, import it (import-key-material); AWS_CLOUDHSM, generated in the token of --custom-key-store-id")
			storeID := fs.String("custom-key-store-id", "", "create the key in the custom key store `ID` (with --origin AWS_CLOUDHSM)")
			tagArgs := fs.StringArray("tag", nil, "tag the key with `KEY=VALUE` (repeatable)")
			spec := fs.String("key-spec", kms.KeySpecSymmetric, "`SPEC`: SYMMETRIC_DEFAULT, RSA_2048, RSA_3072, RSA_4096, ECC_NIST_P256, ECC_NIST_P384, ECC_NIST_P521, HMAC_224, HMAC_256, HMAC_384 or HMAC_512")
			multiRegion := fs.Bool("multi-region", false, "create a multi-Region primary key (ID mrk-...; symmetric, origin AWS_KMS), which 'replicate' copies to other regions")
			usage := fs.String("key-usage", "", "`USAGE`: ENCRYPT_DECRYPT (default for symmetric and RSA keys), SIGN_VERIFY (RSA, ECC) or GENERATE_VERIFY_MAC (HMAC); default: the spec's only usage")
			return func(ctx context.Context, a kms.Admin, _ []string, out io.Writer) error {
				tags, err := parseTags(*tagArgs)
				if err != nil {
					return err
				}
				var policy string
				if *policyFile != "" {
					b, err := os.ReadFile(*policyFile)
					if err != nil {
						return fmt.Errorf("policy file: %w", err)
					}
					policy = string(b)
				}
				md, err := a.CreateKey(ctx, kms.CreateKeyInput{Description: *desc, Policy: policy, Origin: *origin, Tags: tags, KeySpec: *spec, KeyUsage: keyUsageFor(*spec, *usage), MultiRegion: *multiRegion, CustomKeyStoreID: *storeID})
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
		}),
		adminCommand("list-keys", "", "list keys with their state, rotation and aliases", 0, 0, func(fs *pflag.FlagSet) adminRun {
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
		}),
		adminCommand("describe-key", "KEY", "show a key's metadata", 1, 1, func(fs *pflag.FlagSet) adminRun {
			return func(ctx context.Context, a kms.Admin, args []string, out io.Writer) error {
				k, err := a.DescribeKey(ctx, args[0])
				if err != nil {
					return err
				}
				kmsPrintMetadata(out, k)
				return nil
			}
		}),
		adminCommand("update-description", "KEY TEXT", "replace a key's description", 2, 2, func(fs *pflag.FlagSet) adminRun {
			return withExtras(func(ctx context.Context, x keyExtras, args []string, out io.Writer) error {
				if err := x.UpdateKeyDescription(ctx, args[0], args[1]); err != nil {
					return err
				}
				fmt.Fprintf(out, "description of %s updated\n", args[0])
				return nil
			})
		}),
		adminCommand("tag", "KEY TAG=VALUE...", "add tags to a key (a tag it has gets the new value); KEY is a key ID or ARN", 2, -1, func(fs *pflag.FlagSet) adminRun {
			return withExtras(func(ctx context.Context, x keyExtras, args []string, out io.Writer) error {
				tags, err := parseTags(args[1:])
				if err != nil {
					return err
				}
				if err := x.TagResource(ctx, args[0], tags); err != nil {
					return err
				}
				fmt.Fprintf(out, "%s tagged: %d tags set\n", args[0], len(tags))
				return nil
			})
		}),
		adminCommand("untag", "KEY TAG...", "remove tags from a key; KEY is a key ID or ARN", 2, -1, func(fs *pflag.FlagSet) adminRun {
			return withExtras(func(ctx context.Context, x keyExtras, args []string, out io.Writer) error {
				if err := x.UntagResource(ctx, args[0], args[1:]); err != nil {
					return err
				}
				fmt.Fprintf(out, "%s untagged: %s\n", args[0], strings.Join(args[1:], ", "))
				return nil
			})
		}),
		adminCommand("list-tags", "KEY", "list a key's tags (TAG<tab>VALUE, sorted); KEY is a key ID or ARN", 1, 1, func(fs *pflag.FlagSet) adminRun {
			return withExtras(func(ctx context.Context, x keyExtras, args []string, out io.Writer) error {
				tags, err := x.ListResourceTags(ctx, args[0])
				if err != nil {
					return err
				}
				for _, k := range slices.Sorted(maps.Keys(tags)) {
					fmt.Fprintf(out, "%s\t%s\n", k, tags[k])
				}
				return nil
			})
		}),
		adminCommand("list-rotations", "KEY", "list a key's completed rotations, oldest first; KEY is a key ID or ARN", 1, 1, func(fs *pflag.FlagSet) adminRun {
			return withExtras(func(ctx context.Context, x keyExtras, args []string, out io.Writer) error {
				rots, err := x.ListKeyRotations(ctx, args[0])
				if err != nil {
					return err
				}
				tw := tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
				fmt.Fprintln(tw, "VERSION\tDATE\tTYPE")
				for _, r := range rots {
					typ := r.Type
					if typ == "" {
						typ = "-"
					}
					fmt.Fprintf(tw, "%d\t%s\t%s\n", r.Version, r.Date.UTC().Format(time.RFC3339), typ)
				}
				return tw.Flush()
			})
		}),
		adminCommand("get-public-key", "KEY", "write an asymmetric key's public key (PEM)", 1, 1, func(fs *pflag.FlagSet) adminRun {
			outFile := fs.String("out", "", "write the PEM to `FILE` instead of standard output")
			return func(ctx context.Context, a kms.Admin, args []string, out io.Writer) error {
				asym, ok := a.(kms.Asymmetric)
				if !ok {
					return fmt.Errorf("this KMS has no asymmetric keys")
				}
				pk, err := asym.GetPublicKey(ctx, args[0])
				if err != nil {
					return err
				}
				data := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pk.PublicKey})
				if *outFile == "" {
					_, err = out.Write(data)
					return err
				}
				return os.WriteFile(*outFile, data, 0o644)
			}
		}),
		adminCommand("rotate", "KEY", "new backing material now; old ciphertext still decrypts", 1, 1, func(fs *pflag.FlagSet) adminRun {
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
		}),
		adminCommand("enable-rotation", "KEY", "automatic rotation every --period-days", 1, 1, func(fs *pflag.FlagSet) adminRun {
			period := fs.Int("period-days", kms.DefaultRotationPeriodDays, fmt.Sprintf("rotation period in `DAYS` (%d..%d)", kms.MinRotationPeriodDays, kms.MaxRotationPeriodDays))
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
		}),
		kmsSimple("disable-rotation", "stop automatic rotation", func(ctx context.Context, a kms.Admin, key string) error { return a.DisableKeyRotation(ctx, key) }, "automatic rotation of %s disabled"),
		adminCommand("import-key-material", "KEY FILE", "BYOK: 32 bytes of key material from FILE into an EXTERNAL key", 2, 2, kmsImportCommand),
		kmsSimple("delete-key-material", "the key becomes PendingImport: unusable until the same material is imported", kmsDeleteMaterial, "key material of %s deleted; the key is PendingImport until the same material is imported again"),
		kmsSimple("disable", "the key refuses every use until enabled", func(ctx context.Context, a kms.Admin, key string) error { return a.DisableKey(ctx, key) }, "%s disabled"),
		kmsSimple("enable", "enable a disabled key", func(ctx context.Context, a kms.Admin, key string) error { return a.EnableKey(ctx, key) }, "%s enabled"),
		adminCommand("schedule-deletion", "KEY", "delete after --days (the key is unusable meanwhile)", 1, 1, func(fs *pflag.FlagSet) adminRun {
			days := fs.Int("days", kms.DefaultDeletionWindowDays, fmt.Sprintf("waiting period in `DAYS` (%d..%d)", kms.MinDeletionWindowDays, kms.MaxDeletionWindowDays))
			return func(ctx context.Context, a kms.Admin, args []string, out io.Writer) error {
				when, err := a.ScheduleKeyDeletion(ctx, args[0], *days)
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "%s is pending deletion and unusable; its material is destroyed on %s unless you run 'kmsfs kms cancel-deletion'\n",
					args[0], when.UTC().Format(time.RFC3339))
				return nil
			}
		}),
		kmsSimple("cancel-deletion", "cancel a scheduled deletion; the key is left disabled", func(ctx context.Context, a kms.Admin, key string) error { return a.CancelKeyDeletion(ctx, key) }, "deletion of %s cancelled; the key is disabled ('kmsfs kms enable' to use it)"),
	}
}

// keyExtras are the control-plane operations beyond kms.Admin that both the
// embedded keystore and the AWS KMS client have.
type keyExtras interface {
	UpdateKeyDescription(ctx context.Context, keyID, description string) error
	TagResource(ctx context.Context, keyID string, tags map[string]string) error
	UntagResource(ctx context.Context, keyID string, tagKeys []string) error
	ListResourceTags(ctx context.Context, keyID string) (map[string]string, error)
	ListKeyRotations(ctx context.Context, keyID string) ([]kms.KeyRotation, error)
}

// withExtras adapts a command that needs keyExtras to adminRun.
func withExtras(run func(ctx context.Context, x keyExtras, args []string, out io.Writer) error) adminRun {
	return func(ctx context.Context, a kms.Admin, args []string, out io.Writer) error {
		x, ok := a.(keyExtras)
		if !ok {
			return fmt.Errorf("this KMS (%T) has no tag, description or rotation listing operations", a)
		}
		return run(ctx, x, args, out)
	}
}

// parseTags parses TAG=VALUE arguments; a tag named twice is an error.
func parseTags(args []string) (map[string]string, error) {
	if len(args) == 0 {
		return nil, nil
	}
	tags := make(map[string]string, len(args))
	for _, arg := range args {
		k, v, ok := strings.Cut(arg, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("tag %q is not TAG=VALUE", arg)
		}
		if _, dup := tags[k]; dup {
			return nil, fmt.Errorf("tag %q given twice", k)
		}
		tags[k] = v
	}
	return tags, nil
}

// keyUsageFor is the usage create-key asks for: the one given, or the
// spec's only usage for ECC and HMAC specs (AWS's own default,
// ENCRYPT_DECRYPT, fits only symmetric and RSA keys).
func keyUsageFor(spec, usage string) string {
	switch {
	case usage != "":
		return usage
	case strings.HasPrefix(spec, "ECC_"):
		return kms.KeyUsageSignVerify
	case strings.HasPrefix(spec, "HMAC_"):
		return kms.KeyUsageGenerateVerifyMac
	}
	return ""
}

// kmsSimple is a command that does one thing to KEY and says so.
func kmsSimple(name, summary string, fn func(ctx context.Context, a kms.Admin, key string) error, done string) *command {
	return adminCommand(name, "KEY", summary, 1, 1, func(fs *pflag.FlagSet) adminRun {
		return func(ctx context.Context, a kms.Admin, args []string, out io.Writer) error {
			if err := fn(ctx, a, args[0]); err != nil {
				return err
			}
			fmt.Fprintf(out, done+"\n", args[0])
			return nil
		}
	})
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
	row("Key spec", k.KeySpec)
	row("Key usage", k.KeyUsage)
	row("Encryption algorithms", strings.Join(k.EncryptionAlgorithms, ", "))
	row("Signing algorithms", strings.Join(k.SigningAlgorithms, ", "))
	row("MAC algorithms", strings.Join(k.MacAlgorithms, ", "))
	row("Deletion date", date(k.DeletionDate))
	kmsPrintMultiRegion(row, k)
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
	case k.CustomKeyStoreID != "":
		row("Material", "in the token, never leaves it")
	case k.CurrentVersion > 0:
		row("Material", fmt.Sprintf("version %d current, %d kept", k.CurrentVersion, k.Versions))
	}
	row("Custom key store", k.CustomKeyStoreID)
	row("Token", k.CloudHsmClusterID)
	row("Last rotation", date(k.LastRotationDate))
	row("Created by", k.CreatingPrincipalARN)
	tw.Flush()
}

// kmsAliasCommand is the `kmsfs kms alias` group.
func kmsAliasCommand() *command {
	return &command{
		name:    "alias",
		summary: "create, update, delete and list aliases (alias/NAME)",
		about:   "An alias names a key: alias/NAME, usable wherever a KEY is asked for.",
		footer:  kmsKeyHelp,
		subs: []*command{
			adminCommand("create", "NAME KEY", "make alias NAME point at KEY", 2, 2, func(fs *pflag.FlagSet) adminRun {
				return func(ctx context.Context, a kms.Admin, args []string, out io.Writer) error {
					return a.CreateAlias(ctx, args[0], args[1])
				}
			}),
			adminCommand("update", "NAME KEY", "point alias NAME at another KEY", 2, 2, func(fs *pflag.FlagSet) adminRun {
				return func(ctx context.Context, a kms.Admin, args []string, out io.Writer) error {
					return a.UpdateAlias(ctx, args[0], args[1])
				}
			}),
			adminCommand("delete", "NAME", "delete alias NAME (the key stays)", 1, 1, func(fs *pflag.FlagSet) adminRun {
				return func(ctx context.Context, a kms.Admin, args []string, out io.Writer) error {
					return a.DeleteAlias(ctx, args[0])
				}
			}),
			adminCommand("list", "[KEY]", "list aliases (of KEY only, if given)", 0, 1, func(fs *pflag.FlagSet) adminRun {
				return func(ctx context.Context, a kms.Admin, args []string, out io.Writer) error {
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
			}),
		},
	}
}
