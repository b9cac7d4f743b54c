package keystore

import (
	"bytes"
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/kms"
)

func openRegion(t *testing.T, dir, region string) *Keystore {
	t.Helper()
	ks, err := Open(dir, Options{Region: region, Warn: func(string) {}})
	if err != nil {
		t.Fatalf("Open %s: %v", region, err)
	}
	t.Cleanup(func() { ks.Close() })
	return ks
}

func TestMultiRegionReplicateAndDecryptAcrossRegions(t *testing.T) {
	ctx := context.Background()
	dirA, dirB := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	a := openRegion(t, dirA, "eu-west-1")
	b := openRegion(t, dirB, "us-east-2")
	single := createKey(t, a)
	if f := stateFormatOf(t, dirA); f != stateFormatV1 {
		t.Fatalf("state without multi-Region keys written as format %d, want 1", f)
	}
	md, err := a.CreateKey(ctx, kms.CreateKeyInput{Description: "primary", MultiRegion: true})
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^mrk-[0-9a-f]{32}$`).MatchString(md.KeyID) || !md.MultiRegion {
		t.Fatalf("multi-Region key %q (MultiRegion %v)", md.KeyID, md.MultiRegion)
	}
	if c := md.MultiRegionConfiguration; c == nil || c.KeyType != kms.MultiRegionPrimary || c.PrimaryKey.Region != "eu-west-1" || len(c.ReplicaKeys) != 0 {
		t.Fatalf("primary configuration %+v", c)
	}
	if f := stateFormatOf(t, dirA); f != stateFormatV4 {
		t.Fatalf("state with a multi-Region key written as format %d, want 4", f)
	}
	ct, _, err := a.Encrypt(ctx, md.KeyID, []byte("secret"), kms.EncryptionContext{"v": "1"})
	if err != nil {
		t.Fatal(err)
	}

	rmd, err := Replicate(ctx, a, b, md.ARN, ReplicaInput{Description: "replica", Tags: map[string]string{"side": "b"}})
	if err != nil {
		t.Fatalf("Replicate: %v", err)
	}
	if rmd.KeyID != md.KeyID || rmd.ARN != "arn:aws:kms:us-east-2:000000000000:key/"+md.KeyID || rmd.Description != "replica" {
		t.Fatalf("replica metadata %+v", rmd)
	}
	if c := rmd.MultiRegionConfiguration; c.KeyType != kms.MultiRegionReplica || c.PrimaryKey.ARN != md.ARN || len(c.ReplicaKeys) != 1 || c.ReplicaKeys[0].Region != "us-east-2" {
		t.Fatalf("replica configuration %+v", c)
	}
	pmd, err := a.DescribeKey(ctx, md.KeyID)
	if err != nil {
		t.Fatal(err)
	}
	if c := pmd.MultiRegionConfiguration; len(c.ReplicaKeys) != 1 || c.ReplicaKeys[0].ARN != rmd.ARN {
		t.Fatalf("primary configuration after replication %+v", c)
	}
	// Ciphertext made in one region decrypts in the other, both ways.
	pt, arn, err := b.Decrypt(ctx, "", ct, kms.EncryptionContext{"v": "1"})
	if err != nil || string(pt) != "secret" || arn != rmd.ARN {
		t.Fatalf("Decrypt in replica region: %q %s %v", pt, arn, err)
	}
	ct2, _, err := b.Encrypt(ctx, md.KeyID, []byte("back"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if pt, _, err := a.Decrypt(ctx, md.ARN, ct2, nil); err != nil || string(pt) != "back" {
		t.Fatalf("Decrypt in primary region: %q %v", pt, err)
	}
	// Tampering still fails; a wrong context still fails.
	if _, _, err := b.Decrypt(ctx, "", ct, kms.EncryptionContext{"v": "2"}); kms.Code(err) != kms.CodeInvalidCiphertext {
		t.Fatalf("wrong context: %v", err)
	}
	// Each key has its own state.
	if err := b.DisableKey(ctx, md.KeyID); err != nil {
		t.Fatal(err)
	}
	wantCode(t, func() error { _, _, err := b.Decrypt(ctx, "", ct, kms.EncryptionContext{"v": "1"}); return err }(), kms.ErrDisabled)
	if _, _, err := a.Decrypt(ctx, "", ct, kms.EncryptionContext{"v": "1"}); err != nil {
		t.Fatalf("primary affected by the replica's state: %v", err)
	}
	if err := b.EnableKey(ctx, md.KeyID); err != nil {
		t.Fatal(err)
	}

	// AWS's rules.
	_, err = Replicate(ctx, a, b, md.KeyID, ReplicaInput{})
	wantCodeName(t, err, kms.CodeAlreadyExists)
	_, err = Replicate(ctx, a, openRegion(t, filepath.Join(t.TempDir(), "c"), "eu-west-1"), md.KeyID, ReplicaInput{})
	wantCodeName(t, err, kms.CodeValidation)
	_, err = Replicate(ctx, a, openRegion(t, filepath.Join(t.TempDir(), "d"), "ap-south-1"), single.KeyID, ReplicaInput{})
	wantCodeName(t, err, kms.CodeUnsupportedOperation)
	_, err = Replicate(ctx, b, openRegion(t, filepath.Join(t.TempDir(), "e"), "ap-south-1"), md.KeyID, ReplicaInput{})
	wantCodeName(t, err, kms.CodeUnsupportedOperation) // only the primary replicates
	wantCodeName(t, a.RotateKeyOnDemand(ctx, md.KeyID), kms.CodeUnsupportedOperation)
	wantCodeName(t, a.EnableKeyRotation(ctx, md.KeyID, 0), kms.CodeUnsupportedOperation)
	_, err = a.CreateKey(ctx, kms.CreateKeyInput{MultiRegion: true, Origin: originExternal})
	wantCodeName(t, err, kms.CodeUnsupportedOperation)
	_, err = a.CreateKey(ctx, kms.CreateKeyInput{MultiRegion: true, KeySpec: kms.KeySpecHMAC256, KeyUsage: kms.KeyUsageGenerateVerifyMac})
	wantCodeName(t, err, kms.CodeUnsupportedOperation)

	// UpdatePrimaryRegion: the replica becomes the primary.
	_, _, err = a.UpdatePrimaryRegion(ctx, md.KeyID, "sa-east-1")
	wantCodeName(t, err, kms.CodeNotFound)
	primary, replicas, err := a.UpdatePrimaryRegion(ctx, md.KeyID, "us-east-2")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.SetMultiRegionConfiguration(ctx, md.KeyID, primary, replicas); err != nil {
		t.Fatal(err)
	}
	for _, ks := range []*Keystore{a, b} {
		d, err := ks.DescribeKey(ctx, md.KeyID)
		if err != nil {
			t.Fatal(err)
		}
		c := d.MultiRegionConfiguration
		want := kms.MultiRegionReplica
		if ks == b {
			want = kms.MultiRegionPrimary
		}
		if c.KeyType != want || c.PrimaryKey.Region != "us-east-2" || len(c.ReplicaKeys) != 1 || c.ReplicaKeys[0].Region != "eu-west-1" {
			t.Fatalf("%s after UpdatePrimaryRegion: %+v", ks.Region(), c)
		}
	}
	_, _, err = a.UpdatePrimaryRegion(ctx, md.KeyID, "us-east-2")
	wantCodeName(t, err, kms.CodeUnsupportedOperation) // a is a replica now

	// The state survives a reopen (format 4 reads back).
	a.Close()
	a2 := openRegion(t, dirA, "eu-west-1")
	if pt, _, err := a2.Decrypt(ctx, "", ct, kms.EncryptionContext{"v": "1"}); err != nil || !bytes.Equal(pt, []byte("secret")) {
		t.Fatalf("after reopen: %q %v", pt, err)
	}
}

func TestMultiRegionStateRefusesInconsistentIDs(t *testing.T) {
	for _, rec := range []*keyRecord{
		{ID: "mrk-0123456789abcdef0123456789abcdef"},                                                      // no multi_region
		{ID: "mrk-0123456789ABCDEF0123456789abcdef", MultiRegion: &multiRegionRecord{PrimaryRegion: "x"}}, // upper case
		{ID: "0e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b", MultiRegion: &multiRegionRecord{PrimaryRegion: "x"}}, // UUID with multi_region
		{ID: "mrk-0123456789abcdef0123456789abcdef", MultiRegion: &multiRegionRecord{}},                   // no primary
	} {
		if _, err := parseStateKeyID(rec); err == nil {
			t.Errorf("key record %q (%+v) accepted", rec.ID, rec.MultiRegion)
		}
	}
	u, err := parseStateKeyID(&keyRecord{ID: "mrk-0123456789abcdef0123456789abcdef", MultiRegion: &multiRegionRecord{PrimaryRegion: "x"}})
	if err != nil || mrkID(u) != "mrk-0123456789abcdef0123456789abcdef" {
		t.Fatalf("valid multi-Region ID: %v", err)
	}
}

// TestMultiRegionStateFormatFallsBackWhenTheKeyIsGone: format 4 only while
// a multi-Region key exists; once it is purged the state is written as
// format 1 again, for older kmsfs to read.
func TestMultiRegionStateFormatFallsBackWhenTheKeyIsGone(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	createKey(t, f.ks)
	md, err := f.ks.CreateKey(ctx, kms.CreateKeyInput{MultiRegion: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := stateFormatOf(t, f.dir); got != stateFormatV4 {
		t.Fatalf("format %d with a multi-Region key, want 4", got)
	}
	if _, err := f.ks.ScheduleKeyDeletion(ctx, md.KeyID, 7); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(8 * 24 * time.Hour)
	if _, err := f.ks.DescribeKey(ctx, md.KeyID); kms.Code(err) != kms.CodeNotFound {
		t.Fatalf("DescribeKey after the deletion window: %v", err)
	}
	if got := stateFormatOf(t, f.dir); got != stateFormatV1 {
		t.Fatalf("format %d after the multi-Region key was purged, want 1", got)
	}
}

// TestFormat4Fixture reads testdata/format4-mrk, a keystore of region
// eu-west-1 written when multi-Region keys came (a primary key, alias/mrk,
// with a replica in us-east-2), and a ciphertext made under it: the
// ciphertext decrypts, the configuration reads back, and a rewrite keeps
// format 4.
func TestFormat4Fixture(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "ks")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{stateName, rootKeyName} {
		b, err := os.ReadFile(filepath.Join("testdata/format4-mrk", name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ks := openRegion(t, dir, "eu-west-1")
	const id = "mrk-960ded201f2609f4d55490bc4d2e0df2"
	b64, err := os.ReadFile("testdata/format4-mrk-ciphertext.b64")
	if err != nil {
		t.Fatal(err)
	}
	ct, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b64)))
	if err != nil {
		t.Fatal(err)
	}
	pt, arn, err := ks.Decrypt(ctx, "alias/mrk", ct, kms.EncryptionContext{"v": "4"})
	if err != nil || string(pt) != "format 4 plaintext" || arn != "arn:aws:kms:eu-west-1:000000000000:key/"+id {
		t.Fatalf("Decrypt of the format 4 ciphertext: %q %s %v", pt, arn, err)
	}
	md, err := ks.DescribeKey(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if c := md.MultiRegionConfiguration; c == nil || c.KeyType != kms.MultiRegionPrimary || len(c.ReplicaKeys) != 1 || c.ReplicaKeys[0].ARN != "arn:aws:kms:us-east-2:000000000000:key/"+id {
		t.Fatalf("configuration of the format 4 key: %+v", c)
	}
	if err := ks.UpdateKeyDescription(ctx, id, "rewritten"); err != nil {
		t.Fatal(err)
	}
	if got := stateFormatOf(t, dir); got != stateFormatV4 {
		t.Fatalf("rewritten as format %d, want 4", got)
	}
}

// TestMultiRegionReplicateAgainAfterTheReplicaIsDeleted: AWS lets a
// replica be made again in a region whose replica was deleted; the
// primary, which still lists it, learns so from the replica's keystore.
func TestMultiRegionReplicateAgainAfterTheReplicaIsDeleted(t *testing.T) {
	ctx := context.Background()
	a := openRegion(t, filepath.Join(t.TempDir(), "a"), "eu-west-1")
	clock := newFakeClock()
	b, err := Open(filepath.Join(t.TempDir(), "b"), Options{Region: "us-east-2", Now: clock.Now, Warn: func(string) {}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	md, err := a.CreateKey(ctx, kms.CreateKeyInput{MultiRegion: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Replicate(ctx, a, b, md.KeyID, ReplicaInput{}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.ScheduleKeyDeletion(ctx, md.KeyID, 7); err != nil {
		t.Fatal(err)
	}
	// Pending deletion is not deleted: the replica still exists.
	_, err = Replicate(ctx, a, b, md.KeyID, ReplicaInput{})
	wantCodeName(t, err, kms.CodeAlreadyExists)
	clock.Advance(8 * 24 * time.Hour)
	rmd, err := Replicate(ctx, a, b, md.KeyID, ReplicaInput{Description: "again"})
	if err != nil {
		t.Fatalf("Replicate after the replica was deleted: %v", err)
	}
	if rmd.State != kms.KeyEnabled || rmd.Description != "again" {
		t.Fatalf("new replica: %+v", rmd)
	}
	pmd, err := a.DescribeKey(ctx, md.KeyID)
	if err != nil || len(pmd.MultiRegionConfiguration.ReplicaKeys) != 1 {
		t.Fatalf("primary lists %+v (%v), want the one replica", pmd.MultiRegionConfiguration, err)
	}
}
