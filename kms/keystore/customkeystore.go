package keystore

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/kmsfs/kmsfs/kms"
)

// Custom key stores: AWS's CloudHSM key store carried over onto a PKCS#11
// token. A store names a token (AWS's CloudHsmClusterId is the token's
// label), pins its identity (AWS's TrustAnchorCertificate is an RFC 7512
// PKCS#11 URI whose serial, manufacturer and model must match the token's
// CK_TOKEN_INFO) and keeps the user PIN (AWS's KeyStorePassword) sealed
// under the keystore's KEK. A key created in the store (origin AWS_CLOUDHSM)
// is an AES-256 key generated in the token with CKA_SENSITIVE and without
// CKA_EXTRACTABLE, found by its CKA_ID (the KMS key's 16 UUID bytes) and
// labelled "kmsfs-kms-key/<uuid>". Every Encrypt, Decrypt, GenerateDataKey
// and ReEncrypt under it runs CKM_AES_GCM in the token with the nonce and
// additional data the software keys use, so its ciphertext blobs have the
// same layout (blob.go, always material version 1) and the key's value is
// never in this process.
//
// The connection state is the administrator's: ConnectCustomKeyStore and
// DisconnectCustomKeyStore record it in keystore.json, so that every
// process using the keystore (a mount, `kmsfs kms serve`, the admin CLI)
// follows it: a process logs in to the token the first time it uses a key
// of a CONNECTED store, and closes its sessions as soon as it sees the
// store DISCONNECTED. The PKCS#11 library is the process's (Options.
// CustomKeyStoreModule), never a value from the state or from a request:
// loading a library runs its code.

// stateFormatCustomKeyStores is the keystore.json format of a state with
// custom key stores (see state.go); a state without any keeps its lower
// format, and an older kmsfs refuses a format 5 state rather than take a
// key with no material for a broken one.
const stateFormatCustomKeyStores = 5

// customKeyStoreRecord is one custom key store in keystore.json:
//
//	custom_key_stores {"<cks-id>": {id, name, type ("AWS_CLOUDHSM"),
//	              account (absent: the keystore's account),
//	              token (the token label: CloudHsmClusterId),
//	              trust_anchor (PKCS#11 URI: TrustAnchorCertificate),
//	              pin: base64(nonce || AES-GCM_KEK(user PIN)), additional
//	                   data "kmsfs/keystore/custom-key-store-pin/v1" NUL <cks-id>,
//	              state (CONNECTED | CONNECTING | DISCONNECTED | FAILED),
//	              error_code (FAILED only), created}}
//
// and a key in it records custom_key_store: "<cks-id>" and has one version
// with no material.
type customKeyStoreRecord struct {
	ID          string    `json:"id"`
	Account     string    `json:"account,omitempty"`
	Name        string    `json:"name"`
	Type        string    `json:"type"`
	Token       string    `json:"token"`
	TrustAnchor string    `json:"trust_anchor"`
	PIN         []byte    `json:"pin"`
	State       string    `json:"state"`
	ErrorCode   string    `json:"error_code,omitempty"`
	Created     time.Time `json:"created"`
}

const (
	customKeyStorePINAAD = "kmsfs/keystore/custom-key-store-pin/v1\x00"
	// AWS's limits on CustomKeyStoreName; a PKCS#11 token label is at most
	// 32 bytes (CK_TOKEN_INFO.label).
	maxCustomKeyStoreName = 256
	maxTokenLabel         = 32
	maxTokenPIN           = 255
	maxTrustAnchor        = 5000
)

func customKeyStorePINAADFor(id string) []byte { return []byte(customKeyStorePINAAD + id) }

// tokenKeyLabel is the CKA_LABEL of a KMS key's AES key in the token, so an
// operator looking at the token sees which KMS key an object is.
func tokenKeyLabel(id keyUUID) string { return "kmsfs-kms-key/" + id.String() }

// tokenInfo is a token's identity, from CK_TOKEN_INFO.
type tokenInfo struct{ Label, Serial, Manufacturer, Model string }

// tokenModule is a loaded PKCS#11 library (pkcs11.go; an error without cgo).
type tokenModule interface {
	probe(label string) (tokenInfo, error)
	connect(label string, pin []byte, check func(tokenInfo) error) (tokenConn, error)
	close()
}

// tokenConn is a logged-in connection to a store's token.
type tokenConn interface {
	generateKey(id keyUUID) error
	encrypt(id keyUUID, nonce, plaintext, aad []byte) ([]byte, error)
	decrypt(id keyUUID, nonce, sealed, aad []byte) ([]byte, error)
	destroyKey(id keyUUID) error
	random(n int) ([]byte, error)
	// healthy is false once the token lost our sessions or login.
	healthy() bool
	close()
}

// connectError is a failure to reach or log in to a token, with the
// ConnectionErrorCode it leaves a store in.
type connectError struct {
	code string
	err  error
}

