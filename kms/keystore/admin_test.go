package keystore

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/kms"
)

func TestAliasNameRules(t *testing.T) {
	f := newFixture(t)
	md := createKey(t, f.ks)
	for _, bad := range []string{
		"vol", "alias/", "alias/aws/mine", "alias/a b", "alias/a:b", "alias/é",
		"ALIAS/x", "alias/" + strings.Repeat("a", 251),
	} {
		wantCode(t, f.ks.CreateAlias(bg, bad, md.KeyID), &kms.Error{Code: kms.CodeInvalidAliasName})
	}
	for _, good := range []string{"alias/a", "alias/My_Key-1/sub", "alias/awsx", "alias/" + strings.Repeat("a", 250)} {
		if err := f.ks.CreateAlias(bg, good, md.KeyID); err != nil {
			t.Errorf("CreateAlias(%q): %v", good, err)
		}
	}
}

func TestAliasLifecycle(t *testing.T) {
	f := newFixture(t)
	a := createKey(t, f.ks)
	b := createKey(t, f.ks)
	if err := f.ks.CreateAlias(bg, "alias/app", a.KeyID); err != nil {
		t.Fatal(err)
	}
	wantCode(t, f.ks.CreateAlias(bg, "alias/app", b.KeyID), &kms.Error{Code: kms.CodeAlreadyExists})
	wantCode(t, f.ks.CreateAlias(bg, "alias/other", "alias/app"), kms.ErrValidation)
	wantCode(t, f.ks.CreateAlias(bg, "alias/other", "00000000-0000-4000-8000-000000000000"), kms.ErrNotFound)
	if err := f.ks.CreateAlias(bg, "alias/b-by-arn", b.ARN); err != nil {
		t.Fatal(err)
	}

	got, _ := f.ks.DescribeKey(bg, "alias/app")
	if got.KeyID != a.KeyID {
		t.Fatalf("alias/app resolves to %s, want %s", got.KeyID, a.KeyID)
	}
	if err := f.ks.UpdateAlias(bg, "alias/app", b.KeyID); err != nil {
		t.Fatal(err)
	}
	got, _ = f.ks.DescribeKey(bg, "arn:aws:kms:local:000000000000:alias/app")
	if got.KeyID != b.KeyID {
		t.Fatalf("after UpdateAlias alias/app resolves to %s, want %s", got.KeyID, b.KeyID)
	}
	wantCode(t, f.ks.UpdateAlias(bg, "alias/none", b.KeyID), kms.ErrNotFound)

	all, err := f.ks.ListAliases(bg, "")
	if err != nil || len(all) != 2 || all[0].Name != "alias/app" || all[1].Name != "alias/b-by-arn" {
		t.Fatalf("ListAliases: %+v, %v", all, err)
	}
	if all[0].ARN != "arn:aws:kms:local:000000000000:alias/app" || all[0].TargetKeyID != b.KeyID {
		t.Fatalf("alias entry %+v", all[0])
	}
	ofA, _ := f.ks.ListAliases(bg, a.KeyID)
	if len(ofA) != 0 {
		t.Fatalf("aliases of a: %+v", ofA)
	}
	ofB, _ := f.ks.ListAliases(bg, b.ARN)
	if len(ofB) != 2 {
		t.Fatalf("aliases of b: %+v", ofB)
	}
	if err := f.ks.DeleteAlias(bg, "alias/app"); err != nil {
		t.Fatal(err)
	}
	wantCode(t, f.ks.DeleteAlias(bg, "alias/app"), kms.ErrNotFound)
	_, err = f.ks.DescribeKey(bg, "alias/app")
	wantCode(t, err, kms.ErrNotFound)
	if _, err := f.ks.DescribeKey(bg, b.KeyID); err != nil {
		t.Fatalf("deleting an alias affected its key: %v", err)
	}
}

