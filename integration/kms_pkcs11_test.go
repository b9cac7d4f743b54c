package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const softHSMModule = "/usr/lib/softhsm/libsofthsm2.so"

// TestMountOnAKeystoreWhoseKEKIsInAToken: the embedded KMS's key-encryption
// key is a non-extractable AES key in a SoftHSM2 token (the CloudHSM
// custom-key-store idea, on a software HSM). init, mount, cp -a, remount
// and read back work with the token; without it (or with a wrong PIN) the
// mount refuses to start and says why; no root key file is ever written.
func TestMountOnAKeystoreWhoseKEKIsInAToken(t *testing.T) {
	mountRequireFuse(t)
	mountRequireFile(t, softHSMModule, "softhsm2")
	mountRequireTool(t, "softhsm2-util")
	dir := t.TempDir()
	conf := filepath.Join(dir, "softhsm2.conf")
	if err := os.Mkdir(filepath.Join(dir, "tokens"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+filepath.Join(dir, "tokens")+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", conf) // the kmsfs processes inherit it
	if out, err := exec.Command("softhsm2-util", "--init-token", "--free", "--label", "kmsfs-it", "--pin", "7531", "--so-pin", "8642").CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util: %v\n%s", err, out)
	}
	pinFile := filepath.Join(dir, "pin")
	if err := os.WriteFile(pinFile, []byte("7531\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	token := []string{"--pkcs11-module", softHSMModule, "--pkcs11-token", "kmsfs-it", "--pkcs11-pin-file", pinFile}

	v := mountNewVolume(t, token...)
	src := filepath.Join(t.TempDir(), "src")
	mountMakeTree(t, src, 3)
	want := mountSnapshot(t, src)
	v.mount(token...)
	dst := v.path("cp")
	mountExec(t, "cp", "-a", src, dst)
	v.remount(token...)
	mountCheckCopies(t, "keystore KEK in a token", src, want, dst)
	v.unmount()

	if _, err := os.Stat(filepath.Join(v.keystore, "root.key")); err == nil {
		t.Fatal("a token-protected keystore has a root key file")
	}
	if out, err := v.tryRun("mount", v.vault, v.mnt); err == nil || !strings.Contains(out, `PKCS#11 token "kmsfs-it"`) {
		t.Fatalf("mount without the token: %v\n%s", err, out)
	}
	if err := os.WriteFile(pinFile, []byte("0000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := v.tryRun(append(append([]string{"mount"}, token...), v.vault, v.mnt)...); err == nil || !strings.Contains(out, "login") {
		t.Fatalf("mount with a wrong PIN: %v\n%s", err, out)
	}
	if err := os.WriteFile(pinFile, []byte("7531\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out := v.run(append([]string{"kms", "list-keys"}, token...)...); !strings.Contains(out, "Enabled") {
		t.Fatalf("kms list-keys on the token-protected keystore:\n%s", out)
	}
	mountRequireNoPlaintext(t, v.vault)
}
