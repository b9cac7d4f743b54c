package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kmsfs/kmsfs/kms"
	"github.com/kmsfs/kmsfs/kms/auditlog"
)

// Store is what the server serves: a complete KMS (the embedded keystore)
// that stores key policies and grants but leaves authorisation to the server.
type Store interface {
	kms.Crypto
	kms.Admin
	kms.Importer
	kms.Asymmetric
	// ARNForKey resolves a key ID, key ARN, alias name or alias ARN to the
	// key's ARN in any state; NotFoundException if there is no such key.
	ARNForKey(keyID string) (string, error)
	// CiphertextKeyARN returns the ARN of the key a ciphertext blob names,
	// without decrypting, so Decrypt can be authorised before it runs.
	CiphertextKeyARN(ciphertext []byte) (string, error)

	// The control-plane operations beyond kms.Admin.
	UpdateKeyDescription(ctx context.Context, keyID, description string) error
	TagResource(ctx context.Context, keyID string, tags map[string]string) error
	UntagResource(ctx context.Context, keyID string, tagKeys []string) error
	ListResourceTags(ctx context.Context, keyID string) (map[string]string, error)
	ListKeyRotations(ctx context.Context, keyID string) ([]kms.KeyRotation, error)

	// Custom key stores (ops_customkeystore.go).
	kms.CustomKeyStores
	GenerateRandomInStore(ctx context.Context, account, customKeyStoreID string, numBytes int) ([]byte, error)
}

// Config configures a Server.
type Config struct {
	Store       Store
	Credentials Credentials
	// Region is the region requests must be signed for (the keystore's).
	Region string
	// Audit receives one entry per request; nil disables auditing (tests).
	Audit *auditlog.Log
	// Rate is the number of cryptographic requests per second each account
	// may make (0: unlimited); Burst is the bucket size (0: Rate).
	Rate  float64
	Burst int
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Logf receives internal errors (never secrets); default discards.
	Logf func(format string, args ...any)
	// CallTimeout bounds each store call; default 30s.
	CallTimeout time.Duration
	// Peers are the servers of other regions, for multi-Region keys
	// (ops_multiregion.go); nil: none.
	Peers Peers
	// CacheTTL is how long key name resolutions and key policies are
	// reused (see lookupCache); 0 means the default, 1s; negative disables.
	CacheTTL time.Duration
}

// DefaultCacheTTL is Config.CacheTTL's default.
const DefaultCacheTTL = time.Second

// Server is an http.Handler speaking the AWS KMS JSON 1.1 protocol.
type Server struct {
	store    Store
	verifier *sigV4Verifier
	region   string
	audit    *auditlog.Log
	limiter  *rateLimiter
	now      func() time.Time
	logf     func(string, ...any)
	timeout  time.Duration

	reqPrefix string
	reqSeq    atomic.Uint64

	policyMu sync.Mutex
	policies map[string]*Policy // parsed policy by document text

	cache *lookupCache

	peers    Peers
	peerHTTP *http.Client
}

// maxRequestBody bounds a request body: the largest legitimate one is a
// PutKeyPolicy with a 32 KB policy, JSON-escaped.
const maxRequestBody = 256 << 10

const maxCachedPolicies = 4096

// New returns a Server for cfg.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("server: no key store")
	}
	if len(cfg.Credentials) == 0 {
		return nil, errors.New("server: no credentials: nothing may be served unauthenticated")
	}
	if cfg.Region == "" {
		return nil, errors.New("server: no region")
	}
	s := &Server{
		store:    cfg.Store,
		verifier: newSigV4Verifier(cfg.Credentials, cfg.Region),
		region:   cfg.Region,
		audit:    cfg.Audit,
		now:      cfg.Now,
		logf:     cfg.Logf,
		timeout:  cfg.CallTimeout,
		policies: make(map[string]*Policy),
		peers:    cfg.Peers,
		peerHTTP: &http.Client{Timeout: peerTimeout},
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.logf == nil {
		s.logf = func(string, ...any) {}
	}
	if s.timeout <= 0 {
		s.timeout = 30 * time.Second
	}
	ttl := cfg.CacheTTL
	if ttl == 0 {
		ttl = DefaultCacheTTL
	}
	s.cache = newLookupCache(ttl)
	if cfg.Rate > 0 {
		s.limiter = newRateLimiter(cfg.Rate, cfg.Burst)
	}
	var boot [8]byte
	if _, err := rand.Read(boot[:]); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	// Request IDs: a random per-process prefix and a counter: unique
	// without a random read per request.
	s.reqPrefix = hex.EncodeToString(boot[:]) + "-"
	return s, nil
}

