package keystore

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/kms"
)

const (
	testRegion  = "us-test-1"
	homeAccount = "111122223333"
	otherAcct   = "444455556666"
)

// openFormat1 copies testdata/format1 (a keystore written by kmsfs before
// keys recorded an account: one key, alias/old, and a ciphertext under it)
// to a fresh directory and opens it as account homeAccount.
func openFormat1(t *testing.T) (*Keystore, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ks")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{stateName, rootKeyName} {
		b, err := os.ReadFile(filepath.Join("testdata/format1", name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ks, err := Open(dir, Options{Region: testRegion, Account: homeAccount, Warn: func(string) {}})
	if err != nil {
		t.Fatalf("Open of a format 1 keystore: %v", err)
	}
	t.Cleanup(func() { ks.Close() })
	return ks, dir
}

func stateFormatOf(t *testing.T, dir string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, stateName))
	if err != nil {
		t.Fatal(err)
	}
	var v struct{ Format int }
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return v.Format
}

func TestFormat1KeystoreKeysBelongToTheKeystoreAccount(t *testing.T) {
	ks, dir := openFormat1(t)
	ctx := context.Background()
	b64, _ := os.ReadFile("testdata/format1-ciphertext.b64")
	ct, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b64)))
	if err != nil {
		t.Fatal(err)
	}
	pt, arn, err := ks.Decrypt(ctx, "alias/old", ct, kms.EncryptionContext{"v": "1"})
	if err != nil || string(pt) != "old plaintext" {
		t.Fatalf("decrypt of a format 1 ciphertext: %q %v", pt, err)
	}
	if !strings.HasPrefix(arn, "arn:aws:kms:"+testRegion+":"+homeAccount+":key/") {
		t.Fatalf("old key's ARN %s is not in the keystore's account", arn)
	}
	// By ARN of its account, and by alias ARN; not under another account.
	if _, err := ks.DescribeKey(ctx, arn); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.DescribeKey(ctx, "arn:aws:kms:"+testRegion+":"+homeAccount+":alias/old"); err != nil {
		t.Fatal(err)
	}
	other := strings.Replace(arn, homeAccount, otherAcct, 1)
	wantCode(t, func() error { _, err := ks.DescribeKey(ctx, other); return err }(), kms.ErrNotFound)
	wantCode(t, func() error {
		_, err := ks.DescribeKey(ctx, "arn:aws:kms:"+testRegion+":"+otherAcct+":alias/old")
		return err
	}(), kms.ErrNotFound)

	// A change that involves no other account keeps format 1, so an older
	// kmsfs still reads the keystore.
	if _, err := ks.CreateKey(ctx, kms.CreateKeyInput{}); err != nil {
		t.Fatal(err)
	}
	if f := stateFormatOf(t, dir); f != 1 {
		t.Fatalf("format %d after a home-account change, want 1", f)
	}
	// A key of another account makes it format 2.
	if _, err := ks.CreateKey(ctx, kms.CreateKeyInput{Account: otherAcct}); err != nil {
		t.Fatal(err)
	}
	if f := stateFormatOf(t, dir); f != 2 {
		t.Fatalf("format %d with another account's key, want 2", f)
	}
}

func TestAccountsHaveTheirOwnKeysAndAliases(t *testing.T) {
	ks, dir := openFormat1(t)
	ctx := context.Background()
	home, err := ks.DescribeKey(ctx, "alias/old")
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := ks.CreateKey(ctx, kms.CreateKeyInput{Account: otherAcct})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(theirs.ARN, "arn:aws:kms:"+testRegion+":"+otherAcct+":key/") {
		t.Fatalf("other account's key ARN %s", theirs.ARN)
	}
	// Its default policy names its own account's root.
	pol, _ := ks.GetKeyPolicy(ctx, theirs.ARN)
	if !strings.Contains(pol, "arn:aws:iam::"+otherAcct+":root") || strings.Contains(pol, homeAccount) {
		t.Fatalf("default policy of the other account's key: %s", pol)
	}
	// A bare key ID names a key of the keystore's account only.
	wantCode(t, func() error { _, err := ks.DescribeKey(ctx, theirs.KeyID); return err }(), kms.ErrNotFound)

	// The same alias name in both accounts names each account's own key.
	theirAlias := "arn:aws:kms:" + testRegion + ":" + otherAcct + ":alias/old"
	if err := ks.CreateAlias(ctx, theirAlias, theirs.ARN); err != nil {
		t.Fatal(err)
	}
	for alias, want := range map[string]string{"alias/old": home.ARN, theirAlias: theirs.ARN} {
		md, err := ks.DescribeKey(ctx, alias)
		if err != nil || md.ARN != want {
			t.Fatalf("%s resolves to %s (%v), want %s", alias, md.ARN, err, want)
		}
	}
	// An alias cannot point at another account's key.
	wantCodeName(t, ks.CreateAlias(ctx, "alias/cross", theirs.ARN), kms.CodeNotFound)
	wantCodeName(t, ks.UpdateAlias(ctx, theirAlias, home.ARN), kms.CodeNotFound)

	all, err := ks.ListAliases(ctx, "")
	if err != nil || len(all) != 2 {
		t.Fatalf("ListAliases: %+v %v", all, err)
	}
	arns := all[0].ARN + " " + all[1].ARN
	if !strings.Contains(arns, homeAccount+":alias/old") || !strings.Contains(arns, otherAcct+":alias/old") {
		t.Fatalf("alias ARNs %s", arns)
	}
	// Grants on the other account's key are issued by that account.
	if _, _, err := ks.CreateGrant(ctx, kms.Grant{KeyID: theirs.ARN, GranteePrincipal: "arn:aws:iam::" + homeAccount + ":user/u", Operations: []string{"Decrypt"}}); err != nil {
		t.Fatal(err)
	}
	grants, _ := ks.ListGrants(ctx, theirs.ARN)
	if len(grants) != 1 || grants[0].IssuingAccount != "arn:aws:iam::"+otherAcct+":root" || grants[0].KeyID != theirs.ARN {
		t.Fatalf("grant: %+v", grants)
	}

	// All of it survives a reopen; deleting the other account's alias and
	// purging its key leaves a state an older kmsfs can read again.
	ks.Close()
	ks2, err := Open(dir, Options{Region: testRegion, Account: homeAccount, Warn: func(string) {}})
	if err != nil {
		t.Fatal(err)
	}
	defer ks2.Close()
	if md, err := ks2.DescribeKey(ctx, theirAlias); err != nil || md.ARN != theirs.ARN {
		t.Fatalf("after reopen: %s %v", md.ARN, err)
	}
	if err := ks2.DeleteAlias(ctx, theirAlias); err != nil {
		t.Fatal(err)
	}
	if md, err := ks2.DescribeKey(ctx, "alias/old"); err != nil || md.ARN != home.ARN {
		t.Fatalf("deleting the other account's alias/old touched ours: %v", err)
	}
	if f := stateFormatOf(t, dir); f != 2 {
		t.Fatalf("format %d while another account's key exists", f)
	}
}

