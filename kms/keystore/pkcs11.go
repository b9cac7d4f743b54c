//go:build cgo

package keystore

import (
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/miekg/pkcs11"
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
