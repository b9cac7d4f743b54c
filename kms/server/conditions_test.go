package server

import (
	"strings"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/kms"
)

// TestConditionKeysAndOperators evaluates, for each supported condition key
// and operator family, an Allow statement that must match and one that must
// not, and a Deny that must apply: nothing is silently inert.
func TestConditionKeysAndOperators(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	base := func() *RequestContext {
		return &RequestContext{
			Principal:       "arn:aws:sts::111122223333:assumed-role/app/s1",
			PrincipalArn:    "arn:aws:iam::111122223333:role/app",
			Account:         "111122223333",
			Action:          "kms:Decrypt",
			Resource:        keyARN,
			SecureTransport: true,
			SourceIP:        "10.1.2.3",
			CurrentTime:     now,
			RequestAlias:    "alias/app",
			Values: map[string][]string{
				"kms:grantisforawsresource": {"false"},
				"kms:grantoperations":       {"Decrypt", "Encrypt"},
				"kms:granteeprincipal":      {"arn:aws:iam::111122223333:user/g"},
				"kms:rotationperiodindays":  {"180"},
			},
			EncryptionContext: kms.EncryptionContext{"volume": "v1"},
			Lazy: func(key string) ([]string, bool) {
				switch key {
				case "kms:keyorigin":
					return []string{"EXTERNAL"}, true
				case "kms:keyspec":
					return []string{"SYMMETRIC_DEFAULT"}, true
				case "kms:keyusage":
					return []string{"ENCRYPT_DECRYPT"}, true
				case "kms:resourcealiases":
					return []string{"alias/app", "alias/prod"}, true
				}
				return nil, false
			},
		}
	}
	cases := []struct {
		cond  string
		match bool
	}{
		// String operators and keys.
		{`"StringEquals":{"kms:KeyOrigin":"EXTERNAL"}`, true},
		{`"StringEquals":{"kms:KeyOrigin":"AWS_KMS"}`, false},
		{`"StringNotEquals":{"kms:KeyOrigin":"AWS_KMS"}`, true},
		{`"StringEquals":{"kms:KeySpec":"SYMMETRIC_DEFAULT","kms:KeyUsage":"ENCRYPT_DECRYPT"}`, true},
		{`"StringEquals":{"kms:KeyUsage":"SIGN_VERIFY"}`, false},
		{`"StringEqualsIgnoreCase":{"kms:RequestAlias":"ALIAS/APP"}`, true},
		{`"StringLike":{"kms:RequestAlias":"alias/a*"}`, true},
		{`"StringNotLike":{"kms:RequestAlias":"alias/a*"}`, false},
		{`"StringEquals":{"kms:ViaService":"s3.us-test-1.amazonaws.com"}`, false},   // absent: no match
		{`"StringNotEquals":{"kms:ViaService":"s3.us-test-1.amazonaws.com"}`, true}, // absent, negated: true
		{`"StringEqualsIfExists":{"kms:ViaService":"s3.us-test-1.amazonaws.com"}`, true},
		{`"StringEquals":{"kms:CallerAccount":"111122223333","aws:PrincipalAccount":"111122223333"}`, true},
		// ARN operators; aws:PrincipalArn of a role session is the role.
		{`"ArnEquals":{"aws:PrincipalArn":"arn:aws:iam::111122223333:role/app"}`, true},
		{`"ArnLike":{"aws:PrincipalArn":"arn:aws:iam::*:role/a*"}`, true},
		{`"ArnNotEquals":{"aws:PrincipalArn":"arn:aws:iam::111122223333:role/app"}`, false},
		{`"StringEquals":{"aws:PrincipalArn":"arn:aws:sts::111122223333:assumed-role/app/s1"}`, false},
		{`"ArnLike":{"kms:GranteePrincipal":"arn:aws:iam::111122223333:user/*"}`, true},
		// Multivalued keys with set operators.
		{`"ForAnyValue:StringEquals":{"kms:ResourceAliases":"alias/prod"}`, true},
		{`"ForAllValues:StringLike":{"kms:ResourceAliases":"alias/*"}`, true},
		{`"ForAllValues:StringEquals":{"kms:ResourceAliases":"alias/app"}`, false},
		{`"ForAnyValue:StringEquals":{"kms:GrantOperations":"Encrypt"}`, true},
		{`"ForAllValues:StringEquals":{"kms:GrantOperations":["Decrypt"]}`, false},
		{`"ForAllValues:StringEquals":{"kms:EncryptionContextKeys":["volume","file"]}`, true},
		// Bool.
		{`"Bool":{"aws:SecureTransport":"true"}`, true},
		{`"Bool":{"aws:SecureTransport":false}`, false},
		{`"Bool":{"kms:GrantIsForAWSResource":"false"}`, true},
		{`"Bool":{"kms:GrantIsForAWSResource":"true"}`, false},
		// IP addresses.
		{`"IpAddress":{"aws:SourceIp":"10.0.0.0/8"}`, true},
		{`"IpAddress":{"aws:SourceIp":["192.168.0.0/16","10.1.2.3"]}`, true},
		{`"IpAddress":{"aws:SourceIp":"192.168.0.0/16"}`, false},
		{`"NotIpAddress":{"aws:SourceIp":"10.0.0.0/8"}`, false},
		{`"NotIpAddress":{"aws:SourceIp":"192.168.0.0/16"}`, true},
		// Dates and numbers.
		{`"DateGreaterThan":{"aws:CurrentTime":"2026-01-01T00:00:00Z"}`, true},
		{`"DateLessThan":{"aws:CurrentTime":"2026-01-01"}`, false},
		{`"DateLessThanEquals":{"aws:CurrentTime":"2026-06-01T12:00:00Z"}`, true},
		{`"DateGreaterThanEquals":{"aws:CurrentTime":"2026-06-01T12:00:01Z"}`, false},
		{`"DateEquals":{"aws:CurrentTime":"2026-06-01T12:00:00Z"}`, true},
		{`"DateNotEquals":{"aws:CurrentTime":"2026-06-01T12:00:00Z"}`, false},
		{`"DateGreaterThan":{"aws:EpochTime":"1767225600"}`, true},
		{`"NumericLessThan":{"aws:EpochTime":"1767225600"}`, false},
		{`"NumericLessThanEquals":{"kms:RotationPeriodInDays":"180"}`, true},
		{`"NumericLessThan":{"kms:RotationPeriodInDays":"180"}`, false},
		{`"NumericGreaterThan":{"kms:RotationPeriodInDays":90}`, true},
		{`"NumericGreaterThanEquals":{"kms:RotationPeriodInDays":"365"}`, false},
		{`"NumericEquals":{"kms:RotationPeriodInDays":["90","180"]}`, true},
		{`"NumericNotEquals":{"kms:RotationPeriodInDays":"180"}`, false},
		{`"NumericLessThan":{"kms:ScheduleKeyDeletionPendingWindowInDays":"30"}`, false}, // absent
		{`"NumericLessThanIfExists":{"kms:ScheduleKeyDeletionPendingWindowInDays":"30"}`, true},
		// Null.
		{`"Null":{"kms:ViaService":"true"}`, true},
		{`"Null":{"kms:ViaService":"false"}`, false},
		{`"Null":{"aws:SourceIp":"false","kms:EncryptionContext:volume":"false"}`, true},
		{`"Null":{"kms:EncryptionContext:file":"false"}`, false},
	}
	for _, tc := range cases {
		for _, effect := range []string{"Allow", "Deny"} {
			doc := `{"Statement":[{"Effect":"` + effect + `","Principal":{"AWS":"arn:aws:iam::111122223333:role/app"},"Action":"kms:*","Resource":"*","Condition":{` + tc.cond + `}}]}`
			p, err := ParsePolicy(doc)
			if err != nil {
				t.Errorf("%s: %v", tc.cond, err)
				continue
			}
			want := NoMatch
			if tc.match {
				want = Allow
				if effect == "Deny" {
					want = Deny
				}
			}
			if got := p.Evaluate(base()); got != want {
				t.Errorf("%s %s: got %v, want %v", effect, tc.cond, got, want)
			}
		}
	}
}

