package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/pflag"

	"github.com/kmsfs/kmsfs/kms/keystore"
)

// pkcs11Flags say where the KEK of a token-protected embedded keystore
// lives. Given at the keystore's creation they make its KEK a key inside
// the token; given later they unlock it.
type pkcs11Flags struct {
	module, token, pinFile string
}

func (p *pkcs11Flags) register(fs *pflag.FlagSet) {
	fs.StringVar(&p.module, "pkcs11-module", os.Getenv("KMSFS_PKCS11_MODULE"), "PKCS#11 library of the token holding the embedded keystore's KEK, e.g. /usr/lib/softhsm/libsofthsm2.so (or $KMSFS_PKCS11_MODULE)")
	fs.StringVar(&p.token, "pkcs11-token", os.Getenv("KMSFS_PKCS11_TOKEN"), "label of that token (or $KMSFS_PKCS11_TOKEN)")
	fs.StringVar(&p.pinFile, "pkcs11-pin-file", "", "file holding the token's user PIN (or set $KMSFS_PKCS11_PIN)")
}

// options returns nil when no token is named. The caller zeroes PIN once
// the keystore is open.
func (p *pkcs11Flags) options() (*keystore.PKCS11Options, error) {
	if p.module == "" && p.token == "" {
		return nil, nil
	}
	if p.module == "" || p.token == "" {
		return nil, errors.New("a PKCS#11 token needs both --pkcs11-module and --pkcs11-token")
	}
	var pin []byte
	if p.pinFile != "" {
		b, err := os.ReadFile(p.pinFile)
		if err != nil {
			return nil, fmt.Errorf("PKCS#11 PIN file: %w", err)
		}
		pin = bytes.TrimRight(b, "\r\n")
	} else {
		pin = []byte(os.Getenv("KMSFS_PKCS11_PIN"))
	}
	if len(pin) == 0 {
		return nil, fmt.Errorf("PKCS#11 token %q: no PIN (--pkcs11-pin-file or $KMSFS_PKCS11_PIN)", p.token)
	}
	return &keystore.PKCS11Options{Module: p.module, Token: p.token, PIN: pin}, nil
}