// call is one request in flight.
type call struct {
	ctx   context.Context
	now   time.Time
	op    string
	cred  Credential
	entry *auditlog.Entry
	// tls and sourceIP are aws:SecureTransport and aws:SourceIp.
	tls      bool
	sourceIP string
	// requestAlias is kms:RequestAlias: the alias the request named its
	// key by, if it did.
	requestAlias string
	// attrErr is a failure to look up a key attribute a condition asked
	// for; the request then fails rather than skip the condition.
	attrErr error
}

// response is a handler's answer: either a value for encoding/json, or a
// pre-built body holding secrets that is zeroed once written.
type response struct {
	v      any
	secret []byte
}

type operation struct {
	// crypto marks the cryptographic operations the per-account quota counts.
	crypto bool
	// changesLookups marks operations that change what a key name resolves
	// to or a key's policy: they clear the lookup cache.
	changesLookups bool
	fn             func(s *Server, c *call, body []byte) (response, error)
}

var operations = map[string]operation{
	"CreateKey":                       {fn: (*Server).createKey},
	"DescribeKey":                     {fn: (*Server).describeKey},
	"ListKeys":                        {fn: (*Server).listKeys},
	"CreateAlias":                     {changesLookups: true, fn: (*Server).createAlias},
	"UpdateAlias":                     {changesLookups: true, fn: (*Server).updateAlias},
	"DeleteAlias":                     {changesLookups: true, fn: (*Server).deleteAlias},
	"ListAliases":                     {fn: (*Server).listAliases},
	"Encrypt":                         {crypto: true, fn: (*Server).encrypt},
	"Decrypt":                         {crypto: true, fn: (*Server).decrypt},
	"ReEncrypt":                       {crypto: true, fn: (*Server).reEncrypt},
	"GenerateDataKey":                 {crypto: true, fn: (*Server).generateDataKey},
	"GenerateDataKeyWithoutPlaintext": {crypto: true, fn: (*Server).generateDataKeyWithoutPlaintext},
	"GenerateRandom":                  {crypto: true, fn: (*Server).generateRandom},
	"EnableKey":                       {fn: (*Server).enableKey},
	"DisableKey":                      {fn: (*Server).disableKey},
	"ScheduleKeyDeletion":             {fn: (*Server).scheduleKeyDeletion},
	"CancelKeyDeletion":               {fn: (*Server).cancelKeyDeletion},
	"EnableKeyRotation":               {fn: (*Server).enableKeyRotation},
	"DisableKeyRotation":              {fn: (*Server).disableKeyRotation},
	"GetKeyRotationStatus":            {fn: (*Server).getKeyRotationStatus},
	"RotateKeyOnDemand":               {fn: (*Server).rotateKeyOnDemand},
	"ListKeyRotations":                {fn: (*Server).listKeyRotations},
	"GetKeyPolicy":                    {fn: (*Server).getKeyPolicy},
	"PutKeyPolicy":                    {changesLookups: true, fn: (*Server).putKeyPolicy},
	"CreateGrant":                     {fn: (*Server).createGrant},
	"ListGrants":                      {fn: (*Server).listGrants},
	"RevokeGrant":                     {fn: (*Server).revokeGrant},
	"RetireGrant":                     {fn: (*Server).retireGrant},
	"UpdateKeyDescription":            {fn: (*Server).updateKeyDescription},
	"TagResource":                     {fn: (*Server).tagResource},
	"UntagResource":                   {fn: (*Server).untagResource},
	"ListResourceTags":                {fn: (*Server).listResourceTags},
	"ListKeyPolicies":                 {fn: (*Server).listKeyPolicies},
	"ListRetirableGrants":             {fn: (*Server).listRetirableGrants},
	"GetParametersForImport":          {fn: (*Server).getParametersForImport},
	"ImportKeyMaterial":               {fn: (*Server).importKeyMaterial},
	"DeleteImportedKeyMaterial":       {fn: (*Server).deleteImportedKeyMaterial},

	// Asymmetric and HMAC keys (ops_asymmetric.go).
	"GetPublicKey":                        {fn: (*Server).getPublicKey},
	"Sign":                                {crypto: true, fn: (*Server).sign},
	"Verify":                              {crypto: true, fn: (*Server).verify},
	"GenerateMac":                         {crypto: true, fn: (*Server).generateMac},
	"VerifyMac":                           {crypto: true, fn: (*Server).verifyMac},
	"GenerateDataKeyPair":                 {crypto: true, fn: (*Server).generateDataKeyPair},
	"GenerateDataKeyPairWithoutPlaintext": {crypto: true, fn: (*Server).generateDataKeyPairWithoutPlaintext},

	// Multi-Region keys (ops_multiregion.go); the Kmsfs* operations are
	// the ones servers of different regions call on each other.
	"ReplicateKey":                     {fn: (*Server).replicateKey},
	"UpdatePrimaryRegion":              {fn: (*Server).updatePrimaryRegion},
	"KmsfsReplicaWrappingKey":          {fn: (*Server).replicaWrappingKey},
	"KmsfsImportReplica":               {fn: (*Server).importReplica},
	"KmsfsSetMultiRegionConfiguration": {fn: (*Server).setMultiRegionConfiguration},
	// Custom key stores (ops_customkeystore.go).
	"CreateCustomKeyStore":     {fn: (*Server).createCustomKeyStore},
	"ConnectCustomKeyStore":    {fn: (*Server).connectCustomKeyStore},
	"DisconnectCustomKeyStore": {fn: (*Server).disconnectCustomKeyStore},
	"DescribeCustomKeyStores":  {fn: (*Server).describeCustomKeyStores},
	"UpdateCustomKeyStore":     {fn: (*Server).updateCustomKeyStore},
	"DeleteCustomKeyStore":     {fn: (*Server).deleteCustomKeyStore},
}