func TestConditionRefusals(t *testing.T) {
	for cond, want := range map[string]string{
		`"StringEquals":{"aws:userid":"x"}`:                            `condition key "aws:userid" is not supported`,
		`"StringEquals":{"kms:GrantConstraintType":"x"}`:               `condition key "kms:GrantConstraintType" is not supported`,
		`"BinaryEquals":{"kms:KeyOrigin":"eA=="}`:                      `condition operator "BinaryEquals" is not supported`,
		`"StringEquals":{"kms:ResourceAliases":"alias/a"}`:             "multivalued",
		`"NumericLessThan":{"kms:KeyOrigin":"1"}`:                      "does not apply",
		`"NumericLessThan":{"aws:CurrentTime":"1"}`:                    "does not apply",
		`"IpAddress":{"aws:SourceIp":"10.0.0.300"}`:                    "not an IP address",
		`"DateLessThan":{"aws:CurrentTime":"soon"}`:                    "not a date",
		`"NumericEquals":{"kms:RotationPeriodInDays":"ninety"}`:        "not a number",
		`"Bool":{"aws:SecureTransport":"yes"}`:                         "not true or false",
		`"Null":{"kms:ViaService":["true","false"]}`:                   "one value",
		`"StringEquals":{"kms:EncryptionContext:u":"${aws:username}"}`: "policy variables",
		`"ForAnyValue:Null":{"kms:ViaService":"true"}`:                 "cannot be qualified",
		`"StringEqualsIfExistsIfExists":{"kms:KeyOrigin":"x"}`:         "not supported",
	} {
		doc := `{"Statement":{"Effect":"Deny","Principal":"*","Action":"kms:*","Resource":"*","Condition":{` + cond + `}}}`
		_, err := ParsePolicy(doc)
		if kms.Code(err) != kms.CodeMalformedPolicy || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want MalformedPolicyDocumentException naming %q", cond, err, want)
		}
	}
}

