package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/kmsfs/kmsfs/internal/compose"
	"github.com/kmsfs/kmsfs/kms"
)

// envCustomKeyStorePIN holds a custom key store's token PIN when no
// --token-pin-file is given.
const envCustomKeyStorePIN = "KMSFS_CUSTOM_KEY_STORE_PIN"

const customKeyStoreHelp = `A custom key store (AWS's CloudHSM key store) is a PKCS#11 token: its keys are
AES-256 keys generated in the token, which never leave it. The token is
named by its label (AWS's CloudHsmClusterId) and pinned by a PKCS#11 URI
(AWS's TrustAnchorCertificate, e.g. pkcs11:token=LABEL;serial=SERIAL); the
user PIN (AWS's KeyStorePassword) is kept sealed by the keystore. Every
process that uses the store's keys (kmsfs kms serve, a mount) needs
--pkcs11-module FILE, the token's PKCS#11 library.`

// customKeyStores adapts a command to the KMS's custom key store surface.
func customKeyStores(run func(ctx context.Context, s kms.CustomKeyStores, args []string, out io.Writer) error) adminRun {
	return func(ctx context.Context, a kms.Admin, args []string, out io.Writer) error {
		s, ok := a.(kms.CustomKeyStores)
		if !ok {
			return fmt.Errorf("this KMS (%T) has no custom key stores", a)
		}
		return run(ctx, s, args, out)
	}
}

// readTokenPIN reads the PIN from file or $KMSFS_CUSTOM_KEY_STORE_PIN.
func readTokenPIN(file string) ([]byte, error) {
	pin, err := compose.ReadSecret("token PIN", file, os.Getenv(envCustomKeyStorePIN))
	if err != nil {
		return nil, err
	}
	if len(pin) == 0 {
		return nil, usagef("the token's user PIN is needed: --token-pin-file FILE or $%s", envCustomKeyStorePIN)
	}
	return pin, nil
}

// describeOne returns the store id names.
func describeOne(ctx context.Context, s kms.CustomKeyStores, id string) (kms.CustomKeyStore, error) {
	got, err := s.DescribeCustomKeyStores(ctx, "", id, "")
	if err != nil {
		return kms.CustomKeyStore{}, err
	}
	if len(got) != 1 {
		return kms.CustomKeyStore{}, fmt.Errorf("custom key store %s: %d stores described", id, len(got))
	}
	return got[0], nil
}