func TestTagsAndDescription(t *testing.T) {
	f := newFixture(t)
	md, err := f.ks.CreateKey(bg, kms.CreateKeyInput{Tags: map[string]string{"team": "red"}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.ks.CreateKey(bg, kms.CreateKeyInput{Tags: map[string]string{"aws:x": "y"}})
	wantCodeName(t, err, "TagException")
	if err := f.ks.TagResource(bg, md.ARN, map[string]string{"env": "test", "team": "blue"}); err != nil {
		t.Fatal(err)
	}
	if err := f.ks.UntagResource(bg, md.KeyID, []string{"env", "absent"}); err != nil {
		t.Fatal(err)
	}
	wantCodeName(t, f.ks.TagResource(bg, "alias/x", map[string]string{"a": "b"}), kms.CodeValidation)
	if err := f.ks.UpdateKeyDescription(bg, md.KeyID, "renamed"); err != nil {
		t.Fatal(err)
	}
	// Both survive a reopen.
	f.ks.Close()
	ks := f.open(t, nil)
	tags, err := ks.ListResourceTags(bg, md.KeyID)
	if err != nil || len(tags) != 1 || tags["team"] != "blue" {
		t.Fatalf("tags %v %v", tags, err)
	}
	if got, _ := ks.DescribeKey(bg, md.KeyID); got.Description != "renamed" {
		t.Fatalf("description %q", got.Description)
	}
	if _, err := ks.ScheduleKeyDeletion(bg, md.KeyID, 7); err != nil {
		t.Fatal(err)
	}
	wantCode(t, ks.UpdateKeyDescription(bg, md.KeyID, "x"), kms.ErrInvalidState)
	wantCode(t, ks.TagResource(bg, md.KeyID, map[string]string{"a": "b"}), kms.ErrInvalidState)
}

func TestAliasDates(t *testing.T) {
	f := newFixture(t)
	a, b := createKey(t, f.ks), createKey(t, f.ks)
	created := f.clock.Now()
	if err := f.ks.CreateAlias(bg, "alias/d", a.KeyID); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(time.Hour)
	if err := f.ks.UpdateAlias(bg, "alias/d", b.KeyID); err != nil {
		t.Fatal(err)
	}
	list, err := f.ks.ListAliases(bg, "")
	if err != nil || len(list) != 1 || !list[0].CreationDate.Equal(created) || !list[0].LastUpdatedDate.Equal(created.Add(time.Hour)) {
		t.Fatalf("alias dates: %+v %v", list, err)
	}
	// Deleting and re-creating starts afresh; an alias of a format 1
	// keystore has no dates until it is re-pointed.
	if err := f.ks.DeleteAlias(bg, "alias/d"); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(time.Hour)
	if err := f.ks.CreateAlias(bg, "alias/d", a.KeyID); err != nil {
		t.Fatal(err)
	}
	list, _ = f.ks.ListAliases(bg, "")
	if !list[0].CreationDate.Equal(created.Add(2 * time.Hour)) {
		t.Fatalf("re-created alias: %+v", list)
	}
	old, _ := openFormat1(t)
	list, _ = old.ListAliases(bg, "")
	if len(list) != 1 || !list[0].CreationDate.IsZero() {
		t.Fatalf("format 1 alias: %+v", list)
	}
}
