package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

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
	Principal         string // caller's ARN
	Account           string // caller's account
	Action            string // "kms:Decrypt"
	Resource          string // key ARN
	EncryptionContext kms.EncryptionContext
	// Values holds further condition keys (lower-case names), e.g.
	// "kms:granteeprincipal" for CreateGrant.
	Values map[string][]string
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
	actions    []string // lower-case patterns
	notAction  bool
	resources  []string
	notRes     bool
	conditions []condition
}

type setQualifier int

const (
	setNone setQualifier = iota
	setForAnyValue
	setForAllValues
)

type condition struct {
	op       string // canonical base operator, e.g. "StringLike"
	set      setQualifier
	ifExists bool
	key      string // lower-case condition key
	values   []string
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
		s, err := parseStatement(r)
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

func parseStatement(r rawStatement) (statement, error) {
	s := statement{sid: r.Sid}
	switch r.Effect {
	case "Allow":
	case "Deny":
		s.deny = true
	default:
		return s, fmt.Errorf("Effect must be Allow or Deny, not %q", r.Effect)
	}
	var err error
	switch {
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
	for opName, keys := range r.Condition {
		base, set, ifExists, err := parseOperator(opName)
		if err != nil {
			return s, err
		}
		for key, vals := range keys {
			if len(vals) == 0 {
				return s, fmt.Errorf("condition %s on %s has no values", opName, key)
			}
			s.conditions = append(s.conditions, condition{op: base, set: set, ifExists: ifExists, key: strings.ToLower(key), values: vals})
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

var operators = map[string]bool{
	"StringEquals": true, "StringNotEquals": true,
	"StringEqualsIgnoreCase": true, "StringNotEqualsIgnoreCase": true,
	"StringLike": true, "StringNotLike": true,
	"ArnEquals": true, "ArnNotEquals": true, "ArnLike": true, "ArnNotLike": true,
	"Bool": true, "Null": true,
}

func parseOperator(name string) (base string, set setQualifier, ifExists bool, err error) {
	base = name
	if rest, ok := strings.CutPrefix(base, "ForAnyValue:"); ok {
		base, set = rest, setForAnyValue
	} else if rest, ok := strings.CutPrefix(base, "ForAllValues:"); ok {
		base, set = rest, setForAllValues
	}
	if rest, ok := strings.CutSuffix(base, "IfExists"); ok && base != "Null" {
		base, ifExists = rest, true
	}
	if !operators[base] {
		return "", 0, false, fmt.Errorf("unsupported condition operator %q", name)
	}
	if base == "Null" && (set != setNone || ifExists) {
		return "", 0, false, fmt.Errorf("condition operator %q cannot be qualified", name)
	}
	return base, set, ifExists, nil
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
	action := strings.ToLower(rc.Action)
	allowed := false
	for i := range p.statements {
		s := &p.statements[i]
		if !s.matches(rc, action) {
			continue
		}
		if s.deny {
			return Deny
		}
		allowed = true
	}
	if allowed {
		return Allow
	}
	return NoMatch
}

func (s *statement) matches(rc *RequestContext, action string) bool {
	if s.matchPrincipal(rc) == s.notPrinc {
		return false
	}
	if matchAny(s.actions, action) == s.notAction {
		return false
	}
	if matchAny(s.resources, rc.Resource) == s.notRes {
		return false
	}
	for i := range s.conditions {
		if !s.conditions[i].eval(rc) {
			return false
		}
	}
	return true
}

func (s *statement) matchPrincipal(rc *RequestContext) bool {
	for _, p := range s.principals {
		switch {
		case p == "*":
			return true
		case isAccountID(p):
			if p == rc.Account {
				return true
			}
		case strings.HasSuffix(p, ":root"):
			// The account root principal stands for the whole account: in AWS
			// it delegates to the account's IAM policies; here every principal
			// of that account is allowed.
			if acct, err := AccountOf(p); err == nil && acct == rc.Account {
				return true
			}
		case p == rc.Principal:
			return true
		}
	}
	return false
}

func matchAny(patterns []string, s string) bool {
	for _, p := range patterns {
		if wildcardMatch(p, s) {
			return true
		}
	}
	return false
}

// requestValues returns the request's values for a (lower-case) condition key.
func (rc *RequestContext) requestValues(key string) ([]string, bool) {
	if ctxKey, ok := strings.CutPrefix(key, "kms:encryptioncontext:"); ok {
		// The context key inside the condition key name is not case
		// sensitive (IAM condition key names never are); its value is.
		for k, v := range rc.EncryptionContext {
			if strings.EqualFold(k, ctxKey) {
				return []string{v}, true
			}
		}
		return nil, false
	}
	switch key {
	case "kms:encryptioncontextkeys":
		if len(rc.EncryptionContext) == 0 {
			return nil, false
		}
		keys := make([]string, 0, len(rc.EncryptionContext))
		for k := range rc.EncryptionContext {
			keys = append(keys, k)
		}
		return keys, true
	case "aws:principalarn", "aws:userid":
		return []string{rc.Principal}, true
	case "aws:principalaccount", "kms:calleraccount":
		return []string{rc.Account}, true
	}
	v, ok := rc.Values[key]
	return v, ok && len(v) > 0
}

func (c *condition) eval(rc *RequestContext) bool {
	vals, present := rc.requestValues(c.key)
	if c.op == "Null" {
		want := strings.EqualFold(c.values[0], "true")
		return want != present
	}
	negated := strings.Contains(c.op, "Not")
	if !present {
		switch {
		case c.set == setForAllValues:
			return true // vacuously true for an empty set, as in IAM
		case c.set == setForAnyValue:
			return false
		case c.ifExists || negated:
			// IAM: a negated operator on a missing key is true.
			return true
		}
		return false
	}
	switch c.set {
	case setForAllValues:
		for _, v := range vals {
			if !c.matchOne(v, negated) {
				return false
			}
		}
		return true
	default: // ForAnyValue, and single-valued keys
		for _, v := range vals {
			if c.matchOne(v, negated) {
				return true
			}
		}
		return false
	}
}

// matchOne reports whether one request value satisfies the operator: for a
// positive operator it must match one of the policy values, for a negated one
// it must match none of them.
func (c *condition) matchOne(v string, negated bool) bool {
	hit := false
	for _, p := range c.values {
		switch c.op {
		case "StringEquals", "StringNotEquals", "ArnEquals", "ArnNotEquals":
			hit = v == p
		case "StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase":
			hit = strings.EqualFold(v, p)
		case "StringLike", "StringNotLike", "ArnLike", "ArnNotLike":
			hit = wildcardMatch(p, v)
		case "Bool":
			hit = strings.EqualFold(v, p)
		}
		if hit {
			break
		}
	}
	return hit != negated
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
