package jsonstr

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestAppendDecodesToInput: encoding/json reads every literal back as the
// string it came from, each invalid UTF-8 byte as U+FFFD.
func TestAppendDecodesToInput(t *testing.T) {
	var all strings.Builder
	for c := range 0x80 {
		all.WriteByte(byte(c))
	}
	for _, s := range []string{"", "plain", `"q"\`, "tab\tnl\ncr\r", "\x00\x01\x1f\x7f", "ü€𝄞", "\u2028\u2029", "<&>", "bad\xffutf8\xc3", all.String()} {
		b := Append([]byte("x"), s)
		if b[0] != 'x' {
			t.Fatalf("%q: prefix overwritten", s)
		}
		var got string
		if err := json.Unmarshal(b[1:], &got); err != nil {
			t.Fatalf("%q: invalid JSON %s: %v", s, b[1:], err)
		}
		if want := replaceEach(s); got != want {
			t.Errorf("%q: decoded to %q", s, got)
		}
	}
}

// replaceEach replaces every invalid byte with U+FFFD.
func replaceEach(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		b.WriteRune(r)
		i += n
	}
	return b.String()
}

// TestAppendBytes pins the escapes: the audit log hashes these bytes, so a
// different but equivalent escape would change the format.
func TestAppendBytes(t *testing.T) {
	for in, want := range map[string]string{
		"a\"b\\c":      `"a\"b\\c"`,
		"\n\r\t":       `"\n\r\t"`,
		"\x00\x1f\x08": `"\u0000\u001f\u0008"`,
		"<&>\u2028ü":   "\"<&>\u2028ü\"",
		"\xff":         `"\ufffd"`,
	} {
		if got := string(Append(nil, in)); got != want {
			t.Errorf("Append(%q) = %s, want %s", in, got, want)
		}
	}
}
