package keystore

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/kms"
)

// cryptoErrors runs every cryptographic operation on keyID and returns their
// errors, with blob a ciphertext under keyID.
func cryptoErrors(f *fixture, keyID string, blob []byte) map[string]error {
	out := map[string]error{}
	_, out["GenerateDataKey"] = f.ks.GenerateDataKey(bg, keyID, 32, nil)
	_, _, out["GenerateDataKeyWithoutPlaintext"] = f.ks.GenerateDataKeyWithoutPlaintext(bg, keyID, 32, nil)
	_, _, out["Encrypt"] = f.ks.Encrypt(bg, keyID, []byte("x"), nil)
	_, _, out["Decrypt"] = f.ks.Decrypt(bg, "", blob, nil)
	_, _, out["Decrypt with key ID"] = f.ks.Decrypt(bg, keyID, blob, nil)
	_, _, _, out["ReEncrypt"] = f.ks.ReEncrypt(bg, blob, nil, keyID, nil)
	return out
}

func TestDisableStopsEveryCryptoOpAndEnableRestores(t *testing.T) {
	f := newFixture(t)
	md := createKey(t, f.ks)
	blob, _, err := f.ks.Encrypt(bg, md.KeyID, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.ks.DisableKey(bg, md.KeyID); err != nil {
		t.Fatal(err)
	}
	for op, err := range cryptoErrors(f, md.KeyID, blob) {
		if !strings.Contains(kms.Code(err), kms.CodeDisabled) {
			t.Errorf("%s on a disabled key: %v, want DisabledException", op, err)
		}
	}
	got, err := f.ks.DescribeKey(bg, md.KeyID)
	if err != nil || got.State != kms.KeyDisabled {
		t.Fatalf("DescribeKey: state %s, %v", got.State, err)
	}
	if err := f.ks.DisableKey(bg, md.KeyID); err != nil {
		t.Fatalf("DisableKey twice: %v", err)
	}
	if err := f.ks.EnableKey(bg, md.KeyID); err != nil {
		t.Fatal(err)
	}
	for op, err := range cryptoErrors(f, md.KeyID, blob) {
		if err != nil {
			t.Errorf("%s after EnableKey: %v", op, err)
		}
	}
}

func TestScheduleKeyDeletionWindowBounds(t *testing.T) {
	f := newFixture(t)
	for _, days := range []int{-1, 6, 31, 365} {
		md := createKey(t, f.ks)
		_, err := f.ks.ScheduleKeyDeletion(bg, md.KeyID, days)
		wantCode(t, err, kms.ErrValidation)
		if got, _ := f.ks.DescribeKey(bg, md.KeyID); got.State != kms.KeyEnabled {
			t.Fatalf("window %d: state %s after a refused schedule", days, got.State)
		}
	}
	for _, c := range []struct{ ask, want int }{{7, 7}, {30, 30}, {0, 30}} {
		md := createKey(t, f.ks)
		when, err := f.ks.ScheduleKeyDeletion(bg, md.KeyID, c.ask)
		if err != nil {
			t.Fatalf("window %d: %v", c.ask, err)
		}
		want := f.clock.Now().Add(time.Duration(c.want) * 24 * time.Hour)
		if !when.Equal(want) {
			t.Fatalf("window %d: deletion date %v, want %v", c.ask, when, want)
		}
		got, err := f.ks.DescribeKey(bg, md.KeyID)
		if err != nil || got.State != kms.KeyPendingDeletion || !got.DeletionDate.Equal(want) {
			t.Fatalf("window %d: DescribeKey %+v, %v", c.ask, got, err)
		}
	}
}

func TestPendingDeletionKeyUnusableAndCancelLeavesDisabled(t *testing.T) {
	f := newFixture(t)
	md := createKey(t, f.ks)
	blob, _, err := f.ks.Encrypt(bg, md.KeyID, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	err = f.ks.CancelKeyDeletion(bg, md.KeyID)
	wantCode(t, err, kms.ErrInvalidState)
	if _, err := f.ks.ScheduleKeyDeletion(bg, md.KeyID, 7); err != nil {
		t.Fatal(err)
	}
	for op, err := range cryptoErrors(f, md.KeyID, blob) {
		if kms.Code(err) != kms.CodeInvalidState {
			t.Errorf("%s on a key pending deletion: %v, want KMSInvalidStateException", op, err)
		}
	}
	wantCode(t, f.ks.EnableKey(bg, md.KeyID), kms.ErrInvalidState)
	wantCode(t, f.ks.DisableKey(bg, md.KeyID), kms.ErrInvalidState)
	_, err = f.ks.ScheduleKeyDeletion(bg, md.KeyID, 7)
	wantCode(t, err, kms.ErrInvalidState)
	wantCode(t, f.ks.CreateAlias(bg, "alias/late", md.KeyID), kms.ErrInvalidState)

	if err := f.ks.CancelKeyDeletion(bg, md.KeyID); err != nil {
		t.Fatal(err)
	}
	got, _ := f.ks.DescribeKey(bg, md.KeyID)
	if got.State != kms.KeyDisabled || !got.DeletionDate.IsZero() {
		t.Fatalf("after CancelKeyDeletion: state %s deletion date %v", got.State, got.DeletionDate)
	}
	_, _, err = f.ks.Decrypt(bg, "", blob, nil)
	wantCode(t, err, kms.ErrDisabled)
	if err := f.ks.EnableKey(bg, md.KeyID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.ks.Decrypt(bg, "", blob, nil); err != nil {
		t.Fatalf("Decrypt after cancel + enable: %v", err)
	}
}

func TestKeyDestroyedAfterDeletionWindow(t *testing.T) {
	f := newFixture(t)
	md := createKey(t, f.ks)
	keep := createKey(t, f.ks)
	if err := f.ks.CreateAlias(bg, "alias/doomed", md.KeyID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.ks.CreateGrant(bg, kms.Grant{KeyID: md.KeyID, GranteePrincipal: "arn:aws:iam::000000000000:role/r", Operations: []string{"Decrypt"}}); err != nil {
		t.Fatal(err)
	}
	blob, _, err := f.ks.Encrypt(bg, md.KeyID, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ks.ScheduleKeyDeletion(bg, md.KeyID, 7); err != nil {
		t.Fatal(err)
	}
	// A second process view of the same keystore, with the same clock.
	other := f.open(t, nil)

	f.clock.Advance(7*24*time.Hour - time.Second)
	if got, err := f.ks.DescribeKey(bg, md.KeyID); err != nil || got.State != kms.KeyPendingDeletion {
		t.Fatalf("one second before the end of the window: %+v, %v", got, err)
	}
	f.clock.Advance(time.Second)

	_, err = f.ks.DescribeKey(bg, md.KeyID)
	wantCode(t, err, kms.ErrNotFound)
	_, _, err = f.ks.Decrypt(bg, "", blob, nil)
	wantCode(t, err, kms.ErrNotFound)
	_, _, err = other.Decrypt(bg, "", blob, nil)
	wantCode(t, err, kms.ErrNotFound)
	wantCode(t, f.ks.CancelKeyDeletion(bg, md.KeyID), kms.ErrNotFound)
	_, _, err = f.ks.Encrypt(bg, "alias/doomed", []byte("x"), nil)
	wantCode(t, err, kms.ErrNotFound)
	keys, err := f.ks.ListKeys(bg)
	if err != nil || len(keys) != 1 || keys[0].KeyID != keep.KeyID {
		t.Fatalf("ListKeys after deletion: %v, %v", keys, err)
	}
	aliases, _ := f.ks.ListAliases(bg, "")
	if len(aliases) != 0 {
		t.Fatalf("aliases of a deleted key remain: %v", aliases)
	}

	// The material is gone from disk, not just hidden.
	data, err := os.ReadFile(filepath.Join(f.dir, stateName))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(data, []byte(md.KeyID)) {
		t.Fatal("keystore.json still mentions the deleted key")
	}
	if bytes.Contains(data, []byte("alias/doomed")) {
		t.Fatal("keystore.json still holds the deleted key's alias")
	}
	// And a fresh open does not resurrect it.
	again := f.open(t, nil)
	_, err = again.DescribeKey(bg, md.KeyID)
	wantCode(t, err, kms.ErrNotFound)
}

func TestPurgeHappensOnOpen(t *testing.T) {
	f := newFixture(t)
	md := createKey(t, f.ks)
	if _, err := f.ks.ScheduleKeyDeletion(bg, md.KeyID, 7); err != nil {
		t.Fatal(err)
	}
	f.ks.Close()
	f.clock.Advance(8 * 24 * time.Hour)
	f.open(t, nil)
	data, _ := os.ReadFile(filepath.Join(f.dir, stateName))
	if bytes.Contains(data, []byte(md.KeyID)) {
		t.Fatal("Open did not purge a key past its deletion window")
	}
}

func blobVersion(b []byte) uint32 { return binary.BigEndian.Uint32(b[blobVersionOff:]) }

func TestRotateOnDemandKeepsOldCiphertext(t *testing.T) {
	f := newFixture(t)
	md := createKey(t, f.ks)
	ec := kms.EncryptionContext{"v": "1"}
	old, err := f.ks.GenerateDataKey(bg, md.KeyID, 32, ec)
	if err != nil {
		t.Fatal(err)
	}
	if blobVersion(old.CiphertextBlob) != 1 {
		t.Fatalf("first blob uses version %d", blobVersion(old.CiphertextBlob))
	}
	if err := f.ks.RotateKeyOnDemand(bg, md.KeyID); err != nil {
		t.Fatal(err)
	}
	got, _ := f.ks.DescribeKey(bg, md.KeyID)
	if got.KeyID != md.KeyID || got.CurrentVersion != 2 || got.Versions != 2 || !got.LastRotationDate.Equal(f.clock.Now()) {
		t.Fatalf("after rotation: %+v", got)
	}
	fresh, err := f.ks.GenerateDataKey(bg, md.KeyID, 32, ec)
	if err != nil {
		t.Fatal(err)
	}
	if blobVersion(fresh.CiphertextBlob) != 2 {
		t.Fatalf("new blob uses version %d, want 2", blobVersion(fresh.CiphertextBlob))
	}
	for _, dk := range []kms.DataKey{old, fresh} {
		pt, _, err := f.ks.Decrypt(bg, md.KeyID, dk.CiphertextBlob, ec)
		if err != nil || !bytes.Equal(pt, dk.Plaintext) {
			t.Fatalf("decrypt version %d after rotation: %v", blobVersion(dk.CiphertextBlob), err)
		}
	}
	// A blob naming a version the key does not have is invalid.
	forged := bytes.Clone(fresh.CiphertextBlob)
	binary.BigEndian.PutUint32(forged[blobVersionOff:], 3)
	_, _, err = f.ks.Decrypt(bg, "", forged, ec)
	wantCode(t, err, kms.ErrInvalidCiphertext)
	// Versions are distinct material: a version-2 blob relabelled as
	// version 1 does not authenticate.
	binary.BigEndian.PutUint32(forged[blobVersionOff:], 1)
	_, _, err = f.ks.Decrypt(bg, "", forged, ec)
	wantCode(t, err, kms.ErrInvalidCiphertext)
}

func TestAutomaticRotation(t *testing.T) {
	f := newFixture(t)
	md := createKey(t, f.ks)
	for _, p := range []int{-1, 89, 2561} {
		wantCode(t, f.ks.EnableKeyRotation(bg, md.KeyID, p), kms.ErrValidation)
	}
	on, period, next, err := f.ks.GetKeyRotationStatus(bg, md.KeyID)
	if err != nil || on || period != 0 || !next.IsZero() {
		t.Fatalf("initial rotation status %v %d %v %v", on, period, next, err)
	}
	if err := f.ks.EnableKeyRotation(bg, md.KeyID, 0); err != nil {
		t.Fatal(err)
	}
	start := f.clock.Now()
	on, period, next, err = f.ks.GetKeyRotationStatus(bg, md.KeyID)
	if err != nil || !on || period != 365 || !next.Equal(start.Add(365*24*time.Hour)) {
		t.Fatalf("rotation status %v %d %v %v", on, period, next, err)
	}
	v1, _, _ := f.ks.Encrypt(bg, md.KeyID, []byte("one"), nil)

	f.clock.Advance(365*24*time.Hour - time.Second)
	if b, _, _ := f.ks.Encrypt(bg, md.KeyID, []byte("x"), nil); blobVersion(b) != 1 {
		t.Fatalf("rotated before the period ended (version %d)", blobVersion(b))
	}
	f.clock.Advance(time.Second)
	v2, _, err := f.ks.Encrypt(bg, md.KeyID, []byte("two"), nil)
	if err != nil || blobVersion(v2) != 2 {
		t.Fatalf("after the period: version %d, %v", blobVersion(v2), err)
	}
	_, _, next, _ = f.ks.GetKeyRotationStatus(bg, md.KeyID)
	if !next.Equal(f.clock.Now().Add(365 * 24 * time.Hour)) {
		t.Fatalf("next rotation %v, want a year after the rotation", next)
	}
	for _, b := range [][]byte{v1, v2} {
		if _, _, err := f.ks.Decrypt(bg, "", b, nil); err != nil {
			t.Fatalf("decrypt version %d: %v", blobVersion(b), err)
		}
	}

	// A disabled key is not rotated; it rotates once enabled again.
	if err := f.ks.DisableKey(bg, md.KeyID); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(400 * 24 * time.Hour)
	if got, _ := f.ks.DescribeKey(bg, md.KeyID); got.Versions != 2 {
		t.Fatalf("disabled key rotated: %d versions", got.Versions)
	}
	wantCode(t, f.ks.RotateKeyOnDemand(bg, md.KeyID), kms.ErrDisabled)
	wantCode(t, f.ks.EnableKeyRotation(bg, md.KeyID, 90), kms.ErrDisabled)
	if err := f.ks.EnableKey(bg, md.KeyID); err != nil {
		t.Fatal(err)
	}
	v3, _, err := f.ks.Encrypt(bg, md.KeyID, []byte("three"), nil)
	if err != nil || blobVersion(v3) != 3 {
		t.Fatalf("after re-enable past due: version %d, %v", blobVersion(v3), err)
	}

	if err := f.ks.DisableKeyRotation(bg, md.KeyID); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(3000 * 24 * time.Hour)
	if b, _, _ := f.ks.Encrypt(bg, md.KeyID, []byte("x"), nil); blobVersion(b) != 3 {
		t.Fatalf("rotated with rotation disabled (version %d)", blobVersion(b))
	}
	if on, _, _, _ := f.ks.GetKeyRotationStatus(bg, md.KeyID); on {
		t.Fatal("rotation still reported on")
	}
}

func TestRotationPeriodChangeCountsFromSameStart(t *testing.T) {
	f := newFixture(t)
	md := createKey(t, f.ks)
	if err := f.ks.EnableKeyRotation(bg, md.KeyID, 365); err != nil {
		t.Fatal(err)
	}
	start := f.clock.Now()
	f.clock.Advance(100 * 24 * time.Hour)
	if err := f.ks.EnableKeyRotation(bg, md.KeyID, 90); err != nil {
		t.Fatal(err)
	}
	// 90 days from the start have passed: the rotation is due now.
	if b, _, _ := f.ks.Encrypt(bg, md.KeyID, []byte("x"), nil); blobVersion(b) != 2 {
		t.Fatalf("version %d after shortening the period past due", blobVersion(b))
	}
	_, period, next, _ := f.ks.GetKeyRotationStatus(bg, md.KeyID)
	if period != 90 || !next.Equal(f.clock.Now().Add(90*24*time.Hour)) || !next.After(start) {
		t.Fatalf("period %d next %v", period, next)
	}
}

func TestExternalOriginKeyAwaitsImport(t *testing.T) {
	f := newFixture(t)
	md, err := f.ks.CreateKey(bg, kms.CreateKeyInput{Origin: "EXTERNAL"})
	if err != nil {
		t.Fatal(err)
	}
	if md.State != kms.KeyPendingImport || md.Origin != "EXTERNAL" || md.Versions != 0 {
		t.Fatalf("EXTERNAL key metadata %+v", md)
	}
	_, _, err = f.ks.Encrypt(bg, md.KeyID, []byte("x"), nil)
	wantCode(t, err, kms.ErrInvalidState)
	wantCode(t, f.ks.EnableKey(bg, md.KeyID), kms.ErrInvalidState)
	wantCodeName(t, f.ks.EnableKeyRotation(bg, md.KeyID, 0), kms.CodeUnsupportedOperation)
	wantCodeName(t, f.ks.RotateKeyOnDemand(bg, md.KeyID), kms.CodeUnsupportedOperation)
	if _, err := f.ks.ScheduleKeyDeletion(bg, md.KeyID, 7); err != nil {
		t.Fatal(err)
	}
	if err := f.ks.CancelKeyDeletion(bg, md.KeyID); err != nil {
		t.Fatal(err)
	}
	if got, _ := f.ks.DescribeKey(bg, md.KeyID); got.State != kms.KeyPendingImport {
		t.Fatalf("cancelled deletion of a key without material: state %s", got.State)
	}
	_, err = f.ks.CreateKey(bg, kms.CreateKeyInput{Origin: "AWS_CLOUDHSM"})
	wantCode(t, err, kms.ErrValidation)
}

func TestOnDemandRotationLimit(t *testing.T) {
	f := newFixture(t)
	md := createKey(t, f.ks)
	for i := range MaxOnDemandRotations {
		if err := f.ks.RotateKeyOnDemand(bg, md.KeyID); err != nil {
			t.Fatalf("rotation %d: %v", i+1, err)
		}
	}
	wantCodeName(t, f.ks.RotateKeyOnDemand(bg, md.KeyID), kms.CodeLimitExceeded)
	// The count survives a reopen.
	f.ks.Close()
	ks := f.open(t, nil)
	wantCodeName(t, ks.RotateKeyOnDemand(bg, md.KeyID), kms.CodeLimitExceeded)
	if got, _ := ks.DescribeKey(bg, md.KeyID); got.Versions != MaxOnDemandRotations+1 {
		t.Fatalf("%d versions", got.Versions)
	}
	rots, err := ks.ListKeyRotations(bg, md.ARN)
	if err != nil || len(rots) != MaxOnDemandRotations || rots[0].Version != 2 || rots[0].Type != "ON_DEMAND" {
		t.Fatalf("ListKeyRotations: %+v %v", rots, err)
	}
}
