package server

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Condition evaluation, following IAM's rules ("IAM JSON policy elements:
// Condition operators"):
//
//   - A key absent from the request context makes a condition false, except
//     that a negated operator (StringNotEquals, NotIpAddress, ...) is then
//     true, an ...IfExists operator is true, ForAllValues: is true and Null
//     tests the absence itself.
//   - Several values in the policy are ORed; a negated operator is true when
//     the request value matches none of them.
//   - A multivalued key (kms:EncryptionContextKeys, kms:GrantOperations,
//     kms:ResourceAliases) needs ForAnyValue: or ForAllValues:.
//
// Every key and operator a policy uses must be one this server evaluates:
// anything else is refused when the policy is set, so that no statement (a
// Deny least of all) is silently inert.

// keyType is the type of a condition key's values.
type keyType int

const (
	typeString keyType = iota
	typeARN
	typeBool
	typeDate
	typeNumeric
	typeIP
	typeEpoch // aws:EpochTime: a date or a number of seconds
)

type keyInfo struct {
	typ   keyType
	multi bool
}

// conditionKeys are the condition keys this server puts in the request
// context (lower case, as matched). kms:EncryptionContext:<key> is handled
// by prefix.
var conditionKeys = map[string]keyInfo{
	"aws:currenttime":      {typ: typeDate},
	"aws:epochtime":        {typ: typeEpoch},
	"aws:principalaccount": {typ: typeString},
	"aws:principalarn":     {typ: typeARN},
	"aws:securetransport":  {typ: typeBool},
	"aws:sourceip":         {typ: typeIP},

	"kms:calleraccount":         {typ: typeString},
	"kms:encryptioncontextkeys": {typ: typeString, multi: true},
	"kms:grantisforawsresource": {typ: typeBool},
	"kms:grantoperations":       {typ: typeString, multi: true},
	"kms:granteeprincipal":      {typ: typeARN},
	"kms:retiringprincipal":     {typ: typeARN},
	"kms:keyorigin":             {typ: typeString},
	"kms:keyspec":               {typ: typeString},
	"kms:keyusage":              {typ: typeString},
	"kms:requestalias":          {typ: typeString},
	"kms:resourcealiases":       {typ: typeString, multi: true},
	"kms:viaservice":            {typ: typeString},

	// The asymmetric and HMAC operations' request parameters.
	"kms:datakeypairspec":     {typ: typeString},
	"kms:encryptionalgorithm": {typ: typeString},
	"kms:macalgorithm":        {typ: typeString},
	"kms:messagetype":         {typ: typeString},
	"kms:signingalgorithm":    {typ: typeString},

	"kms:rotationperiodindays":                   {typ: typeNumeric},
	"kms:schedulekeydeletionpendingwindowindays": {typ: typeNumeric},
}

const encryptionContextPrefix = "kms:encryptioncontext:"

// lazyKeys are the keys whose values cost a store lookup; RequestContext.Lazy
// supplies them.
var lazyKeys = map[string]bool{
	"kms:keyorigin": true, "kms:keyspec": true, "kms:keyusage": true, "kms:resourcealiases": true,
}

func lookupKey(key string) (keyInfo, bool) {
	if strings.HasPrefix(key, encryptionContextPrefix) && len(key) > len(encryptionContextPrefix) {
		return keyInfo{typ: typeString}, true
	}
	ki, ok := conditionKeys[key]
	return ki, ok
}

// opFamily is a condition operator without Not, IfExists or set qualifier.
type opFamily int

const (
	opStringEquals opFamily = iota
	opStringEqualsIgnoreCase
	opStringLike
	opArnEquals // ArnEquals and ArnLike both match with wildcards, as in IAM
	opNumericEquals
	opNumericLessThan
	opNumericLessThanEquals
	opNumericGreaterThan
	opNumericGreaterThanEquals
	opDateEquals
	opDateLessThan
	opDateLessThanEquals
	opDateGreaterThan
	opDateGreaterThanEquals
	opBool
	opIPAddress
	opNull
)

type opInfo struct {
	family  opFamily
	negated bool
}

var operatorNames = map[string]opInfo{
	"StringEquals":              {opStringEquals, false},
	"StringNotEquals":           {opStringEquals, true},
	"StringEqualsIgnoreCase":    {opStringEqualsIgnoreCase, false},
	"StringNotEqualsIgnoreCase": {opStringEqualsIgnoreCase, true},
	"StringLike":                {opStringLike, false},
	"StringNotLike":             {opStringLike, true},
	"ArnEquals":                 {opArnEquals, false},
	"ArnNotEquals":              {opArnEquals, true},
	"ArnLike":                   {opArnEquals, false},
	"ArnNotLike":                {opArnEquals, true},
	"NumericEquals":             {opNumericEquals, false},
	"NumericNotEquals":          {opNumericEquals, true},
	"NumericLessThan":           {opNumericLessThan, false},
	"NumericLessThanEquals":     {opNumericLessThanEquals, false},
	"NumericGreaterThan":        {opNumericGreaterThan, false},
	"NumericGreaterThanEquals":  {opNumericGreaterThanEquals, false},
	"DateEquals":                {opDateEquals, false},
	"DateNotEquals":             {opDateEquals, true},
	"DateLessThan":              {opDateLessThan, false},
	"DateLessThanEquals":        {opDateLessThanEquals, false},
	"DateGreaterThan":           {opDateGreaterThan, false},
	"DateGreaterThanEquals":     {opDateGreaterThanEquals, false},
	"Bool":                      {opBool, false},
	"IpAddress":                 {opIPAddress, false},
	"NotIpAddress":              {opIPAddress, true},
	"Null":                      {opNull, false},
}