const targetPrefix = "TrentService."

// ServeHTTP handles one AWS KMS API request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	now := s.now()
	reqID := s.reqPrefix + strconv.FormatUint(s.reqSeq.Add(1), 16)
	entry := &auditlog.Entry{
		Time:          now.UTC().Format(time.RFC3339Nano),
		RequestID:     reqID,
		SourceAddress: r.RemoteAddr,
	}
	op, _ := strings.CutPrefix(r.Header.Get("X-Amz-Target"), targetPrefix)
	entry.Operation = op

	body, err := s.readBody(r)
	var resp response
	if err == nil {
		resp, err = s.handle(r, op, body, now, entry)
	}
	kms.Zero(body) // Encrypt requests carry plaintext

	if err != nil {
		entry.Result = errorCode(err)
		entry.ErrorMessage = errorMessage(err)
	} else {
		entry.Result = auditlog.ResultSuccess
	}
	if s.audit != nil {
		if aerr := s.audit.Record(entry); aerr != nil {
			// A request we cannot audit is a request we do not answer.
			s.logf("audit: %v", aerr)
			kms.Zero(resp.secret)
			resp = response{}
			err = kms.Errorf(kms.CodeInternal, "audit log unavailable")
		}
	}
	h := w.Header()
	h.Set("Content-Type", "application/x-amz-json-1.1")
	h.Set("X-Amzn-Requestid", reqID)
	if err != nil {
		s.writeError(w, err)
		return
	}
	if resp.secret != nil {
		w.Write(resp.secret)
		kms.Zero(resp.secret)
		return
	}
	out, merr := json.Marshal(resp.v)
	if merr != nil {
		s.writeError(w, kms.Errorf(kms.CodeInternal, "encode response"))
		return
	}
	w.Write(out)
}

