package main

import (
	"context"
	"fmt"
	"os"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/kms"
	"github.com/kmsfs/kmsfs/volume"
)

func initCommand(ctx context.Context, args []string) error {
	var c commonFlags
	fs := newFlagSet("init", "kmsfs init [flags] BACKEND   (a directory or s3://bucket/prefix)")
	c.register(fs)
	keyID := fs.String("key", "", "KMS key (ID, ARN or alias); default: create a new key on the embedded KMS")
	encryptNames := fs.Bool("encrypt-names", false, "store file, directory and symlink target names encrypted")
	mode := fs.String("mode", "per-object", "key mode: per-object (one KMS data key per file, like SSE-KMS) or bucket-key (a volume-level key, per-file keys derived locally, like S3 Bucket Keys)")
	blockSize := fs.Int("block-size", envelope.DefaultBlockSize, "plaintext bytes per encrypted block (power of two)")
	headerSize := fs.Int("header-size", envelope.DefaultHeaderSize, "bytes reserved for each file header")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return fmt.Errorf("want exactly one BACKEND")
	}
	spec := fs.Arg(0)
	var m envelope.Mode
	switch *mode {
	case "per-object":
		m = envelope.ModePerObject
	case "bucket-key":
		m = envelope.ModeBucketKey
	default:
		return fmt.Errorf("--mode %q: want per-object or bucket-key", *mode)
	}
	if !isS3(spec) {
		// The volume root is the mount's root directory: 0755 like any
		// new directory (chmod it as you like); volume metadata and the
		// keystore have their own 0700 directories.
		if err := os.MkdirAll(spec, 0o755); err != nil {
			return err
		}
	}
	be, err := volume.OpenBackend(ctx, spec, c.backendOptions())
	if err != nil {
		return err
	}
	defer be.Close()
	ko, err := c.kmsOptions(nil)
	if err != nil {
		return err
	}
	k, err := volume.OpenKMS(ctx, ko)
	if err != nil {
		return err
	}
	defer k.Close()
	key := *keyID
	if key == "" {
		if ko.URL != "" && ko.URL != "embedded" {
			return fmt.Errorf("give --key: kmsfs creates keys only on the embedded KMS")
		}
		md, err := k.CreateKey(ctx, kms.CreateKeyInput{Description: "kmsfs volume " + spec})
		if err != nil {
			return fmt.Errorf("create KMS key: %w", err)
		}
		key = md.ARN
		fmt.Fprintf(os.Stderr, "kmsfs: created KMS key %s\n", key)
	}
	record, closeAudit, err := c.openAudit("init")
	if err != nil {
		return err
	}
	defer closeAudit()
	cfg, err := volume.Init(ctx, be, kmsChain{audit: record}.wrap(k), volume.InitOptions{
		KeyID: key, KMS: ko.URL, KMSRegion: ko.Region, Mode: m, BlockSize: *blockSize, HeaderSize: *headerSize, EncryptNames: *encryptNames,
		Meta: c.sharedMeta(),
	})
	if err != nil {
		return fmt.Errorf("%s: %w", spec, err)
	}
	fmt.Printf("initialised kmsfs volume %s at %s (mode %s, key %s)\n", cfg.VolumeID, spec, cfg.Mode, cfg.KeyID)
	return nil
}

func isS3(spec string) bool { return len(spec) > 5 && spec[:5] == "s3://" }
