//go:build cgo

package keystore

import (
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/miekg/pkcs11"

	"github.com/kmsfs/kmsfs/kms"
)

// tokenKEK is a KEK inside a PKCS#11 token: an AES-256 key created with
// CKA_SENSITIVE and without CKA_EXTRACTABLE, so its value never leaves the
// token; sealing and opening run CKM_AES_GCM in the token. One session,
// serialised: a PKCS#11 session runs one operation at a time.
type tokenKEK struct {
	mu      sync.Mutex
	ctx     *pkcs11.Ctx
	session pkcs11.SessionHandle
	key     pkcs11.ObjectHandle
}

// openTokenKEK loads the module, logs in to the token labelled o.Token and
// finds the AES key labelled o.KeyLabel, generating it in the token when
// create is set and it is not there yet.
func openTokenKEK(o *PKCS11Options, create bool) (kek, error) {
	if o.Module == "" || o.Token == "" {
		return nil, errors.New("PKCS#11: a module path and a token label are needed")
	}
	ctx := pkcs11.New(o.Module)
	if ctx == nil {
		return nil, fmt.Errorf("PKCS#11: cannot load module %s", o.Module)
	}
	t := &tokenKEK{ctx: ctx}
	fail := func(err error) (kek, error) {
		t.close()
		return nil, fmt.Errorf("PKCS#11 token %q (%s): %w", o.Token, o.Module, err)
	}
	if err := ctx.Initialize(); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		ctx.Destroy()
		return nil, fmt.Errorf("PKCS#11 module %s: initialize: %w", o.Module, err)
	}
	slots, err := ctx.GetSlotList(true)
	if err != nil {
		return fail(err)
	}
	found := false
	for _, slot := range slots {
		info, err := ctx.GetTokenInfo(slot)
		if err != nil || strings.TrimRight(info.Label, " \x00") != o.Token {
			continue
		}
		if t.session, err = ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION); err != nil {
			return fail(fmt.Errorf("open session: %w", err))
		}
		found = true
		break
	}
	if !found {
		return fail(errors.New("no such token"))
	}
	if err := ctx.Login(t.session, pkcs11.CKU_USER, string(o.PIN)); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)) {
		return fail(fmt.Errorf("login: %w", err))
	}
	label := o.keyLabel()
	template := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}
	if err := ctx.FindObjectsInit(t.session, template); err != nil {
		return fail(err)
	}
	objs, _, err := ctx.FindObjects(t.session, 2)
	ctx.FindObjectsFinal(t.session)
	if err != nil {
		return fail(err)
	}
	switch {
	case len(objs) > 1:
		return fail(fmt.Errorf("more than one AES key labelled %q", label))
	case len(objs) == 1:
		t.key = objs[0]
	case !create:
		return fail(fmt.Errorf("no AES key labelled %q: the keystore's KEK is gone from the token", label))
	default:
		t.key, err = ctx.GenerateKey(t.session, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, append(template,
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, kekLen),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
		))
		if err != nil {
			return fail(fmt.Errorf("generate AES key %q: %w", label, err))
		}
	}
	return t, nil
}

func (t *tokenKEK) gcm(nonce, aad []byte) (*pkcs11.GCMParams, []*pkcs11.Mechanism) {
	params := pkcs11.NewGCMParams(nonce, aad, 128)
	return params, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}
}

