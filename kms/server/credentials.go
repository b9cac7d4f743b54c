package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
)

// Credential is one access key the server accepts, and the principal it
// authenticates as.
type Credential struct {
	AccessKeyID     string
	SecretAccessKey string
	// Principal is the IAM ARN the key stands for, e.g.
	// arn:aws:iam::111122223333:user/alice. Its account (the fifth ARN field)
	// is the caller's account for key policies and request quotas.
	Principal string
	Account   string
	// PrincipalArn is aws:PrincipalArn: for a role session
	// (arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION) the role's ARN,
	// otherwise Principal.
	PrincipalArn string
	// Identity is the principal's IAM identity policy; nil means the
	// principal has none and is treated as allowed every action on every
	// resource (see CredentialsFileHelp).
	Identity *Policy
}

// Credentials maps access key IDs to credentials.
type Credentials map[string]Credential

// credentialFileEntry is one value of the credentials file's top-level object.
type credentialFileEntry struct {
	SecretAccessKey string `json:"SecretAccessKey"`
	Principal       string `json:"Principal"`
	// IdentityPolicy is a policy document, as a JSON object or as a
	// string holding one.
	IdentityPolicy json.RawMessage `json:"IdentityPolicy"`
}

// CredentialsFileHelp documents the credentials file format for --help.
const CredentialsFileHelp = `The credentials file is a JSON object mapping each access key ID to its
secret and the principal ARN it authenticates as:

  {
    "AKIAALICE0000000001": {
      "SecretAccessKey": "alice-secret",
      "Principal": "arn:aws:iam::111122223333:user/alice"
    },
    "AKIABOB00000000001": {
      "SecretAccessKey": "bob-secret",
      "Principal": "arn:aws:sts::444455556666:assumed-role/app/session-1"
    }
  }

The principal's account (the fifth ARN field) is the caller's account: the
account its CreateKey creates keys in, whose keys and aliases it lists, in
which a bare key ID or alias name is looked up, that key policies call
"arn:aws:iam::ACCOUNT:root", and that the --rate quota is counted against.
Keys of another account are reached only by key ARN (or alias ARN), and only
where that key's policy or a grant allows. A role session
(arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION) is covered by key policies
and grants that name its role (arn:aws:iam::ACCOUNT:role/ROLE), and its
aws:PrincipalArn is the role's ARN. The server's --account owns the keys
created before keys recorded their account.

An entry may carry an IAM identity policy, as a JSON object or a string
holding one:

    "AKIACAROL0000000001": {
      "SecretAccessKey": "carol-secret",
      "Principal": "arn:aws:iam::111122223333:user/carol",
      "IdentityPolicy": {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["kms:Encrypt", "kms:GenerateDataKey*"],
         "Resource": "arn:aws:kms:*:111122223333:key/*"}]}
    }

Its statements have Effect, Action or NotAction, Resource or NotResource
and Condition as in a key policy (the same condition keys and operators),
and no Principal; it is checked when the file is loaded. Requests are then
decided as AWS does: an explicit Deny in the key policy or the identity
policy refuses the request, whatever else allows it. On a key of the
caller's account, the request is allowed if the key policy allows the
caller directly (its ARN, its role, or "*"), or if the key policy allows the
caller's account (the account ID or arn:aws:iam::ACCOUNT:root, as the
default key policy does) and the identity policy allows too, or if a grant
allows. On a key of another account, both the key policy and the identity
policy must allow, or a grant must. CreateKey, ListKeys, ListAliases,
ListRetirableGrants and GenerateRandom name no key (Resource "*") and are
decided by the identity policy alone.

A principal without an IdentityPolicy is treated as having one that allows
every action on every resource (like AWS's AdministratorAccess), so key
policies and grants alone decide for it, as before identity policies
existed. Give a principal an identity policy to restrict it.`

// LoadCredentials reads a credentials file (see CredentialsFileHelp).
func LoadCredentials(path string) (Credentials, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read credentials: %w", err)
	}
	creds, err := ParseCredentials(data)
	if err != nil {
		return nil, fmt.Errorf("credentials file %s: %w", path, err)
	}
	return creds, nil
}

// ParseCredentials parses the JSON credentials format (see CredentialsFileHelp).
func ParseCredentials(data []byte) (Credentials, error) {
	var raw map[string]credentialFileEntry
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("parse credentials: %w", err)
	}
	if len(raw) == 0 {
		return nil, fmt.Errorf("parse credentials: no access keys defined")
	}
	creds := make(Credentials, len(raw))
	for id, e := range raw {
		if id == "" || strings.ContainsAny(id, "/ \t") {
			return nil, fmt.Errorf("parse credentials: invalid access key ID %q", id)
		}
		if e.SecretAccessKey == "" {
			return nil, fmt.Errorf("parse credentials: access key %s has no SecretAccessKey", id)
		}
		account, err := AccountOf(e.Principal)
		if err != nil {
			return nil, fmt.Errorf("parse credentials: access key %s: %w", id, err)
		}
		identity, err := parseIdentityPolicy(e.IdentityPolicy)
		if err != nil {
			return nil, fmt.Errorf("parse credentials: access key %s (%s): identity policy: %w", id, e.Principal, err)
		}
		creds[id] = Credential{AccessKeyID: id, SecretAccessKey: e.SecretAccessKey, Principal: e.Principal, Account: account,
			PrincipalArn: PrincipalARNOf(e.Principal), Identity: identity}
	}
	return creds, nil
}

// parseIdentityPolicy parses a credentials entry's IdentityPolicy: absent
// or null is no policy.
func parseIdentityPolicy(raw json.RawMessage) (*Policy, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	doc := string(raw)
	if raw[0] == '"' {
		if err := json.Unmarshal(raw, &doc); err != nil {
			return nil, err
		}
	}
	return ParseIdentityPolicy(doc)
}

// AccountOf returns the account ID of an IAM or STS principal ARN
// (arn:PARTITION:iam::ACCOUNT:...).
func AccountOf(principalARN string) (string, error) {
	parts := strings.SplitN(principalARN, ":", 6)
	if len(parts) != 6 || parts[0] != "arn" || (parts[2] != "iam" && parts[2] != "sts") || !isAccountID(parts[4]) || parts[5] == "" {
		return "", fmt.Errorf("principal %q is not an IAM ARN (arn:aws:iam::ACCOUNT:user/NAME)", principalARN)
	}
	return parts[4], nil
}

func isAccountID(s string) bool {
	if len(s) != 12 {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