func (s *Server) readBody(r *http.Request) ([]byte, error) {
	if r.Method != http.MethodPost {
		return nil, kms.Errorf("UnknownOperationException", "the KMS API takes POST requests")
	}
	n := r.ContentLength
	if n > maxRequestBody {
		return nil, kms.Errorf(kms.CodeValidation, "request body of %d bytes is over the %d byte limit", n, maxRequestBody)
	}
	var body []byte
	if n >= 0 {
		body = make([]byte, n)
		if _, err := io.ReadFull(r.Body, body); err != nil {
			return nil, kms.Errorf("SerializationException", "read request body: %v", err)
		}
		return body, nil
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxRequestBody+1))
	if err != nil {
		return nil, kms.Errorf("SerializationException", "read request body: %v", err)
	}
	if len(body) > maxRequestBody {
		return nil, kms.Errorf(kms.CodeValidation, "request body is over the %d byte limit", maxRequestBody)
	}
	return body, nil
}

func (s *Server) handle(r *http.Request, op string, body []byte, now time.Time, entry *auditlog.Entry) (response, error) {
	cred, err := s.verifier.verify(r, body, now)
	entry.AccessKeyID = cred.AccessKeyID
	if err != nil {
		entry.Principal = cred.Principal // known when only the signature was wrong
		return response{}, err
	}
	entry.Principal = cred.Principal
	o, ok := operations[op]
	if !ok {
		return response{}, kms.Errorf("UnknownOperationException", "unknown operation %q", r.Header.Get("X-Amz-Target"))
	}
	if o.crypto && s.limiter != nil && !s.limiter.allow(cred.Account, now) {
		return response{}, kms.Errorf(kms.CodeThrottling, "Rate exceeded for account %s", cred.Account)
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.timeout)
	defer cancel()
	c := &call{ctx: ctx, now: now, op: op, cred: cred, entry: entry, tls: r.TLS != nil}
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		c.sourceIP = ap.Addr().Unmap().String()
	}
	if identityOnlyOps[op] {
		if err := s.authorizeIdentity(c); err != nil {
			return response{}, err
		}
	}
	resp, err := o.fn(s, c, body)
	if o.changesLookups {
		s.cache.clear() // also on failure: the change may have half happened
	}
	return resp, err
}

// decode parses a JSON request body into v.
func decode(body []byte, v any) error {
	if len(body) == 0 {
		return nil
	}
	if err := json.Unmarshal(body, v); err != nil {
		return kms.Errorf("SerializationException", "request body: %v", err)
	}
	return nil
}

// errorCode returns the AWS error code for err; errors that are not KMS
// errors are internal failures.
func errorCode(err error) string {
	if c := kms.Code(err); c != "" {
		return c
	}
	return kms.CodeInternal
}

func errorMessage(err error) string {
	var e *kms.Error
	if errors.As(err, &e) {
		return e.Message
	}
	return err.Error()
}

// statusFor maps an AWS KMS error code to its HTTP status.
func statusFor(code string) int {
	switch code {
	case kms.CodeInternal:
		return http.StatusInternalServerError
	case kms.CodeDependencyTimeout, kms.CodeUnavailable:
		return http.StatusServiceUnavailable
	case kms.CodeDisabled, kms.CodeInvalidState:
		// AWS answers these with 409 Conflict.
		return http.StatusConflict
	}
	return http.StatusBadRequest
}

