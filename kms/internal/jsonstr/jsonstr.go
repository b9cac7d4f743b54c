// Package jsonstr encodes a Go string as a JSON string literal without
// reflection. The KMS server's responses that carry secrets and the audit
// log's lines are built by hand on hot paths; both need the same escaping,
// and the audit log needs it to stay byte-for-byte stable, since each line's
// hash covers its bytes.
package jsonstr

import "unicode/utf8"

// Append appends s as a JSON string literal: quotes, backslashes and control
// characters are escaped, invalid UTF-8 becomes \ufffd, everything else is
// copied as is. encoding/json decodes the result to s (or to s with its
// invalid bytes replaced).
func Append(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			b = append(b, c)
			i++
			continue
		}
		if c < utf8.RuneSelf {
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, `\u00`...)
				b = append(b, "0123456789abcdef"[c>>4], "0123456789abcdef"[c&15])
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}
