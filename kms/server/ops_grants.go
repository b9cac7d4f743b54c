package server

import (
	"strings"

	"github.com/kmsfs/kmsfs/kms"
)

func (s *Server) createGrant(c *call, body []byte) (response, error) {
	var in createGrantInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	if err := keyIDOnly(in.KeyId); err != nil {
		return response{}, err
	}
	arn, err := s.resolve(c, in.KeyId)
	if err != nil {
		return response{}, err
	}
	if len(in.Operations) == 0 {
		return response{}, kms.Errorf(kms.CodeValidation, "a grant needs at least one operation")
	}
	for _, op := range in.Operations {
		if !grantOperations[op] {
			return response{}, kms.Errorf(kms.CodeValidation, "grant operation %q is not valid for a symmetric encryption key", op)
		}
	}
	if _, err := AccountOf(in.GranteePrincipal); err != nil {
		return response{}, kms.Errorf(kms.CodeValidation, "GranteePrincipal: %v", err)
	}
	if in.RetiringPrincipal != "" {
		if _, err := AccountOf(in.RetiringPrincipal); err != nil {
			return response{}, kms.Errorf(kms.CodeValidation, "RetiringPrincipal: %v", err)
		}
	}
	extra := map[string][]string{
		"kms:granteeprincipal": {in.GranteePrincipal},
		"kms:grantoperations":  in.Operations,
	}
	if in.RetiringPrincipal != "" {
		extra["kms:retiringprincipal"] = []string{in.RetiringPrincipal}
	}
	if err := s.authorizeCreateGrant(c, arn, in.Operations, extra); err != nil {
		return response{}, err
	}
	if err := s.checkGrantTokens(c, in.GrantTokens, arn); err != nil {
		return response{}, err
	}
	if in.DryRun {
		return response{}, s.dryRun(c, false, arn)
	}
	g := kms.Grant{
		KeyID:             arn,
		Name:              in.Name,
		GranteePrincipal:  in.GranteePrincipal,
		RetiringPrincipal: in.RetiringPrincipal,
		Operations:        in.Operations,
		IssuingAccount:    arnAccount(arn),
	}
	if in.Constraints != nil {
		g.ContextEquals = in.Constraints.EncryptionContextEquals
		g.ContextSubset = in.Constraints.EncryptionContextSubset
	}
	id, token, err := s.store.CreateGrant(c.ctx, g)
	if err != nil {
		return response{}, err
	}
	c.entry.GrantID = id
	return response{v: createGrantOutput{GrantId: id, GrantToken: token}}, nil
}

// authorizeCreateGrant: the key policy may allow kms:CreateGrant (with
// conditions on kms:GranteePrincipal, kms:GrantOperations, ...), or the
// caller may hold a grant that includes CreateGrant, in which case the new
// grant may only give operations that grant has (AWS's rule for grants that
// create grants).
func (s *Server) authorizeCreateGrant(c *call, arn string, ops []string, extra map[string][]string) error {
	d, why, err := s.decide(c, "kms:CreateGrant", arn, nil, extra)
	if err != nil {
		return err
	}
	switch d {
	case Allow:
		return nil
	case Deny:
		return denied(c, "kms:CreateGrant", arn, why)
	}
	grants, err := s.store.ListGrants(c.ctx, arn)
	if err != nil {
		return err
	}
	for _, g := range grants {
		if !PrincipalMatches(g.GranteePrincipal, c.cred.Principal) || !contains(g.Operations, "CreateGrant") {
			continue
		}
		subset := true
		for _, op := range ops {
			if !contains(g.Operations, op) {
				subset = false
				break
			}
		}
		if subset {
			return nil
		}
	}
	return denied(c, "kms:CreateGrant", arn, why)
}

func arnAccount(arn string) string {
	if parts := strings.SplitN(arn, ":", 6); len(parts) == 6 {
		return parts[4]
	}
	return ""
}

func (s *Server) listGrants(c *call, body []byte) (response, error) {
	var in listInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	if err := keyIDOnly(in.KeyId); err != nil {
		return response{}, err
	}
	arn, err := s.resolveAndAuthorize(c, in.KeyId, "")
	if err != nil {
		return response{}, err
	}
	grants, err := s.store.ListGrants(c.ctx, arn)
	if err != nil {
		return response{}, err
	}
	var matched []kms.Grant
	for _, g := range grants {
		if (in.GrantId == "" || g.GrantID == in.GrantId) && (in.GranteePrincipal == "" || g.GranteePrincipal == in.GranteePrincipal) {
			matched = append(matched, g)
		}
	}
	return s.grantPage(matched, in)
}