func (e *connectError) Error() string { return e.err.Error() }
func (e *connectError) Unwrap() error { return e.err }

func connectErrorCode(err error) string {
	var ce *connectError
	if errors.As(err, &ce) {
		return ce.code
	}
	return kms.ConnErrInternal
}

var (
	errTokenKeyMissing = errors.New("the key is not in the token")
	errTokenAuth       = errors.New("authentication failed")
)

// storeConns are this process's connections to custom key store tokens.
// Guarded by the keystore's mu; a tokenConn itself is safe for concurrent
// use, so cryptographic operations run on it without mu.
type storeConns struct {
	module string
	mod    tokenModule
	conns  map[string]*storeConn
}

// storeConn is an open connection and the store settings it was made with.
type storeConn struct {
	conn        tokenConn
	token       string
	trustAnchor string
	pin         []byte // the sealed PIN: a changed PIN means a new login
}

func newStoreConns(module string) *storeConns {
	return &storeConns{module: module, conns: map[string]*storeConn{}}
}

// loadModule loads the process's PKCS#11 library once.
func (s *storeConns) loadModule() (tokenModule, error) {
	if s.mod != nil {
		return s.mod, nil
	}
	if s.module == "" {
		return nil, &connectError{code: kms.ConnErrNetworkErrors, err: errors.New("no PKCS#11 module is configured for custom key stores in this process (--pkcs11-module)")}
	}
	mod, err := loadTokenModule(s.module)
	if err != nil {
		return nil, err
	}
	s.mod = mod
	return mod, nil
}

// sync closes the connections of stores that st no longer has CONNECTED,
// or whose token, trust anchor or PIN changed: a disconnect by another
// process takes effect here at the next state reload.
func (s *storeConns) sync(st *state) {
	for id, c := range s.conns {
		rec := st.CustomKeyStores[id]
		if rec == nil || rec.State != kms.ConnectionConnected || !c.matches(rec) {
			c.conn.close()
			delete(s.conns, id)
		}
	}
}

func (s *storeConns) closeAll() {
	for id, c := range s.conns {
		c.conn.close()
		delete(s.conns, id)
	}
	if s.mod != nil {
		s.mod.close()
		s.mod = nil
	}
}

func (c *storeConn) matches(rec *customKeyStoreRecord) bool {
	return c.token == rec.Token && c.trustAnchor == rec.TrustAnchor && string(c.pin) == string(rec.PIN)
}

// trustAnchor is a parsed TrustAnchorCertificate: the token identity
// attributes of an RFC 7512 PKCS#11 URI.
type trustAnchor map[string]string

// trustAnchorAttrs are the URI path attributes a trust anchor may name
// (RFC 7512 section 2.3): token identity only. A module path (a query
// attribute) is refused: the library is the operator's choice.
var trustAnchorAttrs = []string{"token", "serial", "manufacturer", "model"}

func parseTrustAnchor(uri string) (trustAnchor, error) {
	bad := func(format string, a ...any) (trustAnchor, error) {
		return nil, kms.Errorf(kms.CodeIncorrectTrustAnchor, "TrustAnchorCertificate: "+format+"; give a PKCS#11 URI (RFC 7512) naming the token, e.g. pkcs11:token=LABEL;serial=SERIAL", a...)
	}
	uri = strings.TrimSpace(uri)
	path, ok := strings.CutPrefix(uri, "pkcs11:")
	if !ok {
		return bad("%q is not a PKCS#11 URI", uri)
	}
	if strings.ContainsAny(path, "?#") {
		return bad("query attributes (module-path, pin-value, ...) are not accepted")
	}
	ta := trustAnchor{}
	for _, attr := range strings.Split(path, ";") {
		if attr == "" {
			continue
		}
		name, value, ok := strings.Cut(attr, "=")
		if !ok || !slices.Contains(trustAnchorAttrs, name) {
			return bad("attribute %q is not one of %v", attr, trustAnchorAttrs)
		}
		v, err := url.PathUnescape(value)
		if err != nil {
			return bad("attribute %q: %v", name, err)
		}
		if _, dup := ta[name]; dup {
			return bad("attribute %q given twice", name)
		}
		ta[name] = v
	}
	if ta["serial"] == "" {
		return bad("no serial attribute: the serial number pins which token the store trusts")
	}
	return ta, nil
}

// check reports whether a token is the one the anchor pins.
func (ta trustAnchor) check(info tokenInfo) error {
	got := map[string]string{"token": info.Label, "serial": info.Serial, "manufacturer": info.Manufacturer, "model": info.Model}
	for _, name := range trustAnchorAttrs {
		if want, ok := ta[name]; ok && want != got[name] {
			return fmt.Errorf("token %q has %s %q, the trust anchor wants %q", info.Label, name, got[name], want)
		}
	}
	return nil
}

