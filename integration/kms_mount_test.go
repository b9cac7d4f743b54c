package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestKMSRemoteMountCopyTree runs the cp -a / rsync -a test of the embedded
// KMS against a mount whose keys come from `kmsfs kms serve`, with a request
// quota (50/s) low enough that the copy is throttled: the client backs off and every
// file still arrives intact. Then disabling the key stops access to files
// whose keys are not cached, and enabling it restores it.
func TestKMSRemoteMountCopyTree(t *testing.T) {
	kmsAWS(t)
	mountRequireFuse(t)
	mountRequireTool(t, "rsync")
	h := kmsStartServer(t, "--rate", "50", "--burst", "10")
	keyID, _ := h.createKey(kmsAliceKey)
	// The mount and init processes take their credentials from the standard
	// AWS chain: the environment.
	kmsSetAWSEnv(t, kmsAliceKey)
	v := mountNewVolume(t, "--kms", h.url, "--kms-region", kmsRegion, "--key", keyID)
	src := filepath.Join(t.TempDir(), "src")
	info := mountMakeTree(t, src, 6)
	want := mountSnapshot(t, src)
	v.mount()
	cpDst, rsDst := v.path("cp"), v.path("rs")
	mountExec(t, "cp", "-a", src, cpDst)
	mountExec(t, "rsync", "-aHX", src+"/", rsDst+"/")
	check := func(stage string) {
		t.Helper()
		mountCheckCopies(t, stage, src, want, cpDst, rsDst)
	}
	check("after copy")
	v.remount()
	check("after remount")
	log := h.auditLog()
	if !strings.Contains(log, `"result":"ThrottlingException"`) {
		t.Errorf("the copy of %d files at --rate 50 was never throttled; the test does not exercise backoff", info.files)
	}
	if n := strings.Count(log, `"operation":"GenerateDataKey","principal":"`+kmsAliceARN); n < info.files {
		t.Errorf("%d GenerateDataKey for %d files in per-object mode", n, info.files)
	}

	// Disable the key: after a remount (empty key cache) reading fails;
	// enable it and the same read works.
	v.unmount()
	if _, err := h.aws(kmsAliceKey, "disable-key", "--key-id", keyID); err != nil {
		t.Fatal(err)
	}
	v.mount()
	probe := filepath.Join(rsDst, "sizes/f0000100")
	if _, err := os.ReadFile(probe); err == nil {
		t.Fatal("read through a disabled key succeeded")
	}
	if _, err := h.aws(kmsAliceKey, "enable-key", "--key-id", keyID); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(probe)
	if err != nil {
		t.Fatalf("read after enabling the key: %v", err)
	}
	if wantB, _ := os.ReadFile(filepath.Join(src, "sizes/f0000100")); string(got) != string(wantB) {
		t.Fatal("content differs after re-enabling the key")
	}
	mountRequireNoPlaintext(t, v.vault)
}
