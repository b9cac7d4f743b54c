package envelope

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
)

func testNameCipher(t *testing.T) *NameCipher {
	t.Helper()
	c, err := NewNameCipher(bytes.Repeat([]byte{0x4D}, KeySize), id(0x56))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// nameVectors are in testdata/names.json: fixed metadata key and volume ID,
// the names and the exact stored forms they must have. A change that would
// make existing volumes' names unreadable fails here.
type nameVector struct {
	DirID  string `json:"dir_id"` // hex; "root" for the root directory
	Name   string `json:"name"`
	Stored string `json:"stored"`
}

func TestNameVectors(t *testing.T) {
	c := testNameCipher(t)
	data, err := os.ReadFile("testdata/names.json")
	if err != nil {
		t.Fatal(err)
	}
	var vs []nameVector
	if err := json.Unmarshal(data, &vs); err != nil {
		t.Fatal(err)
	}
	if len(vs) == 0 {
		t.Fatal("no name vectors")
	}
	for _, v := range vs {
		dir := c.RootDirID()
		if v.DirID != "root" {
			copy(dir[:], mustHex(t, v.DirID))
		}
		got, err := c.EncryptName(dir, v.Name)
		if err != nil || got != v.Stored {
			t.Errorf("EncryptName(%s, %q) = %q, %v; the vector says %q", v.DirID, v.Name, got, err, v.Stored)
		}
		if back, err := c.DecryptName(dir, v.Stored); err != nil || back != v.Name {
			t.Errorf("DecryptName(%s, %q) = %q, %v", v.DirID, v.Stored, back, err)
		}
	}
}

func TestNamesPerDirectory(t *testing.T) {
	c := testNameCipher(t)
	d1, d2 := c.RootDirID(), [DirIDLen]byte{1}
	a1, err1 := c.EncryptName(d1, "report.pdf")
	a1again, err2 := c.EncryptName(d1, "report.pdf")
	a2, err3 := c.EncryptName(d2, "report.pdf")
	if err := errors.Join(err1, err2, err3); err != nil {
		t.Fatal(err)
	}
	if a1 != a1again {
		t.Fatal("a name's stored form is not deterministic within its directory")
	}
	if a1 == a2 {
		t.Fatal("a name has the same stored form in two directories")
	}
	if strings.Contains(a1, "report") || strings.HasPrefix(a1, ".") || strings.ContainsAny(a1, "/\x00") {
		t.Fatalf("stored name %q", a1)
	}
	// A stored name moved to another directory, or edited, does not decrypt.
	if _, err := c.DecryptName(d2, a1); !errors.Is(err, ErrAuth) {
		t.Fatalf("name moved to another directory: %v", err)
	}
	flipped := []byte(a1)
	flipped[len(flipped)-1] ^= 1
	if _, err := c.DecryptName(d1, string(flipped)); !errors.Is(err, ErrAuth) {
		t.Fatalf("edited stored name: %v", err)
	}
	// The longest name whose stored form fits, one byte more (stored under
	// its long name), the longest name at all, and one byte more.
	short := strings.Repeat("n", MaxShortName)
	if s, err := c.EncryptName(d1, short); err != nil || len(s) > MaxStoredName {
		t.Fatalf("%d-byte name: stored in %d bytes, %v", MaxShortName, len(s), err)
	}
	if s, err := c.EncryptName(d1, short+"n"); err != nil || len(s) <= MaxStoredName {
		t.Fatalf("%d-byte name: stored in %d bytes, %v; want a long stored form", MaxShortName+1, len(s), err)
	}
	longest, err := c.EncryptName(d1, strings.Repeat("n", MaxPlainName))
	if err != nil {
		t.Fatal(err)
	}
	if ln := LongName(longest); len(ln) > MaxStoredName || !strings.HasPrefix(ln, LongNamePrefix) || len(ln+LongNameSuffix) > MaxStoredName {
		t.Fatalf("long name %q", ln)
	}
	if back, err := c.DecryptName(d1, longest); err != nil || len(back) != MaxPlainName {
		t.Fatalf("longest name back: %d bytes, %v", len(back), err)
	}
	if _, err := c.EncryptName(d1, strings.Repeat("n", MaxPlainName+1)); !errors.Is(err, ErrNameTooLong) {
		t.Fatalf("%d-byte name: %v, want ErrNameTooLong", MaxPlainName+1, err)
	}
	for _, bad := range []string{"", ".", "..", "a/b", "nul\x00"} {
		if _, err := c.EncryptName(d1, bad); err == nil {
			t.Fatalf("name %q accepted", bad)
		}
	}
}

func TestSymlinkTargets(t *testing.T) {
	c := testNameCipher(t)
	s1, err := c.EncryptTarget("../secret/plans.txt")
	if err != nil {
		t.Fatal(err)
	}
	s2, err := c.EncryptTarget("../secret/plans.txt")
	if err != nil {
		t.Fatal(err)
	}
	if s1 == s2 || strings.Contains(s1, "secret") {
		t.Fatalf("targets %q, %q", s1, s2)
	}
	for n := 0; n < 100; n++ {
		s, err := c.EncryptTarget(strings.Repeat("t", n))
		if err != nil {
			t.Fatal(err)
		}
		if got := TargetLen(int64(len(s))); got != int64(n) {
			t.Fatalf("TargetLen of a %d-byte target's stored form: %d", n, got)
		}
	}
	if got, err := c.DecryptTarget(s1); err != nil || got != "../secret/plans.txt" {
		t.Fatalf("target back: %q, %v", got, err)
	}
	if _, err := c.DecryptTarget(s1[:len(s1)-2] + "AA"); !errors.Is(err, ErrAuth) {
		t.Fatalf("edited target: %v", err)
	}
	if _, err := c.EncryptTarget(strings.Repeat("t", 3100)); !errors.Is(err, ErrNameTooLong) {
		t.Fatalf("3100-byte target: %v", err)
	}
}