// anchorFor is the trust anchor that pins info's token as it is now.
func anchorFor(info tokenInfo) string {
	esc := func(s string) string { return strings.ReplaceAll(url.PathEscape(s), ";", "%3B") }
	return "pkcs11:token=" + esc(info.Label) + ";manufacturer=" + esc(info.Manufacturer) + ";model=" + esc(info.Model) + ";serial=" + esc(info.Serial)
}

func checkStoreName(name string) error {
	if name == "" || utf8.RuneCountInString(name) > maxCustomKeyStoreName {
		return kms.Errorf(kms.CodeValidation, "CustomKeyStoreName must be 1 to %d characters", maxCustomKeyStoreName)
	}
	return nil
}

func checkTokenLabel(label string) error {
	if label == "" || len(label) > maxTokenLabel {
		return kms.Errorf(kms.CodeValidation, "CloudHsmClusterId (the PKCS#11 token label) must be 1 to %d bytes", maxTokenLabel)
	}
	return nil
}

func checkTokenPIN(pin []byte) error {
	if len(pin) == 0 || len(pin) > maxTokenPIN {
		return kms.Errorf(kms.CodeValidation, "KeyStorePassword (the token's user PIN) must be 1 to %d bytes", maxTokenPIN)
	}
	return nil
}

// ownerOf is owner for a caller's account, "" meaning the keystore's.
func (k *Keystore) ownerOf(account string) string {
	if account == "" {
		return ""
	}
	return k.owner(account)
}

// newCustomKeyStoreID returns an ID of AWS's form: "cks-" and 17 hex digits.
func newCustomKeyStoreID() (string, error) {
	h, err := randomHex(9)
	if err != nil {
		return "", fmt.Errorf("generate custom key store ID: %w", err)
	}
	return "cks-" + h[:17], nil
}

// customKeyStore finds owner's store by ID (CustomKeyStoreNotFoundException).
func (st *state) customKeyStore(owner, id string) (*customKeyStoreRecord, error) {
	rec := st.CustomKeyStores[id]
	if rec == nil || rec.Account != owner {
		return nil, kms.Errorf(kms.CodeCustomKeyStoreNotFound, "custom key store %s not found", id)
	}
	return rec, nil
}

// storeByName finds owner's store by name, nil if none.
func (st *state) storeByName(owner, name string) *customKeyStoreRecord {
	for _, rec := range st.CustomKeyStores {
		if rec.Name == name && rec.Account == owner {
			return rec
		}
	}
	return nil
}

// storeByToken finds the store other than except using token label, nil if none.
func (st *state) storeByToken(label, except string) *customKeyStoreRecord {
	for _, rec := range st.CustomKeyStores {
		if rec.Token == label && rec.ID != except {
			return rec
		}
	}
	return nil
}

// cloneCustomKeyStores deep-copies the stores for state.clone.
func cloneCustomKeyStores(in map[string]*customKeyStoreRecord) map[string]*customKeyStoreRecord {
	if in == nil {
		return nil
	}
	out := make(map[string]*customKeyStoreRecord, len(in))
	for id, rec := range in {
		r := *rec
		r.PIN = slices.Clone(rec.PIN)
		out[id] = &r
	}
	return out
}

// indexCustomKeyStores checks the stores and the keys that name one.
func (st *state) indexCustomKeyStores() error {
	for id, rec := range st.CustomKeyStores {
		if rec == nil || rec.ID != id {
			return fmt.Errorf("state: custom key store entry %q is inconsistent", id)
		}
		switch rec.State {
		case kms.ConnectionConnected, kms.ConnectionConnecting, kms.ConnectionDisconnected, kms.ConnectionFailed:
		default:
			return fmt.Errorf("state: custom key store %s has connection state %q", id, rec.State)
		}
	}
	for id, rec := range st.Keys {
		if rec.CustomKeyStore == "" {
			if rec.Origin == kms.OriginCloudHSM {
				return fmt.Errorf("state: key %s has origin %s but no custom key store", id, rec.Origin)
			}
			continue
		}
		if s := st.CustomKeyStores[rec.CustomKeyStore]; s == nil || s.Account != rec.Account {
			return fmt.Errorf("state: key %s names missing custom key store %s", id, rec.CustomKeyStore)
		}
		if rec.Origin != kms.OriginCloudHSM || rec.KeySpec != "" || len(rec.Versions) != 1 || rec.Versions[0].Material != nil {
			return fmt.Errorf("state: key %s in custom key store %s is not a symmetric %s key with one version", id, rec.CustomKeyStore, kms.OriginCloudHSM)
		}
	}
	return nil
}

// describe is DescribeCustomKeyStores' view of rec.
func (rec *customKeyStoreRecord) describe() kms.CustomKeyStore {
	return kms.CustomKeyStore{
		ID:                     rec.ID,
		Name:                   rec.Name,
		Type:                   rec.Type,
		CloudHsmClusterID:      rec.Token,
		TrustAnchorCertificate: rec.TrustAnchor,
		ConnectionState:        rec.State,
		ConnectionErrorCode:    rec.ErrorCode,
		CreationDate:           rec.Created,
	}
}

