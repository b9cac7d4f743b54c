package server

import (
	"crypto/subtle"

	"github.com/kmsfs/kmsfs/kms"
)

// The operation handlers. Each decodes its input, resolves the key(s) it
// names, authorises the caller against the key policy and grants, and only
// then calls the store. The store enforces key states and key rules (4096-byte
// Encrypt limit, deletion window, rotation period, context match).

var errDryRun = kms.Errorf("DryRunOperationException", "The request would have succeeded, but the DryRun option is set.")

// dryRun answers a DryRun request that passed authorisation: it succeeds
// (DryRunOperationException) only if the keys are in a state the real call
// accepts, and otherwise fails as the real call would. usable is the
// cryptographic operations' rule: Enabled only.
func (s *Server) dryRun(c *call, usable bool, keyARNs ...string) error {
	for _, arn := range keyARNs {
		md, err := s.store.DescribeKey(c.ctx, arn)
		if err != nil {
			return err
		}
		switch {
		case md.State == kms.KeyEnabled:
		case !usable && md.State != kms.KeyPendingDeletion:
			// CreateGrant works on Disabled and PendingImport keys.
		case md.State == kms.KeyDisabled:
			return kms.Errorf(kms.CodeDisabled, "key %s is disabled", arn)
		default:
			return kms.Errorf(kms.CodeInvalidState, "key %s is %s", arn, md.State)
		}
	}
	return errDryRun
}

// maxGrantTokens and maxGrantTokenLen are AWS's limits on GrantTokens.
const (
	maxGrantTokens   = 10
	maxGrantTokenLen = 8192
)

// checkGrantTokens refuses grant tokens that name no grant
// (InvalidGrantTokenException, as AWS does). Grants here take effect at
// once, so a valid token adds nothing to what the grant itself allows.
func (s *Server) checkGrantTokens(c *call, tokens []string, keyARNs ...string) error {
	if len(tokens) == 0 {
		return nil
	}
	if len(tokens) > maxGrantTokens {
		return kms.Errorf(kms.CodeValidation, "%d grant tokens, more than %d", len(tokens), maxGrantTokens)
	}
	for _, tok := range tokens {
		if tok == "" || len(tok) > maxGrantTokenLen {
			return kms.Errorf(kms.CodeInvalidGrantToken, "grant token is not valid")
		}
		if _, err := s.grantByToken(c, tok, keyARNs); err != nil {
			return err
		}
	}
	return nil
}

// grantByToken finds the grant a token belongs to, looking at the grants of
// keyARNs first and then at every key.
func (s *Server) grantByToken(c *call, token string, keyARNs []string) (kms.Grant, error) {
	search := func(arns []string) (kms.Grant, bool, error) {
		for _, arn := range arns {
			grants, err := s.store.ListGrants(c.ctx, arn)
			if err != nil {
				if kms.Code(err) == kms.CodeNotFound {
					continue
				}
				return kms.Grant{}, false, err
			}
			for _, g := range grants {
				if g.Token != "" && subtle.ConstantTimeCompare([]byte(g.Token), []byte(token)) == 1 {
					g.KeyID = arn
					return g, true, nil
				}
			}
		}
		return kms.Grant{}, false, nil
	}
	if g, ok, err := search(keyARNs); ok || err != nil {
		return g, err
	}
	keys, err := s.store.ListKeys(c.ctx)
	if err != nil {
		return kms.Grant{}, err
	}
	all := make([]string, 0, len(keys))
	for _, k := range keys {
		all = append(all, k.ARN)
	}
	if g, ok, err := search(all); ok || err != nil {
		return g, err
	}
	return kms.Grant{}, kms.Errorf(kms.CodeInvalidGrantToken, "grant token is not valid")
}

// keyIDOnly refuses an alias where AWS takes only a key ID or key ARN (the
// grant operations).
func keyIDOnly(keyID string) error {
	if _, ok := aliasNameOf(keyID); ok {
		return kms.Errorf(kms.CodeValidation, "KeyId %s: give a key ID or key ARN; this operation does not take an alias", keyID)
	}
	return nil
}

// ListKeys, ListAliases, CreateKey and GenerateRandom are account-level
// operations that AWS authorises with IAM policies, not key policies; this
// server has no IAM, so every authenticated principal may call them.

// keyOp runs a control-plane operation that takes only a KeyId.
func (s *Server) keyOp(c *call, body []byte, fn func(arn string) error) (response, error) {
	var in keyIDInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	arn, err := s.resolveAndAuthorize(c, in.KeyId, "")
	if err != nil {
		return response{}, err
	}
	return response{v: emptyOutput{}}, fn(arn)
}