func (t *tokenKEK) seal(plaintext, aad []byte) ([]byte, error) {
	nonce := make([]byte, sealNonceLen)
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("generate nonce: %w", err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	params, mech := t.gcm(nonce, aad)
	defer params.Free()
	if err := t.ctx.EncryptInit(t.session, mech, t.key); err != nil {
		return nil, fmt.Errorf("PKCS#11 seal: %w", err)
	}
	ct, err := t.ctx.Encrypt(t.session, plaintext)
	if err != nil {
		return nil, fmt.Errorf("PKCS#11 seal: %w", err)
	}
	return append(nonce, ct...), nil
}

func (t *tokenKEK) open(sealed, aad []byte) ([]byte, error) {
	if len(sealed) < sealNonceLen+16 {
		return nil, errors.New("sealed value too short")
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	params, mech := t.gcm(sealed[:sealNonceLen], aad)
	defer params.Free()
	if err := t.ctx.DecryptInit(t.session, mech, t.key); err != nil {
		return nil, fmt.Errorf("PKCS#11 open: %w", err)
	}
	pt, err := t.ctx.Decrypt(t.session, sealed[sealNonceLen:])
	if err != nil {
		return nil, fmt.Errorf("PKCS#11 open: %w", err)
	}
	return pt, nil
}

func (t *tokenKEK) zero() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.close()
}

func (t *tokenKEK) close() {
	if t.ctx == nil {
		return
	}
	if t.session != 0 {
		t.ctx.Logout(t.session)
		t.ctx.CloseSession(t.session)
	}
	t.ctx.Finalize()
	t.ctx.Destroy()
	t.ctx = nil
}

// tokenModuleImpl is a PKCS#11 library loaded for custom key stores. The
// library's state is per process: C_Finalize ends every session the process
// has with it, the KEK's included (PKCS#11 v2.40, C_Finalize). So close
// finalises it only when this module's C_Initialize was the one that
// initialised it, and a library the KEK initialised first is left to the KEK.
type tokenModuleImpl struct {
	path  string
	ctx   *pkcs11.Ctx
	owner bool
}

func (m *tokenModuleImpl) close() {
	if m.owner {
		m.ctx.Finalize()
	}
	m.ctx.Destroy()
}

func loadTokenModule(path string) (tokenModule, error) {
	ctx := pkcs11.New(path)
	if ctx == nil {
		return nil, &connectError{code: kms.ConnErrNetworkErrors, err: fmt.Errorf("PKCS#11: cannot load module %s", path)}
	}
	err := ctx.Initialize()
	if err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		ctx.Destroy()
		return nil, &connectError{code: kms.ConnErrNetworkErrors, err: fmt.Errorf("PKCS#11 module %s: initialize: %w", path, err)}
	}
	return &tokenModuleImpl{path: path, ctx: ctx, owner: err == nil}, nil
}

// find returns the slot holding the token labelled label, and its identity.
func (m *tokenModuleImpl) find(label string) (uint, tokenInfo, error) {
	slots, err := m.ctx.GetSlotList(true)
	if err != nil {
		return 0, tokenInfo{}, &connectError{code: kms.ConnErrNetworkErrors, err: fmt.Errorf("PKCS#11 module %s: list slots: %w", m.path, err)}
	}
	for _, slot := range slots {
		info, err := m.ctx.GetTokenInfo(slot)
		if err != nil || strings.TrimRight(info.Label, " \x00") != label {
			continue
		}
		return slot, tokenInfo{
			Label:        label,
			Serial:       strings.TrimRight(info.SerialNumber, " \x00"),
			Manufacturer: strings.TrimRight(info.ManufacturerID, " \x00"),
			Model:        strings.TrimRight(info.Model, " \x00"),
		}, nil
	}
	return 0, tokenInfo{}, &connectError{code: kms.ConnErrClusterNotFound, err: fmt.Errorf("PKCS#11 module %s has no token labelled %q", m.path, label)}
}

func (m *tokenModuleImpl) probe(label string) (tokenInfo, error) {
	_, info, err := m.find(label)
	return info, err
}

// maxTokenSessions bounds the sessions one store keeps open: a session runs
// one operation at a time (PKCS#11 v2.40, sessions), so concurrent
// requests each need their own.
const maxTokenSessions = 8

// tokenConnImpl is a logged-in connection to a custom key store's token: a
// pool of sessions and the handles of the keys found in it.
type tokenConnImpl struct {
	ctx  *pkcs11.Ctx
	slot uint
	idle chan pkcs11.SessionHandle

	mu      sync.Mutex
	closed  bool
	opened  int
	handles map[keyUUID]pkcs11.ObjectHandle

	// broken is set once the token lost a session or our login (removed,
	// reset, or every session closed under us): the keystore then logs in
	// again on the next call instead of failing on this connection forever.
	broken atomic.Bool
}

func (c *tokenConnImpl) healthy() bool { return !c.broken.Load() }

