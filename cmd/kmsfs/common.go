package main

import (
	"bytes"
	"fmt"
	"os"
	"time"

	"github.com/spf13/pflag"

	"github.com/kmsfs/kmsfs/backend/s3"
	"github.com/kmsfs/kmsfs/volume"
)

// commonFlags are the flags that say where the KMS and the backend are.
type commonFlags struct {
	keystore       string
	passphraseFile string
	kmsURL         string
	kmsRegion      string
	s3Endpoint     string
	s3Region       string
	s3PathStyle    bool
	s3LeaseTTL     time.Duration
	pkcs11         pkcs11Flags
	auditLog       string
	meta           string // shared volume's metadata database
	// mounting is set by `kmsfs mount` (read-write): the process owns the
	// volume's S3 prefix and may abort multipart uploads a crash left.
	mounting bool
}

func (c *commonFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&c.keystore, "keystore", os.Getenv("KMSFS_KEYSTORE"), "embedded KMS keystore directory (default $KMSFS_KEYSTORE or ~/.config/kmsfs/keystore)")
	fs.StringVar(&c.passphraseFile, "passphrase-file", "", "file holding the embedded keystore passphrase (or set $KMSFS_PASSPHRASE)")
	fs.StringVar(&c.kmsURL, "kms", "", "remote KMS endpoint URL speaking the AWS KMS API (default: the volume's, else embedded)")
	fs.StringVar(&c.kmsRegion, "kms-region", "", "region of the remote KMS (default from the AWS config chain)")
	fs.StringVar(&c.s3Endpoint, "s3-endpoint", "", "S3 endpoint URL for s3:// backends (default AWS)")
	fs.StringVar(&c.s3Region, "s3-region", "", "S3 region (default from the AWS config chain)")
	fs.BoolVar(&c.s3PathStyle, "s3-path-style", false, "use path-style S3 addressing (most non-AWS servers)")
	fs.DurationVar(&c.s3LeaseTTL, "s3-lease-ttl", s3.DefaultLeaseTTL, "how long an S3 volume's writer lease outlives a writer that stopped renewing it (a crashed mount on another machine)")
	c.pkcs11.register(fs)
	c.registerShared(fs)
	fs.StringVar(&c.auditLog, "audit-log", "", "append every KMS call this process makes to FILE (hash-chained JSON lines; kmsfs kms audit verify FILE)")
}

func (c *commonFlags) passphrase() ([]byte, error) {
	if c.passphraseFile != "" {
		b, err := os.ReadFile(c.passphraseFile)
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

// kmsOptions resolves the KMS: the flag wins, then the volume config.
func (c *commonFlags) kmsOptions(cfg *volume.Config) (volume.KMSOptions, error) {
	pass, err := c.passphrase()
	if err != nil {
		return volume.KMSOptions{}, err
	}
	hsm, err := c.pkcs11.options()
	if err != nil {
		return volume.KMSOptions{}, err
	}
	o := volume.KMSOptions{URL: c.kmsURL, Region: c.kmsRegion, Keystore: c.keystore, Passphrase: pass, PKCS11: hsm,
		Warn: func(msg string) { fmt.Fprintln(os.Stderr, "kmsfs: warning:", msg) }}
	if o.URL == "" && cfg != nil {
		o.URL = cfg.KMS
	}
	if o.Region == "" && cfg != nil {
		o.Region = cfg.KMSRegion
	}
	return o, nil
}

func (c *commonFlags) backendOptions() volume.BackendOptions {
	return volume.BackendOptions{S3Endpoint: c.s3Endpoint, S3Region: c.s3Region, S3PathStyle: c.s3PathStyle, S3LeaseTTL: c.s3LeaseTTL, OwnsPrefix: c.mounting, Meta: c.meta}
}

func newFlagSet(name, usage string) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SortFlags = false
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: %s\n\nFlags:\n%s", usage, fs.FlagUsages())
	}
	return fs
}