// probeToken finds a token by label without logging in: what
// CreateCustomKeyStore and UpdateCustomKeyStore check, as AWS checks that
// the cluster exists. Caller holds mu.
func (k *Keystore) probeToken(label string) (tokenInfo, error) {
	mod, err := k.stores.loadModule()
	if err != nil {
		return tokenInfo{}, kms.Errorf(kms.CodeCloudHsmClusterNotFound, "token %q: %v", label, err)
	}
	info, err := mod.probe(label)
	if err != nil {
		return tokenInfo{}, kms.Errorf(kms.CodeCloudHsmClusterNotFound, "%v", err)
	}
	return info, nil
}

// CreateCustomKeyStore records a store for the token labelled
// in.CloudHsmClusterID, DISCONNECTED, as AWS creates it. The token must be
// there and match the trust anchor (IncorrectTrustAnchorException); an
// empty trust anchor pins the token found now. The PIN is checked by
// ConnectCustomKeyStore, not here (AWS checks kmsuser's password then too).
func (k *Keystore) CreateCustomKeyStore(ctx context.Context, in kms.CreateCustomKeyStoreInput) (string, error) {
	switch in.Type {
	case "", kms.CustomKeyStoreTypeCloudHSM:
	case "EXTERNAL_KEY_STORE":
		return "", kms.Errorf(kms.CodeUnsupportedOperation, "CustomKeyStoreType EXTERNAL_KEY_STORE: external key stores are not supported; use %s (a PKCS#11 token)", kms.CustomKeyStoreTypeCloudHSM)
	default:
		return "", kms.Errorf(kms.CodeValidation, "CustomKeyStoreType %q is not %s", in.Type, kms.CustomKeyStoreTypeCloudHSM)
	}
	if err := checkStoreName(in.Name); err != nil {
		return "", err
	}
	if err := checkTokenLabel(in.CloudHsmClusterID); err != nil {
		return "", err
	}
	if err := checkTokenPIN(in.KeyStorePassword); err != nil {
		return "", err
	}
	if len(in.TrustAnchorCertificate) > maxTrustAnchor {
		return "", kms.Errorf(kms.CodeValidation, "TrustAnchorCertificate is more than %d characters", maxTrustAnchor)
	}
	var anchor trustAnchor
	if in.TrustAnchorCertificate != "" {
		var err error
		if anchor, err = parseTrustAnchor(in.TrustAnchorCertificate); err != nil {
			return "", err
		}
		if t, ok := anchor["token"]; ok && t != in.CloudHsmClusterID {
			return "", kms.Errorf(kms.CodeIncorrectTrustAnchor, "TrustAnchorCertificate names token %q, CloudHsmClusterId %q", t, in.CloudHsmClusterID)
		}
	}
	account := in.Account
	if account == "" {
		account = k.account
	}
	if !isAccountID(account) {
		return "", kms.Errorf(kms.CodeValidation, "account %q is not a 12-digit account ID", in.Account)
	}
	owner := k.owner(account)
	id, err := newCustomKeyStoreID()
	if err != nil {
		return "", err
	}
	err = k.change(ctx, func(st *state, now time.Time) (bool, error) {
		if other := st.storeByName(owner, in.Name); other != nil {
			return false, kms.Errorf(kms.CodeCustomKeyStoreNameInUse, "custom key store name %q is in use by %s", in.Name, other.ID)
		}
		if other := st.storeByToken(in.CloudHsmClusterID, ""); other != nil {
			return false, kms.Errorf(kms.CodeCloudHsmClusterInUse, "token %q is the token of custom key store %s", in.CloudHsmClusterID, other.ID)
		}
		info, err := k.probeToken(in.CloudHsmClusterID)
		if err != nil {
			return false, err
		}
		ta := in.TrustAnchorCertificate
		if anchor == nil {
			ta = anchorFor(info)
		} else if err := anchor.check(info); err != nil {
			return false, kms.Errorf(kms.CodeIncorrectTrustAnchor, "%v", err)
		}
		pin, err := k.mk.seal(in.KeyStorePassword, customKeyStorePINAADFor(id))
		if err != nil {
			return false, err
		}
		if st.CustomKeyStores == nil {
			st.CustomKeyStores = map[string]*customKeyStoreRecord{}
		}
		st.CustomKeyStores[id] = &customKeyStoreRecord{
			ID: id, Account: owner, Name: in.Name, Type: kms.CustomKeyStoreTypeCloudHSM, Token: in.CloudHsmClusterID,
			TrustAnchor: ta, PIN: pin, State: kms.ConnectionDisconnected, Created: now,
		}
		return true, nil
	})
	if err != nil {
		return "", fmt.Errorf("CreateCustomKeyStore: %w", err)
	}
	return id, nil
}

