package server

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/kms"
	"github.com/kmsfs/kmsfs/kms/awskms"
)

func TestParseIdentityPolicy(t *testing.T) {
	good := []string{
		`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}`,
		`{"Statement":{"Effect":"Deny","NotAction":["kms:Encrypt"],"NotResource":"arn:aws:kms:*:111122223333:key/*"}}`,
		`{"Statement":[{"Effect":"Allow","Action":["s3:GetObject","kms:Decrypt"],"Resource":"*",
		  "Condition":{"StringEquals":{"kms:EncryptionContext:volume":"v1"}}}]}`,
	}
	for _, doc := range good {
		if _, err := ParseIdentityPolicy(doc); err != nil {
			t.Errorf("%s: %v", doc, err)
		}
	}
	bad := map[string]string{
		"principal":      `{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}]}`,
		"not principal":  `{"Statement":[{"Effect":"Allow","NotPrincipal":{"AWS":"111122223333"},"Action":"kms:*","Resource":"*"}]}`,
		"no service":     `{"Statement":[{"Effect":"Allow","Action":"Decrypt","Resource":"*"}]}`,
		"effect":         `{"Statement":[{"Effect":"Maybe","Action":"kms:*","Resource":"*"}]}`,
		"no resource":    `{"Statement":[{"Effect":"Allow","Action":"kms:*"}]}`,
		"variable":       `{"Statement":[{"Effect":"Allow","Action":"kms:*","Resource":"arn:aws:kms:*:${aws:username}:key/*"}]}`,
		"bad operator":   `{"Statement":[{"Effect":"Allow","Action":"kms:*","Resource":"*","Condition":{"StringSortOf":{"kms:CallerAccount":"1"}}}]}`,
		"no statement":   `{"Version":"2012-10-17"}`,
		"not json":       `{"Statement":`,
		"both actions":   `{"Statement":[{"Effect":"Allow","Action":"kms:*","NotAction":"kms:Decrypt","Resource":"*"}]}`,
		"both resources": `{"Statement":[{"Effect":"Allow","Action":"kms:*","Resource":"*","NotResource":"*"}]}`,
	}
	for name, doc := range bad {
		_, err := ParseIdentityPolicy(doc)
		if kms.Code(err) != kms.CodeMalformedPolicy {
			t.Errorf("%s: got %v, want %s", name, err, kms.CodeMalformedPolicy)
		}
	}
	// A key policy still needs its Principal.
	if _, err := ParsePolicy(`{"Statement":[{"Effect":"Allow","Action":"kms:*","Resource":"*"}]}`); err == nil {
		t.Error("key policy without Principal accepted")
	}
}

