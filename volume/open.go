package volume

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/kmsfs/kmsfs/backend"
	"github.com/kmsfs/kmsfs/backend/local"
	"github.com/kmsfs/kmsfs/kms"
	"github.com/kmsfs/kmsfs/kms/awskms"
	"github.com/kmsfs/kmsfs/kms/keystore"
)

// KMSOptions say where the KMS is: the embedded keystore (URL "" or
// "embedded") or a remote KMS speaking the AWS KMS API.
type KMSOptions struct {
	URL        string
	Region     string
	Keystore   string // embedded keystore directory; "" = keystore.DefaultDir()
	Passphrase []byte // embedded keystore passphrase, if it has one
	// PKCS11 names the token holding the embedded keystore's KEK, if any.
	PKCS11 *keystore.PKCS11Options
	Warn   func(string)
}

// KMS is an opened key source: the operations a mount needs, the admin
// surface (to create a volume's key), and a Close.
type KMS interface {
	kms.Crypto
	kms.Admin
	io.Closer
}

type nopCloser struct{ *awskms.Client }

func (nopCloser) Close() error { return nil }

// OpenKMS opens the KMS named by o.
func OpenKMS(ctx context.Context, o KMSOptions) (KMS, error) {
	if o.URL == "" || o.URL == "embedded" {
		dir := o.Keystore
		if dir == "" {
			var err error
			if dir, err = keystore.DefaultDir(); err != nil {
				return nil, err
			}
		}
		ks, err := keystore.Open(dir, keystore.Options{Passphrase: o.Passphrase, PKCS11: o.PKCS11, Warn: o.Warn})
		if err != nil {
			return nil, fmt.Errorf("embedded KMS keystore %s: %w", dir, err)
		}
		return ks, nil
	}
	c, err := awskms.New(ctx, awskms.Options{Endpoint: o.URL, Region: o.Region})
	if err != nil {
		return nil, fmt.Errorf("KMS %s: %w", o.URL, err)
	}
	return nopCloser{c}, nil
}

// BackendOptions carry the settings of the S3 backend.
type BackendOptions struct {
	S3Endpoint  string
	S3Region    string
	S3PathStyle bool
	S3LeaseTTL  time.Duration
	StagingDir  string
	// OwnsPrefix: this process is the volume's mount, so multipart uploads
	// found under the prefix are leftovers of a crash and are aborted.
	OwnsPrefix bool
	// Meta is the metadata database URL of a shared volume ("": the one
	// its config names, if it is one).
	Meta string
}

// OpenBackend opens a local directory, or an s3://bucket/prefix URL.
func OpenBackend(ctx context.Context, spec string, o BackendOptions) (backend.Backend, error) {
	if strings.HasPrefix(spec, "s3://") {
		return openS3Volume(ctx, spec, o)
	}
	if strings.Contains(spec, "://") {
		return nil, fmt.Errorf("backend %q: unknown scheme (want a directory or s3://bucket/prefix)", spec)
	}
	st, err := os.Stat(spec)
	if err != nil {
		return nil, fmt.Errorf("backend %s: %w", spec, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("backend %s: not a directory", spec)
	}
	return local.New(spec)
}
