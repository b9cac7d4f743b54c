package server

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kmsfs/kmsfs/kms"
)

// Error codes AWS uses for authentication failures that kms.go does not name.
const (
	codeMissingAuthToken    = "MissingAuthenticationTokenException"
	codeIncompleteSignature = "IncompleteSignatureException"
)

// MaxClockSkew is how far a request's X-Amz-Date may be from the server's
// clock. AWS refuses signatures more than 5 minutes off ("Signature expired"),
// which also bounds how long a captured request can be replayed.
const MaxClockSkew = 5 * time.Minute

const (
	sigV4Algorithm  = "AWS4-HMAC-SHA256"
	amzDateFormat   = "20060102T150405Z"
	signingService  = "kms"
	maxCachedSigKey = 1024
)

// sigV4Verifier checks AWS Signature Version 4 on incoming requests.
type sigV4Verifier struct {
	creds  Credentials
	region string

	mu   sync.Mutex
	keys map[string][]byte // "akid/date/region/service" -> derived signing key
}

func newSigV4Verifier(creds Credentials, region string) *sigV4Verifier {
	return &sigV4Verifier{creds: creds, region: region, keys: make(map[string][]byte)}
}

// signingAuth is the parsed Authorization header.
type signingAuth struct {
	accessKeyID   string
	date          string // yyyymmdd from the credential scope
	region        string
	service       string
	signedHeaders []string
	signature     []byte
}

func parseAuthorization(h string) (signingAuth, error) {
	var a signingAuth
	rest, ok := strings.CutPrefix(h, sigV4Algorithm+" ")
	if !ok {
		return a, kms.Errorf(codeIncompleteSignature, "Authorization header must use %s", sigV4Algorithm)
	}
	var cred, signed, sig string
	for _, part := range strings.Split(rest, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return a, kms.Errorf(codeIncompleteSignature, "Authorization header has a malformed component %q", part)
		}
		switch k {
		case "Credential":
			cred = v
		case "SignedHeaders":
			signed = v
		case "Signature":
			sig = v
		}
	}
	if cred == "" || signed == "" || sig == "" {
		return a, kms.Errorf(codeIncompleteSignature, "Authorization header requires Credential, SignedHeaders and Signature")
	}
	scope := strings.Split(cred, "/")
	if len(scope) != 5 || scope[4] != "aws4_request" {
		return a, kms.Errorf(codeIncompleteSignature, "Credential must be ACCESSKEY/DATE/REGION/SERVICE/aws4_request")
	}
	a.accessKeyID, a.date, a.region, a.service = scope[0], scope[1], scope[2], scope[3]
	a.signedHeaders = strings.Split(signed, ";")
	var err error
	if a.signature, err = hex.DecodeString(sig); err != nil || len(a.signature) != sha256.Size {
		return a, kms.Errorf(codeIncompleteSignature, "Signature is not 64 hex digits")
	}
	return a, nil
}

// verify authenticates r, whose body has already been read into body, and
// returns the credential that signed it.
func (v *sigV4Verifier) verify(r *http.Request, body []byte, now time.Time) (Credential, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return Credential{}, kms.Errorf(codeMissingAuthToken, "Missing Authentication Token")
	}
	a, err := parseAuthorization(h)
	if err != nil {
		return Credential{}, err
	}
	cred, ok := v.creds[a.accessKeyID]
	if !ok {
		// The presented key ID is returned for the audit log.
		return Credential{AccessKeyID: a.accessKeyID}, kms.Errorf(kms.CodeUnrecognizedClient, "The security token included in the request is invalid.")
	}
	amzDate := r.Header.Get("X-Amz-Date")
	t, err := time.Parse(amzDateFormat, amzDate)
	if err != nil {
		return cred, kms.Errorf(codeIncompleteSignature, "X-Amz-Date header missing or not in %s form", amzDateFormat)
	}
	if d := now.Sub(t); d > MaxClockSkew || d < -MaxClockSkew {
		return cred, kms.Errorf(kms.CodeInvalidSignature, "Signature expired: %s is now earlier or later than %s +/- 5 min.",
			amzDate, now.UTC().Format(amzDateFormat))
	}
	if a.date != amzDate[:8] {
		return cred, kms.Errorf(kms.CodeInvalidSignature, "Credential date %s does not match X-Amz-Date %s", a.date, amzDate)
	}
	if a.region != v.region {
		return cred, kms.Errorf(kms.CodeInvalidSignature, "Credential should be scoped to a valid region, not '%s' (this server is %s)", a.region, v.region)
	}
	if a.service != signingService {
		return cred, kms.Errorf(kms.CodeInvalidSignature, "Credential should be scoped to correct service: '%s'", signingService)
	}
	if !contains(a.signedHeaders, "host") || !contains(a.signedHeaders, "x-amz-date") {
		return cred, kms.Errorf(kms.CodeInvalidSignature, "SignedHeaders must include host and x-amz-date")
	}

	payloadHash := sha256.Sum256(body)
	payloadHex := hex.EncodeToString(payloadHash[:])
	if claimed := r.Header.Get("X-Amz-Content-Sha256"); claimed != "" && claimed != payloadHex {
		return cred, kms.Errorf(kms.CodeInvalidSignature, "The provided 'x-amz-content-sha256' header does not match what was computed.")
	}

	creq := canonicalRequest(r, a.signedHeaders, payloadHex)
	creqHash := sha256.Sum256(creq)
	scope := a.date + "/" + a.region + "/" + a.service + "/aws4_request"
	sts := make([]byte, 0, 160)
	sts = append(sts, sigV4Algorithm+"\n"...)
	sts = append(sts, amzDate...)
	sts = append(sts, '\n')
	sts = append(sts, scope...)
	sts = append(sts, '\n')
	sts = hex.AppendEncode(sts, creqHash[:])

	mac := hmac.New(sha256.New, v.signingKey(cred, a.date, a.region, a.service))
	mac.Write(sts)
	if !hmac.Equal(mac.Sum(nil), a.signature) {
		return cred, kms.Errorf(kms.CodeInvalidSignature, "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.")
	}
	return cred, nil
}