func TestRoleSessionPrincipals(t *testing.T) {
	session := "arn:aws:sts::111122223333:assumed-role/app/s1"
	for named, want := range map[string]bool{
		"arn:aws:iam::111122223333:role/app":      true,
		"arn:aws:iam::111122223333:role/team/app": true, // role path is not in the session ARN
		session:                                         true,
		"arn:aws:iam::111122223333:role/other":          false,
		"arn:aws:iam::444455556666:role/app":            false,
		"arn:aws:iam::111122223333:user/app":            false,
		"arn:aws:sts::111122223333:assumed-role/app/s2": false,
	} {
		if got := PrincipalMatches(named, session); got != want {
			t.Errorf("PrincipalMatches(%s, session) = %v", named, got)
		}
	}
	if PrincipalMatches("arn:aws:iam::111122223333:role/app", "arn:aws:iam::111122223333:user/app") {
		t.Error("a role ARN matched a user")
	}
	if got := PrincipalARNOf(session); got != "arn:aws:iam::111122223333:role/app" {
		t.Errorf("PrincipalARNOf(session) = %s", got)
	}
	p := mustPolicy(t, `{"Statement":{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:role/app"},"Action":"kms:Decrypt","Resource":"*"}}`)
	rc := &RequestContext{Principal: session, PrincipalArn: PrincipalARNOf(session), Account: "111122223333", Action: "kms:Decrypt", Resource: keyARN}
	if d := p.Evaluate(rc); d != Allow {
		t.Errorf("role policy for its session: %v", d)
	}
}
