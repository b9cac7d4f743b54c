package integration

import (
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// With --cache-grace, a mount whose KMS becomes unreachable keeps reading
// the files whose keys it had cached, past the keys' max age, while new
// files fail with a clear error instead of hanging or writing garbage.
func TestMountGraceWhenKMSUnreachable(t *testing.T) {
	kmsAWS(t)
	mountRequireFuse(t)
	mountRequireRoot(t, "drop the page cache")
	h := kmsStartServer(t)
	keyID, _ := h.createKey(kmsAliceKey)
	kmsSetAWSEnv(t, kmsAliceKey)
	v := mountNewVolume(t, "--kms", h.url, "--kms-region", kmsRegion, "--key", keyID)
	v.mount()
	for _, name := range []string{"cached", "uncached"} {
		if err := os.WriteFile(v.path(name), []byte("content of "+name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	v.remount("--cache-max-age", "1s", "--cache-grace", "1h")
	if b, err := os.ReadFile(v.path("cached")); err != nil || string(b) != "content of cached" {
		t.Fatalf("read before the outage: %q, %v", b, err)
	}
	h.stop()
	// Read the cached file from kmsfs (not the page cache) until its key,
	// past its max age, is served within grace: every read must succeed,
	// and the cache must say it served an expired key.
	mountWaitFor(t, 10*time.Second, "a read served from an expired key within grace", func() bool {
		if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(v.path("cached")); err != nil || string(b) != "content of cached" {
			t.Fatalf("read of a cached file during the outage, within grace: %q, %v", b, err)
		}
		return v.keyCacheStats().GraceHits > 0
	})
	if _, err := os.ReadFile(v.path("uncached")); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read of a file whose key was never cached: %v, want EIO", err)
	}
	if err := os.WriteFile(v.path("new"), []byte("x"), 0o644); !errors.Is(err, syscall.EIO) {
		t.Fatalf("new file during the outage: %v, want EIO", err)
	}
	if log := v.log(); !strings.Contains(log, "KMSUnavailable") {
		t.Errorf("the mount log does not name the unreachable KMS:\n%s", mountTail(log, 20))
	}
}
