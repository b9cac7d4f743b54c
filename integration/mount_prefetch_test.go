package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestMountKeyReadAhead: after a remount, reading a directory's files in
// order (as diff -r and rsync --checksum do) with a 10 ms KMS: the keys of
// the files to come are unwrapped ahead of the reader, every file's key is
// asked for once, the speculative Decrypts are counted in `kmsfs stats` and
// marked in the audit log, and the log still verifies.
func TestMountKeyReadAhead(t *testing.T) {
	v := mountNewVolume(t)
	audit := filepath.Join(t.TempDir(), "kms-audit.log")
	v.mount("--audit-log", audit)
	const files = 60
	if err := os.Mkdir(v.path("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range files {
		if err := os.WriteFile(v.path(fmt.Sprintf("d/f%03d", i)), []byte(fmt.Sprintf("read ahead %d", i)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	v.remount("--audit-log", audit, "--kms-latency", "10ms")
	for i := range files {
		got, err := os.ReadFile(v.path(fmt.Sprintf("d/f%03d", i)))
		if err != nil || string(got) != fmt.Sprintf("read ahead %d", i) {
			t.Fatalf("f%03d: %q, %v", i, got, err)
		}
	}
	s := v.keyCacheStats()
	if s.Prefetches == 0 || s.PrefetchUsed < files/2 {
		t.Errorf("key cache stats after reading %d files in order at 10 ms: %+v; want most keys prefetched and used", files, s)
	}
	if n := s.KMSCallCount("Decrypt"); n > files*11/10 {
		t.Errorf("%d KMS Decrypts for %d files read", n, files)
	}
	if out := v.run("stats", v.mnt); !strings.Contains(out, fmt.Sprintf("key read-ahead  %d speculative Decrypts, %d used", s.Prefetches, s.PrefetchUsed)) {
		t.Errorf("kmsfs stats shows no key read-ahead line matching %+v:\n%s", s, out)
	}
	v.unmount()
	data, err := os.ReadFile(audit)
	if err != nil {
		t.Fatal(err)
	}
	log := string(data)
	lines := strings.Split(log, "\n")
	var speculative, decrypts int
	for _, l := range lines {
		if strings.Contains(l, `"operation":"Decrypt"`) && strings.Contains(l, `"kmsfs:file"`) {
			decrypts++
			if strings.Contains(l, `"speculative":true`) {
				speculative++
			}
		}
	}
	if uint64(speculative) != s.Prefetches || decrypts < files || decrypts > files*11/10 {
		t.Errorf("audit log: %d file key Decrypts, %d marked speculative; stats counted %d speculative:\n%s", decrypts, speculative, s.Prefetches, mountTail(log, 3))
	}
	v.run("kms", "audit", "verify", audit)
}
