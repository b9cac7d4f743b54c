//go:build !cgo

package keystore

import (
	"errors"

	"github.com/kmsfs/kmsfs/kms"
)

// openTokenKEK needs cgo: PKCS#11 modules are C libraries.
func openTokenKEK(o *PKCS11Options, create bool) (kek, error) {
	return nil, errors.New("PKCS#11: this kmsfs was built without cgo (CGO_ENABLED=0); rebuild it with a C compiler to use a token")
}

// loadTokenModule needs cgo too: custom key stores live in PKCS#11 tokens.
func loadTokenModule(path string) (tokenModule, error) {
	return nil, &connectError{code: kms.ConnErrNetworkErrors, err: errors.New("PKCS#11: this kmsfs was built without cgo (CGO_ENABLED=0); rebuild it with a C compiler to use a custom key store")}
}