func (m *tokenModuleImpl) connect(label string, pin []byte, check func(tokenInfo) error) (tokenConn, error) {
	slot, info, err := m.find(label)
	if err != nil {
		return nil, err
	}
	if err := check(info); err != nil {
		return nil, err
	}
	s, err := m.ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return nil, &connectError{code: kms.ConnErrInternal, err: fmt.Errorf("token %q: open session: %w", label, err)}
	}
	// The login state belongs to the application and covers every session
	// it opens with the token later (PKCS#11 v2.40, C_Login).
	if err := m.ctx.Login(s, pkcs11.CKU_USER, string(pin)); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)) {
		m.ctx.CloseSession(s)
		code := kms.ConnErrInternal
		switch {
		case errors.Is(err, pkcs11.Error(pkcs11.CKR_PIN_INCORRECT)), errors.Is(err, pkcs11.Error(pkcs11.CKR_PIN_LEN_RANGE)), errors.Is(err, pkcs11.Error(pkcs11.CKR_PIN_INVALID)):
			code = kms.ConnErrInvalidCredentials
		case errors.Is(err, pkcs11.Error(pkcs11.CKR_PIN_LOCKED)):
			code = kms.ConnErrUserLockedOut
		case errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_PIN_NOT_INITIALIZED)):
			code = kms.ConnErrUserNotFound
		}
		return nil, &connectError{code: code, err: fmt.Errorf("token %q: login: %w", label, err)}
	}
	c := &tokenConnImpl{ctx: m.ctx, slot: slot, idle: make(chan pkcs11.SessionHandle, maxTokenSessions), opened: 1, handles: map[keyUUID]pkcs11.ObjectHandle{}}
	c.idle <- s
	return c, nil
}

var errTokenClosed = errors.New("the connection to the token was closed")

func (c *tokenConnImpl) acquire() (pkcs11.SessionHandle, error) {
	select {
	case s, ok := <-c.idle:
		if !ok {
			return 0, errTokenClosed
		}
		return s, nil
	default:
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return 0, errTokenClosed
	}
	if c.opened < maxTokenSessions {
		s, err := c.ctx.OpenSession(c.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err == nil {
			c.opened++
		}
		c.mu.Unlock()
		return s, err
	}
	c.mu.Unlock()
	s, ok := <-c.idle
	if !ok {
		return 0, errTokenClosed
	}
	return s, nil
}

// release returns a session to the pool; a session that failed in a way
// that may have left it unusable is closed instead (bad).
func (c *tokenConnImpl) release(s pkcs11.SessionHandle, bad bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || bad {
		c.ctx.CloseSession(s)
		if !c.closed {
			// Replace it, so that a caller waiting for a free session
			// is not left waiting for one that will never come back.
			if ns, err := c.ctx.OpenSession(c.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION); err == nil {
				c.idle <- ns
				return
			}
		}
		c.opened--
		return
	}
	c.idle <- s // never blocks: at most maxTokenSessions exist
}

// close closes every session of the pool; the token logs the application
// out when its last session closes (PKCS#11 v2.40, C_CloseSession). No
// C_Logout: it would log out the keystore's KEK session too when both live
// in one token.
func (c *tokenConnImpl) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.closed = true
	for {
		select {
		case s := <-c.idle:
			c.ctx.CloseSession(s)
			c.opened--
			continue
		default:
		}
		break
	}
	close(c.idle)
	clear(c.handles)
}

// sessionLost reports PKCS#11 errors after which the session is gone.
func sessionLost(err error) bool {
	for _, rv := range []uint{pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED, pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_TOKEN_NOT_PRESENT,
		pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_USER_NOT_LOGGED_IN, pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED} {
		if errors.Is(err, pkcs11.Error(rv)) {
			return true
		}
	}
	return false
}

// keyTemplate finds a KMS key's AES key in the token by its CKA_ID, the
// key's 16 UUID bytes.
func keyTemplate(id keyUUID) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id[:]),
	}
}

// findKey returns the handles of the token objects holding id's key.
func (c *tokenConnImpl) findKey(s pkcs11.SessionHandle, id keyUUID) ([]pkcs11.ObjectHandle, error) {
	if err := c.ctx.FindObjectsInit(s, keyTemplate(id)); err != nil {
		return nil, err
	}
	objs, _, err := c.ctx.FindObjects(s, 2)
	c.ctx.FindObjectsFinal(s)
	return objs, err
}

// handle returns the object handle of id's key: token object handles are
// valid in every session of the application (PKCS#11 v2.40, object handles).
func (c *tokenConnImpl) handle(s pkcs11.SessionHandle, id keyUUID) (pkcs11.ObjectHandle, error) {
	c.mu.Lock()
	h, ok := c.handles[id]
	c.mu.Unlock()
	if ok {
		return h, nil
	}
	objs, err := c.findKey(s, id)
	if err != nil {
		return 0, err
	}
	switch len(objs) {
	case 0:
		return 0, errTokenKeyMissing
	case 1:
	default:
		return 0, fmt.Errorf("more than one AES key with CKA_ID %x", id[:])
	}
	c.mu.Lock()
	c.handles[id] = objs[0]
	c.mu.Unlock()
	return objs[0], nil
}

