package integration

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// mountVolumeKeyID reads the KMS key ID from the volume config.
func mountVolumeKeyID(t *testing.T, v *mountVolume) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(v.vault, ".kmsfs", "volume.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		KMSKeyID string `json:"kms_key_id"`
	}
	if err := json.Unmarshal(b, &cfg); err != nil || cfg.KMSKeyID == "" {
		t.Fatalf("volume.json: no kms_key_id (%v):\n%s", err, b)
	}
	return cfg.KMSKeyID
}

// mountKMSAdmin runs `kmsfs kms ARGS --keystore DIR` on the volume's
// keystore and fails the test if it fails.
func mountKMSAdmin(t *testing.T, v *mountVolume, args ...string) {
	t.Helper()
	v.run(append(append([]string{"kms"}, args...), "--keystore", v.keystore)...)
}

// TestMountKeyDisabled disables the volume's KMS key while it is mounted:
// files whose keys are not cached fail with EACCES or EIO and a log line
// names the file and the KMS error, listing still works, and enabling the
// key again restores access without a remount.
func TestMountKeyDisabled(t *testing.T) {
	v := mountNewVolume(t)
	keyID := mountVolumeKeyID(t, v)
	v.mount("--cache-max-age", "1ms")
	files := map[string][]byte{}
	for i, name := range []string{"k1", "k2", "sub/k3"} {
		if err := os.MkdirAll(filepath.Dir(v.path(name)), 0o755); err != nil {
			t.Fatal(err)
		}
		files[name] = mountPattern(10000+i, byte(i))
		mountWriteFile(t, v.path(name), files[name])
	}
	mountWriteFile(t, v.path("empty"), nil)
	// Remount: nothing of these files is left in the kernel's page cache
	// or in kmsfs's key cache.
	v.remount("--cache-max-age", "1ms")
	mountExpectContent(t, v.path("k1"), files["k1"]) // a key that was cached, for a moment

	// k1's key, the only one cached, entered the cache before `kmsfs kms
	// disable` started, a process that takes far longer than the 1ms max
	// age to run: nothing cached can answer for the disabled key.
	mountKMSAdmin(t, v, "disable", keyID)

	for _, name := range []string{"k2", "sub/k3"} {
		got, err := os.ReadFile(v.path(name))
		if e := mountErrno(err); e != syscall.EACCES && e != syscall.EIO {
			t.Errorf("read %s with the key disabled: %d bytes, %v; want EACCES or EIO", name, len(got), err)
		}
	}
	// Metadata needs no key: ls -l, stat, the empty file.
	if out, err := mountExecOut("ls", "-lR", v.mnt); err != nil || !strings.Contains(out, "k3") {
		t.Errorf("ls -lR with the key disabled: %v\n%s", err, out)
	}
	if fi, err := os.Stat(v.path("k2")); err != nil || fi.Size() != int64(len(files["k2"])) {
		t.Errorf("stat k2 with the key disabled: %v, %v", fi, err)
	}
	if b, err := os.ReadFile(v.path("empty")); err != nil || len(b) != 0 {
		t.Errorf("read of an empty file with the key disabled: %q, %v", b, err)
	}
	log := v.log()
	for _, name := range []string{"k2", "sub/k3"} {
		if !mountLogHas(log, "path=/"+name+" ", "Disabled") {
			t.Errorf("no log line names /%s and the KMS error (DisabledException)", name)
		}
	}

	mountKMSAdmin(t, v, "enable", keyID)
	for name, want := range files {
		got, err := os.ReadFile(v.path(name))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("read %s after enabling the key again: %d bytes, %v", name, len(got), err)
		}
	}
	if t.Failed() {
		t.Logf("log:\n%s", mountTail(v.log(), 30))
	}
}

// mountLogHas reports whether one line of log contains all of parts.
func mountLogHas(log string, parts ...string) bool {
	for _, line := range strings.Split(log, "\n") {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(line, p)
		}
		if ok {
			return true
		}
	}
	return false
}