func (s *Server) writeError(w http.ResponseWriter, err error) {
	code := errorCode(err)
	msg := errorMessage(err)
	if kms.Code(err) == "" {
		// Details of internal failures (paths, I/O errors) go to the
		// server's log, not to the client.
		s.logf("internal error: %v", err)
		msg = "internal error"
	}
	w.Header().Set("X-Amzn-Errortype", code)
	w.WriteHeader(statusFor(code))
	b, _ := json.Marshal(struct {
		Type    string `json:"__type"`
		Message string `json:"message"`
	}{code, msg})
	w.Write(b)
}

// policyFor returns the parsed policy of keyARN.
func (s *Server) policyFor(c *call, keyARN string) (*Policy, error) {
	if p, ok := s.cache.policy(keyARN, c.now); ok {
		return p, nil
	}
	p, err := s.loadPolicy(c.ctx, keyARN)
	if err != nil {
		return nil, err
	}
	s.cache.putPolicy(keyARN, p, c.now)
	return p, nil
}

// loadPolicy reads a key's policy and parses it, reusing the parse of an
// identical document.
func (s *Server) loadPolicy(ctx context.Context, keyARN string) (*Policy, error) {
	doc, err := s.store.GetKeyPolicy(ctx, keyARN)
	if err != nil {
		return nil, err
	}
	s.policyMu.Lock()
	p, ok := s.policies[doc]
	s.policyMu.Unlock()
	if ok {
		return p, nil
	}
	p, err = ParsePolicy(doc)
	if err != nil {
		// A stored policy we cannot parse allows nothing.
		return nil, kms.Errorf(kms.CodeAccessDenied, "the key policy of %s cannot be evaluated: %v", keyARN, err)
	}
	s.policyMu.Lock()
	if len(s.policies) >= maxCachedPolicies {
		clear(s.policies)
	}
	s.policies[doc] = p
	s.policyMu.Unlock()
	return p, nil
}

// decide evaluates the key policy of keyARN and the caller's identity policy
// as AWS does: an explicit Deny in either wins; on a key of the caller's
// account the key policy alone suffices if it names the caller directly, but
// an Allow only through the caller's account (the account root) needs the
// identity policy's Allow too; on a key of another account both must allow.
// NoMatch leaves the request to grants; why says, for Deny and NoMatch, what
// refused it.
func (s *Server) decide(c *call, action, keyARN string, ec kms.EncryptionContext, extra map[string][]string) (Decision, string, error) {
	p, err := s.policyFor(c, keyARN)
	if err != nil {
		return NoMatch, "", err
	}
	rc := s.requestContext(c, action, keyARN)
	rc.EncryptionContext = ec
	rc.Values = extra
	if grantRequestOps[c.op] {
		// No AWS service calls this server on anyone's behalf.
		rc.Values = maps.Clone(extra)
		if rc.Values == nil {
			rc.Values = map[string][]string{}
		}
		rc.Values["kms:grantisforawsresource"] = []string{"false"}
	}
	kd, direct := p.evaluate(&rc)
	if c.attrErr != nil {
		return NoMatch, "", c.attrErr
	}
	if kd == Deny {
		return Deny, "with an explicit deny in a resource-based policy", nil
	}
	id := Allow
	if c.cred.Identity != nil {
		id = c.cred.Identity.Evaluate(&rc)
		if c.attrErr != nil {
			return NoMatch, "", c.attrErr
		}
	}
	switch {
	case id == Deny:
		return Deny, "with an explicit deny in an identity-based policy", nil
	case kd != Allow:
		return NoMatch, "because no resource-based policy or grant allows the " + action + " action", nil
	case id == Allow || (direct && arnAccount(keyARN) == c.cred.Account):
		return Allow, "", nil
	}
	return NoMatch, "because no identity-based policy allows the " + action + " action", nil
}

