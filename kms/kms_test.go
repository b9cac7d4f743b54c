package kms

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
)

func TestCanonicalContext(t *testing.T) {
	a := EncryptionContext{"b": "2", "a": "1"}
	b := EncryptionContext{"a": "1", "b": "2"}
	if !bytes.Equal(a.Canonical(), b.Canonical()) {
		t.Fatal("map order changed the canonical encoding")
	}
	want := []byte{0, 2, 0, 1, 'a', 0, 1, '1', 0, 1, 'b', 0, 1, '2'}
	if !bytes.Equal(a.Canonical(), want) {
		t.Fatalf("canonical %x, want %x", a.Canonical(), want)
	}
	// Length prefixes keep pairs from running into each other.
	for _, pair := range [][2]EncryptionContext{
		{{"ab": "c"}, {"a": "bc"}},
		{{"a": ""}, {}},
		{{"a": "1", "b": ""}, {"a": "1"}},
	} {
		if bytes.Equal(pair[0].Canonical(), pair[1].Canonical()) {
			t.Fatalf("%v and %v encode the same", pair[0], pair[1])
		}
	}
}

func TestErrorIs(t *testing.T) {
	err := fmt.Errorf("open f: %w", Errorf(CodeDisabled, "key %s is disabled", "k"))
	if !errors.Is(err, ErrDisabled) || errors.Is(err, ErrNotFound) {
		t.Fatal("errors.Is does not match by code")
	}
	if Code(err) != CodeDisabled || Code(errors.New("x")) != "" {
		t.Fatal("Code")
	}
	if err.Error() != "open f: DisabledException: key k is disabled" {
		t.Fatalf("message %q", err.Error())
	}
}
