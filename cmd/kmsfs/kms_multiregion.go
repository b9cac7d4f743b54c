package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/pflag"

	"github.com/kmsfs/kmsfs/internal/compose"
	"github.com/kmsfs/kmsfs/kms"
	"github.com/kmsfs/kmsfs/kms/awskms"
	"github.com/kmsfs/kmsfs/kms/keystore"
)

// kmsPrintMultiRegion adds a multi-Region key's rows to describe-key.
func kmsPrintMultiRegion(row func(name, v string), k kms.KeyMetadata) {
	c := k.MultiRegionConfiguration
	if !k.MultiRegion || c == nil {
		return
	}
	row("Multi-Region", c.KeyType)
	row("Primary key", c.PrimaryKey.ARN)
	var replicas []string
	for _, r := range c.ReplicaKeys {
		replicas = append(replicas, r.ARN)
	}
	if len(replicas) == 0 {
		replicas = []string{"none"}
	}
	row("Replica keys", strings.Join(replicas, ", "))
}

// multiRegionRemote is the remote client's multi-Region surface.
type multiRegionRemote interface {
	ReplicateKey(ctx context.Context, in awskms.ReplicateKeyInput) (kms.KeyMetadata, error)
	UpdatePrimaryRegion(ctx context.Context, keyID, region string) error
}

// replicaKeystoreFlags name the other region's keystore, for the embedded
// KMS: both keystores are on this machine.
type replicaKeystoreFlags struct {
	dir, passphraseFile string
}

func (r *replicaKeystoreFlags) register(fs *pflag.FlagSet, what string) {
	fs.StringVar(&r.dir, "replica-keystore", "", "with a keystore (no --kms): the keystore `DIR` of "+what)
	fs.StringVar(&r.passphraseFile, "replica-passphrase-file", "", "`FILE` holding that keystore's passphrase (none: it has a root key file)")
}

func (r *replicaKeystoreFlags) open(region string, stderr io.Writer) (*keystore.Keystore, error) {
	if r.dir == "" {
		return nil, usagef("with a keystore, give --replica-keystore DIR: the keystore of region %s", region)
	}
	pass, err := compose.ReadSecret("replica keystore passphrase", r.passphraseFile, "")
	if err != nil {
		return nil, err
	}
	return compose.OpenKeystore(compose.KeystoreOptions{Dir: r.dir, Passphrase: pass, Region: region, Warn: warnTo(stderr)})
}

// kmsMultiRegionCommands are replicate and update-primary-region.
func kmsMultiRegionCommands() []*command {
	return []*command{
		adminCommand("replicate", "KEY REGION", "copy the multi-Region primary key KEY to REGION (a replica: same key ID and material, its own policy, description, tags and state)", 2, 2, func(fs *pflag.FlagSet) adminRun {
			desc := fs.String("description", "", "the replica's description `TEXT`")
			policyFile := fs.String("policy-file", "", "`FILE` holding the replica's JSON key policy (default: the owning account may administer and use it)")
			tagArgs := fs.StringArray("tag", nil, "tag the replica with `KEY=VALUE` (repeatable)")
			var rk replicaKeystoreFlags
			rk.register(fs, "REGION (created if missing)")
			return func(ctx context.Context, a kms.Admin, args []string, out io.Writer) error {
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
				var md kms.KeyMetadata
				switch k := a.(type) {
				case multiRegionRemote:
					md, err = k.ReplicateKey(ctx, awskms.ReplicateKeyInput{KeyID: args[0], ReplicaRegion: args[1], Description: *desc, Policy: policy, Tags: tags})
				case *keystore.Keystore:
					replica, oerr := rk.open(args[1], os.Stderr)
					if oerr != nil {
						return oerr
					}
					defer replica.Close()
					md, err = keystore.Replicate(ctx, k, replica, args[0], keystore.ReplicaInput{Description: *desc, Policy: policy, Tags: tags})
				default:
					return fmt.Errorf("this KMS (%T) cannot replicate keys", a)
				}
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "%s\t%s\n", md.KeyID, md.ARN)
				return nil
			}
		}),
		adminCommand("update-primary-region", "KEY REGION", "make the replica of KEY in REGION the primary key (KEY becomes a replica)", 2, 2, func(fs *pflag.FlagSet) adminRun {
			var rk replicaKeystoreFlags
			rk.register(fs, "REGION, holding the replica")
			return func(ctx context.Context, a kms.Admin, args []string, out io.Writer) error {
				switch k := a.(type) {
				case multiRegionRemote:
					if err := k.UpdatePrimaryRegion(ctx, args[0], args[1]); err != nil {
						return err
					}
				case *keystore.Keystore:
					replica, err := rk.open(args[1], os.Stderr)
					if err != nil {
						return err
					}
					defer replica.Close()
					md, err := k.DescribeKey(ctx, args[0])
					if err != nil {
						return err
					}
					if err := k.CheckPrimaryUpdate(ctx, md.ARN, args[1]); err != nil {
						return err
					}
					primary, replicas, err := k.UpdatePrimaryRegion(ctx, md.ARN, args[1])
					if err != nil {
						return err
					}
					if err := replica.SetMultiRegionConfiguration(ctx, md.KeyID, primary, replicas); err != nil {
						return fmt.Errorf("%s is a replica now, but the keystore of %s was not updated: %w", md.ARN, args[1], err)
					}
				default:
					return fmt.Errorf("this KMS (%T) has no multi-Region keys", a)
				}
				fmt.Fprintf(out, "primary region of %s is now %s\n", args[0], args[1])
				return nil
			}
		}),
	}
}
