package keystore

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/kmsfs/kmsfs/kms"
)

func fileMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// encodings returns the ways a key could plausibly appear in a JSON file.
func encodings(b []byte) [][]byte {
	return [][]byte{
		b,
		[]byte(hex.EncodeToString(b)),
		[]byte(base64.StdEncoding.EncodeToString(b)),
		[]byte(base64.RawURLEncoding.EncodeToString(b)),
	}
}

func TestRootKeyKeystoreFilesAndNoPlaintextKeys(t *testing.T) {
	f := newFixture(t)
	if !strings.Contains(f.warn.all(), "no passphrase: root key stored in "+filepath.Join(f.dir, "root.key")) {
		t.Fatalf("no root-key warning; warnings: %q", f.warn.all())
	}
	md := createKey(t, f.ks)
	if err := f.ks.RotateKeyOnDemand(bg, md.KeyID); err != nil {
		t.Fatal(err)
	}
	dk, err := f.ks.GenerateDataKey(bg, md.KeyID, 32, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := fileMode(t, f.dir); got != 0o700 {
		t.Errorf("keystore directory mode %04o, want 0700", got)
	}
	for _, name := range []string{stateName, rootKeyName, lockName} {
		if got := fileMode(t, filepath.Join(f.dir, name)); got != 0o600 {
			t.Errorf("%s mode %04o, want 0600", name, got)
		}
	}
	data, err := os.ReadFile(filepath.Join(f.dir, stateName))
	if err != nil {
		t.Fatal(err)
	}
	secrets := [][]byte{dk.Plaintext}
	// The backing material of both versions, unsealed with the KEK.
	f.ks.mu.Lock()
	rec := f.ks.st.Keys[md.KeyID]
	for _, v := range rec.Versions {
		raw, err := f.ks.mk.open(v.Material, materialAADFor(md.KeyID, v.Version))
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, raw)
	}
	secrets = append(secrets, bytes.Clone(f.ks.mk.(*masterKey).raw))
	f.ks.mu.Unlock()
	for i, s := range secrets {
		for _, enc := range encodings(s) {
			if bytes.Contains(data, enc) {
				t.Fatalf("keystore.json contains secret %d in plaintext", i)
			}
		}
	}
	if !bytes.Contains(data, []byte(md.KeyID)) {
		t.Fatal("keystore.json does not mention the key; the search above proves nothing")
	}
}

func TestPassphraseKeystore(t *testing.T) {
	f := &fixture{dir: t.TempDir() + "/ks", clock: newFakeClock(), warn: &warnings{}}
	pass := []byte("correct horse battery staple")
	ks := f.open(t, pass)
	md := createKey(t, ks)
	blob, _, err := ks.Encrypt(bg, md.KeyID, []byte("hello"), nil)
	if err != nil {
		t.Fatal(err)
	}
	ks.Close()
	if _, err := os.Stat(filepath.Join(f.dir, rootKeyName)); !os.IsNotExist(err) {
		t.Fatalf("root.key exists in a passphrase keystore: %v", err)
	}
	if strings.Contains(f.warn.all(), "no passphrase") {
		t.Fatalf("passphrase keystore warned about a root key: %q", f.warn.all())
	}

	again := f.open(t, pass)
	pt, _, err := again.Decrypt(bg, "", blob, nil)
	if err != nil || string(pt) != "hello" {
		t.Fatalf("decrypt after reopening with the passphrase: %q, %v", pt, err)
	}
	again.Close()

	_, err = Open(f.dir, Options{Passphrase: []byte("wrong"), Warn: f.warn.Warn})
	if err == nil || !strings.Contains(err.Error(), "wrong passphrase") {
		t.Fatalf("open with a wrong passphrase: %v", err)
	}
	_, err = Open(f.dir, Options{Warn: f.warn.Warn})
	if err == nil || !strings.Contains(err.Error(), "passphrase") {
		t.Fatalf("open without the passphrase: %v", err)
	}
}

func TestPassphraseGivenToRootKeyKeystoreIsRefused(t *testing.T) {
	f := newFixture(t)
	_, err := Open(f.dir, Options{Passphrase: []byte("p"), Warn: f.warn.Warn})
	if err == nil || !strings.Contains(err.Error(), "not passphrase-protected") {
		t.Fatalf("got %v", err)
	}
}