// identityOnlyOps are the operations that name no key (Resource "*"): AWS
// decides them by the caller's identity policy alone.
var identityOnlyOps = map[string]bool{
	"CreateKey": true, "ListKeys": true, "ListAliases": true, "ListRetirableGrants": true, "GenerateRandom": true,
	"CreateCustomKeyStore": true, "ConnectCustomKeyStore": true, "DisconnectCustomKeyStore": true,
	"DescribeCustomKeyStores": true, "UpdateCustomKeyStore": true, "DeleteCustomKeyStore": true,
}

// authorizeIdentity decides an operation in identityOnlyOps.
func (s *Server) authorizeIdentity(c *call) error {
	if c.cred.Identity == nil {
		return nil
	}
	action := "kms:" + c.op
	rc := s.requestContext(c, action, "*")
	switch c.cred.Identity.Evaluate(&rc) {
	case Allow:
		return nil
	case Deny:
		return denied(c, action, "*", "with an explicit deny in an identity-based policy")
	}
	return denied(c, action, "*", "because no identity-based policy allows the "+action+" action")
}

// grantRequestOps are the operations whose request context has
// kms:GrantIsForAWSResource.
var grantRequestOps = map[string]bool{"CreateGrant": true, "ListGrants": true, "RevokeGrant": true}

// requestContext is what the caller's request puts in a policy's request
// context for action on resource (a key ARN, or "*").
func (s *Server) requestContext(c *call, action, resource string) RequestContext {
	rc := RequestContext{
		Principal:       c.cred.Principal,
		PrincipalArn:    c.cred.PrincipalArn,
		Account:         c.cred.Account,
		Action:          action,
		Resource:        resource,
		SecureTransport: c.tls,
		SourceIP:        c.sourceIP,
		CurrentTime:     c.now,
	}
	if requestAliasOps[c.op] {
		rc.RequestAlias = c.requestAlias
	}
	if resource != "*" {
		rc.Lazy = func(key string) ([]string, bool) { return s.keyAttribute(c, resource, key) }
	}
	return rc
}

// requestAliasOps are the operations whose request context has
// kms:RequestAlias (AWS: the cryptographic operations, DescribeKey and
// GetPublicKey).
var requestAliasOps = map[string]bool{
	"Encrypt": true, "Decrypt": true, "ReEncrypt": true, "GenerateDataKey": true,
	"GenerateDataKeyWithoutPlaintext": true, "DescribeKey": true,
	"GetPublicKey": true, "Sign": true, "Verify": true, "GenerateMac": true, "VerifyMac": true,
	"GenerateDataKeyPair": true, "GenerateDataKeyPairWithoutPlaintext": true,
}

// keyAttribute answers the condition keys that describe the key itself,
// looked up only when a policy asks.
func (s *Server) keyAttribute(c *call, keyARN, key string) ([]string, bool) {
	switch key {
	case "kms:resourcealiases":
		aliases, err := s.store.ListAliases(c.ctx, keyARN)
		if err != nil {
			c.attrErr = fmt.Errorf("kms:ResourceAliases of %s: %w", keyARN, err)
			return nil, false
		}
		out := make([]string, 0, len(aliases))
		for _, a := range aliases {
			out = append(out, a.Name)
		}
		return out, len(out) > 0
	case "kms:keyspec", "kms:keyusage":
		md, err := s.store.DescribeKey(c.ctx, keyARN)
		if err != nil {
			c.attrErr = fmt.Errorf("%s of %s: %w", key, keyARN, err)
			return nil, false
		}
		if key == "kms:keyspec" {
			return []string{orDefault(md.KeySpec, symmetricDefault)}, true
		}
		return []string{orDefault(md.KeyUsage, kms.KeyUsageEncryptDecrypt)}, true
	case "kms:keyorigin":
		md, err := s.store.DescribeKey(c.ctx, keyARN)
		if err != nil {
			c.attrErr = fmt.Errorf("kms:KeyOrigin of %s: %w", keyARN, err)
			return nil, false
		}
		if md.Origin == "" {
			return []string{"AWS_KMS"}, true
		}
		return []string{md.Origin}, true
	}
	return nil, false
}

