package main

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/pflag"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/internal/compose"
	"github.com/kmsfs/kmsfs/kms"
	"github.com/kmsfs/kmsfs/volume"
)

func initCommand() *command {
	return &command{
		name: "init", args: "BACKEND", minArgs: 1, maxArgs: 1,
		summary: "create a volume (and a KMS key on the embedded KMS)",
		about:   "BACKEND is a directory (created if missing) or s3://bucket/prefix.",
		setup: func(fs *pflag.FlagSet) runFunc {
			var c commonFlags
			c.register(fs)
			keyID := fs.String("key", "", "KMS `KEY` (ID, ARN or alias) of the volume; default: create a new key on the embedded KMS")
			encryptNames := fs.Bool("encrypt-names", false, "store file, directory and symlink target names encrypted")
			mode := fs.String("mode", "per-object", "key `MODE`: per-object (one KMS data key per file, like SSE-KMS) or bucket-key (a volume-level key, per-file keys derived locally, like S3 Bucket Keys)")
			blockSize := fs.Int("block-size", envelope.DefaultBlockSize, "plaintext `BYTES` per encrypted block (power of two)")
			headerSize := fs.Int("header-size", envelope.DefaultHeaderSize, "`BYTES` reserved for each file header")
			compress := fs.String("compress", "", "compress files before encrypting them: `zstd` or zstd:LEVEL (1-22, default 3); off by default because compressed sizes reveal something about contents")
			return func(ctx context.Context, inv *invocation) error {
				m, err := parseMode(*mode)
				if err != nil {
					return err
				}
				if *compress != "" {
					if _, err := volume.ParseCompress(*compress); err != nil {
						return usagef("--compress: %v", err)
					}
				}
				return initVolume(ctx, inv, &c, inv.args[0], *keyID, volume.InitOptions{
					Mode: m, BlockSize: *blockSize, HeaderSize: *headerSize, EncryptNames: *encryptNames, Compress: *compress,
				})
			}
		},
	}
}

// initVolume creates the volume at spec under key (a new key of the
// embedded KMS when key is empty).
func initVolume(ctx context.Context, inv *invocation, c *commonFlags, spec, key string, opts volume.InitOptions) error {
	ko, err := c.kmsOptions(inv.stderr)
	if err != nil {
		return err
	}
	if key == "" && !ko.Embedded() {
		return usagef("give --key: kmsfs creates keys only on the embedded KMS")
	}
	if !compose.IsS3(spec) {
		// The volume root is the mount's root directory: 0755 like any
		// new directory (chmod it as you like); volume metadata and the
		// keystore have their own 0700 directories.
		if err := os.MkdirAll(spec, 0o755); err != nil {
			return err
		}
	}
	be, err := compose.OpenBackend(ctx, spec, c.backendOptions())
	if err != nil {
		return err
	}
	defer be.Close()
	k, err := compose.OpenKMS(ctx, ko)
	if err != nil {
		return err
	}
	defer k.Close()
	if key == "" {
		md, err := k.CreateKey(ctx, kms.CreateKeyInput{Description: "kmsfs volume " + spec})
		if err != nil {
			return fmt.Errorf("create KMS key: %w", err)
		}
		key = md.ARN
		fmt.Fprintf(inv.stderr, "kmsfs: created KMS key %s\n", key)
	}
	if len(ko.Replicas) > 0 {
		// Failing over needs the same key in the replicas' regions: a
		// multi-Region key (AWS: "mrk-" key IDs).
		md, err := k.DescribeKey(ctx, key)
		if err != nil {
			return fmt.Errorf("KMS key %s: %w", key, err)
		}
		if !md.MultiRegion {
			return usagef("--kms-replica: key %s is not a multi-Region key; replicas hold only multi-Region keys", key)
		}
	}
	record, closeAudit, err := c.openAudit("init")
	if err != nil {
		return err
	}
	defer closeAudit()
	opts.KeyID, opts.KMS, opts.KMSRegion, opts.Meta = key, ko.URL, ko.Region, c.sharedMeta()
	opts.KMSReplicas = ko.Replicas
	cfg, err := volume.Init(ctx, be, compose.Chain{Audit: record}.Wrap(k), opts)
	if err != nil {
		return fmt.Errorf("%s: %w", spec, err)
	}
	fmt.Fprintf(inv.stdout, "initialised kmsfs volume %s at %s (mode %s, key %s)\n", cfg.VolumeID, spec, cfg.Mode, cfg.KeyID)
	return nil
}
