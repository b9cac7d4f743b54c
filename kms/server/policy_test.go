package server

import (
	"testing"

	"github.com/kmsfs/kmsfs/kms"
)

const keyARN = "arn:aws:kms:us-test-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"

func mustPolicy(t *testing.T, doc string) *Policy {
	t.Helper()
	p, err := ParsePolicy(doc)
	if err != nil {
		t.Fatalf("ParsePolicy: %v", err)
	}
	return p
}

func TestPolicyEvaluate(t *testing.T) {
	p := mustPolicy(t, `{
	  "Version": "2012-10-17",
	  "Statement": [
	    {"Sid": "Admins", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"}, "Action": "kms:*", "Resource": "*"},
	    {"Sid": "AppUse", "Effect": "Allow", "Principal": {"AWS": ["arn:aws:iam::444455556666:role/app"]},
	     "Action": ["kms:Decrypt", "kms:GenerateDataKey*"], "Resource": "arn:aws:kms:us-test-1:111122223333:key/*",
	     "Condition": {"StringLike": {"kms:EncryptionContext:volume": "vol-*"}}},
	    {"Sid": "OnlyVolumeKeys", "Effect": "Deny", "Principal": "*", "Action": "kms:GenerateDataKey", "Resource": "*",
	     "Condition": {"ForAnyValue:StringNotEquals": {"kms:EncryptionContextKeys": ["volume", "file"]}}},
	    {"Sid": "NoBobDecrypt", "Effect": "Deny", "Principal": {"AWS": "arn:aws:iam::111122223333:user/bob"}, "NotAction": ["kms:Describe*", "kms:Encrypt"], "Resource": "*"}
	  ]
	}`)
	rc := func(principal, action string, ec kms.EncryptionContext) *RequestContext {
		acct, _ := AccountOf(principal)
		return &RequestContext{Principal: principal, Account: acct, Action: action, Resource: keyARN, EncryptionContext: ec}
	}
	alice := "arn:aws:iam::111122223333:user/alice"
	bob := "arn:aws:iam::111122223333:user/bob"
	app := "arn:aws:iam::444455556666:role/app"
	other := "arn:aws:iam::444455556666:role/other"
	cases := []struct {
		name string
		rc   *RequestContext
		want Decision
	}{
		{"account root covers its users", rc(alice, "kms:PutKeyPolicy", nil), Allow},
		{"action names are case-insensitive", rc(alice, "KMS:decrypt", nil), Allow},
		{"deny beats the account allow", rc(bob, "kms:Decrypt", nil), Deny},
		{"NotAction leaves bob DescribeKey", rc(bob, "kms:DescribeKey", nil), Allow},
		{"cross-account role with matching context", rc(app, "kms:GenerateDataKeyWithoutPlaintext", kms.EncryptionContext{"volume": "vol-9"}), Allow},
		{"context key name is case-insensitive", rc(app, "kms:Decrypt", kms.EncryptionContext{"Volume": "vol-1"}), Allow},
		{"context value is case-sensitive", rc(app, "kms:Decrypt", kms.EncryptionContext{"volume": "VOL-1"}), NoMatch},
		{"cross-account role, missing context", rc(app, "kms:Decrypt", nil), NoMatch},
		{"cross-account role, action not listed", rc(app, "kms:Encrypt", kms.EncryptionContext{"volume": "vol-1"}), NoMatch},
		{"other principal of that account", rc(other, "kms:Decrypt", kms.EncryptionContext{"volume": "vol-1"}), NoMatch},
		{"ForAnyValue:StringNotEquals denies a stray context key", rc(alice, "kms:GenerateDataKey", kms.EncryptionContext{"volume": "v", "path": "/x"}), Deny},
		{"ForAnyValue on an empty context is false", rc(alice, "kms:GenerateDataKey", nil), Allow},
		{"allowed context keys only", rc(alice, "kms:GenerateDataKey", kms.EncryptionContext{"volume": "v", "file": "f"}), Allow},
	}
	for _, tc := range cases {
		if got := p.Evaluate(tc.rc); got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestPolicyConditionOperators(t *testing.T) {
	eval := func(cond string, ec kms.EncryptionContext) Decision {
		t.Helper()
		p := mustPolicy(t, `{"Statement":{"Effect":"Allow","Principal":"*","Action":"kms:Decrypt","Resource":"*","Condition":`+cond+`}}`)
		return p.Evaluate(&RequestContext{Principal: "arn:aws:iam::111122223333:user/u", Account: "111122223333", Action: "kms:Decrypt", Resource: keyARN, EncryptionContext: ec})
	}
	cases := []struct {
		cond string
		ec   kms.EncryptionContext
		want Decision
	}{
		{`{"StringEquals":{"kms:EncryptionContext:a":["x","y"]}}`, kms.EncryptionContext{"a": "y"}, Allow},
		{`{"StringEquals":{"kms:EncryptionContext:a":"x"}}`, kms.EncryptionContext{"a": "X"}, NoMatch},
		{`{"StringEqualsIgnoreCase":{"kms:EncryptionContext:a":"x"}}`, kms.EncryptionContext{"a": "X"}, Allow},
		{`{"StringNotEquals":{"kms:EncryptionContext:a":["x","y"]}}`, kms.EncryptionContext{"a": "y"}, NoMatch},
		{`{"StringNotEquals":{"kms:EncryptionContext:a":"x"}}`, nil, Allow}, // negated operator, key absent: true (IAM)
		{`{"StringEquals":{"kms:EncryptionContext:a":"x"}}`, nil, NoMatch},
		{`{"StringEqualsIfExists":{"kms:EncryptionContext:a":"x"}}`, nil, Allow},
		{`{"StringLike":{"kms:EncryptionContext:a":"a?c*"}}`, kms.EncryptionContext{"a": "abcdef"}, Allow},
		{`{"StringNotLike":{"kms:EncryptionContext:a":"a*"}}`, kms.EncryptionContext{"a": "abc"}, NoMatch},
		{`{"ForAllValues:StringEquals":{"kms:EncryptionContextKeys":["a","b"]}}`, kms.EncryptionContext{"a": "1", "b": "2"}, Allow},
		{`{"ForAllValues:StringEquals":{"kms:EncryptionContextKeys":["a","b"]}}`, kms.EncryptionContext{"a": "1", "c": "2"}, NoMatch},
		{`{"ForAllValues:StringEquals":{"kms:EncryptionContextKeys":["a"]}}`, nil, Allow}, // vacuous
		{`{"ForAnyValue:StringEquals":{"kms:EncryptionContextKeys":"a"}}`, kms.EncryptionContext{"b": "1", "a": "2"}, Allow},
		{`{"ForAnyValue:StringEquals":{"kms:EncryptionContextKeys":"a"}}`, nil, NoMatch},
		{`{"Null":{"kms:EncryptionContextKeys":"true"}}`, nil, Allow},
		{`{"Null":{"kms:EncryptionContextKeys":"false"}}`, nil, NoMatch},
		{`{"StringEquals":{"kms:CallerAccount":"111122223333"},"StringLike":{"aws:PrincipalArn":"arn:aws:iam::*:user/u"}}`, nil, Allow},
		{`{"StringEquals":{"kms:CallerAccount":"111122223333","kms:EncryptionContext:a":"x"}}`, nil, NoMatch},
	}
	for _, tc := range cases {
		if got := eval(tc.cond, tc.ec); got != tc.want {
			t.Errorf("%s with %v: got %v, want %v", tc.cond, tc.ec, got, tc.want)
		}
	}
}

func TestParsePolicyRejectsMalformed(t *testing.T) {
	for _, doc := range []string{
		`not json`,
		`{}`,
		`{"Statement":[]}`,
		`{"Statement":{"Effect":"Maybe","Principal":"*","Action":"kms:*","Resource":"*"}}`,
		`{"Statement":{"Effect":"Allow","Action":"kms:*","Resource":"*"}}`,
		`{"Statement":{"Effect":"Allow","Principal":"*","Resource":"*"}}`,
		`{"Statement":{"Effect":"Allow","Principal":"*","Action":"kms:*"}}`,
		`{"Statement":{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"*"}}`,
		`{"Statement":{"Effect":"Allow","Principal":{"AWS":"bob"},"Action":"kms:*","Resource":"*"}}`,
		`{"Statement":{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"DateGreaterThan":{"aws:CurrentTime":"yesterday"}}}}`,
		`{"Statement":{"Effect":"Deny","Principal":"*","Action":"kms:*","Resource":"arn:aws:kms:*:*:key/${aws:username}"}}`,
	} {
		if _, err := ParsePolicy(doc); kms.Code(err) != kms.CodeMalformedPolicy {
			t.Errorf("%s: got %v, want MalformedPolicyDocumentException", doc, err)
		}
	}
}

func TestWildcardMatch(t *testing.T) {
	for _, tc := range []struct {
		p, s string
		want bool
	}{
		{"*", "", true}, {"kms:*", "kms:decrypt", true}, {"kms:gen*", "kms:generatedatakey", true},
		{"kms:gen*key", "kms:generatedatakeywithoutplaintext", false}, {"a*b*c", "aXbYbZc", true},
		{"a?c", "abc", true}, {"a?c", "ac", false}, {"abc", "abcd", false}, {"*x", "yyyx", true},
	} {
		if got := wildcardMatch(tc.p, tc.s); got != tc.want {
			t.Errorf("wildcardMatch(%q, %q) = %v", tc.p, tc.s, got)
		}
	}
}

func BenchmarkPolicyEvaluate(b *testing.B) {
	p, err := ParsePolicy(DefaultPolicy("111122223333"))
	if err != nil {
		b.Fatal(err)
	}
	rc := &RequestContext{Principal: "arn:aws:iam::111122223333:user/u", Account: "111122223333", Action: "kms:Decrypt", Resource: keyARN,
		EncryptionContext: kms.EncryptionContext{"volume": "v", "file": "f"}}
	for b.Loop() {
		if p.Evaluate(rc) != Allow {
			b.Fatal("denied")
		}
	}
}