// authorize decides whether the caller may perform action on keyARN: an
// explicit Deny in the key policy wins; otherwise an Allow in the policy or a
// grant for grantOp (if not "") permits; otherwise the request is denied.
func (s *Server) authorize(c *call, action, keyARN string, ec kms.EncryptionContext, grantOp string, extra map[string][]string) error {
	d, why, err := s.decide(c, action, keyARN, ec, extra)
	if err != nil {
		return err
	}
	switch d {
	case Allow:
		return nil
	case Deny:
		return denied(c, action, keyARN, why)
	}
	if grantOp != "" {
		ok, err := s.grantAllows(c, keyARN, grantOp, ec)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
	}
	return denied(c, action, keyARN, why)
}

// denied is AWS's AccessDeniedException for a refused request; why says
// which policy refused it.
func denied(c *call, action, keyARN, why string) error {
	return kms.Errorf(kms.CodeAccessDenied, "User: %s is not authorized to perform: %s on resource: %s %s",
		c.cred.Principal, action, keyARN, why)
}

// grantAllows reports whether a grant on keyARN gives the caller op, with
// the grant's encryption context constraints met.
func (s *Server) grantAllows(c *call, keyARN, op string, ec kms.EncryptionContext) (bool, error) {
	grants, err := s.store.ListGrants(c.ctx, keyARN)
	if err != nil {
		return false, err
	}
	for i := range grants {
		g := &grants[i]
		if !PrincipalMatches(g.GranteePrincipal, c.cred.Principal) || !contains(g.Operations, op) {
			continue
		}
		if cryptoGrantOps[op] && !constraintsMet(g, ec) {
			continue
		}
		return true, nil
	}
	return false, nil
}

// cryptoGrantOps are the grant operations that take an encryption context,
// the only ones grant constraints apply to.
var cryptoGrantOps = map[string]bool{
	"Decrypt": true, "Encrypt": true, "GenerateDataKey": true,
	"GenerateDataKeyWithoutPlaintext": true, "ReEncryptFrom": true, "ReEncryptTo": true,
	"GenerateDataKeyPair": true, "GenerateDataKeyPairWithoutPlaintext": true,
}

// grantOperations are the operations a grant may give.
var grantOperations = map[string]bool{
	"Decrypt": true, "Encrypt": true, "GenerateDataKey": true,
	"GenerateDataKeyWithoutPlaintext": true, "ReEncryptFrom": true, "ReEncryptTo": true,
	"CreateGrant": true, "RetireGrant": true, "DescribeKey": true,
	"GetPublicKey": true, "Sign": true, "Verify": true, "GenerateMac": true, "VerifyMac": true,
	"GenerateDataKeyPair": true, "GenerateDataKeyPairWithoutPlaintext": true,
}

// constraintsMet applies a grant's encryption context constraints. In a grant
// constraint the context key is not case sensitive but the value is (AWS
// GrantConstraints).
func constraintsMet(g *kms.Grant, ec kms.EncryptionContext) bool {
	lookup := func(k string) (string, bool) {
		if v, ok := ec[k]; ok {
			return v, true
		}
		for ek, v := range ec {
			if strings.EqualFold(ek, k) {
				return v, true
			}
		}
		return "", false
	}
	if g.ContextEquals != nil {
		if len(g.ContextEquals) != len(ec) {
			return false
		}
		for k, want := range g.ContextEquals {
			if v, ok := lookup(k); !ok || v != want {
				return false
			}
		}
	}
	for k, want := range g.ContextSubset {
		if v, ok := lookup(k); !ok || v != want {
			return false
		}
	}
	return true
}