// signingKey derives (and caches: it costs four HMACs) the SigV4 signing key
// HMAC(HMAC(HMAC(HMAC("AWS4"+secret, date), region), service), "aws4_request").
func (v *sigV4Verifier) signingKey(cred Credential, date, region, service string) []byte {
	id := cred.AccessKeyID + "/" + date + "/" + region + "/" + service
	v.mu.Lock()
	k, ok := v.keys[id]
	v.mu.Unlock()
	if ok {
		return k
	}
	k = DeriveSigningKey(cred.SecretAccessKey, date, region, service)
	v.mu.Lock()
	if len(v.keys) >= maxCachedSigKey {
		clear(v.keys) // dates roll over daily; a full reset is simplest and rare
	}
	v.keys[id] = k
	v.mu.Unlock()
	return k
}

// DeriveSigningKey returns the SigV4 signing key for a secret and scope.
func DeriveSigningKey(secret, date, region, service string) []byte {
	k := hmacSHA256([]byte("AWS4"+secret), date)
	k = hmacSHA256(k, region)
	k = hmacSHA256(k, service)
	return hmacSHA256(k, "aws4_request")
}

func hmacSHA256(key []byte, data string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(data))
	return m.Sum(nil)
}

// canonicalRequest builds the SigV4 canonical request:
// METHOD \n URI \n QUERY \n HEADERS \n SIGNED-HEADERS \n PAYLOAD-HASH.
func canonicalRequest(r *http.Request, signed []string, payloadHex string) []byte {
	b := make([]byte, 0, 512)
	b = append(b, r.Method...)
	b = append(b, '\n')
	path := r.URL.EscapedPath()
	if path == "" {
		path = "/"
	}
	// Services other than S3 sign the already-escaped path escaped once more.
	b = appendURIEscape(b, path, false)
	b = append(b, '\n')
	b = appendCanonicalQuery(b, r.URL.RawQuery)
	b = append(b, '\n')
	for _, name := range signed {
		b = append(b, name...)
		b = append(b, ':')
		b = appendHeaderValue(b, r, name)
		b = append(b, '\n')
	}
	b = append(b, '\n')
	b = append(b, strings.Join(signed, ";")...)
	b = append(b, '\n')
	b = append(b, payloadHex...)
	return b
}

// appendHeaderValue appends a signed header's canonical value: values trimmed,
// inner runs of spaces collapsed to one, multiple values joined by commas.
func appendHeaderValue(b []byte, r *http.Request, lowerName string) []byte {
	var vals []string
	switch lowerName {
	case "host":
		vals = []string{r.Host}
	case "content-length":
		vals = r.Header.Values("Content-Length")
		if len(vals) == 0 && r.ContentLength >= 0 {
			vals = []string{strconv.FormatInt(r.ContentLength, 10)}
		}
	default:
		vals = r.Header.Values(lowerName)
	}
	for i, v := range vals {
		if i > 0 {
			b = append(b, ',')
		}
		v = strings.TrimSpace(v)
		space := false
		for j := 0; j < len(v); j++ {
			c := v[j]
			if c == ' ' {
				if space {
					continue
				}
				space = true
			} else {
				space = false
			}
			b = append(b, c)
		}
	}
	return b
}

func appendCanonicalQuery(b []byte, raw string) []byte {
	if raw == "" {
		return b
	}
	q, err := url.ParseQuery(raw)
	if err != nil {
		return append(b, raw...) // cannot match a client's canonical form: the signature check fails
	}
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	first := true
	for _, k := range keys {
		vs := append([]string(nil), q[k]...)
		sort.Strings(vs)
		for _, v := range vs {
			if !first {
				b = append(b, '&')
			}
			first = false
			b = appendURIEscape(b, k, true)
			b = append(b, '=')
			b = appendURIEscape(b, v, true)
		}
	}
	return b
}

// appendURIEscape percent-encodes every byte except the RFC 3986 unreserved
// characters (and '/', unless encodeSlash), upper-case hex, as SigV4 requires.
func appendURIEscape(b []byte, s string, encodeSlash bool) []byte {
	const hexdigits = "0123456789ABCDEF"
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9',
			c == '-', c == '_', c == '.', c == '~', c == '/' && !encodeSlash:
			b = append(b, c)
		default:
			b = append(b, '%', hexdigits[c>>4], hexdigits[c&15])
		}
	}
	return b
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
