package integration

import (
	"bytes"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Asymmetric and HMAC keys on a real `kmsfs kms serve`, checked from
// outside: awscli makes the keys and signatures, openssl (which knows
// nothing of kmsfs) verifies them against the public key from
// get-public-key, and encrypts to it.

// kmsWrite writes data to name in the harness directory and returns the
// path.
func (h *kmsHarness) kmsWrite(name string, data []byte) string {
	h.t.Helper()
	p := filepath.Join(h.dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		h.t.Fatal(err)
	}
	return p
}

// kmsCreateAsymKey creates a key of spec and usage with awscli and returns
// its ID.
func (h *kmsHarness) kmsCreateAsymKey(spec, usage string) string {
	h.t.Helper()
	var out struct {
		KeyMetadata struct {
			KeyId, KeySpec, KeyUsage string
			SigningAlgorithms        []string
			EncryptionAlgorithms     []string
			MacAlgorithms            []string
		}
	}
	h.awsJSON(kmsAliceKey, &out, "create-key", "--key-spec", spec, "--key-usage", usage)
	md := out.KeyMetadata
	if md.KeySpec != spec || md.KeyUsage != usage || len(md.SigningAlgorithms)+len(md.EncryptionAlgorithms)+len(md.MacAlgorithms) == 0 {
		h.t.Fatalf("create-key %s %s: %+v", spec, usage, md)
	}
	return md.KeyId
}

// kmsPublicPEM fetches a key's public key with awscli (DER) and converts it
// to PEM with openssl; it returns the PEM file.
func (h *kmsHarness) kmsPublicPEM(keyID string) string {
	h.t.Helper()
	var out struct{ PublicKey, KeySpec, KeyUsage string }
	h.awsJSON(kmsAliceKey, &out, "get-public-key", "--key-id", keyID)
	der := h.kmsWrite(keyID+".der", kmsB64(h.t, out.PublicKey))
	pemFile := filepath.Join(h.dir, keyID+".pem")
	mountExec(h.t, "openssl", "pkey", "-pubin", "-inform", "DER", "-in", der, "-out", pemFile)
	return pemFile
}

// kmsOpenssl runs openssl and reports whether it succeeded, with its output.
func kmsOpenssl(args ...string) (bool, string) {
	out, err := exec.Command("openssl", args...).CombinedOutput()
	return err == nil, string(out)
}

func TestKMSAsymmetricSignaturesVerifyWithOpenSSL(t *testing.T) {
	kmsAWS(t)
	mountRequireTool(t, "openssl")
	h := kmsStartServer(t)
	msg := h.kmsWrite("msg.txt", []byte("signed by kmsfs kms serve, checked by openssl\n"))
	tampered := h.kmsWrite("tampered.txt", []byte("signed by kmsfs kms serve, checked by openssl!\n"))

	for _, c := range []struct {
		spec, alg string
		dgst      []string // openssl dgst options besides the digest
	}{
		{"RSA_2048", "RSASSA_PSS_SHA_256", []string{"-sha256", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32"}},
		{"RSA_3072", "RSASSA_PSS_SHA_512", []string{"-sha512", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:64"}},
		{"RSA_2048", "RSASSA_PKCS1_V1_5_SHA_256", []string{"-sha256"}},
		{"RSA_4096", "RSASSA_PKCS1_V1_5_SHA_384", []string{"-sha384"}},
		{"ECC_NIST_P256", "ECDSA_SHA_256", []string{"-sha256"}},
		{"ECC_NIST_P384", "ECDSA_SHA_384", []string{"-sha384"}},
		{"ECC_SECG_P256K1", "ECDSA_SHA_256", []string{"-sha256"}},
	} {
		id := h.kmsCreateAsymKey(c.spec, "SIGN_VERIFY")
		pub := h.kmsPublicPEM(id)
		var signed struct{ KeyId, Signature, SigningAlgorithm string }
		h.awsJSON(kmsAliceKey, &signed, "sign", "--key-id", id, "--message", "fileb://msg.txt",
			"--message-type", "RAW", "--signing-algorithm", c.alg)
		sig := h.kmsWrite("sig.bin", kmsB64(t, signed.Signature))
		args := append(append([]string{"dgst"}, c.dgst...), "-verify", pub, "-signature", sig)
		if ok, out := kmsOpenssl(append(args, msg)...); !ok || !strings.Contains(out, "Verified OK") {
			t.Fatalf("%s %s: openssl does not verify the signature: %s", c.spec, c.alg, out)
		}
		if ok, out := kmsOpenssl(append(args, tampered)...); ok {
			t.Fatalf("%s %s: openssl verifies the signature over another message: %s", c.spec, c.alg, out)
		}
		var verified struct{ SignatureValid bool }
		h.awsJSON(kmsAliceKey, &verified, "verify", "--key-id", id, "--message", "fileb://msg.txt",
			"--signature", "fileb://sig.bin", "--signing-algorithm", c.alg)
		if !verified.SignatureValid {
			t.Fatalf("%s %s: verify says not valid", c.spec, c.alg)
		}
		h.awsFails(kmsAliceKey, "KMSInvalidSignatureException", "verify", "--key-id", id, "--message", "fileb://tampered.txt",
			"--signature", "fileb://sig.bin", "--signing-algorithm", c.alg)
	}

	// MessageType DIGEST, verified with openssl pkeyutl over the digest.
	id := h.kmsCreateAsymKey("ECC_NIST_P256", "SIGN_VERIFY")
	pub := h.kmsPublicPEM(id)
	data, _ := os.ReadFile(msg)
	d := sha256.Sum256(data)
	digest := h.kmsWrite("digest.bin", d[:])
	var signed struct{ Signature string }
	h.awsJSON(kmsAliceKey, &signed, "sign", "--key-id", id, "--message", "fileb://digest.bin",
		"--message-type", "DIGEST", "--signing-algorithm", "ECDSA_SHA_256")
	sig := h.kmsWrite("digest.sig", kmsB64(t, signed.Signature))
	if ok, out := kmsOpenssl("pkeyutl", "-verify", "-pubin", "-inkey", pub, "-in", digest, "-sigfile", sig); !ok || !strings.Contains(out, "Signature Verified Successfully") {
		t.Fatalf("openssl pkeyutl does not verify the DIGEST signature: %s", out)
	}
	// P-256 pairs with SHA-256 only; a digest of the wrong length is refused.
	h.awsFails(kmsAliceKey, "InvalidKeyUsageException", "sign", "--key-id", id, "--message", "fileb://msg.txt",
		"--signing-algorithm", "ECDSA_SHA_384")
	h.awsFails(kmsAliceKey, "ValidationException", "sign", "--key-id", id, "--message", "fileb://msg.txt",
		"--message-type", "DIGEST", "--signing-algorithm", "ECDSA_SHA_256")
	// Signing keys do no symmetric work and do not rotate.
	h.awsFails(kmsAliceKey, "InvalidKeyUsageException", "generate-data-key", "--key-id", id, "--key-spec", "AES_256")
	h.awsFails(kmsAliceKey, "UnsupportedOperationException", "enable-key-rotation", "--key-id", id)

	// kmsfs kms create-key and get-public-key through the server: the PEM
	// is the one openssl made from awscli's DER.
	out, err := h.kmsfs(kmsAliceKey, "kms", "create-key", "--kms", h.url, "--kms-region", kmsRegion, "--key-spec", "ECC_NIST_P384")
	if err != nil {
		t.Fatal(err)
	}
	cliKey := strings.Fields(out)[0]
	cliPEM, err := h.kmsfs(kmsAliceKey, "kms", "get-public-key", "--kms", h.url, "--kms-region", kmsRegion, cliKey)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(h.kmsPublicPEM(cliKey))
	if err != nil {
		t.Fatal(err)
	}
	if cliPEM != string(want) {
		t.Fatalf("kmsfs kms get-public-key:\n%s\nopenssl from get-public-key:\n%s", cliPEM, want)
	}
	log := h.auditLog()
	for _, op := range []string{`"Sign"`, `"Verify"`, `"GetPublicKey"`} {
		if !strings.Contains(log, op) {
			t.Fatalf("audit log has no %s entry", op)
		}
	}
}

func TestKMSAsymmetricOAEPHMACAndDataKeyPairs(t *testing.T) {
	kmsAWS(t)
	mountRequireTool(t, "openssl")
	h := kmsStartServer(t)

	// openssl encrypts to the public key; the KMS decrypts.
	id := h.kmsCreateAsymKey("RSA_2048", "ENCRYPT_DECRYPT")
	pub := h.kmsPublicPEM(id)
	secret := []byte("only the KMS can read this")
	pt := h.kmsWrite("pt.bin", secret)
	ct := filepath.Join(h.dir, "ct.bin")
	mountExec(t, "openssl", "pkeyutl", "-encrypt", "-pubin", "-inkey", pub, "-in", pt, "-out", ct,
		"-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256")
	var dec struct{ Plaintext, KeyId, EncryptionAlgorithm string }
	h.awsJSON(kmsAliceKey, &dec, "decrypt", "--key-id", id, "--ciphertext-blob", "fileb://ct.bin",
		"--encryption-algorithm", "RSAES_OAEP_SHA_256")
	if !bytes.Equal(kmsB64(t, dec.Plaintext), secret) || dec.EncryptionAlgorithm != "RSAES_OAEP_SHA_256" {
		t.Fatalf("decrypt: %+v", dec)
	}
	// The wrong hash does not decrypt; RSA_2048 with SHA-256 takes at most
	// 190 bytes; the symmetric algorithm is the wrong usage.
	h.awsFails(kmsAliceKey, "InvalidCiphertextException", "decrypt", "--key-id", id, "--ciphertext-blob", "fileb://ct.bin",
		"--encryption-algorithm", "RSAES_OAEP_SHA_1")
	h.kmsWrite("190.bin", bytes.Repeat([]byte{'x'}, 190))
	h.kmsWrite("191.bin", bytes.Repeat([]byte{'x'}, 191))
	var enc struct{ CiphertextBlob string }
	h.awsJSON(kmsAliceKey, &enc, "encrypt", "--key-id", id, "--plaintext", "fileb://190.bin", "--encryption-algorithm", "RSAES_OAEP_SHA_256")
	h.awsFails(kmsAliceKey, "ValidationException", "encrypt", "--key-id", id, "--plaintext", "fileb://191.bin", "--encryption-algorithm", "RSAES_OAEP_SHA_256")
	h.awsFails(kmsAliceKey, "InvalidKeyUsageException", "encrypt", "--key-id", id, "--plaintext", "fileb://pt.bin")
	h.awsFails(kmsAliceKey, "InvalidKeyUsageException", "sign", "--key-id", id, "--message", "fileb://pt.bin", "--signing-algorithm", "RSASSA_PSS_SHA_256")

	// HMAC: the key never leaves, so the check is the round trip and a
	// tampered message failing.
	mac := h.kmsCreateAsymKey("HMAC_256", "GENERATE_VERIFY_MAC")
	h.kmsWrite("msg.bin", []byte("authenticated message"))
	h.kmsWrite("tampered.bin", []byte("authenticated messagE"))
	var gen struct{ Mac, MacAlgorithm string }
	h.awsJSON(kmsAliceKey, &gen, "generate-mac", "--key-id", mac, "--message", "fileb://msg.bin", "--mac-algorithm", "HMAC_SHA_256")
	if len(kmsB64(t, gen.Mac)) != 32 || gen.MacAlgorithm != "HMAC_SHA_256" {
		t.Fatalf("generate-mac: %+v", gen)
	}
	h.kmsWrite("mac.bin", kmsB64(t, gen.Mac))
	var ver struct{ MacValid bool }
	h.awsJSON(kmsAliceKey, &ver, "verify-mac", "--key-id", mac, "--message", "fileb://msg.bin", "--mac", "fileb://mac.bin", "--mac-algorithm", "HMAC_SHA_256")
	if !ver.MacValid {
		t.Fatal("verify-mac: not valid")
	}
	h.awsFails(kmsAliceKey, "KMSInvalidMacException", "verify-mac", "--key-id", mac, "--message", "fileb://tampered.bin", "--mac", "fileb://mac.bin", "--mac-algorithm", "HMAC_SHA_256")
	h.awsFails(kmsAliceKey, "InvalidKeyUsageException", "generate-mac", "--key-id", mac, "--message", "fileb://msg.bin", "--mac-algorithm", "HMAC_SHA_512")
	h.awsFails(kmsAliceKey, "UnsupportedOperationException", "get-public-key", "--key-id", mac)

	// Data key pairs: the private key matches the public key (openssl
	// derives one from the other) and its wrapped copy decrypts to it.
	sym, _ := h.createKey(kmsAliceKey)
	for _, spec := range []string{"ECC_NIST_P256", "ECC_SECG_P256K1", "RSA_2048"} {
		var pair struct{ PrivateKeyCiphertextBlob, PrivateKeyPlaintext, PublicKey, KeyId, KeyPairSpec string }
		h.awsJSON(kmsAliceKey, &pair, "generate-data-key-pair", "--key-id", sym, "--key-pair-spec", spec, "--encryption-context", "use=pair")
		priv := h.kmsWrite("priv.der", kmsB64(t, pair.PrivateKeyPlaintext))
		derived := filepath.Join(h.dir, "derived.der")
		mountExec(t, "openssl", "pkey", "-inform", "DER", "-in", priv, "-pubout", "-outform", "DER", "-out", derived)
		got, err := os.ReadFile(derived)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, kmsB64(t, pair.PublicKey)) || pair.KeyPairSpec != spec {
			t.Fatalf("%s: the public key is not the private key's", spec)
		}
		h.kmsWrite("wrapped.bin", kmsB64(t, pair.PrivateKeyCiphertextBlob))
		var unwrapped struct{ Plaintext string }
		h.awsJSON(kmsAliceKey, &unwrapped, "decrypt", "--ciphertext-blob", "fileb://wrapped.bin", "--encryption-context", "use=pair")
		if unwrapped.Plaintext != pair.PrivateKeyPlaintext {
			t.Fatalf("%s: the wrapped private key does not decrypt to the private key", spec)
		}
	}
	var noPlain map[string]any
	h.awsJSON(kmsAliceKey, &noPlain, "generate-data-key-pair-without-plaintext", "--key-id", sym, "--key-pair-spec", "ECC_NIST_P384")
	if _, ok := noPlain["PrivateKeyPlaintext"]; ok || noPlain["PrivateKeyCiphertextBlob"] == nil || noPlain["PublicKey"] == nil {
		t.Fatalf("generate-data-key-pair-without-plaintext: %v", noPlain)
	}
	h.awsFails(kmsAliceKey, "InvalidKeyUsageException", "generate-data-key-pair", "--key-id", id, "--key-pair-spec", "ECC_NIST_P256")
}