// resolve returns the ARN of the key keyID names, for the call's operation:
// a key of another account only by key ARN or alias ARN, and only for the
// operations AWS allows across accounts.
func (s *Server) resolve(c *call, keyID string) (string, error) {
	if keyID == "" {
		return "", kms.Errorf(kms.CodeValidation, "1 validation error detected: Value null at 'keyId' failed to satisfy constraint: Member must not be null")
	}
	if name, ok := aliasNameOf(keyID); ok {
		c.requestAlias = name
	}
	arn, err := s.lookupARN(c, keyID)
	if err != nil {
		return "", err
	}
	c.entry.KeyARN = arn
	if err := s.checkAccount(c, c.op, arn); err != nil {
		return "", err
	}
	return arn, nil
}

// checkAccount refuses op on a key of another account than the caller's
// when AWS does not allow op across accounts.
func (s *Server) checkAccount(c *call, op, keyARN string) error {
	if arnAccount(keyARN) == c.cred.Account || crossAccountOps[op] {
		return nil
	}
	return kms.Errorf(kms.CodeAccessDenied, "User: %s is not authorized to perform: kms:%s on resource: %s because %s cannot be used on a key in another account",
		c.cred.Principal, op, keyARN, op)
}

// crossAccountOps are the operations AWS allows on a key of another account
// (by key ARN, where its key policy or a grant allows).
var crossAccountOps = map[string]bool{
	"CreateGrant": true, "Decrypt": true, "DescribeKey": true, "Encrypt": true,
	"GenerateDataKey": true, "GenerateDataKeyWithoutPlaintext": true, "GetKeyRotationStatus": true,
	"ListGrants": true, "ReEncrypt": true, "RetireGrant": true, "RevokeGrant": true,
	"GetPublicKey": true, "Sign": true, "Verify": true, "GenerateMac": true, "VerifyMac": true,
	"GenerateDataKeyPair": true, "GenerateDataKeyPairWithoutPlaintext": true,
}

// aliasNameOf returns the alias name ("alias/x") a key reference names, if
// it is an alias name or alias ARN.
func aliasNameOf(keyID string) (string, bool) {
	if strings.HasPrefix(keyID, "alias/") {
		return keyID, true
	}
	if strings.HasPrefix(keyID, "arn:") {
		if parts := strings.SplitN(keyID, ":", 6); len(parts) == 6 && strings.HasPrefix(parts[5], "alias/") {
			return parts[5], true
		}
	}
	return "", false
}

// qualify turns a key ID or alias name into the key ARN or alias ARN it
// stands for in the caller's account; ARNs are left as they are. The store
// then resolves names in the caller's account only.
func (s *Server) qualify(c *call, keyID string) string {
	if strings.HasPrefix(keyID, "arn:") {
		return keyID
	}
	prefix := "arn:aws:kms:" + s.region + ":" + c.cred.Account + ":"
	if strings.HasPrefix(keyID, "alias/") {
		return prefix + keyID
	}
	return prefix + "key/" + keyID
}

// lookupARN resolves a key name, in the caller's account, through the
// lookup cache. Only successes are cached, so a key created elsewhere is
// found at once.
func (s *Server) lookupARN(c *call, keyID string) (string, error) {
	q := s.qualify(c, keyID)
	if arn, ok := s.cache.arn(q, c.now); ok {
		return arn, nil
	}
	arn, err := s.store.ARNForKey(q)
	if err != nil {
		return "", err
	}
	s.cache.putARN(q, arn, c.now)
	return arn, nil
}

// resolveAndAuthorize is the common prologue of operations on one key.
func (s *Server) resolveAndAuthorize(c *call, keyID, grantOp string) (string, error) {
	return s.resolveAndAuthorizeWith(c, keyID, grantOp, nil)
}

// resolveAndAuthorizeWith is resolveAndAuthorize with further condition
// keys in the request context.
func (s *Server) resolveAndAuthorizeWith(c *call, keyID, grantOp string, extra map[string][]string) (string, error) {
	arn, err := s.resolve(c, keyID)
	if err != nil {
		return "", err
	}
	return arn, s.authorize(c, "kms:"+c.op, arn, nil, grantOp, extra)
}