func (f opFamily) isNumeric() bool { return f >= opNumericEquals && f <= opNumericGreaterThanEquals }
func (f opFamily) isDate() bool    { return f >= opDateEquals && f <= opDateGreaterThanEquals }
func (f opFamily) isString() bool  { return f <= opStringLike }

// accepts reports whether operators of family f apply to keys of type t.
func (f opFamily) accepts(t keyType) bool {
	switch {
	case f == opNull:
		return true
	case f.isString():
		return t == typeString || t == typeARN
	case f == opArnEquals:
		return t == typeARN
	case f.isNumeric():
		return t == typeNumeric || t == typeEpoch
	case f.isDate():
		return t == typeDate || t == typeEpoch
	case f == opBool:
		return t == typeBool
	case f == opIPAddress:
		return t == typeIP
	}
	return false
}

type setQualifier int

const (
	setNone setQualifier = iota
	setForAnyValue
	setForAllValues
)

type condition struct {
	name     string // operator as written, for messages
	op       opInfo
	set      setQualifier
	ifExists bool
	key      string // lower-case condition key
	values   []string
	nums     []float64      // numeric operators: values parsed
	times    []time.Time    // date operators: values parsed
	prefixes []netip.Prefix // IpAddress operators: values parsed
	null     bool           // Null: the value (true: key must be absent)
}

// parseCondition checks one operator/key/values triple of a Condition block.
func parseCondition(opName, key string, vals []string) (condition, error) {
	c := condition{name: opName, key: strings.ToLower(key), values: vals}
	base := opName
	if rest, ok := strings.CutPrefix(base, "ForAnyValue:"); ok {
		base, c.set = rest, setForAnyValue
	} else if rest, ok := strings.CutPrefix(base, "ForAllValues:"); ok {
		base, c.set = rest, setForAllValues
	}
	if rest, ok := strings.CutSuffix(base, "IfExists"); ok && base != "Null" {
		base, c.ifExists = rest, true
	}
	op, ok := operatorNames[base]
	if !ok {
		return c, fmt.Errorf("condition operator %q is not supported", opName)
	}
	c.op = op
	if op.family == opNull && (c.set != setNone || c.ifExists) {
		return c, fmt.Errorf("condition operator %q cannot be qualified", opName)
	}
	ki, ok := lookupKey(c.key)
	if !ok {
		return c, fmt.Errorf("condition key %q is not supported", key)
	}
	if !op.family.accepts(ki.typ) {
		return c, fmt.Errorf("condition operator %s does not apply to condition key %s", opName, key)
	}
	if ki.multi && c.set == setNone && op.family != opNull {
		return c, fmt.Errorf("condition key %s is multivalued: use ForAnyValue:%s or ForAllValues:%s", key, opName, opName)
	}
	if len(vals) == 0 {
		return c, fmt.Errorf("condition %s on %s has no values", opName, key)
	}
	if err := noPolicyVariables("condition "+opName+" on "+key, vals); err != nil {
		return c, err
	}
	for _, v := range vals {
		switch f := op.family; {
		case f == opNull || f == opBool:
			b := strings.EqualFold(v, "true")
			if !b && !strings.EqualFold(v, "false") {
				return c, fmt.Errorf("condition %s on %s: %q is not true or false", opName, key, v)
			}
			if f == opNull {
				if len(vals) != 1 {
					return c, fmt.Errorf("condition Null on %s takes one value", key)
				}
				c.null = b
			}
		case f.isNumeric():
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return c, fmt.Errorf("condition %s on %s: %q is not a number", opName, key, v)
			}
			c.nums = append(c.nums, n)
		case f.isDate():
			t, ok := parseDate(v)
			if !ok {
				return c, fmt.Errorf("condition %s on %s: %q is not a date (ISO 8601 or epoch seconds)", opName, key, v)
			}
			c.times = append(c.times, t)
		case f == opIPAddress:
			p, ok := parseIPPrefix(v)
			if !ok {
				return c, fmt.Errorf("condition %s on %s: %q is not an IP address or CIDR block", opName, key, v)
			}
			c.prefixes = append(c.prefixes, p)
		}
	}
	return c, nil
}

// noPolicyVariables refuses IAM policy variables (${aws:username}, ...):
// this server does not substitute them, and taken literally they would never
// match, leaving a Deny inert.
func noPolicyVariables(where string, vals []string) error {
	for _, v := range vals {
		if strings.Contains(v, "${") {
			return fmt.Errorf("%s: policy variables such as %q are not supported", where, v)
		}
	}
	return nil
}

