package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/kmsfs/kmsfs/kms"
)

// Decision is the outcome of evaluating a policy for one request.
type Decision int

const (
	// NoMatch means no statement applies: the request is implicitly denied
	// unless something else (a grant) allows it.
	NoMatch Decision = iota
	Allow
	Deny
)

func (d Decision) String() string {
	switch d {
	case Allow:
		return "Allow"
	case Deny:
		return "Deny"
	}
	return "NoMatch"
}

// RequestContext is what a policy is evaluated against: who asks for what on
// which key, with which encryption context.
type RequestContext struct {
	Principal string // caller's ARN (for a role session, the session's STS ARN)
	// PrincipalArn is aws:PrincipalArn: the role's IAM ARN for a role
	// session, else Principal. Empty means Principal.
	PrincipalArn      string
	Account           string // caller's account
	Action            string // "kms:Decrypt"
	Resource          string // key ARN
	EncryptionContext kms.EncryptionContext
	// Values holds further condition keys (lower-case names), e.g.
	// "kms:granteeprincipal" for CreateGrant, "aws:sourceip" for every
	// request. A key that is absent (or has no values) is not in the
	// request context.
	Values map[string][]string
	// SecureTransport is aws:SecureTransport: the request came over TLS.
	SecureTransport bool
	// SourceIP is aws:SourceIp; "" leaves it out of the request context.
	SourceIP string
	// CurrentTime is aws:CurrentTime and aws:EpochTime; the zero time
	// leaves them out.
	CurrentTime time.Time
	// RequestAlias is kms:RequestAlias: the alias name the request named
	// its key by; "" leaves it out.
	RequestAlias string
	// Lazy supplies the condition keys that cost a store lookup (the key's
	// aliases, origin, ...) when a condition asks for one; may be nil.
	Lazy func(key string) ([]string, bool)
}

// Policy is a parsed key policy document.
type Policy struct {
	statements []statement
}

type statement struct {
	sid        string
	deny       bool
	principals []string // "*", account IDs, or principal ARNs
	notPrinc   bool
	// identity marks a statement of an identity policy: it has no
	// principal, it applies to the principal the policy is attached to.
	identity   bool
	actions    []string // lower-case patterns
	notAction  bool
	resources  []string
	notRes     bool
	conditions []condition
}

// stringOrList accepts a JSON string, a list of strings, or scalars (for
// Bool/Null conditions written as true/false).
type stringOrList []string

func (s *stringOrList) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '[' {
		var raw []json.RawMessage
		if err := json.Unmarshal(b, &raw); err != nil {
			return err
		}
		out := make([]string, 0, len(raw))
		for _, r := range raw {
			v, err := scalarString(r)
			if err != nil {
				return err
			}
			out = append(out, v)
		}
		*s = out
		return nil
	}
	v, err := scalarString(b)
	if err != nil {
		return err
	}
	*s = []string{v}
	return nil
}

func scalarString(b json.RawMessage) (string, error) {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return "", err
	}
	switch x := v.(type) {
	case string:
		return x, nil
	case bool, float64:
		return strings.TrimSpace(string(b)), nil
	}
	return "", fmt.Errorf("expected a string or a list of strings, got %s", b)
}

type rawStatement struct {
	Sid          string                             `json:"Sid"`
	Effect       string                             `json:"Effect"`
	Principal    json.RawMessage                    `json:"Principal"`
	NotPrincipal json.RawMessage                    `json:"NotPrincipal"`
	Action       stringOrList                       `json:"Action"`
	NotAction    stringOrList                       `json:"NotAction"`
	Resource     stringOrList                       `json:"Resource"`
	NotResource  stringOrList                       `json:"NotResource"`
	Condition    map[string]map[string]stringOrList `json:"Condition"`
}

type rawPolicy struct {
	Version   string          `json:"Version"`
	Statement json.RawMessage `json:"Statement"`
}