func TestKeyPolicies(t *testing.T) {
	f := newFixture(t)
	md := createKey(t, f.ks)
	policy, err := f.ks.GetKeyPolicy(bg, md.KeyID)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Version   string
		Statement []struct {
			Effect    string
			Principal struct{ AWS string }
			Action    string
			Resource  string
		}
	}
	if err := json.Unmarshal([]byte(policy), &doc); err != nil {
		t.Fatalf("default policy is not JSON: %v", err)
	}
	if doc.Version != "2012-10-17" || len(doc.Statement) != 1 {
		t.Fatalf("default policy %s", policy)
	}
	s := doc.Statement[0]
	if s.Effect != "Allow" || s.Principal.AWS != "arn:aws:iam::000000000000:root" || s.Action != "kms:*" || s.Resource != "*" {
		t.Fatalf("default policy statement %+v", s)
	}

	mine := `{"Version":"2012-10-17",  "Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::000000000000:role/x"},"Action":"kms:Decrypt","Resource":"*"}]}`
	if err := f.ks.PutKeyPolicy(bg, md.KeyID, mine); err != nil {
		t.Fatal(err)
	}
	if got, _ := f.ks.GetKeyPolicy(bg, md.KeyID); got != mine {
		t.Fatalf("policy not stored verbatim:\n%s", got)
	}
	for _, bad := range []string{"", "not json", `["a"]`, `{"a":1} {"b":2}`, `{"a":`, strings.Repeat(" ", 40000) + "{}"} {
		wantCode(t, f.ks.PutKeyPolicy(bg, md.KeyID, bad), &kms.Error{Code: kms.CodeMalformedPolicy})
	}
	_, err = f.ks.CreateKey(bg, kms.CreateKeyInput{Policy: "{"})
	wantCode(t, err, &kms.Error{Code: kms.CodeMalformedPolicy})
	withPolicy, err := f.ks.CreateKey(bg, kms.CreateKeyInput{Policy: mine, Principal: "arn:aws:iam::000000000000:user/u"})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := f.ks.GetKeyPolicy(bg, withPolicy.KeyID); got != mine {
		t.Fatal("CreateKey policy not stored verbatim")
	}
	if withPolicy.CreatingPrincipalARN != "arn:aws:iam::000000000000:user/u" || withPolicy.KeyManager != "CUSTOMER" || withPolicy.Origin != "AWS_KMS" {
		t.Fatalf("metadata %+v", withPolicy)
	}
}