// kmsCustomKeyStoreCommands are the custom key store commands, named as
// awscli names them.
func kmsCustomKeyStoreCommands() []*command {
	cmds := []*command{
		adminCommand("create-custom-key-store", "", "record a PKCS#11 token as a custom key store (DISCONNECTED); prints its ID", 0, 0, func(fs *pflag.FlagSet) adminRun {
			name := fs.String("name", "", "the store's `NAME` (required, unique)")
			token := fs.String("token", "", "`LABEL` of the PKCS#11 token (required)")
			anchor := fs.String("trust-anchor", "", "PKCS#11 `URI` the token must match, e.g. pkcs11:token=LABEL;serial=SERIAL (default: pin the token found now)")
			pinFile := fs.String("token-pin-file", "", "`FILE` holding the token's user PIN (or set $"+envCustomKeyStorePIN+")")
			return customKeyStores(func(ctx context.Context, s kms.CustomKeyStores, _ []string, out io.Writer) error {
				if *name == "" || *token == "" {
					return usagef("--name and --token are required")
				}
				pin, err := readTokenPIN(*pinFile)
				if err != nil {
					return err
				}
				defer kms.Zero(pin)
				id, err := s.CreateCustomKeyStore(ctx, kms.CreateCustomKeyStoreInput{Name: *name, CloudHsmClusterID: *token, TrustAnchorCertificate: *anchor, KeyStorePassword: pin})
				if err != nil {
					return err
				}
				fmt.Fprintln(out, id)
				return nil
			})
		}),
		adminCommand("connect-custom-key-store", "ID", "log in to the store's token: its keys become usable", 1, 1, func(fs *pflag.FlagSet) adminRun {
			return customKeyStores(func(ctx context.Context, s kms.CustomKeyStores, args []string, out io.Writer) error {
				if err := s.ConnectCustomKeyStore(ctx, "", args[0]); err != nil {
					return err
				}
				// As in AWS, the call succeeds once tried; the state says how
				// it went.
				d, err := describeOne(ctx, s, args[0])
				if err != nil {
					return err
				}
				if d.ConnectionState == kms.ConnectionFailed {
					return fmt.Errorf("custom key store %s: connection FAILED (%s); disconnect it, fix the cause, connect again", d.ID, d.ConnectionErrorCode)
				}
				fmt.Fprintf(out, "%s\t%s\n", d.ID, d.ConnectionState)
				return nil
			})
		}),
		adminCommand("disconnect-custom-key-store", "ID", "the store's keys become Unavailable until it is connected again", 1, 1, func(fs *pflag.FlagSet) adminRun {
			return customKeyStores(func(ctx context.Context, s kms.CustomKeyStores, args []string, out io.Writer) error {
				if err := s.DisconnectCustomKeyStore(ctx, "", args[0]); err != nil {
					return err
				}
				fmt.Fprintf(out, "%s\t%s\n", args[0], kms.ConnectionDisconnected)
				return nil
			})
		}),
		adminCommand("describe-custom-key-stores", "[ID]", "list custom key stores (or ID only) with their connection state", 0, 1, func(fs *pflag.FlagSet) adminRun {
			name := fs.String("name", "", "only the store named `NAME`")
			return customKeyStores(func(ctx context.Context, s kms.CustomKeyStores, args []string, out io.Writer) error {
				id := ""
				if len(args) == 1 {
					id = args[0]
				}
				stores, err := s.DescribeCustomKeyStores(ctx, "", id, *name)
				if err != nil {
					return err
				}
				tw := tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tNAME\tTOKEN\tSTATE\tERROR\tCREATED\tTRUST ANCHOR")
				for _, d := range stores {
					code := d.ConnectionErrorCode
					if code == "" {
						code = "-"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.ID, d.Name, d.CloudHsmClusterID, d.ConnectionState, code, d.CreationDate.UTC().Format(time.RFC3339), d.TrustAnchorCertificate)
				}
				return tw.Flush()
			})
		}),
		adminCommand("update-custom-key-store", "ID", "rename a store; or, disconnected, change its token label or PIN", 1, 1, func(fs *pflag.FlagSet) adminRun {
			name := fs.String("name", "", "new `NAME`")
			token := fs.String("token", "", "new token `LABEL` (the same token: its identity must match the trust anchor)")
			pinFile := fs.String("token-pin-file", "", "`FILE` holding the token's new user PIN")
			return customKeyStores(func(ctx context.Context, s kms.CustomKeyStores, args []string, out io.Writer) error {
				in := kms.UpdateCustomKeyStoreInput{ID: args[0], NewName: *name, CloudHsmClusterID: *token}
				if *pinFile != "" {
					pin, err := readTokenPIN(*pinFile)
					if err != nil {
						return err
					}
					defer kms.Zero(pin)
					in.KeyStorePassword = pin
				}
				if err := s.UpdateCustomKeyStore(ctx, in); err != nil {
					return err
				}
				fmt.Fprintf(out, "%s updated\n", args[0])
				return nil
			})
		}),
		adminCommand("delete-custom-key-store", "ID", "forget a disconnected store that holds no keys (the token is left alone)", 1, 1, func(fs *pflag.FlagSet) adminRun {
			return customKeyStores(func(ctx context.Context, s kms.CustomKeyStores, args []string, out io.Writer) error {
				if err := s.DeleteCustomKeyStore(ctx, "", args[0]); err != nil {
					return err
				}
				fmt.Fprintf(out, "%s deleted\n", args[0])
				return nil
			})
		}),
	}
	for _, c := range cmds {
		c.about = customKeyStoreHelp
	}
	return cmds
}