// ConnectCustomKeyStore logs in to the store's token and records the
// outcome: CONNECTED, or FAILED with a ConnectionErrorCode. As in AWS the
// call succeeds either way (DescribeCustomKeyStores tells), is a no-op on a
// CONNECTED store, and a FAILED store must be disconnected first
// (CustomKeyStoreInvalidStateException). Other processes see CONNECTING
// while the attempt runs.
func (k *Keystore) ConnectCustomKeyStore(ctx context.Context, account, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	var rec customKeyStoreRecord
	st, err := k.mutate(ctx, func(st *state, now time.Time) (bool, error) {
		r, err := st.customKeyStore(k.ownerOf(account), id)
		if err != nil {
			return false, err
		}
		switch r.State {
		case kms.ConnectionFailed:
			return false, kms.Errorf(kms.CodeCustomKeyStoreInvalidState, "custom key store %s is FAILED (%s); disconnect it, fix the cause, and connect it again", id, r.ErrorCode)
		case kms.ConnectionConnected:
			return false, nil
		}
		r.State, r.ErrorCode = kms.ConnectionConnecting, ""
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("ConnectCustomKeyStore: %w", err)
	}
	rec = *st.CustomKeyStores[id]
	if rec.State == kms.ConnectionConnected {
		return nil
	}
	c, cerr := k.connectStore(&rec)
	_, err = k.mutate(ctx, func(st *state, now time.Time) (bool, error) {
		r := st.CustomKeyStores[id]
		if r == nil || r.State != kms.ConnectionConnecting || !(&storeConn{token: rec.Token, trustAnchor: rec.TrustAnchor, pin: rec.PIN}).matches(r) {
			// Disconnected, updated or deleted by another process
			// meanwhile: its change stands.
			return false, nil
		}
		if cerr != nil {
			r.State, r.ErrorCode = kms.ConnectionFailed, connectErrorCode(cerr)
		} else {
			r.State = kms.ConnectionConnected
		}
		return true, nil
	})
	if cerr == nil {
		if err == nil && k.st.CustomKeyStores[id] != nil && k.st.CustomKeyStores[id].State == kms.ConnectionConnected {
			k.stores.conns[id] = c
		} else {
			c.conn.close()
		}
	} else {
		k.warn(fmt.Sprintf("custom key store %s: connect: %v", id, cerr))
	}
	if err != nil {
		return fmt.Errorf("ConnectCustomKeyStore: %w", err)
	}
	return nil
}

// connectStore logs in to rec's token. Caller holds mu.
func (k *Keystore) connectStore(rec *customKeyStoreRecord) (*storeConn, error) {
	mod, err := k.stores.loadModule()
	if err != nil {
		return nil, err
	}
	anchor, err := parseTrustAnchor(rec.TrustAnchor)
	if err != nil {
		return nil, &connectError{code: kms.ConnErrClusterNotFound, err: err}
	}
	pin, err := k.mk.open(rec.PIN, customKeyStorePINAADFor(rec.ID))
	if err != nil {
		return nil, &connectError{code: kms.ConnErrInternal, err: fmt.Errorf("the sealed PIN does not open under the keystore's key-encryption key")}
	}
	defer kms.Zero(pin)
	conn, err := mod.connect(rec.Token, pin, func(info tokenInfo) error {
		if err := anchor.check(info); err != nil {
			return &connectError{code: kms.ConnErrClusterNotFound, err: err}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &storeConn{conn: conn, token: rec.Token, trustAnchor: rec.TrustAnchor, pin: slices.Clone(rec.PIN)}, nil
}

// DisconnectCustomKeyStore records the store DISCONNECTED: its keys are
// Unavailable in every process from its next call (this one closes its
// sessions with the token now). CustomKeyStoreInvalidStateException if it
// is DISCONNECTED already, as in AWS.
func (k *Keystore) DisconnectCustomKeyStore(ctx context.Context, account, id string) error {
	err := k.change(ctx, func(st *state, now time.Time) (bool, error) {
		r, err := st.customKeyStore(k.ownerOf(account), id)
		if err != nil {
			return false, err
		}
		if r.State == kms.ConnectionDisconnected {
			return false, kms.Errorf(kms.CodeCustomKeyStoreInvalidState, "custom key store %s is already DISCONNECTED", id)
		}
		r.State, r.ErrorCode = kms.ConnectionDisconnected, ""
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("DisconnectCustomKeyStore: %w", err)
	}
	return nil
}

// DescribeCustomKeyStores lists the stores, oldest first, or the one id or
// name names (both given: they must name the same store).
func (k *Keystore) DescribeCustomKeyStores(ctx context.Context, account, id, name string) ([]kms.CustomKeyStore, error) {
	var out []kms.CustomKeyStore
	owner := k.ownerOf(account)
	err := k.view(ctx, func(st *state, now time.Time) error {
		for _, rec := range st.CustomKeyStores {
			if rec.Account == owner && (id == "" || rec.ID == id) && (name == "" || rec.Name == name) {
				out = append(out, rec.describe())
			}
		}
		if len(out) == 0 && (id != "" || name != "") {
			what := id
			if what == "" {
				what = name
			}
			return kms.Errorf(kms.CodeCustomKeyStoreNotFound, "custom key store %s not found", what)
		}
		return nil
	})
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreationDate.Equal(out[j].CreationDate) {
			return out[i].CreationDate.Before(out[j].CreationDate)
		}
		return out[i].ID < out[j].ID
	})
	return out, err
}

// UpdateCustomKeyStore renames a store (in any connection state), or, on a
// DISCONNECTED store only (CustomKeyStoreInvalidStateException otherwise,
// as in AWS), moves it to another label of the same token
// (CloudHsmClusterNotRelatedException unless the token there matches the
// trust anchor: it must hold the store's keys) or replaces its PIN.
func (k *Keystore) UpdateCustomKeyStore(ctx context.Context, in kms.UpdateCustomKeyStoreInput) error {
	if in.NewName == "" && in.CloudHsmClusterID == "" && in.KeyStorePassword == nil {
		return kms.Errorf(kms.CodeValidation, "UpdateCustomKeyStore: nothing to update")
	}
	if in.NewName != "" {
		if err := checkStoreName(in.NewName); err != nil {
			return err
		}
	}
	if in.CloudHsmClusterID != "" {
		if err := checkTokenLabel(in.CloudHsmClusterID); err != nil {
			return err
		}
	}
	if in.KeyStorePassword != nil {
		if err := checkTokenPIN(in.KeyStorePassword); err != nil {
			return err
		}
	}
	err := k.change(ctx, func(st *state, now time.Time) (bool, error) {
		r, err := st.customKeyStore(k.ownerOf(in.Account), in.ID)
		if err != nil {
			return false, err
		}
		if (in.CloudHsmClusterID != "" || in.KeyStorePassword != nil) && r.State != kms.ConnectionDisconnected {
			return false, kms.Errorf(kms.CodeCustomKeyStoreInvalidState, "custom key store %s is %s; disconnect it to change its token or PIN (only its name can change while connected)", in.ID, r.State)
		}
		if in.NewName != "" && in.NewName != r.Name {
			if other := st.storeByName(r.Account, in.NewName); other != nil {
				return false, kms.Errorf(kms.CodeCustomKeyStoreNameInUse, "custom key store name %q is in use by %s", in.NewName, other.ID)
			}
			r.Name = in.NewName
		}
		if in.CloudHsmClusterID != "" && in.CloudHsmClusterID != r.Token {
			if other := st.storeByToken(in.CloudHsmClusterID, r.ID); other != nil {
				return false, kms.Errorf(kms.CodeCloudHsmClusterInUse, "token %q is the token of custom key store %s", in.CloudHsmClusterID, other.ID)
			}
			info, err := k.probeToken(in.CloudHsmClusterID)
			if err != nil {
				return false, err
			}
			anchor, err := parseTrustAnchor(r.TrustAnchor)
			if err != nil {
				return false, err
			}
			delete(anchor, "token")
			if err := anchor.check(info); err != nil {
				return false, kms.Errorf(kms.CodeCloudHsmClusterNotRelated, "token %q is not the token custom key store %s trusts: %v", in.CloudHsmClusterID, r.ID, err)
			}
			r.Token = in.CloudHsmClusterID
			r.TrustAnchor = anchorFor(info)
		}
		if in.KeyStorePassword != nil {
			pin, err := k.mk.seal(in.KeyStorePassword, customKeyStorePINAADFor(r.ID))
			if err != nil {
				return false, err
			}
			r.PIN = pin
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("UpdateCustomKeyStore: %w", err)
	}
	return nil
}

// DeleteCustomKeyStore forgets a DISCONNECTED store that holds no keys
// (CustomKeyStoreHasCMKsException, keys pending deletion included, as in
// AWS). The token and whatever is in it are left alone.
func (k *Keystore) DeleteCustomKeyStore(ctx context.Context, account, id string) error {
	err := k.change(ctx, func(st *state, now time.Time) (bool, error) {
		r, err := st.customKeyStore(k.ownerOf(account), id)
		if err != nil {
			return false, err
		}
		if r.State != kms.ConnectionDisconnected {
			return false, kms.Errorf(kms.CodeCustomKeyStoreInvalidState, "custom key store %s is %s; disconnect it before deleting it", id, r.State)
		}
		n := 0
		for _, rec := range st.Keys {
			if rec.CustomKeyStore == id && !rec.expired(now) {
				n++
			}
		}
		if n > 0 {
			return false, kms.Errorf(kms.CodeCustomKeyStoreHasCMKs, "custom key store %s holds %d KMS keys; schedule their deletion and wait for it", id, n)
		}
		delete(st.CustomKeyStores, id)
		if len(st.CustomKeyStores) == 0 {
			st.CustomKeyStores = nil
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("DeleteCustomKeyStore: %w", err)
	}
	return nil
}

// storeConnFor returns this process's connection to the token of the store
// rec's key lives in, logging in on first use. A store that is not
// CONNECTED makes the key Unavailable: KMSInvalidStateException, what AWS
// answers cryptographic operations on such keys. Caller holds mu.
func (k *Keystore) storeConnFor(rec *keyRecord) (tokenConn, error) {
	s := k.st.CustomKeyStores[rec.CustomKeyStore]
	if s == nil {
		return nil, kms.Errorf(kms.CodeInternal, "key %s names missing custom key store %s", rec.ID, rec.CustomKeyStore)
	}
	if s.State != kms.ConnectionConnected {
		return nil, kms.Errorf(kms.CodeInvalidState, "key %s is %s: its custom key store %s is %s", rec.ID, kms.KeyUnavailable, s.ID, s.State)
	}
	conn, err := k.openConn(s)
	if err != nil {
		return nil, kms.Errorf(kms.CodeInvalidState, "key %s is unavailable: custom key store %s is CONNECTED but this process cannot reach its token: %v", rec.ID, s.ID, err)
	}
	return conn, nil
}

// openConn returns this process's connection to the token of the CONNECTED
// store s, logging in when there is none, or the one there is was made
// with other settings or lost its login. Caller holds mu.
func (k *Keystore) openConn(s *customKeyStoreRecord) (tokenConn, error) {
	if c := k.stores.conns[s.ID]; c != nil && c.matches(s) && c.conn.healthy() {
		return c.conn, nil
	}
	c, err := k.connectStore(s)
	if err != nil {
		return nil, err
	}
	if old := k.stores.conns[s.ID]; old != nil {
		old.conn.close()
	}
	k.stores.conns[s.ID] = c
	return c.conn, nil
}

// createInStore generates rec's material in the token of store storeID:
// CreateKey with origin AWS_CLOUDHSM. Caller holds mu, inside a change.
func (k *Keystore) createInStore(st *state, rec *keyRecord, storeID string, now time.Time) error {
	s, err := st.customKeyStore(rec.Account, storeID)
	if err != nil {
		return err
	}
	if s.State != kms.ConnectionConnected {
		return kms.Errorf(kms.CodeCustomKeyStoreInvalidState, "custom key store %s is %s; keys are created only in a CONNECTED store", storeID, s.State)
	}
	rec.CustomKeyStore = storeID
	conn, err := k.storeConnFor(rec)
	if err != nil {
		return kms.Errorf(kms.CodeCustomKeyStoreInvalidState, "%v", err)
	}
	if err := conn.generateKey(rec.uuid); err != nil {
		return kms.Errorf(kms.CodeInternal, "custom key store %s: %v", storeID, err)
	}
	rec.Versions = []versionRecord{{Version: 1, Created: now}}
	rec.CurrentVersion = 1
	return nil
}

// abandonInStore destroys the token key of a key whose creation failed
// after the token made it. Caller holds mu.
func (k *Keystore) abandonInStore(storeID string, id keyUUID) {
	if c := k.stores.conns[storeID]; c != nil {
		if err := c.conn.destroyKey(id); err != nil {
			k.warn(fmt.Sprintf("custom key store %s: key %s was not created but its token object %s remains: %v", storeID, id, tokenKeyLabel(id), err))
		}
	}
}

// destroyInStore destroys the token key of a key whose deletion window has
// passed. As with AWS's CloudHSM key stores, when the store is not
// connected the key is deleted anyway and its token object is left
// orphaned, with a warning naming it. Caller holds mu.
func (k *Keystore) destroyInStore(rec *keyRecord) {
	if rec.CustomKeyStore == "" {
		return
	}
	conn, err := k.storeConnFor(rec)
	if err == nil {
		err = conn.destroyKey(rec.uuid)
	}
	if err != nil {
		k.warn(fmt.Sprintf("key %s is deleted, but its token object %s in custom key store %s could not be destroyed and is orphaned: %v", rec.ID, tokenKeyLabel(rec.uuid), rec.CustomKeyStore, err))
	}
}

// storeMetadata adds what DescribeKey says of a key in a custom key store:
// the store, its token, and the Unavailable state while the store is not
// connected. Caller holds mu.
func (k *Keystore) storeMetadata(rec *keyRecord, md *kms.KeyMetadata) {
	if rec.CustomKeyStore == "" {
		return
	}
	md.CustomKeyStoreID = rec.CustomKeyStore
	s := k.st.CustomKeyStores[rec.CustomKeyStore]
	if s == nil {
		return
	}
	md.CloudHsmClusterID = s.Token
	if s.State != kms.ConnectionConnected && md.State != kms.KeyPendingDeletion {
		md.State = kms.KeyUnavailable
	}
}

// GenerateRandomInStore returns numBytes random bytes from the token of a
// CONNECTED custom key store (GenerateRandom with CustomKeyStoreId).
func (k *Keystore) GenerateRandomInStore(ctx context.Context, account, storeID string, numBytes int) ([]byte, error) {
	if numBytes < 1 || numBytes > maxRandomBytes {
		return nil, kms.Errorf(kms.CodeValidation, "GenerateRandom: NumberOfBytes %d outside 1..%d", numBytes, maxRandomBytes)
	}
	k.mu.Lock()
	if err := k.refresh(ctx); err != nil {
		k.mu.Unlock()
		return nil, err
	}
	s, err := k.st.customKeyStore(k.ownerOf(account), storeID)
	var conn tokenConn
	if err == nil {
		if s.State != kms.ConnectionConnected {
			err = kms.Errorf(kms.CodeCustomKeyStoreInvalidState, "custom key store %s is %s", storeID, s.State)
		} else if conn, err = k.openConn(s); err != nil {
			err = kms.Errorf(kms.CodeCustomKeyStoreInvalidState, "custom key store %s is CONNECTED but this process cannot reach its token: %v", storeID, err)
		}
	}
	k.mu.Unlock()
	if err != nil {
		return nil, err
	}
	b, err := conn.random(numBytes)
	if err != nil {
		return nil, kms.Errorf(kms.CodeCustomKeyStoreInvalidState, "custom key store %s: GenerateRandom in the token: %v", storeID, err)
	}
	return b, nil
}

// blobCipher seals and opens ciphertext blobs (blob.go) under one version of
// a key's material: in software, or inside a token.
type blobCipher interface {
	seal(key keyUUID, version uint32, plaintext []byte, ec kms.EncryptionContext) ([]byte, error)
	open(p blob, ec kms.EncryptionContext) ([]byte, error)
}

// softCipher is material unsealed into this process.
type softCipher struct{ aead cipher.AEAD }

func (s softCipher) seal(key keyUUID, version uint32, plaintext []byte, ec kms.EncryptionContext) ([]byte, error) {
	return sealBlob(s.aead, key, version, plaintext, ec)
}

func (s softCipher) open(p blob, ec kms.EncryptionContext) ([]byte, error) {
	return openBlob(s.aead, p, ec)
}

// tokenCipher is a key of a custom key store: CKM_AES_GCM in the token,
// with the nonce and additional data sealBlob uses, so the blob is the
// same layout byte for byte.
type tokenCipher struct {
	conn    tokenConn
	storeID string
}

func (t tokenCipher) seal(key keyUUID, version uint32, plaintext []byte, ec kms.EncryptionContext) ([]byte, error) {
	hdr := make([]byte, blobHeaderLen)
	hdr[0] = blobFormatV1
	copy(hdr[1:], key[:])
	binary.BigEndian.PutUint32(hdr[blobVersionOff:], version)
	if _, err := rand.Read(hdr[blobNonceOff:]); err != nil {
		return nil, fmt.Errorf("generate nonce: %w", err)
	}
	ct, err := t.conn.encrypt(key, hdr[blobNonceOff:], plaintext, blobAAD(hdr, ec))
	if err != nil {
		return nil, t.fail(key, err)
	}
	if len(ct) != len(plaintext)+blobTagLen {
		return nil, kms.Errorf(kms.CodeInternal, "custom key store %s: the token returned %d bytes of AES-GCM output for %d bytes", t.storeID, len(ct), len(plaintext))
	}
	return append(hdr, ct...), nil
}

func (t tokenCipher) open(p blob, ec kms.EncryptionContext) ([]byte, error) {
	pt, err := t.conn.decrypt(p.key, p.nonce, p.sealedData, blobAAD(p.header, ec))
	if errors.Is(err, errTokenAuth) {
		return nil, kms.Errorf(kms.CodeInvalidCiphertext, "ciphertext does not authenticate under key %s with the given encryption context", p.key)
	}
	if err != nil {
		return nil, t.fail(p.key, err)
	}
	return pt, nil
}

// fail reports a token failure: the key is unusable through this store
// now, which AWS answers with KMSInvalidStateException.
func (t tokenCipher) fail(key keyUUID, err error) error {
	if errors.Is(err, errTokenKeyMissing) {
		return kms.Errorf(kms.CodeInvalidState, "key %s: its material (%s) is gone from the token of custom key store %s", key, tokenKeyLabel(key), t.storeID)
	}
	return kms.Errorf(kms.CodeInvalidState, "key %s: custom key store %s: %v", key, t.storeID, err)
}

// blobCipherFor returns the cipher of one version of rec's material: the
// token's for a key in a custom key store, else the unsealed material.
// Caller holds mu.
func (k *Keystore) blobCipherFor(rec *keyRecord, version int) (blobCipher, error) {
	if rec.CustomKeyStore != "" {
		if version != 1 {
			return nil, kms.Errorf(kms.CodeInvalidCiphertext, "key %s has no material version %d", rec.ID, version)
		}
		conn, err := k.storeConnFor(rec)
		if err != nil {
			return nil, err
		}
		return tokenCipher{conn: conn, storeID: rec.CustomKeyStore}, nil
	}
	a, err := k.aead(rec, version)
	if err != nil {
		return nil, err
	}
	return softCipher{a}, nil
}