// with runs fn on a pooled session.
func (c *tokenConnImpl) with(fn func(s pkcs11.SessionHandle) error) error {
	s, err := c.acquire()
	if err != nil {
		return err
	}
	err = fn(s)
	lost := err != nil && sessionLost(err)
	if lost {
		c.broken.Store(true)
	}
	c.release(s, lost)
	return err
}

// generateKey creates id's AES-256 key in the token: sensitive and not
// extractable, so its value never leaves the token (PKCS#11 v2.40, secret
// key objects: CKA_SENSITIVE, CKA_EXTRACTABLE), usable only to encrypt and
// decrypt.
func (c *tokenConnImpl) generateKey(id keyUUID) error {
	return c.with(func(s pkcs11.SessionHandle) error {
		h, err := c.ctx.GenerateKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, append(keyTemplate(id),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, tokenKeyLabel(id)),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		))
		if err != nil {
			return fmt.Errorf("generate AES key %s: %w", tokenKeyLabel(id), err)
		}
		c.mu.Lock()
		c.handles[id] = h
		c.mu.Unlock()
		return nil
	})
}

// gcm runs CKM_AES_GCM (128-bit tag) with id's key: encrypt returns
// ciphertext || tag, decrypt takes it, as crypto/cipher's GCM does.
func (c *tokenConnImpl) gcm(id keyUUID, decrypt bool, nonce, in, aad []byte) ([]byte, error) {
	var out []byte
	err := c.with(func(s pkcs11.SessionHandle) error {
		h, err := c.handle(s, id)
		if err != nil {
			return err
		}
		params := pkcs11.NewGCMParams(nonce, aad, 128)
		defer params.Free()
		mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}
		if decrypt {
			if err = c.ctx.DecryptInit(s, mech, h); err == nil {
				out, err = c.ctx.Decrypt(s, in)
			}
		} else if err = c.ctx.EncryptInit(s, mech, h); err == nil {
			out, err = c.ctx.Encrypt(s, in)
		}
		if errors.Is(err, pkcs11.Error(pkcs11.CKR_KEY_HANDLE_INVALID)) || errors.Is(err, pkcs11.Error(pkcs11.CKR_OBJECT_HANDLE_INVALID)) {
			// Deleted from the token behind our back: look it up afresh
			// next time.
			c.mu.Lock()
			delete(c.handles, id)
			c.mu.Unlock()
			return errTokenKeyMissing
		}
		if decrypt && (errors.Is(err, pkcs11.Error(pkcs11.CKR_ENCRYPTED_DATA_INVALID)) || errors.Is(err, pkcs11.Error(pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE))) {
			return errTokenAuth
		}
		if decrypt && errors.Is(err, pkcs11.Error(pkcs11.CKR_GENERAL_ERROR)) {
			// SoftHSM2 reports a GCM tag mismatch as CKR_GENERAL_ERROR
			// (its OpenSSL EVP_DecryptFinal fails). Tell it from a
			// broken token by asking the session whether it still works.
			if _, serr := c.ctx.GetSessionInfo(s); serr == nil {
				return errTokenAuth
			}
		}
		return err
	})
	return out, err
}

func (c *tokenConnImpl) encrypt(id keyUUID, nonce, plaintext, aad []byte) ([]byte, error) {
	return c.gcm(id, false, nonce, plaintext, aad)
}

func (c *tokenConnImpl) decrypt(id keyUUID, nonce, sealed, aad []byte) ([]byte, error) {
	return c.gcm(id, true, nonce, sealed, aad)
}

func (c *tokenConnImpl) destroyKey(id keyUUID) error {
	return c.with(func(s pkcs11.SessionHandle) error {
		objs, err := c.findKey(s, id)
		if err != nil {
			return err
		}
		for _, h := range objs {
			if err := c.ctx.DestroyObject(s, h); err != nil {
				return err
			}
		}
		c.mu.Lock()
		delete(c.handles, id)
		c.mu.Unlock()
		return nil
	})
}

func (c *tokenConnImpl) random(n int) ([]byte, error) {
	var out []byte
	err := c.with(func(s pkcs11.SessionHandle) error {
		var err error
		out, err = c.ctx.GenerateRandom(s, n)
		return err
	})
	return out, err
}
