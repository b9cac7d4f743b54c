//go:build !cgo

package keystore

import "errors"

// openTokenKEK needs cgo: PKCS#11 modules are C libraries.
func openTokenKEK(o *PKCS11Options, create bool) (kek, error) {
	return nil, errors.New("PKCS#11: this kmsfs was built without cgo (CGO_ENABLED=0); rebuild it with a C compiler to use a token")
}
