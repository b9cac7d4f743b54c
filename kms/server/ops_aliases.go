package server

import (
	"strings"

	"github.com/kmsfs/kmsfs/kms"
)

func (s *Server) listAliases(c *call, body []byte) (response, error) {
	var in listInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	keyID := ""
	if in.KeyId != "" {
		arn, err := s.resolve(c, in.KeyId)
		if err != nil {
			return response{}, err
		}
		keyID = arn
	}
	all, err := s.store.ListAliases(c.ctx, keyID)
	if err != nil {
		return response{}, err
	}
	// The caller's account's aliases only.
	aliases := all[:0]
	for _, a := range all {
		if arnAccount(a.ARN) == c.cred.Account {
			aliases = append(aliases, a)
		}
	}
	pg, next, err := listPage(aliases, func(a *kms.Alias) string { return a.Name }, in.Limit, in.Marker)
	if err != nil {
		return response{}, err
	}
	out := listAliasesOutput{Aliases: make([]aliasListEntry, 0, len(pg)), Truncated: next != "", NextMarker: next}
	for _, a := range pg {
		out.Aliases = append(out.Aliases, aliasListEntry{AliasName: a.Name, AliasArn: a.ARN, TargetKeyId: a.TargetKeyID,
			CreationDate: epoch(a.CreationDate), LastUpdatedDate: epoch(a.LastUpdatedDate)})
	}
	return response{v: out}, nil
}

func (s *Server) createAlias(c *call, body []byte) (response, error) {
	var in aliasInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	if err := checkAliasPrefix(in.AliasName); err != nil {
		return response{}, err
	}
	// The alias is created in the caller's account, for a key of that
	// account (resolve refuses another account's key for CreateAlias).
	if _, err := s.resolveAndAuthorize(c, in.TargetKeyId, ""); err != nil {
		return response{}, err
	}
	return response{v: emptyOutput{}}, s.store.CreateAlias(c.ctx, s.qualify(c, in.AliasName), s.qualify(c, in.TargetKeyId))
}

func (s *Server) updateAlias(c *call, body []byte) (response, error) {
	var in aliasInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	if err := checkAliasPrefix(in.AliasName); err != nil {
		return response{}, err
	}
	// UpdateAlias needs kms:UpdateAlias on both the current and the new key.
	if _, err := s.resolveAndAuthorize(c, in.AliasName, ""); err != nil {
		return response{}, err
	}
	newARN, err := s.lookupARN(c, in.TargetKeyId)
	if err != nil {
		return response{}, err
	}
	c.entry.DestKeyARN = newARN
	if err := s.checkAccount(c, c.op, newARN); err != nil {
		return response{}, err
	}
	if err := s.authorize(c, "kms:UpdateAlias", newARN, nil, "", nil); err != nil {
		return response{}, err
	}
	return response{v: emptyOutput{}}, s.store.UpdateAlias(c.ctx, s.qualify(c, in.AliasName), s.qualify(c, in.TargetKeyId))
}

func (s *Server) deleteAlias(c *call, body []byte) (response, error) {
	var in aliasInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	if err := checkAliasPrefix(in.AliasName); err != nil {
		return response{}, err
	}
	if _, err := s.resolveAndAuthorize(c, in.AliasName, ""); err != nil {
		return response{}, err
	}
	return response{v: emptyOutput{}}, s.store.DeleteAlias(c.ctx, s.qualify(c, in.AliasName))
}

// checkAliasPrefix refuses an alias name that does not start with "alias/"
// before any lookup, as AWS does (InvalidAliasNameException).
func checkAliasPrefix(name string) error {
	if !strings.HasPrefix(name, "alias/") {
		return kms.Errorf(kms.CodeInvalidAliasName, "alias name %q must begin with alias/", name)
	}
	return nil
}
