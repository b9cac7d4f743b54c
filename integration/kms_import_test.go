package integration

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestKMSImportedKeyMaterialGuardsAVolume is bring-your-own-key end to end,
// with independent tools on the customer's side: awscli creates an EXTERNAL
// key on `kmsfs kms serve` and fetches the wrapping key, openssl encrypts
// 32 bytes of material to it (RSA-OAEP-SHA-256), awscli imports them. A
// kmsfs volume on that key works; deleting the material makes its files
// unreadable (EACCES) on the running mount; other material is refused; the
// same material, imported again with `kmsfs kms import-key-material`
// through the server, makes them readable again.
func TestKMSImportedKeyMaterialGuardsAVolume(t *testing.T) {
	kmsAWS(t)
	mountRequireFuse(t)
	mountRequireTool(t, "openssl")
	h := kmsStartServer(t)
	var created struct {
		KeyMetadata struct{ KeyId, Arn, KeyState, Origin string }
	}
	h.awsJSON(kmsAliceKey, &created, "create-key", "--origin", "EXTERNAL", "--description", t.Name())
	key := created.KeyMetadata.KeyId
	if created.KeyMetadata.KeyState != "PendingImport" || created.KeyMetadata.Origin != "EXTERNAL" {
		t.Fatalf("new EXTERNAL key: %+v", created.KeyMetadata)
	}

	material := filepath.Join(h.dir, "material.bin")
	raw := make([]byte, 32)
	rand.Read(raw)
	if err := os.WriteFile(material, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	// wrap runs the customer's side of an import: parameters from awscli,
	// encryption with openssl; it returns the token and encrypted files.
	wrap := func(materialFile string) (token, encrypted string) {
		t.Helper()
		var params struct{ KeyId, ImportToken, PublicKey string }
		h.awsJSON(kmsAliceKey, &params, "get-parameters-for-import", "--key-id", key,
			"--wrapping-algorithm", "RSAES_OAEP_SHA_256", "--wrapping-key-spec", "RSA_2048")
		tok, err := base64.StdEncoding.DecodeString(params.ImportToken)
		if err != nil {
			t.Fatalf("ImportToken: %v", err)
		}
		pub, err := base64.StdEncoding.DecodeString(params.PublicKey)
		if err != nil {
			t.Fatalf("PublicKey: %v", err)
		}
		token, encrypted = filepath.Join(h.dir, "token.bin"), filepath.Join(h.dir, "encrypted.bin")
		pubFile := filepath.Join(h.dir, "wrapping.der")
		if err := os.WriteFile(token, tok, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(pubFile, pub, 0o600); err != nil {
			t.Fatal(err)
		}
		mountExec(t, "openssl", "pkeyutl", "-encrypt", "-pubin", "-keyform", "DER", "-inkey", pubFile,
			"-in", materialFile, "-out", encrypted,
			"-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256", "-pkeyopt", "rsa_mgf1_md:sha256")
		return "token.bin", "encrypted.bin"
	}
	token, encrypted := wrap(material)
	if _, err := h.aws(kmsAliceKey, "import-key-material", "--key-id", key, "--import-token", "fileb://"+token,
		"--encrypted-key-material", "fileb://"+encrypted, "--expiration-model", "KEY_MATERIAL_DOES_NOT_EXPIRE"); err != nil {
		t.Fatal(err)
	}
	var described struct {
		KeyMetadata struct{ KeyState, ExpirationModel string }
	}
	h.awsJSON(kmsAliceKey, &described, "describe-key", "--key-id", key)
	if described.KeyMetadata.KeyState != "Enabled" || described.KeyMetadata.ExpirationModel != "KEY_MATERIAL_DOES_NOT_EXPIRE" {
		t.Fatalf("after import: %+v", described.KeyMetadata)
	}

	kmsSetAWSEnv(t, kmsAliceKey)
	v := mountNewVolume(t, "--kms", h.url, "--kms-region", kmsRegion, "--key", key)
	v.mount()
	content := "under a key whose material the customer holds"
	if err := os.WriteFile(v.path("byok.txt"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	v.remount() // a fresh key cache: every read below asks the KMS

	if _, err := h.aws(kmsAliceKey, "delete-imported-key-material", "--key-id", key); err != nil {
		t.Fatal(err)
	}
	if _, err := os.ReadFile(v.path("byok.txt")); !errors.Is(err, syscall.EACCES) {
		t.Fatalf("read with the key material deleted: %v, want EACCES", err)
	}
	if _, err := os.Stat(v.path("byok.txt")); err != nil {
		t.Fatalf("stat needs no key, yet: %v", err)
	}

	other := filepath.Join(h.dir, "other.bin")
	rand.Read(raw)
	if err := os.WriteFile(other, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	token, encrypted = wrap(other)
	h.awsFails(kmsAliceKey, "IncorrectKeyMaterialException", "import-key-material", "--key-id", key,
		"--import-token", "fileb://"+token, "--encrypted-key-material", "fileb://"+encrypted,
		"--expiration-model", "KEY_MATERIAL_DOES_NOT_EXPIRE")

	if out, err := h.kmsfs(kmsAliceKey, "kms", "import-key-material", "--kms", h.url, "--kms-region", kmsRegion, key, material); err != nil {
		t.Fatalf("kmsfs kms import-key-material: %v\n%s", err, out)
	}
	got, err := os.ReadFile(v.path("byok.txt"))
	if err != nil || string(got) != content {
		t.Fatalf("read after importing the same material again: %q, %v", got, err)
	}
	log := h.auditLog()
	for _, op := range []string{"GetParametersForImport", "ImportKeyMaterial", "DeleteImportedKeyMaterial"} {
		if !strings.Contains(log, `"operation":"`+op+`","principal":"`+kmsAliceARN) {
			t.Errorf("%s is not audited with its principal", op)
		}
	}
	mountRequireNoPlaintext(t, v.vault, content)
}
