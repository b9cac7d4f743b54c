package compose

import (
	"context"
	"fmt"
	"io"

	"github.com/kmsfs/kmsfs/kms"
	"github.com/kmsfs/kmsfs/kms/awskms"
	"github.com/kmsfs/kmsfs/kms/keystore"
)

// KeystoreOptions say how to open the embedded keystore.
type KeystoreOptions struct {
	Dir        string // "" = keystore.DefaultDir()
	Passphrase []byte // its passphrase, if it has one; zeroed once it is open
	// PKCS11 names the token holding the keystore's KEK, if any; its PIN
	// is zeroed once the keystore is open.
	PKCS11 *keystore.PKCS11Options
	// CustomKeyStoreModule is the PKCS#11 library of custom key stores' tokens.
	CustomKeyStoreModule string
	// Region and Account appear in the keystore's key ARNs ("" = its defaults).
	Region, Account string
	Warn            func(string)
}

// KMSOptions say where the KMS is: the embedded keystore (URL "" or
// "embedded") or a remote service speaking the AWS KMS API at URL.
type KMSOptions struct {
	URL      string
	Region   string // the remote KMS's region ("" = the AWS config chain's)
	Keystore KeystoreOptions
	// Replicas are other regions' KMSs holding replicas of the volume's
	// multi-Region key, as "REGION=URL" (ParseKMSReplica): a remote KMS
	// with replicas fails over to them (kms_failover.go).
	Replicas []string
	// Warn receives the failover's log lines; nil discards them.
	Warn func(string)

	replicas []KMSReplica // Replicas, parsed
}

// Embedded reports whether o names the embedded keystore.
func (o KMSOptions) Embedded() bool { return o.URL == "" || o.URL == "embedded" }

// KMS is an opened key source: the operations a mount needs, the admin
// surface (to create a volume's key), and a Close.
type KMS interface {
	kms.Crypto
	kms.Admin
	io.Closer
}

// OpenKMS opens the KMS named by o.
func OpenKMS(ctx context.Context, o KMSOptions) (KMS, error) {
	if o.Embedded() {
		if len(o.Replicas) > 0 {
			return nil, fmt.Errorf("KMS replicas %v: failing over takes a remote KMS and a multi-Region key, not the embedded keystore", o.Replicas)
		}
		ks, err := OpenKeystore(o.Keystore)
		if err != nil {
			return nil, err
		}
		return ks, nil
	}
	if len(o.Replicas) > 0 {
		return openWithReplicas(ctx, o)
	}
	c, err := awskms.New(ctx, awskms.Options{Endpoint: o.URL, Region: o.Region})
	if err != nil {
		return nil, fmt.Errorf("KMS %s: %w", o.URL, err)
	}
	return remoteKMS{c}, nil
}

// remoteKMS holds nothing that needs closing: the SDK client's connections
// are pooled by its HTTP client.
type remoteKMS struct{ *awskms.Client }

func (remoteKMS) Close() error { return nil }

// OpenKeystore opens (or creates) the embedded keystore o names. It zeroes
// the passphrase and the PKCS#11 PIN once they have been used.
func OpenKeystore(o KeystoreOptions) (*keystore.Keystore, error) {
	defer kms.Zero(o.Passphrase)
	if o.PKCS11 != nil {
		defer kms.Zero(o.PKCS11.PIN)
	}
	dir := o.Dir
	if dir == "" {
		var err error
		if dir, err = keystore.DefaultDir(); err != nil {
			return nil, err
		}
	}
	ks, err := keystore.Open(dir, keystore.Options{
		Passphrase: o.Passphrase, PKCS11: o.PKCS11, CustomKeyStoreModule: o.CustomKeyStoreModule, Region: o.Region, Account: o.Account, Warn: o.Warn,
	})
	if err != nil {
		return nil, fmt.Errorf("embedded KMS keystore %s: %w", dir, err)
	}
	return ks, nil
}