func TestGrants(t *testing.T) {
	f := newFixture(t)
	a := createKey(t, f.ks)
	b := createKey(t, f.ks)
	g := kms.Grant{
		KeyID:             a.ARN,
		Name:              "mount-1",
		GranteePrincipal:  "arn:aws:iam::000000000000:role/mount",
		RetiringPrincipal: "arn:aws:iam::000000000000:role/admin",
		Operations:        []string{"Decrypt", "GenerateDataKey"},
		ContextSubset:     map[string]string{"volume": "v1"},
	}
	id, token, err := f.ks.CreateGrant(bg, g)
	if err != nil {
		t.Fatal(err)
	}
	if len(id) != 64 || token == "" {
		t.Fatalf("grant ID %q token %q", id, token)
	}
	id2, token2, err := f.ks.CreateGrant(bg, g)
	if err != nil || id2 != id || token2 != token {
		t.Fatalf("repeated named grant: %s %v", id2, err)
	}
	g.Name = ""
	id3, token3, err := f.ks.CreateGrant(bg, g)
	if err != nil || id3 == id || token3 == token {
		t.Fatalf("second grant: id %s, %v", id3, err)
	}
	list, err := f.ks.ListGrants(bg, a.KeyID)
	if err != nil || len(list) != 2 {
		t.Fatalf("ListGrants: %d grants, %v", len(list), err)
	}
	if list[0].KeyID != a.ARN || list[0].IssuingAccount != "arn:aws:iam::000000000000:root" || list[0].ContextSubset["volume"] != "v1" || len(list[0].Operations) != 2 {
		t.Fatalf("grant entry %+v", list[0])
	}
	if l, _ := f.ks.ListGrants(bg, b.KeyID); len(l) != 0 {
		t.Fatalf("grants on b: %+v", l)
	}

	for _, bad := range []kms.Grant{
		{KeyID: a.KeyID, Operations: []string{"Decrypt"}},
		{KeyID: a.KeyID, GranteePrincipal: "p"},
		{KeyID: a.KeyID, GranteePrincipal: "p", Operations: []string{"Fly"}},
		{KeyID: a.KeyID, GranteePrincipal: "p", Operations: []string{"Decrypt"}, ContextEquals: map[string]string{"a": "b"}, ContextSubset: map[string]string{"a": "b"}},
		{KeyID: a.KeyID, GranteePrincipal: "p", Operations: []string{"Decrypt"}, Name: "bad name"},
		{KeyID: "alias/x", GranteePrincipal: "p", Operations: []string{"Decrypt"}},
	} {
		_, _, err := f.ks.CreateGrant(bg, bad)
		wantCode(t, err, kms.ErrValidation)
	}

	wantCode(t, f.ks.RevokeGrant(bg, b.KeyID, id), kms.ErrNotFound)
	wantCode(t, f.ks.RevokeGrant(bg, a.KeyID, ""), &kms.Error{Code: kms.CodeInvalidGrantID})
	if err := f.ks.RevokeGrant(bg, a.KeyID, id3); err != nil {
		t.Fatal(err)
	}
	wantCode(t, f.ks.RetireGrant(bg, "no-such-token", "", ""), &kms.Error{Code: kms.CodeInvalidGrantToken})
	wantCode(t, f.ks.RetireGrant(bg, "", a.KeyID, ""), kms.ErrValidation)
	if err := f.ks.RetireGrant(bg, token, "", ""); err != nil {
		t.Fatal(err)
	}
	if l, _ := f.ks.ListGrants(bg, a.KeyID); len(l) != 0 {
		t.Fatalf("grants left: %+v", l)
	}
	id4, _, err := f.ks.CreateGrant(bg, kms.Grant{KeyID: b.KeyID, GranteePrincipal: "p", Operations: []string{"Encrypt"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.ks.RetireGrant(bg, "", b.ARN, id4); err != nil {
		t.Fatal(err)
	}
	wantCode(t, f.ks.RetireGrant(bg, "", b.ARN, id4), kms.ErrNotFound)

	if _, err := f.ks.ScheduleKeyDeletion(bg, b.KeyID, 7); err != nil {
		t.Fatal(err)
	}
	_, _, err = f.ks.CreateGrant(bg, kms.Grant{KeyID: b.KeyID, GranteePrincipal: "p", Operations: []string{"Encrypt"}})
	wantCode(t, err, kms.ErrInvalidState)
}

func TestListKeysAndDescribe(t *testing.T) {
	f := newFixture(t)
	var ids []string
	for i := 0; i < 3; i++ {
		ids = append(ids, createKey(t, f.ks).KeyID)
		f.clock.Advance(1)
	}
	keys, err := f.ks.ListKeys(bg)
	if err != nil || len(keys) != 3 {
		t.Fatalf("ListKeys: %d, %v", len(keys), err)
	}
	for i, md := range keys {
		if md.KeyID != ids[i] || md.State != kms.KeyEnabled || md.CurrentVersion != 1 || md.Versions != 1 || md.Description != "test key" {
			t.Fatalf("key %d: %+v", i, md)
		}
	}
	_, err = f.ks.CreateKey(bg, kms.CreateKeyInput{Description: strings.Repeat("d", 8193)})
	wantCode(t, err, kms.ErrValidation)
	_, err = f.ks.DescribeKey(bg, "")
	wantCode(t, err, kms.ErrValidation)
}

// A grant token never starts with "-": the aws CLI, given
// `--grant-tokens -X...`, takes the token for an unknown option. With 48
// random bytes alone one token in 64 would.
func TestGrantTokensNeverLookLikeOptions(t *testing.T) {
	f := newFixture(t)
	a := createKey(t, f.ks)
	for i := range 200 {
		_, token, err := f.ks.CreateGrant(bg, kms.Grant{KeyID: a.ARN, GranteePrincipal: fmt.Sprintf("arn:aws:iam::000000000000:role/r%d", i), Operations: []string{"Decrypt"}})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(token, "A") || len(token) != 66 {
			t.Fatalf("grant token %q: want 66 characters starting with A", token)
		}
	}
}