// MaxPolicySize is AWS's limit on a key policy document (32 KB).
const MaxPolicySize = 32768

// ParsePolicy parses a key policy. Malformed documents return a
// MalformedPolicyDocumentException naming the problem.
func ParsePolicy(doc string) (*Policy, error) {
	return parsePolicy(doc, false)
}

// ParseIdentityPolicy parses an IAM identity policy: the key policy's
// grammar and limits, except that a statement names no Principal (it is the
// principal the policy is attached to) and may name actions of other
// services (which no request here matches).
func ParseIdentityPolicy(doc string) (*Policy, error) {
	return parsePolicy(doc, true)
}

func parsePolicy(doc string, identity bool) (*Policy, error) {
	bad := func(format string, args ...any) error {
		return kms.Errorf(kms.CodeMalformedPolicy, format, args...)
	}
	if len(doc) > MaxPolicySize {
		return nil, bad("policy is %d bytes, over the %d byte limit", len(doc), MaxPolicySize)
	}
	var rp rawPolicy
	if err := json.Unmarshal([]byte(doc), &rp); err != nil {
		return nil, bad("policy is not valid JSON: %v", err)
	}
	var raws []rawStatement
	st := bytes.TrimSpace(rp.Statement)
	switch {
	case len(st) == 0:
		return nil, bad("policy has no Statement")
	case st[0] == '[':
		if err := json.Unmarshal(st, &raws); err != nil {
			return nil, bad("Statement: %v", err)
		}
	default:
		var one rawStatement
		if err := json.Unmarshal(st, &one); err != nil {
			return nil, bad("Statement: %v", err)
		}
		raws = []rawStatement{one}
	}
	if len(raws) == 0 {
		return nil, bad("policy has no Statement")
	}
	p := &Policy{statements: make([]statement, 0, len(raws))}
	for i, r := range raws {
		s, err := parseStatement(r, identity)
		if err != nil {
			name := r.Sid
			if name == "" {
				name = fmt.Sprint(i)
			}
			return nil, bad("statement %s: %v", name, err)
		}
		p.statements = append(p.statements, s)
	}
	return p, nil
}

func parseStatement(r rawStatement, identity bool) (statement, error) {
	s := statement{sid: r.Sid, identity: identity}
	switch r.Effect {
	case "Allow":
	case "Deny":
		s.deny = true
	default:
		return s, fmt.Errorf("Effect must be Allow or Deny, not %q", r.Effect)
	}
	var err error
	switch {
	case identity && (r.Principal != nil || r.NotPrincipal != nil):
		return s, fmt.Errorf("has a Principal, which an identity policy does not take")
	case identity:
	case r.Principal != nil && r.NotPrincipal != nil:
		return s, fmt.Errorf("has both Principal and NotPrincipal")
	case r.Principal != nil:
		s.principals, err = parsePrincipal(r.Principal)
	case r.NotPrincipal != nil:
		s.notPrinc = true
		s.principals, err = parsePrincipal(r.NotPrincipal)
	default:
		// A key policy statement must name its principal (AWS rejects it otherwise).
		return s, fmt.Errorf("has no Principal")
	}
	if err != nil {
		return s, err
	}
	switch {
	case len(r.Action) > 0 && len(r.NotAction) > 0:
		return s, fmt.Errorf("has both Action and NotAction")
	case len(r.Action) > 0:
		s.actions = lowerAll(r.Action)
	case len(r.NotAction) > 0:
		s.notAction = true
		s.actions = lowerAll(r.NotAction)
	default:
		return s, fmt.Errorf("has no Action")
	}
	for _, a := range s.actions {
		if identity {
			if svc, _, ok := strings.Cut(a, ":"); a != "*" && (!ok || svc == "") {
				return s, fmt.Errorf("action %q is not SERVICE:ACTION", a)
			}
			continue
		}
		if a != "*" && !strings.HasPrefix(a, "kms:") {
			return s, fmt.Errorf("action %q is not a kms: action", a)
		}
	}
	switch {
	case len(r.Resource) > 0 && len(r.NotResource) > 0:
		return s, fmt.Errorf("has both Resource and NotResource")
	case len(r.Resource) > 0:
		s.resources = r.Resource
	case len(r.NotResource) > 0:
		s.notRes = true
		s.resources = r.NotResource
	default:
		return s, fmt.Errorf("has no Resource")
	}
	if err := noPolicyVariables("Resource", s.resources); err != nil {
		return s, err
	}
	for opName, keys := range r.Condition {
		for key, vals := range keys {
			c, err := parseCondition(opName, key, vals)
			if err != nil {
				return s, err
			}
			s.conditions = append(s.conditions, c)
		}
	}
	return s, nil
}

