package integration

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/kmsfs/kmsfs/kms"
	"github.com/kmsfs/kmsfs/kms/awskms"
)

// cksNewToken initialises a SoftHSM2 token in a fresh directory, points this
// process (and the kmsfs processes it starts) at it, and returns the
// token's serial number.
func cksNewToken(t *testing.T, label, pin string) string {
	t.Helper()
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
	t.Setenv("SOFTHSM2_CONF", conf)
	cksAddToken(t, label, pin)
	return cksSerial(t, label)
}

// cksAddToken initialises one more token in the current SoftHSM2 directory.
func cksAddToken(t *testing.T, label, pin string) {
	t.Helper()
	if out, err := exec.Command("softhsm2-util", "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", "so-"+pin).CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util --init-token: %v\n%s", err, out)
	}
}

// cksSerial reads a token's serial number from softhsm2-util --show-slots.
func cksSerial(t *testing.T, label string) string {
	t.Helper()
	out, err := exec.Command("softhsm2-util", "--show-slots").Output()
	if err != nil {
		t.Fatal(err)
	}
	serial := ""
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		k, v, _ := strings.Cut(strings.TrimSpace(sc.Text()), ":")
		switch k {
		case "Serial number":
			serial = strings.TrimSpace(v)
		case "Label":
			if strings.TrimSpace(v) == label && serial != "" {
				return serial
			}
		}
	}
	t.Fatalf("softhsm2-util --show-slots does not list token %s:\n%s", label, out)
	return ""
}

type cksStore struct {
	CustomKeyStoreId, CustomKeyStoreName, CloudHsmClusterId, TrustAnchorCertificate string
	ConnectionState, ConnectionErrorCode, CustomKeyStoreType                        string
}

func (h *kmsHarness) cksDescribe(akid, id string) cksStore {
	h.t.Helper()
	var out struct{ CustomKeyStores []cksStore }
	h.awsJSON(akid, &out, "describe-custom-key-stores", "--custom-key-store-id", id)
	if len(out.CustomKeyStores) != 1 {
		h.t.Fatalf("describe-custom-key-stores %s: %+v", id, out)
	}
	return out.CustomKeyStores[0]
}