func TestRootKeyMissingOrWrong(t *testing.T) {
	f := newFixture(t)
	createKey(t, f.ks)
	f.ks.Close()
	root := filepath.Join(f.dir, rootKeyName)
	orig, err := os.ReadFile(root)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(root, []byte(strings.Repeat("ab", 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Open(f.dir, Options{Warn: f.warn.Warn})
	if err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("open with another root key: %v", err)
	}
	os.Remove(root)
	_, err = Open(f.dir, Options{Warn: f.warn.Warn})
	if err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("open without root.key: %v", err)
	}
	if _, err := os.Stat(root); !os.IsNotExist(err) {
		t.Fatal("Open re-created root.key for an existing keystore")
	}
	os.WriteFile(root, orig, 0o600)
	f.open(t, nil)
}

func TestTwoInstancesSeeEachOthersChanges(t *testing.T) {
	f := newFixture(t)
	other := f.open(t, nil)
	md := createKey(t, f.ks)
	// Created through one instance, usable through the other at once.
	blob, _, err := other.Encrypt(bg, md.KeyID, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.ks.DisableKey(bg, md.KeyID); err != nil {
		t.Fatal(err)
	}
	_, _, err = other.Decrypt(bg, "", blob, nil)
	wantCode(t, err, kms.ErrDisabled)
	_, err = other.GenerateDataKey(bg, md.KeyID, 32, nil)
	wantCode(t, err, kms.ErrDisabled)
	if err := f.ks.EnableKey(bg, md.KeyID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := other.Decrypt(bg, "", blob, nil); err != nil {
		t.Fatalf("after enable in the other instance: %v", err)
	}
	// Rotation through one instance: the other encrypts with version 2 and
	// still decrypts version 1.
	if err := f.ks.RotateKeyOnDemand(bg, md.KeyID); err != nil {
		t.Fatal(err)
	}
	b2, _, err := other.Encrypt(bg, md.KeyID, []byte("y"), nil)
	if err != nil || blobVersion(b2) != 2 {
		t.Fatalf("other instance after rotation: version %d, %v", blobVersion(b2), err)
	}
	if _, _, err := f.ks.Decrypt(bg, "", b2, nil); err != nil {
		t.Fatal(err)
	}
}

func TestConcurrentWritersLoseNoUpdates(t *testing.T) {
	f := newFixture(t)
	other := f.open(t, nil)
	const perWriter = 8
	var wg sync.WaitGroup
	errs := make(chan error, 4*perWriter)
	for _, ks := range []*Keystore{f.ks, other, f.ks, other} {
		wg.Add(1)
		go func(ks *Keystore) {
			defer wg.Done()
			for i := 0; i < perWriter; i++ {
				if _, err := ks.CreateKey(bg, kms.CreateKeyInput{}); err != nil {
					errs <- err
				}
			}
		}(ks)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, ks := range []*Keystore{f.ks, other} {
		keys, err := ks.ListKeys(bg)
		if err != nil || len(keys) != 4*perWriter {
			t.Fatalf("ListKeys: %d keys, %v; want %d", len(keys), err, 4*perWriter)
		}
	}
}

// TestHelperProcess is run as a child process by TestOtherProcess.
func TestHelperProcess(t *testing.T) {
	dir := os.Getenv("KMSFS_KEYSTORE_HELPER_DIR")
	if dir == "" {
		t.Skip("helper process only")
	}
	ks, err := Open(dir, Options{Warn: func(string) {}})
	if err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	n, _ := strconv.Atoi(os.Getenv("KMSFS_KEYSTORE_HELPER_KEYS"))
	for i := 0; i < n; i++ {
		if _, err := ks.CreateKey(context.Background(), kms.CreateKeyInput{Description: "child"}); err != nil {
			t.Fatal(err)
		}
	}
	if id := os.Getenv("KMSFS_KEYSTORE_HELPER_DISABLE"); id != "" {
		if err := ks.DisableKey(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
}

func runHelper(t *testing.T, dir string, env ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), append([]string{"KMSFS_KEYSTORE_HELPER_DIR=" + dir}, env...)...)
	return cmd
}

func TestOtherProcess(t *testing.T) {
	f := newFixture(t)
	md := createKey(t, f.ks)
	blob, _, err := f.ks.Encrypt(bg, md.KeyID, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	// Another process writes concurrently with this one: no update is lost.
	const n = 10
	child := runHelper(t, f.dir, fmt.Sprintf("KMSFS_KEYSTORE_HELPER_KEYS=%d", n))
	var out bytes.Buffer
	child.Stdout, child.Stderr = &out, &out
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		createKey(t, f.ks)
	}
	if err := child.Wait(); err != nil {
		t.Fatalf("helper: %v\n%s", err, out.String())
	}
	keys, err := f.ks.ListKeys(bg)
	if err != nil || len(keys) != 1+2*n {
		t.Fatalf("ListKeys: %d keys, %v; want %d", len(keys), err, 1+2*n)
	}
	// `kmsfs kms disable` in another process stops this one at once.
	if out, err := runHelper(t, f.dir, "KMSFS_KEYSTORE_HELPER_DISABLE="+md.KeyID).CombinedOutput(); err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	_, _, err = f.ks.Decrypt(bg, "", blob, nil)
	wantCode(t, err, kms.ErrDisabled)
}

func TestLeftoverTempFilesIgnoredAndRemoved(t *testing.T) {
	f := newFixture(t)
	md := createKey(t, f.ks)
	blob, _, err := f.ks.Encrypt(bg, md.KeyID, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	f.ks.Close()
	good, err := os.ReadFile(filepath.Join(f.dir, stateName))
	if err != nil {
		t.Fatal(err)
	}
	// What a crash mid-write leaves: a truncated copy and garbage.
	temps := map[string][]byte{
		stateName + tmpInfix + "123":   good[:len(good)/2],
		stateName + tmpInfix + "456":   []byte("\x00\x01garbage"),
		rootKeyName + tmpInfix + "789": []byte("12"),
	}
	for name, data := range temps {
		if err := os.WriteFile(filepath.Join(f.dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ks := f.open(t, nil)
	if _, _, err := ks.Decrypt(bg, "", blob, nil); err != nil {
		t.Fatalf("decrypt after a crash left temp files: %v", err)
	}
	for name := range temps {
		if _, err := os.Stat(filepath.Join(f.dir, name)); !os.IsNotExist(err) {
			t.Errorf("stale temp file %s not removed: %v", name, err)
		}
	}
}

func TestCorruptStateFileIsAnErrorNotARecreate(t *testing.T) {
	f := newFixture(t)
	createKey(t, f.ks)
	f.ks.Close()
	path := filepath.Join(f.dir, stateName)
	good, _ := os.ReadFile(path)
	for _, bad := range [][]byte{good[:len(good)/2], []byte(""), []byte(`{"format":99}`)} {
		os.WriteFile(path, bad, 0o600)
		if _, err := Open(f.dir, Options{Warn: f.warn.Warn}); err == nil {
			t.Fatalf("Open accepted a corrupt state file %q", bad)
		}
		if got, _ := os.ReadFile(path); !bytes.Equal(got, bad) {
			t.Fatal("Open overwrote a corrupt state file")
		}
	}
	os.WriteFile(path, good, 0o600)
	ks := f.open(t, nil)
	if keys, _ := ks.ListKeys(bg); len(keys) != 1 {
		t.Fatalf("%d keys after restoring the state file", len(keys))
	}
}

func TestConcurrentUseWithinProcess(t *testing.T) {
	f := newFixture(t)
	md := createKey(t, f.ks)
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				dk, err := f.ks.GenerateDataKey(bg, md.KeyID, 32, kms.EncryptionContext{"i": strconv.Itoa(i)})
				if kms.Code(err) == kms.CodeDisabled {
					continue
				}
				if err != nil {
					errs <- err
					return
				}
				pt, _, err := f.ks.Decrypt(bg, "", dk.CiphertextBlob, kms.EncryptionContext{"i": strconv.Itoa(i)})
				if kms.Code(err) == kms.CodeDisabled {
					continue
				}
				if err != nil || !bytes.Equal(pt, dk.Plaintext) {
					errs <- fmt.Errorf("decrypt: %v", err)
					return
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 10; i++ {
			if err := f.ks.DisableKey(bg, md.KeyID); err != nil {
				errs <- err
			}
			if err := f.ks.EnableKey(bg, md.KeyID); err != nil {
				errs <- err
			}
			if err := f.ks.RotateKeyOnDemand(bg, md.KeyID); err != nil {
				errs <- err
			}
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestDefaultDir(t *testing.T) {
	// The environment variable is the command's business, not the package's.
	t.Setenv("KMSFS_KEYSTORE", "/some/where")
	t.Setenv("XDG_CONFIG_HOME", "/cfg")
	if d, err := DefaultDir(); err != nil || d != "/cfg/kmsfs/keystore" {
		t.Fatalf("DefaultDir: %q, %v", d, err)
	}
}

func TestOpenOptionsAndClose(t *testing.T) {
	dir := t.TempDir() + "/ks"
	ks, err := Open(dir, Options{Region: "eu-west-3", Account: "123456789012", Warn: func(string) {}})
	if err != nil {
		t.Fatal(err)
	}
	if ks.Dir() != dir {
		t.Fatalf("Dir() = %q", ks.Dir())
	}
	md := createKey(t, ks)
	if md.ARN != "arn:aws:kms:eu-west-3:123456789012:key/"+md.KeyID {
		t.Fatalf("ARN %s", md.ARN)
	}
	if p, _ := ks.GetKeyPolicy(bg, md.KeyID); !strings.Contains(p, "arn:aws:iam::123456789012:root") {
		t.Fatalf("default policy does not name the account root: %s", p)
	}
	if err := ks.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.GenerateDataKey(bg, md.KeyID, 32, nil); err == nil {
		t.Fatal("GenerateDataKey after Close succeeded")
	}
	if _, err := Open(dir, Options{Account: "12345"}); err == nil {
		t.Fatal("Open accepted a 5-digit account")
	}
	if _, err := Open(dir, Options{Region: "a:b"}); err == nil {
		t.Fatal("Open accepted a region with a colon")
	}
}