func parsePrincipal(raw json.RawMessage) ([]string, error) {
	var star string
	if err := json.Unmarshal(raw, &star); err == nil {
		if star != "*" {
			return nil, fmt.Errorf("Principal must be \"*\" or {\"AWS\": ...}, not %q", star)
		}
		return []string{"*"}, nil
	}
	var m map[string]stringOrList
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("Principal: %v", err)
	}
	var out []string
	for typ, vals := range m {
		if typ != "AWS" {
			// Service principals never authenticate to this server; a
			// statement naming only them can never match, like in AWS for
			// callers that are not that service.
			continue
		}
		for _, v := range vals {
			switch {
			case v == "*", isAccountID(v):
				out = append(out, v)
			case strings.HasPrefix(v, "arn:"):
				if _, err := AccountOf(v); err != nil {
					return nil, err
				}
				out = append(out, v)
			default:
				return nil, fmt.Errorf("principal %q is not \"*\", an account ID or an IAM ARN", v)
			}
		}
	}
	return out, nil
}

func lowerAll(in []string) []string {
	out := make([]string, len(in))
	for i, s := range in {
		out[i] = strings.ToLower(s)
	}
	return out
}

// Evaluate returns Deny if any Deny statement applies, else Allow if any
// Allow statement applies, else NoMatch — IAM's rule that an explicit deny
// always wins.
func (p *Policy) Evaluate(rc *RequestContext) Decision {
	d, _ := p.evaluate(rc)
	return d
}

// evaluate is Evaluate that also tells, for Allow, whether some Allow
// statement names the caller directly (its ARN, its role, "*" or by
// NotPrincipal) rather than only through its account (an account ID or the
// account root, which delegate to the caller's identity policy).
func (p *Policy) evaluate(rc *RequestContext) (Decision, bool) {
	action := strings.ToLower(rc.Action)
	allowed, direct := false, false
	for i := range p.statements {
		s := &p.statements[i]
		ok, viaAccount := s.matches(rc, action)
		if !ok {
			continue
		}
		if s.deny {
			return Deny, false
		}
		allowed = true
		direct = direct || !viaAccount
	}
	if allowed {
		return Allow, direct
	}
	return NoMatch, false
}

// matches reports whether the statement applies to the request, and whether
// it names the caller only through the caller's account.
func (s *statement) matches(rc *RequestContext, action string) (ok, viaAccount bool) {
	if !s.identity {
		matched, acct := s.matchPrincipal(rc)
		if matched == s.notPrinc {
			return false, false
		}
		viaAccount = acct && !s.notPrinc
	}
	if matchAny(s.actions, action) == s.notAction {
		return false, false
	}
	if matchAny(s.resources, rc.Resource) == s.notRes {
		return false, false
	}
	for i := range s.conditions {
		if !s.conditions[i].eval(rc) {
			return false, false
		}
	}
	return true, viaAccount
}

