package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/pflag"

	"github.com/kmsfs/kmsfs/kms"
)

// kmsImportCommand is `kmsfs kms import-key-material KEY FILE`: the three
// steps of an AWS KMS import in one command. The 256-bit material is read
// from FILE and sent encrypted to a fresh RSA-3072 key of the KMS
// (RSAES_OAEP_SHA_256), never in the clear.
func kmsImportCommand(fs *pflag.FlagSet) func(context.Context, kms.Admin, []string, io.Writer) error {
	validFor := fs.Duration("valid-for", 0, "the material expires (and is deleted) after this long (`DURATION`; default: never)")
	return func(ctx context.Context, a kms.Admin, args []string, out io.Writer) error {
		imp, ok := a.(kms.Importer)
		if !ok {
			return errors.New("this KMS does not import key material")
		}
		material, err := os.ReadFile(args[1])
		if err != nil {
			return fmt.Errorf("key material: %w", err)
		}
		defer kms.Zero(material)
		if len(material) != 32 {
			return fmt.Errorf("key material %s is %d bytes; a symmetric key takes exactly 32 (e.g. head -c 32 /dev/urandom)", args[1], len(material))
		}
		params, err := imp.GetParametersForImport(ctx, args[0], kms.WrappingRSAOAEPSHA256, kms.WrappingKeyRSA3072)
		if err != nil {
			return err
		}
		pub, err := x509.ParsePKIXPublicKey(params.PublicKey)
		if err != nil {
			return fmt.Errorf("wrapping key from the KMS: %w", err)
		}
		rsaPub, ok := pub.(*rsa.PublicKey)
		if !ok {
			return errors.New("wrapping key from the KMS is not an RSA key")
		}
		encrypted, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, rsaPub, material, nil)
		if err != nil {
			return err
		}
		var validTo time.Time
		if *validFor > 0 {
			validTo = time.Now().Add(*validFor).Truncate(time.Second)
		}
		if err := imp.ImportKeyMaterial(ctx, args[0], params.ImportToken, encrypted, validTo); err != nil {
			return err
		}
		if validTo.IsZero() {
			fmt.Fprintf(out, "imported key material into %s; it does not expire\n", params.KeyARN)
		} else {
			fmt.Fprintf(out, "imported key material into %s; it expires on %s\n", params.KeyARN, validTo.UTC().Format(time.RFC3339))
		}
		return nil
	}
}

// kmsDeleteMaterial is `kmsfs kms delete-key-material KEY`.
func kmsDeleteMaterial(ctx context.Context, a kms.Admin, key string) error {
	imp, ok := a.(kms.Importer)
	if !ok {
		return errors.New("this KMS does not import key material")
	}
	return imp.DeleteImportedKeyMaterial(ctx, key)
}