func TestLoadCredentialsIdentityPolicy(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "creds.json")
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"AKIDA": {"SecretAccessKey": "a", "Principal": "` + aliceARN + `",
	  "IdentityPolicy": {"Statement": [{"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*"}]}},
	 "AKIDB": {"SecretAccessKey": "b", "Principal": "` + bobARN + `",
	  "IdentityPolicy": "{\"Statement\": {\"Effect\": \"Deny\", \"Action\": \"kms:*\", \"Resource\": \"*\"}}"},
	 "AKIDC": {"SecretAccessKey": "c", "Principal": "` + malloryARN + `", "IdentityPolicy": null}}`)
	creds, err := LoadCredentials(path)
	if err != nil {
		t.Fatal(err)
	}
	rc := &RequestContext{Principal: aliceARN, Account: testAccount, Action: "kms:Encrypt", Resource: "*"}
	if d := creds["AKIDA"].Identity.Evaluate(rc); d != Allow {
		t.Errorf("object policy: %v", d)
	}
	if d := creds["AKIDB"].Identity.Evaluate(rc); d != Deny {
		t.Errorf("string policy: %v", d)
	}
	if creds["AKIDC"].Identity != nil {
		t.Error("null policy parsed as a policy")
	}

	write(`{"AKIDA": {"SecretAccessKey": "a", "Principal": "` + aliceARN + `",
	  "IdentityPolicy": {"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:Encrypt", "Resource": "*"}]}}}`)
	_, err = LoadCredentials(path)
	if err == nil {
		t.Fatal("identity policy with a Principal accepted")
	}
	msg := err.Error()
	for _, want := range []string{path, "AKIDA", aliceARN, "MalformedPolicyDocumentException", "Principal"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not name %q", msg, want)
		}
	}
	if strings.Contains(msg, "\n") {
		t.Errorf("error is not one line: %q", msg)
	}
}

// TestKeyPolicyIdentityPolicyAndGrants walks AWS's evaluation of a key
// policy, the caller's identity policy and grants, same account and across
// accounts.
func TestKeyPolicyIdentityPolicyAndGrants(t *testing.T) {
	const (
		denyDecARN  = "arn:aws:iam::" + testAccount + ":user/denydec"
		encOnlyARN  = "arn:aws:iam::" + testAccount + ":user/enconly"
		noKMSARN    = "arn:aws:iam::" + testAccount + ":user/nokms"
		xAllowARN   = "arn:aws:iam::" + otherAcct + ":user/xallow"
		xNoKMSARN   = "arn:aws:iam::" + otherAcct + ":user/xnokms"
		allowAll    = `{"Effect":"Allow","Action":"kms:*","Resource":"*"}`
		onlyS3      = `{"Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}`
		denyDecrypt = `{"Statement":[` + allowAll + `,{"Effect":"Deny","Action":"kms:Decrypt","Resource":"*"}]}`
	)
	identity := func(doc string) *Policy {
		p, err := ParseIdentityPolicy(doc)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	creds := Credentials{
		"AKIDALICE": testCreds["AKIDALICE"],
		"AKIDMAL":   testCreds["AKIDMAL"],
		"AKIDDENYDEC": {AccessKeyID: "AKIDDENYDEC", SecretAccessKey: "s", Principal: denyDecARN, Account: testAccount,
			Identity: identity(denyDecrypt)},
		"AKIDENCONLY": {AccessKeyID: "AKIDENCONLY", SecretAccessKey: "s", Principal: encOnlyARN, Account: testAccount,
			Identity: identity(`{"Statement":[{"Effect":"Allow","Action":["kms:Encrypt","kms:ListKeys"],"Resource":"*"}]}`)},
		"AKIDNOKMS": {AccessKeyID: "AKIDNOKMS", SecretAccessKey: "s", Principal: noKMSARN, Account: testAccount,
			Identity: identity(onlyS3)},
		"AKIDXALLOW": {AccessKeyID: "AKIDXALLOW", SecretAccessKey: "s", Principal: xAllowARN, Account: otherAcct,
			Identity: identity(`{"Statement":[{"Effect":"Allow","Action":["kms:Encrypt","kms:Decrypt"],"Resource":"arn:aws:kms:*:` + testAccount + `:key/*"}]}`)},
		"AKIDXNOKMS": {AccessKeyID: "AKIDXNOKMS", SecretAccessKey: "s", Principal: xNoKMSARN, Account: otherAcct,
			Identity: identity(onlyS3)},
	}
	h := newHarnessWith(t, 0, creds)
	ctx := context.Background()
	admin := h.client("AKIDALICE", awskms.Options{})
	key := func(policy string) string {
		md, err := admin.CreateKey(ctx, kms.CreateKeyInput{Policy: policy})
		if err != nil {
			t.Fatal(err)
		}
		return md.ARN
	}
	rootAdmin := `{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::` + testAccount + `:root"},"Action":"kms:*","Resource":"*"}`
	defaultKey := key("")
	direct := key(`{"Statement":[` + rootAdmin + `,{"Effect":"Allow","Principal":{"AWS":["` + noKMSARN + `","` + xNoKMSARN + `"]},"Action":["kms:Encrypt","kms:Decrypt"],"Resource":"*"}]}`)
	star := key(`{"Statement":[` + rootAdmin + `,{"Effect":"Allow","Principal":"*","Action":"kms:Encrypt","Resource":"*"}]}`)
	otherRoot := key(`{"Statement":[` + rootAdmin + `,{"Effect":"Allow","Principal":{"AWS":"` + otherAcct + `"},"Action":["kms:Encrypt","kms:Decrypt"],"Resource":"*"}]}`)
	granted := key("")
	for _, g := range []string{noKMSARN, denyDecARN, xNoKMSARN} {
		if _, _, err := admin.CreateGrant(ctx, kms.Grant{KeyID: granted, GranteePrincipal: g, Operations: []string{"Encrypt", "Decrypt"}}); err != nil {
			t.Fatal(err)
		}
	}

	blobs := map[string][]byte{}
	for _, k := range []string{defaultKey, direct, star, otherRoot, granted} {
		blob, _, err := admin.Encrypt(ctx, k, []byte("secret"), nil)
		if err != nil {
			t.Fatal(err)
		}
		blobs[k] = blob
	}

	cases := []struct {
		name, akid, key, op string
		want                string // "" allowed, else a fragment of the AccessDenied message
	}{
		{"root key: identity allows encrypt", "AKIDDENYDEC", defaultKey, "Encrypt", ""},
		{"root key: identity denies decrypt", "AKIDDENYDEC", defaultKey, "Decrypt", "explicit deny in an identity-based policy"},
		{"root key: identity allows only encrypt", "AKIDENCONLY", defaultKey, "Encrypt", ""},
		{"root key: identity lacks decrypt", "AKIDENCONLY", defaultKey, "Decrypt", "no identity-based policy allows"},
		{"root key: identity lacks kms", "AKIDNOKMS", defaultKey, "Encrypt", "no identity-based policy allows"},
		{"no identity policy: root key allows", "AKIDALICE", defaultKey, "Decrypt", ""},
		{"key policy names the user", "AKIDNOKMS", direct, "Decrypt", ""},
		{"key policy allows everyone", "AKIDNOKMS", star, "Encrypt", ""},
		{"key policy allows everyone, not decrypt", "AKIDNOKMS", star, "Decrypt", "no identity-based policy allows"},
		{"key policy names the user, deny still wins", "AKIDDENYDEC", direct, "Decrypt", "explicit deny"},
		{"grant without identity policy", "AKIDNOKMS", granted, "Decrypt", ""},
		{"grant, identity deny wins", "AKIDDENYDEC", granted, "Decrypt", "explicit deny in an identity-based policy"},
		{"cross account: both allow", "AKIDXALLOW", otherRoot, "Decrypt", ""},
		{"cross account: no identity allow", "AKIDXNOKMS", otherRoot, "Decrypt", "no identity-based policy allows"},
		{"cross account: named, no identity allow", "AKIDXNOKMS", direct, "Decrypt", "no identity-based policy allows"},
		{"cross account: identity allows, key policy does not", "AKIDXALLOW", defaultKey, "Decrypt", "no resource-based policy or grant allows"},
		{"cross account: grant", "AKIDXNOKMS", granted, "Encrypt", ""},
		{"cross account: no identity policy", "AKIDMAL", otherRoot, "Encrypt", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := h.client(tc.akid, awskms.Options{MaxAttempts: 1})
			var err error
			switch tc.op {
			case "Encrypt":
				_, _, err = c.Encrypt(ctx, tc.key, []byte("x"), nil)
			case "Decrypt":
				_, _, err = c.Decrypt(ctx, tc.key, blobs[tc.key], nil)
			}
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if kms.Code(err) != kms.CodeAccessDenied || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want AccessDenied %q", err, tc.want)
			}
		})
	}

	// Operations that name no key are decided by the identity policy alone.
	enc := h.client("AKIDENCONLY", awskms.Options{MaxAttempts: 1})
	if _, err := enc.ListKeys(ctx); err != nil {
		t.Errorf("ListKeys allowed by identity policy: %v", err)
	}
	if _, err := enc.CreateKey(ctx, kms.CreateKeyInput{}); kms.Code(err) != kms.CodeAccessDenied {
		t.Errorf("CreateKey without identity allow: %v", err)
	}
	if _, err := h.client("AKIDNOKMS", awskms.Options{MaxAttempts: 1}).GenerateRandom(ctx, 16); kms.Code(err) != kms.CodeAccessDenied {
		t.Errorf("GenerateRandom without identity allow: %v", err)
	}
}
