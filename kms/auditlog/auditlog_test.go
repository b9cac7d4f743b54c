package auditlog

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
)

func writeEntries(t *testing.T, path string, n int) {
	t.Helper()
	l, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := l.Record(&Entry{Time: "t", RequestID: fmt.Sprint(i), Operation: "Decrypt", SourceAddress: "127.0.0.1:1", Result: ResultSuccess}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestLogChainsAcrossRestarts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	writeEntries(t, path, 50)
	writeEntries(t, path, 30) // reopened: the chain continues from the last line
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum, err := Verify(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if sum.Entries != 80 {
		t.Fatalf("%d entries, want 80", sum.Entries)
	}
}

func TestVerifyDetectsTampering(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	writeEntries(t, path, 5)
	data, _ := os.ReadFile(path)
	lines := strings.SplitAfter(string(data), "\n")
	lines = lines[:len(lines)-1]
	check := func(name string, ls []string, want string) {
		t.Helper()
		_, err := Verify(strings.NewReader(strings.Join(ls, "")))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want %q", name, err, want)
		}
	}
	edited := append([]string(nil), lines...)
	edited[2] = strings.Replace(edited[2], `"Decrypt"`, `"Encrypt"`, 1)
	check("edited", edited, "line 3: hash mismatch")
	check("removed", append(append([]string(nil), lines[:1]...), lines[2:]...), "line 2: chain broken")
	check("first removed", lines[1:], "line 1: chain broken")
	check("hash dropped", append([]string{`{"time":"t"}` + "\n"}, lines[1:]...), "line 1: no hash field")
	rehashed := append([]string(nil), lines...)
	// An editor who recomputes the edited line's own hash still breaks the chain at the next line.
	body, _, _ := splitLine([]byte(strings.TrimSuffix(edited[2], "\n")))
	rehashed[2] = string(body[:len(body)-1]) + `,"hash":"` + sha256Hex(body) + `"}` + "\n"
	check("edited and rehashed", rehashed, "line 4: chain broken")
}

func TestOpenRefusesPartialLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	writeEntries(t, path, 2)
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"time":"t","req`)
	f.Close()
	if _, err := Open(path, Options{}); err == nil || !strings.Contains(err.Error(), "partial line") {
		t.Fatalf("got %v", err)
	}
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestEntryJSONMatchesEncodingJSON: the hand-written encoder produces
// what encoding/json does (so any JSON tool reads the log the same way).
func TestEntryJSONMatchesEncodingJSON(t *testing.T) {
	for _, e := range []Entry{
		{Time: "t", RequestID: "r", Operation: "Decrypt", SourceAddress: "a", Result: "Success", Prev: genesisHash},
		{Time: "t", RequestID: "r", Operation: "ReEncrypt", Principal: "p\"\\", AccessKeyID: "k\n", KeyARN: "arn<&>", DestKeyARN: "d",
			GrantID: "g", EncryptionContext: map[string]string{"b": "2", "a": "ü\x01", "c": ""}, DestContext: map[string]string{"x": "y"},
			SourceAddress: "s", Result: "AccessDeniedException", ErrorMessage: "m\t\u2028", Prev: "p"},
		{Time: "t", RequestID: "r", Operation: "Decrypt", SourceAddress: "a", Result: "Success", Speculative: true, Prev: genesisHash},
	} {
		want, err := json.Marshal(&e)
		if err != nil {
			t.Fatal(err)
		}
		var gotV, wantV any
		got := e.appendJSON(nil)
		if err := json.Unmarshal(got, &gotV); err != nil {
			t.Fatalf("invalid JSON %s: %v", got, err)
		}
		json.Unmarshal(want, &wantV)
		if !reflect.DeepEqual(gotV, wantV) {
			t.Errorf("got  %s\nwant %s", got, want)
		}
	}
}