// grantPage answers ListGrants and ListRetirableGrants: one page of grants
// (each with its KeyID an ARN), never with their tokens.
func (s *Server) grantPage(matched []kms.Grant, in listInput) (response, error) {
	pg, next, err := listPage(matched, func(g *kms.Grant) string { return timeOrderKey(g.CreationDate, g.GrantID) }, in.Limit, in.Marker)
	if err != nil {
		return response{}, err
	}
	out := listGrantsOutput{Grants: make([]grantListEntry, 0, len(pg)), Truncated: next != "", NextMarker: next}
	for _, g := range pg {
		e := grantListEntry{
			KeyId:             g.KeyID,
			GrantId:           g.GrantID,
			Name:              g.Name,
			CreationDate:      epoch(g.CreationDate),
			GranteePrincipal:  g.GranteePrincipal,
			RetiringPrincipal: g.RetiringPrincipal,
			IssuingAccount:    g.IssuingAccount,
			Operations:        g.Operations,
		}
		if g.ContextEquals != nil || g.ContextSubset != nil {
			e.Constraints = &grantConstraintsJSON{EncryptionContextEquals: g.ContextEquals, EncryptionContextSubset: g.ContextSubset}
		}
		out.Grants = append(out.Grants, e)
	}
	return response{v: out}, nil
}

func (s *Server) revokeGrant(c *call, body []byte) (response, error) {
	var in grantIDInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	c.entry.GrantID = in.GrantId
	if err := keyIDOnly(in.KeyId); err != nil {
		return response{}, err
	}
	arn, err := s.resolveAndAuthorize(c, in.KeyId, "")
	if err != nil {
		return response{}, err
	}
	if in.DryRun {
		return response{}, errDryRun
	}
	return response{v: emptyOutput{}}, s.store.RevokeGrant(c.ctx, arn, in.GrantId)
}

// retireGrant: a grant may be retired by its retiring principal, by its
// grantee if the grant gives RetireGrant, or by the issuing account's root;
// key policies do not govern RetireGrant (AWS).
func (s *Server) retireGrant(c *call, body []byte) (response, error) {
	var in grantIDInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	if err := keyIDOnly(in.KeyId); err != nil {
		return response{}, err
	}
	g, err := s.findGrant(c, in)
	if err != nil {
		return response{}, err
	}
	c.entry.GrantID = g.GrantID
	p := c.cred.Principal
	if !(g.RetiringPrincipal != "" && PrincipalMatches(g.RetiringPrincipal, p)) &&
		!(PrincipalMatches(g.GranteePrincipal, p) && contains(g.Operations, "RetireGrant")) &&
		p != g.IssuingAccount {
		return response{}, kms.Errorf(kms.CodeAccessDenied, "User: %s is not authorized to perform: kms:RetireGrant on grant %s", p, g.GrantID)
	}
	if in.DryRun {
		return response{}, errDryRun
	}
	return response{v: emptyOutput{}}, s.store.RetireGrant(c.ctx, "", g.KeyID, g.GrantID)
}

// findGrant locates the grant RetireGrant names, by key and grant ID or by
// grant token.
func (s *Server) findGrant(c *call, in grantIDInput) (kms.Grant, error) {
	var keys []string
	switch {
	case in.KeyId != "" && in.GrantId != "":
		arn, err := s.resolve(c, in.KeyId)
		if err != nil {
			return kms.Grant{}, err
		}
		keys = []string{arn}
	case in.GrantToken != "":
		if in.KeyId != "" {
			arn, err := s.resolve(c, in.KeyId)
			if err != nil {
				return kms.Grant{}, err
			}
			keys = []string{arn}
		} else {
			all, err := s.store.ListKeys(c.ctx)
			if err != nil {
				return kms.Grant{}, err
			}
			for _, k := range all {
				keys = append(keys, k.ARN)
			}
		}
	default:
		return kms.Grant{}, kms.Errorf(kms.CodeValidation, "RetireGrant needs a GrantToken, or a KeyId and a GrantId")
	}
	for _, arn := range keys {
		grants, err := s.store.ListGrants(c.ctx, arn)
		if err != nil {
			if kms.Code(err) == kms.CodeNotFound {
				continue
			}
			return kms.Grant{}, err
		}
		for _, g := range grants {
			if (in.GrantId != "" && g.GrantID == in.GrantId) || (in.GrantId == "" && in.GrantToken != "" && g.Token == in.GrantToken) {
				if in.GrantToken != "" && g.Token != "" && g.Token != in.GrantToken {
					return kms.Grant{}, kms.Errorf(kms.CodeInvalidGrantToken, "grant token does not match grant %s", g.GrantID)
				}
				g.KeyID = arn
				c.entry.KeyARN = arn
				return g, nil
			}
		}
	}
	if in.GrantId != "" {
		return kms.Grant{}, kms.Errorf(kms.CodeNotFound, "grant %s not found", in.GrantId)
	}
	return kms.Grant{}, kms.Errorf(kms.CodeInvalidGrantToken, "grant token is not valid")
}
