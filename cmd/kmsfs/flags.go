package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/pflag"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/internal/compose"
	"github.com/kmsfs/kmsfs/kms/keystore"
)

// Environment variables kmsfs reads; they are read here in cmd/ only, and
// passed down as options.
const (
	envKeystore     = "KMSFS_KEYSTORE"
	envPassphrase   = "KMSFS_PASSPHRASE"
	envPKCS11Module = "KMSFS_PKCS11_MODULE"
	envPKCS11Token  = "KMSFS_PKCS11_TOKEN"
	envPKCS11PIN    = "KMSFS_PKCS11_PIN"
	// envRuntimeDir is where a mount not run by root puts its stats socket.
	envRuntimeDir = "XDG_RUNTIME_DIR"
)

// keystoreFlags say where the embedded keystore is and what unlocks it.
type keystoreFlags struct {
	dir            string
	passphraseFile string
	pkcs11         pkcs11Flags
}

func (k *keystoreFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&k.dir, "keystore", os.Getenv(envKeystore), "embedded KMS keystore directory `DIR` (default $"+envKeystore+" or ~/.config/kmsfs/keystore)")
	fs.StringVar(&k.passphraseFile, "passphrase-file", "", "`FILE` holding the embedded keystore's passphrase (or set $"+envPassphrase+")")
	k.pkcs11.register(fs)
}

// options reads the passphrase and PIN; OpenKeystore zeroes them.
func (k *keystoreFlags) options(stderr io.Writer) (compose.KeystoreOptions, error) {
	pass, err := compose.ReadSecret("passphrase", k.passphraseFile, os.Getenv(envPassphrase))
	if err != nil {
		return compose.KeystoreOptions{}, err
	}
	hsm, err := k.pkcs11.options()
	if err != nil {
		return compose.KeystoreOptions{}, err
	}
	return compose.KeystoreOptions{Dir: k.dir, Passphrase: pass, PKCS11: hsm, CustomKeyStoreModule: k.pkcs11.module, Warn: warnTo(stderr)}, nil
}

func warnTo(w io.Writer) func(string) {
	return func(msg string) { fmt.Fprintln(w, "kmsfs: warning:", msg) }
}

// pkcs11Flags say where the KEK of a token-protected embedded keystore
// lives. Given at the keystore's creation they make its KEK a key inside
// the token; given later they unlock it.
type pkcs11Flags struct {
	module, token, pinFile string
}

func (p *pkcs11Flags) register(fs *pflag.FlagSet) {
	fs.StringVar(&p.module, "pkcs11-module", os.Getenv(envPKCS11Module), "PKCS#11 library `FILE` of the token holding the embedded keystore's KEK, and of the tokens of its custom key stores, e.g. /usr/lib/softhsm/libsofthsm2.so (or $"+envPKCS11Module+")")
	fs.StringVar(&p.token, "pkcs11-token", os.Getenv(envPKCS11Token), "`LABEL` of that token (or $"+envPKCS11Token+")")
	fs.StringVar(&p.pinFile, "pkcs11-pin-file", "", "`FILE` holding the token's user PIN (or set $"+envPKCS11PIN+")")
}

// options returns nil when no token is named (a module alone serves the
// custom key stores).
func (p *pkcs11Flags) options() (*keystore.PKCS11Options, error) {
	if p.token == "" {
		return nil, nil
	}
	if p.module == "" {
		return nil, usagef("a PKCS#11 token needs both --pkcs11-module and --pkcs11-token")
	}
	pin, err := compose.ReadSecret("PKCS#11 PIN", p.pinFile, os.Getenv(envPKCS11PIN))
	if err != nil {
		return nil, err
	}
	if len(pin) == 0 {
		return nil, fmt.Errorf("PKCS#11 token %q: no PIN (--pkcs11-pin-file or $%s)", p.token, envPKCS11PIN)
	}
	return &keystore.PKCS11Options{Module: p.module, Token: p.token, PIN: pin}, nil
}

// commonFlags are the flags that say where the KMS and the backend are.
type commonFlags struct {
	keystore    keystoreFlags
	kmsURL      string
	kmsRegion   string
	kmsReplicas []string
	s3Endpoint  string
	s3Region    string
	s3PathStyle bool
	s3LeaseTTL  time.Duration
	meta        string
	auditLog    string
	// mounting is set by `kmsfs mount` (read-write): once it holds the
	// writer lease, the process owns the volume's S3 prefix and aborts the
	// multipart uploads a crash left.
	mounting bool
	// salvage is set by `kmsfs salvage`: the volume's files are rebuilt
	// from the bucket alone.
	salvage bool
}

func (c *commonFlags) register(fs *pflag.FlagSet) {
	c.keystore.register(fs)
	fs.StringVar(&c.kmsURL, "kms", "", "remote KMS endpoint `URL` speaking the AWS KMS API (default: the volume's, else embedded)")
	fs.StringVar(&c.kmsRegion, "kms-region", "", "`REGION` the remote KMS signs for (default: the volume's, else the AWS config chain's)")
	fs.StringArrayVar(&c.kmsReplicas, "kms-replica", nil, "another region's KMS holding a replica of the volume's multi-Region key, as `REGION=URL` (repeatable; default: the volume's): keys are unwrapped there while --kms is unreachable")
	fs.StringVar(&c.s3Endpoint, "s3-endpoint", "", "S3 endpoint `URL` for s3:// backends (default AWS)")
	fs.StringVar(&c.s3Region, "s3-region", "", "S3 `REGION` (default from the AWS config chain)")
	fs.BoolVar(&c.s3PathStyle, "s3-path-style", false, "use path-style S3 addressing (most non-AWS servers)")
	fs.DurationVar(&c.s3LeaseTTL, "s3-lease-ttl", compose.DefaultS3LeaseTTL, "how long an S3 volume's writer lease outlives a writer that stopped renewing it (a mount that crashed on another machine), as a `DURATION`")
	c.registerShared(fs)
	fs.StringVar(&c.auditLog, "audit-log", "", "append every KMS call this process makes to `FILE` (hash-chained JSON lines; kmsfs kms audit verify FILE)")
}

// kmsOptions are the KMS the flags name; compose resolves what they leave
// open from the volume config.
func (c *commonFlags) kmsOptions(stderr io.Writer) (compose.KMSOptions, error) {
	ks, err := c.keystore.options(stderr)
	if err != nil {
		return compose.KMSOptions{}, err
	}
	for _, r := range c.kmsReplicas {
		if _, err := compose.ParseKMSReplica(r); err != nil {
			return compose.KMSOptions{}, usagef("--kms-replica: %v", err)
		}
	}
	return compose.KMSOptions{URL: c.kmsURL, Region: c.kmsRegion, Keystore: ks, Replicas: c.kmsReplicas}, nil
}

func (c *commonFlags) backendOptions() compose.BackendOptions {
	return compose.BackendOptions{S3Endpoint: c.s3Endpoint, S3Region: c.s3Region, S3PathStyle: c.s3PathStyle, S3LeaseTTL: c.s3LeaseTTL, Meta: c.meta, OwnsPrefix: c.mounting, Salvage: c.salvage}
}

// parseMode reads a --mode value.
func parseMode(v string) (envelope.Mode, error) {
	switch v {
	case "per-object":
		return envelope.ModePerObject, nil
	case "bucket-key":
		return envelope.ModeBucketKey, nil
	}
	return 0, usagef("--mode %q: want per-object or bucket-key", v)
}