// parseDate reads the date forms IAM accepts: ISO 8601 (a date, or a date
// and time with a zone) or epoch seconds.
func parseDate(v string) (time.Time, bool) {
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		return time.Unix(n, 0).UTC(), true
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05Z0700", "2006-01-02T15:04Z07:00", "2006-01-02"} {
		if t, err := time.Parse(layout, v); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}

func parseIPPrefix(v string) (netip.Prefix, bool) {
	if p, err := netip.ParsePrefix(v); err == nil {
		return p.Masked(), true
	}
	if a, err := netip.ParseAddr(v); err == nil {
		return netip.PrefixFrom(a, a.BitLen()), true
	}
	return netip.Prefix{}, false
}

// requestValues returns the request's values for a (lower-case) condition key.
func (rc *RequestContext) requestValues(key string) ([]string, bool) {
	if ctxKey, ok := strings.CutPrefix(key, encryptionContextPrefix); ok {
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
	case "aws:principalarn":
		if rc.PrincipalArn != "" {
			return []string{rc.PrincipalArn}, true
		}
		return []string{rc.Principal}, true
	case "aws:principalaccount", "kms:calleraccount":
		return []string{rc.Account}, true
	case "aws:securetransport":
		return []string{strconv.FormatBool(rc.SecureTransport)}, true
	case "aws:sourceip":
		return []string{rc.SourceIP}, rc.SourceIP != ""
	case "aws:currenttime":
		return []string{rc.CurrentTime.UTC().Format(time.RFC3339)}, !rc.CurrentTime.IsZero()
	case "aws:epochtime":
		return []string{strconv.FormatInt(rc.CurrentTime.Unix(), 10)}, !rc.CurrentTime.IsZero()
	case "kms:requestalias":
		return []string{rc.RequestAlias}, rc.RequestAlias != ""
	}
	if lazyKeys[key] {
		if rc.Lazy == nil {
			return nil, false
		}
		v, ok := rc.Lazy(key)
		return v, ok && len(v) > 0
	}
	v, ok := rc.Values[key]
	return v, ok && len(v) > 0
}

func (c *condition) eval(rc *RequestContext) bool {
	vals, present := rc.requestValues(c.key)
	if c.op.family == opNull {
		return c.null != present
	}
	if !present {
		switch {
		case c.set == setForAllValues:
			return true // vacuously true for an empty set, as in IAM
		case c.set == setForAnyValue:
			return false
		}
		return c.ifExists || c.op.negated
	}
	switch c.set {
	case setForAllValues:
		for _, v := range vals {
			if !c.matchOne(v) {
				return false
			}
		}
		return true
	default: // ForAnyValue, and single-valued keys
		for _, v := range vals {
			if c.matchOne(v) {
				return true
			}
		}
		return false
	}
}

// matchOne reports whether one request value satisfies the operator: for a
// positive operator it must match one of the policy values, for a negated one
// it must match none of them. A request value of the wrong type (not a
// number for a Numeric operator, ...) matches no policy value.
func (c *condition) matchOne(v string) bool {
	hit := false
	switch f := c.op.family; {
	case f == opStringEquals:
		for _, p := range c.values {
			if hit = v == p; hit {
				break
			}
		}
	case f == opStringEqualsIgnoreCase:
		for _, p := range c.values {
			if hit = strings.EqualFold(v, p); hit {
				break
			}
		}
	case f == opStringLike, f == opArnEquals:
		for _, p := range c.values {
			if hit = wildcardMatch(p, v); hit {
				break
			}
		}
	case f == opBool:
		for _, p := range c.values {
			if hit = strings.EqualFold(v, p); hit {
				break
			}
		}
	case f.isNumeric():
		n, err := strconv.ParseFloat(v, 64)
		if err != nil {
			if t, ok := parseDate(v); ok { // aws:EpochTime given as a date
				n, err = float64(t.Unix()), nil
			}
		}
		if err == nil {
			for _, p := range c.nums {
				if hit = compare(f-opNumericEquals, n, p); hit {
					break
				}
			}
		}
	case f.isDate():
		if t, ok := parseDate(v); ok {
			for _, p := range c.times {
				if hit = compare(f-opDateEquals, float64(t.UnixNano()), float64(p.UnixNano())); hit {
					break
				}
			}
		}
	case f == opIPAddress:
		if a, err := netip.ParseAddr(v); err == nil {
			a = a.Unmap()
			for _, p := range c.prefixes {
				if hit = p.Contains(a); hit {
					break
				}
			}
		}
	}
	return hit != c.op.negated
}

// compare applies the comparison at offset rel in the Numeric/Date operator
// lists: equals, less than, less than or equals, greater than, greater than
// or equals.
func compare(rel opFamily, a, b float64) bool {
	switch rel {
	case 0:
		return a == b
	case 1:
		return a < b
	case 2:
		return a <= b
	case 3:
		return a > b
	default:
		return a >= b
	}
}