// matchPrincipal reports whether the statement's principals cover the
// caller, and whether only through its account. A direct match wins over an
// account match.
func (s *statement) matchPrincipal(rc *RequestContext) (matched, viaAccount bool) {
	for _, p := range s.principals {
		switch {
		case p == "*":
			return true, false
		case isAccountID(p):
			if p == rc.Account {
				matched, viaAccount = true, true
			}
		case strings.HasSuffix(p, ":root"):
			// The account root principal stands for the whole account: as
			// in AWS it delegates to the account's identity policies.
			if acct, err := AccountOf(p); err == nil && acct == rc.Account {
				matched, viaAccount = true, true
			}
		case PrincipalMatches(p, rc.Principal):
			return true, false
		}
	}
	return matched, viaAccount
}

// PrincipalMatches reports whether the principal named in a policy or grant
// (an IAM or STS ARN) covers the caller: the same ARN, or, as in AWS, a role
// ARN (arn:aws:iam::ACCOUNT:role/[PATH/]NAME) covers every session of that
// role (arn:aws:sts::ACCOUNT:assumed-role/NAME/SESSION).
func PrincipalMatches(named, caller string) bool {
	if named == caller {
		return true
	}
	role, ok := sessionRole(caller)
	if !ok {
		return false
	}
	account, rest, ok := splitIAMARN(named)
	if !ok || account != role.account {
		return false
	}
	path, ok := strings.CutPrefix(rest, "role/")
	if !ok {
		return false
	}
	return path[strings.LastIndexByte(path, '/')+1:] == role.name
}

type roleSession struct{ account, name string }

// sessionRole parses an assumed-role session ARN.
func sessionRole(arn string) (roleSession, bool) {
	rest, ok := strings.CutPrefix(arn, "arn:aws:sts::")
	if !ok {
		return roleSession{}, false
	}
	account, res, ok := strings.Cut(rest, ":")
	if !ok || !isAccountID(account) {
		return roleSession{}, false
	}
	res, ok = strings.CutPrefix(res, "assumed-role/")
	if !ok {
		return roleSession{}, false
	}
	name, session, ok := strings.Cut(res, "/")
	if !ok || name == "" || session == "" {
		return roleSession{}, false
	}
	return roleSession{account: account, name: name}, true
}

// splitIAMARN splits arn:aws:iam::ACCOUNT:RESOURCE.
func splitIAMARN(arn string) (account, resource string, ok bool) {
	rest, ok := strings.CutPrefix(arn, "arn:aws:iam::")
	if !ok {
		return "", "", false
	}
	account, resource, ok = strings.Cut(rest, ":")
	return account, resource, ok && isAccountID(account)
}

// PrincipalARNOf is aws:PrincipalArn for a caller: for a role session the
// role's ARN (arn:aws:iam::ACCOUNT:role/NAME), otherwise the caller's ARN.
func PrincipalARNOf(caller string) string {
	if r, ok := sessionRole(caller); ok {
		return "arn:aws:iam::" + r.account + ":role/" + r.name
	}
	return caller
}

func matchAny(patterns []string, s string) bool {
	for _, p := range patterns {
		if wildcardMatch(p, s) {
			return true
		}
	}
	return false
}

// wildcardMatch matches s against pattern, where '*' matches any run of
// characters and '?' any one character (IAM's glob for actions, resources and
// *Like conditions).
func wildcardMatch(pattern, s string) bool {
	p, i := 0, 0
	star, mark := -1, 0
	for i < len(s) {
		switch {
		case p < len(pattern) && (pattern[p] == '?' || pattern[p] == s[i]):
			p++
			i++
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, i
			p++
		case star >= 0:
			p = star + 1
			mark++
			i = mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}

// DefaultPolicy is the key policy for a key created without one: the creating
// principal's account may administer and use the key (AWS's default key policy).
func DefaultPolicy(account string) string {
	return fmt.Sprintf(`{
  "Version": "2012-10-17",
  "Id": "key-default-1",
  "Statement": [
    {
      "Sid": "Enable IAM User Permissions",
      "Effect": "Allow",
      "Principal": {"AWS": "arn:aws:iam::%s:root"},
      "Action": "kms:*",
      "Resource": "*"
    }
  ]
}`, account)
}
