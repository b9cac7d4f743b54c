package auditlog

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testdata/v1.log was written by the audit writer as it was when it lived in
// kms/server, from fixtureEntries. Logs written then must verify now, and the
// writer must still produce the same bytes: a line's hash covers its bytes,
// so any change in encoding would be a change of format.
const fixturePath = "testdata/v1.log"

// fixtureHead is the hash of the fixture's last line.
const fixtureHead = "59961258ed9bf9fbe344d54fbd8001506ae7fcb8dfd12d497a0808361ddc9a7e"

func fixtureEntries() []*Entry {
	return []*Entry{
		{Time: "2026-12-05T19:40:00.123456789Z", RequestID: "0b6f1c2e-1", Operation: "GenerateDataKey", Principal: "local:uid=0(root)",
			KeyARN: "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab", EncryptionContext: map[string]string{"kmsfs:volume": "v1", "kmsfs:file": "a/b"},
			SourceAddress: "kmsfs mount pid 4242", Result: ResultSuccess},
		{Time: "2026-12-05T19:40:01.5Z", RequestID: "req-2", Operation: "Decrypt", Principal: "arn:aws:iam::111122223333:user/alice", AccessKeyID: "AKIDEXAMPLE",
			KeyARN: "arn:aws:kms:us-east-1:111122223333:key/k2", GrantID: "g-1", EncryptionContext: map[string]string{"b": "ü\x01<&>", "a": "\"q\"\\"},
			SourceAddress: "127.0.0.1:50000", Result: "AccessDeniedException", ErrorMessage: "not allowed\t\u2028"},
		{Time: "2026-12-05T19:40:02Z", RequestID: "req-3", Operation: "ReEncrypt", KeyARN: "arn:src", DestKeyARN: "arn:dst",
			EncryptionContext: map[string]string{"x": "1"}, DestContext: map[string]string{"y": "2"}, SourceAddress: "[::1]:1", Result: ResultSuccess},
		{Time: "2026-12-05T19:40:03Z", RequestID: "req-4", Operation: "ListKeys", SourceAddress: "127.0.0.1:1", Result: ResultSuccess},
	}
}

func TestEarlierLogVerifies(t *testing.T) {
	f, err := os.Open(fixturePath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sum, err := Verify(f)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Entries != len(fixtureEntries()) || sum.Head != fixtureHead {
		t.Fatalf("got %d entries, head %s; want %d, %s", sum.Entries, sum.Head, len(fixtureEntries()), fixtureHead)
	}
}

func TestWriterReproducesEarlierLog(t *testing.T) {
	want, err := os.ReadFile(fixturePath)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path, Options{Fsync: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range fixtureEntries() {
		if err := l.Record(e); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("the writer's bytes differ from %s:\ngot  %s\nwant %s", fixturePath, got, want)
	}
	sum, err := Verify(bytes.NewReader(got))
	if err != nil || sum.Head != fixtureHead {
		t.Fatalf("verify: %+v, %v", sum, err)
	}
}

// TestAppendToEarlierLog: opening a log written earlier resumes its chain.
func TestAppendToEarlierLog(t *testing.T) {
	old, err := os.ReadFile(fixturePath)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "audit.log")
	if err := os.WriteFile(path, old, 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	e := &Entry{Time: "2026-12-05T19:41:00Z", RequestID: "req-5", Operation: "Encrypt", SourceAddress: "127.0.0.1:2", Result: ResultSuccess}
	if err := l.Record(e); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if e.Prev != fixtureHead {
		t.Fatalf("new entry follows %s, want the earlier log's head %s", e.Prev, fixtureHead)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(data, old) {
		t.Fatal("the earlier lines were changed")
	}
	sum, err := Verify(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if sum.Entries != len(fixtureEntries())+1 || sum.Head == fixtureHead {
		t.Fatalf("got %+v after one more entry", sum)
	}
	if !strings.Contains(string(data[len(old):]), `"prev":"`+fixtureHead+`"`) {
		t.Fatalf("appended line does not chain to the earlier log:\n%s", data[len(old):])
	}
}
