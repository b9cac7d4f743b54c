package compose

import (
	"bytes"
	"fmt"
	"os"
)

// ReadSecret returns a passphrase or PIN: the contents of file without
// trailing line breaks when file is given, else fallback (the value of an
// environment variable, read by the caller), else nil. what names the
// secret in errors.
func ReadSecret(what, file, fallback string) ([]byte, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("%s file: %w", what, err)
		}
		return bytes.TrimRight(b, "\r\n"), nil
	}
	if fallback != "" {
		return []byte(fallback), nil
	}
	return nil, nil
}