// TestKMSCustomKeyStoreServeAndMount: a custom key store on a SoftHSM2
// token behind `kmsfs kms serve`, driven by awscli and the Go SDK:
// AWS's parameters and connection states, a key generated in the token
// (no rotation), a kmsfs mount whose volume key is that key (files written,
// remounted cold, read back), reads refused with EACCES while the store is
// disconnected and working again once it is reconnected, every operation in
// the audit log and the PIN nowhere in it.
func TestKMSCustomKeyStoreServeAndMount(t *testing.T) {
	kmsAWS(t)
	mountRequireFuse(t)
	// awscli checks AWS's lengths: CloudHsmClusterId 19 to 24 characters,
	// KeyStorePassword 7 to 32.
	const label, pin = "kmsfs-cks-integration", "cks-pin-7531"
	serial := cksNewToken(t, label, pin)
	// SoftHSM2 reads its token directory when the server initialises it:
	// the spare token for the deletion check is made now.
	cksAddToken(t, "kmsfs-cks-integration-2", pin)
	h := kmsStartServer(t, "--pkcs11-module", softHSMModule)
	anchor := "pkcs11:token=" + label + ";serial=" + serial

	h.awsFails(kmsAliceKey, "IncorrectTrustAnchorException", "create-custom-key-store", "--custom-key-store-name", "wrong",
		"--cloud-hsm-cluster-id", label, "--trust-anchor-certificate", "pkcs11:serial=0000000000000000", "--key-store-password", pin)
	h.awsFails(kmsAliceKey, "CloudHsmClusterNotFoundException", "create-custom-key-store", "--custom-key-store-name", "missing",
		"--cloud-hsm-cluster-id", "kmsfs-cks-no-such-tok", "--trust-anchor-certificate", "pkcs11:serial="+serial, "--key-store-password", pin)
	var created struct{ CustomKeyStoreId string }
	h.awsJSON(kmsAliceKey, &created, "create-custom-key-store", "--custom-key-store-name", "hsm",
		"--cloud-hsm-cluster-id", label, "--trust-anchor-certificate", anchor, "--key-store-password", pin)
	id := created.CustomKeyStoreId
	if d := h.cksDescribe(kmsAliceKey, id); d.ConnectionState != "DISCONNECTED" || d.CloudHsmClusterId != label || d.TrustAnchorCertificate != anchor || d.CustomKeyStoreType != "AWS_CLOUDHSM" {
		t.Fatalf("new store: %+v", d)
	}
	h.awsFails(kmsAliceKey, "CustomKeyStoreNameInUseException", "create-custom-key-store", "--custom-key-store-name", "hsm",
		"--cloud-hsm-cluster-id", "kmsfs-cks-no-such-tok", "--trust-anchor-certificate", "pkcs11:serial="+serial, "--key-store-password", pin)
	h.awsFails(kmsMalloryKey, "CustomKeyStoreNotFoundException", "connect-custom-key-store", "--custom-key-store-id", id)
	h.awsFails(kmsAliceKey, "CustomKeyStoreInvalidStateException", "create-key", "--origin", "AWS_CLOUDHSM", "--custom-key-store-id", id)
	h.awsFails(kmsAliceKey, "CustomKeyStoreInvalidStateException", "disconnect-custom-key-store", "--custom-key-store-id", id)

	if _, err := h.aws(kmsAliceKey, "connect-custom-key-store", "--custom-key-store-id", id); err != nil {
		t.Fatal(err)
	}
	if d := h.cksDescribe(kmsAliceKey, id); d.ConnectionState != "CONNECTED" {
		t.Fatalf("after connect: %+v", d)
	}
	var key struct {
		KeyMetadata struct {
			KeyId, Arn, Origin, CustomKeyStoreId, CloudHsmClusterId, KeyState string
		}
	}
	h.awsJSON(kmsAliceKey, &key, "create-key", "--origin", "AWS_CLOUDHSM", "--custom-key-store-id", id, "--description", "volume key in the token")
	md := key.KeyMetadata
	if md.Origin != "AWS_CLOUDHSM" || md.CustomKeyStoreId != id || md.CloudHsmClusterId != label || md.KeyState != "Enabled" {
		t.Fatalf("create-key in the store: %+v", md)
	}
	h.awsFails(kmsAliceKey, "UnsupportedOperationException", "enable-key-rotation", "--key-id", md.KeyId)
	h.awsFails(kmsAliceKey, "CustomKeyStoreInvalidStateException", "delete-custom-key-store", "--custom-key-store-id", id)
	h.awsFails(kmsAliceKey, "CustomKeyStoreInvalidStateException", "update-custom-key-store", "--custom-key-store-id", id, "--key-store-password", "another-pin")

	// awscli round trip: encrypt in the token, decrypt in the token.
	pt := filepath.Join(h.dir, "pt")
	if err := os.WriteFile(pt, []byte("sealed inside the token"), 0o600); err != nil {
		t.Fatal(err)
	}
	var enc struct{ CiphertextBlob, KeyId string }
	h.awsJSON(kmsAliceKey, &enc, "encrypt", "--key-id", md.KeyId, "--plaintext", "fileb://"+pt, "--encryption-context", "purpose=test")
	ct := filepath.Join(h.dir, "ct")
	if err := os.WriteFile(ct, kmsB64(t, enc.CiphertextBlob), 0o600); err != nil {
		t.Fatal(err)
	}
	var dec struct{ Plaintext, KeyId string }
	h.awsJSON(kmsAliceKey, &dec, "decrypt", "--ciphertext-blob", "fileb://"+ct, "--encryption-context", "purpose=test")
	if string(kmsB64(t, dec.Plaintext)) != "sealed inside the token" || dec.KeyId != md.Arn {
		t.Fatalf("decrypt: %q under %s", kmsB64(t, dec.Plaintext), dec.KeyId)
	}
	h.awsFails(kmsAliceKey, "InvalidCiphertextException", "decrypt", "--ciphertext-blob", "fileb://"+ct, "--encryption-context", "purpose=other")

	// The Go SDK: data keys and ReEncrypt.
	ctx := context.Background()
	sdk := h.client(kmsAliceKey, awskms.Options{MaxAttempts: 1})
	ec := kms.EncryptionContext{"volume": "sdk"}
	dk, err := sdk.GenerateDataKey(ctx, md.KeyId, 32, ec)
	if err != nil {
		t.Fatal(err)
	}
	if got, _, err := sdk.Decrypt(ctx, "", dk.CiphertextBlob, ec); err != nil || !bytes.Equal(got, dk.Plaintext) {
		t.Fatalf("SDK Decrypt of a data key: %v", err)
	}
	if _, _, _, err := sdk.ReEncrypt(ctx, dk.CiphertextBlob, ec, md.KeyId, kms.EncryptionContext{"volume": "other"}); err != nil {
		t.Fatalf("SDK ReEncrypt within the store: %v", err)
	}
	if err := sdk.RotateKeyOnDemand(ctx, md.KeyId); kms.Code(err) != kms.CodeUnsupportedOperation {
		t.Fatalf("SDK RotateKeyOnDemand of a key in the store: %v, want %s", err, kms.CodeUnsupportedOperation)
	}
	if stores, err := sdk.DescribeCustomKeyStores(ctx, "", "", ""); err != nil || len(stores) != 1 || stores[0].ConnectionState != kms.ConnectionConnected {
		t.Fatalf("SDK DescribeCustomKeyStores: %+v, %v", stores, err)
	}

	// A volume whose key is in the token.
	kmsSetAWSEnv(t, kmsAliceKey)
	v := mountNewVolume(t, "--kms", h.url, "--kms-region", kmsRegion, "--key", md.KeyId)
	src := filepath.Join(t.TempDir(), "src")
	mountMakeTree(t, src, 11)
	want := mountSnapshot(t, src)
	v.mount()
	dst := v.path("cp")
	mountExec(t, "cp", "-a", src, dst)
	v.remount()
	mountCheckCopies(t, "volume key in a custom key store, remounted", src, want, dst)
	probe := filepath.Join(dst, "sizes/f0000100")
	wantProbe, err := os.ReadFile(filepath.Join(src, "sizes/f0000100"))
	if err != nil {
		t.Fatal(err)
	}

	// Disconnected: after a remount (no key cached) the file's key cannot
	// be unwrapped; the kernel gets EACCES, as for a disabled key.
	v.unmount()
	if _, err := h.aws(kmsAliceKey, "disconnect-custom-key-store", "--custom-key-store-id", id); err != nil {
		t.Fatal(err)
	}
	var desc struct{ KeyMetadata struct{ KeyState string } }
	h.awsJSON(kmsAliceKey, &desc, "describe-key", "--key-id", md.KeyId)
	if desc.KeyMetadata.KeyState != "Unavailable" {
		t.Fatalf("key in a disconnected store is %s, want Unavailable", desc.KeyMetadata.KeyState)
	}
	h.awsFails(kmsAliceKey, "KMSInvalidStateException", "decrypt", "--ciphertext-blob", "fileb://"+ct, "--encryption-context", "purpose=test")
	h.awsFails(kmsAliceKey, "CustomKeyStoreHasCMKsException", "delete-custom-key-store", "--custom-key-store-id", id)
	v.mount()
	if _, err := os.ReadFile(probe); mountErrno(err) != syscall.EACCES {
		t.Fatalf("read while the store is disconnected: %v, want EACCES", err)
	}

	// A wrong PIN: FAILED with INVALID_CREDENTIALS, reads still refused.
	if _, err := h.aws(kmsAliceKey, "update-custom-key-store", "--custom-key-store-id", id, "--key-store-password", "not-the-pin", "--new-custom-key-store-name", "hsm-renamed"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.aws(kmsAliceKey, "connect-custom-key-store", "--custom-key-store-id", id); err != nil {
		t.Fatal(err)
	}
	if d := h.cksDescribe(kmsAliceKey, id); d.ConnectionState != "FAILED" || d.ConnectionErrorCode != "INVALID_CREDENTIALS" || d.CustomKeyStoreName != "hsm-renamed" {
		t.Fatalf("connect with a wrong PIN: %+v", d)
	}
	if _, err := os.ReadFile(probe); mountErrno(err) != syscall.EACCES {
		t.Fatalf("read while the store is FAILED: %v, want EACCES", err)
	}
	h.awsFails(kmsAliceKey, "CustomKeyStoreInvalidStateException", "connect-custom-key-store", "--custom-key-store-id", id)

	// Reconnected with the right PIN: the same mount reads again.
	for _, args := range [][]string{
		{"disconnect-custom-key-store", "--custom-key-store-id", id},
		{"update-custom-key-store", "--custom-key-store-id", id, "--key-store-password", pin},
		{"connect-custom-key-store", "--custom-key-store-id", id},
	} {
		if _, err := h.aws(kmsAliceKey, args...); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(probe)
	if err != nil {
		t.Fatalf("read after reconnecting: %v", err)
	}
	if !bytes.Equal(got, wantProbe) {
		t.Fatal("content differs after reconnecting")
	}
	if err := os.WriteFile(v.path("after-reconnect"), []byte("new file, new data key"), 0o644); err != nil {
		t.Fatalf("new file after reconnecting: %v", err)
	}
	v.unmount()
	mountRequireNoPlaintext(t, v.vault)

	// A second store on another token, never given keys, is deleted.
	var second struct{ CustomKeyStoreId string }
	h.awsJSON(kmsAliceKey, &second, "create-custom-key-store", "--custom-key-store-name", "spare",
		"--cloud-hsm-cluster-id", "kmsfs-cks-integration-2", "--trust-anchor-certificate", "pkcs11:serial="+cksSerial(t, "kmsfs-cks-integration-2"), "--key-store-password", pin)
	if _, err := h.aws(kmsAliceKey, "delete-custom-key-store", "--custom-key-store-id", second.CustomKeyStoreId); err != nil {
		t.Fatal(err)
	}
	h.awsFails(kmsAliceKey, "CustomKeyStoreNotFoundException", "describe-custom-key-stores", "--custom-key-store-id", second.CustomKeyStoreId)

	log := h.auditLog()
	if strings.Contains(log, pin) {
		t.Fatal("the audit log holds the PIN")
	}
	for _, op := range []string{"CreateCustomKeyStore", "ConnectCustomKeyStore", "DisconnectCustomKeyStore", "DescribeCustomKeyStores", "UpdateCustomKeyStore", "DeleteCustomKeyStore"} {
		if !strings.Contains(log, `"operation":"`+op+`","principal":"`+kmsAliceARN) {
			t.Errorf("no %s by alice in the audit log", op)
		}
	}
	if !strings.Contains(log, `"customKeyStoreId":"`+id+`"`) {
		t.Error("the audit log does not name the custom key store")
	}
	if !strings.Contains(log, `"operation":"Decrypt","principal":"`+kmsAliceARN+`","accessKeyId":"`+kmsAliceKey+`","keyArn":"`+md.Arn+`"`) {
		t.Error("the mount's Decrypt calls under the key in the store are not audited")
	}
}

// TestReadmeCustomKeyStore runs the README's custom key store example as it
// is written (on a SoftHSM2 token labelled as in the README), the store ID
// the first line prints standing in for CKS-ID: the store connects, a key
// is created in it, a volume is made on that key, and once the store is
// disconnected a second volume on the key cannot be made.
func TestReadmeCustomKeyStore(t *testing.T) {
	cksNewToken(t, "my-token", "readme-pin-1357")
	sh := newReadmeShell(t)
	sh.env = append(sh.env, "SOFTHSM2_CONF="+os.Getenv("SOFTHSM2_CONF"))
	if err := os.WriteFile(filepath.Join(sh.work, "pin"), []byte("readme-pin-1357\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	id := ""
	for _, line := range readmeBlock(t, "## Keys that never leave an HSM (custom key store)") {
		if kv, ok := strings.CutPrefix(line, "export "); ok {
			sh.env = append(sh.env, strings.Fields(kv)...)
			continue
		}
		if strings.Contains(line, "CKS-ID") && !strings.HasPrefix(line, "#") {
			if id == "" {
				t.Fatalf("README line %q comes before the store is created", line)
			}
			line = strings.ReplaceAll(line, "CKS-ID", id)
		}
		out := sh.run(line)
		switch {
		case strings.Contains(line, "create-custom-key-store"):
			// The ID is the last line (a warning about the root key file
			// may come first: sh.run merges stderr).
			lines := strings.Split(strings.TrimSpace(out), "\n")
			id = lines[len(lines)-1]
			if !strings.HasPrefix(id, "cks-") {
				t.Fatalf("create-custom-key-store printed %q", out)
			}
		case strings.Contains(line, "connect-custom-key-store") && !strings.Contains(line, "disconnect"):
			if !strings.Contains(out, "CONNECTED") {
				t.Fatalf("connect-custom-key-store: %s", out)
			}
		}
	}
	if id == "" {
		t.Fatal("the README example creates no custom key store")
	}
	if _, err := os.Stat(filepath.Join(sh.path("/data/vault"), ".kmsfs", "volume.json")); err != nil {
		t.Fatalf("the README's volume on the key in the store: %v", err)
	}
	cmd := exec.Command("bash", "-euc", "kmsfs init --key alias/hsm "+sh.path("/data/vault2"))
	cmd.Dir, cmd.Env = sh.work, append(append([]string{}, sh.env...), "KMSFS_KEYSTORE="+sh.path("/srv/kms"))
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "KMSInvalidStateException") {
		t.Fatalf("init on a key of a disconnected store: %v\n%s", err, out)
	}
}

// TestKMSCustomKeyStoreEmbeddedMount: the same with the embedded keystore
// in the mount process, and the store disconnected and reconnected by
// `kmsfs kms` in other processes while the volume is mounted: the mount
// follows the connection state recorded in the keystore (EACCES while
// disconnected, for files whose keys it has not cached), with no restart.
func TestKMSCustomKeyStoreEmbeddedMount(t *testing.T) {
	mountRequireFuse(t)
	const label, pin = "kmsfs-cks-embedded", "cks-pin-2468"
	cksNewToken(t, label, pin)
	t.Setenv("KMSFS_PKCS11_MODULE", softHSMModule) // every kmsfs process below
	dir := t.TempDir()
	ks := filepath.Join(dir, "keystore")
	pinFile := filepath.Join(dir, "pin")
	if err := os.WriteFile(pinFile, []byte(pin+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	admin := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(kmsfsBinary(), append(append([]string{"kms"}, args...), "--keystore", ks)...).Output()
		if err != nil {
			var stderr []byte
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = ee.Stderr
			}
			t.Fatalf("kmsfs kms %s: %v\n%s", strings.Join(args, " "), err, stderr)
		}
		return strings.TrimSpace(string(out))
	}
	id := admin("create-custom-key-store", "--name", "hsm", "--token", label, "--token-pin-file", pinFile)
	if !strings.Contains(admin("connect-custom-key-store", id), "CONNECTED") {
		t.Fatal("the store did not connect")
	}
	admin("create-key", "--origin", "AWS_CLOUDHSM", "--custom-key-store-id", id, "--alias", "alias/hsm")

	v := mountNewVolume(t, "--keystore", ks, "--key", "alias/hsm")
	v.mount("--keystore", ks)
	want := map[string][]byte{}
	for i := range 12 {
		name := filepath.Join("d", strings.Repeat("f", i+1))
		want[name] = []byte(strings.Repeat(mountMarker+" "+name+"\n", 50*(i+1)))
	}
	// A file in a directory nobody reads: the mount reads the keys of a
	// directory's files ahead of the reader, so "d/ff" is cached once
	// "d/f" is read.
	want["e/cold"] = []byte(mountMarker + " e/cold\n")
	for _, d := range []string{"d", "e"} {
		if err := os.Mkdir(v.path(d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, b := range want {
		if err := os.WriteFile(v.path(name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	v.remount("--keystore", ks)
	read := func(name string) ([]byte, error) { return os.ReadFile(v.path(name)) }
	if got, err := read("d/f"); err != nil || !bytes.Equal(got, want["d/f"]) {
		t.Fatalf("read back after a remount: %v", err)
	}

	admin("disconnect-custom-key-store", id)
	if _, err := read("e/cold"); mountErrno(err) != syscall.EACCES {
		t.Fatalf("read of an uncached file while the store is disconnected: %v, want EACCES", err)
	}
	if err := os.WriteFile(v.path("d/new"), []byte("x"), 0o644); mountErrno(err) != syscall.EACCES {
		t.Fatalf("new file while the store is disconnected: %v, want EACCES", err)
	}
	admin("connect-custom-key-store", id)
	for name, b := range want {
		if got, err := read(name); err != nil || !bytes.Equal(got, b) {
			t.Fatalf("%s after reconnecting: %v", name, err)
		}
	}
	if err := os.WriteFile(v.path("d/new"), []byte("after reconnecting"), 0o644); err != nil {
		t.Fatalf("new file after reconnecting: %v", err)
	}
	v.unmount()
	mountRequireNoPlaintext(t, v.vault)
}
