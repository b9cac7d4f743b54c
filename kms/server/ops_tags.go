package server

import (
	"github.com/kmsfs/kmsfs/kms"
)

// The control-plane operations on a key's metadata. Tags and descriptions
// are names for people and tools: they grant nothing here (no condition key
// reads them).

func (s *Server) updateKeyDescription(c *call, body []byte) (response, error) {
	var in updateKeyDescriptionInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	arn, err := s.resolveAndAuthorize(c, in.KeyId, "")
	if err != nil {
		return response{}, err
	}
	return response{v: emptyOutput{}}, s.store.UpdateKeyDescription(c.ctx, arn, in.Description)
}

func (s *Server) tagResource(c *call, body []byte) (response, error) {
	var in tagResourceInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	if err := keyIDOnly(in.KeyId); err != nil {
		return response{}, err
	}
	if len(in.Tags) == 0 {
		return response{}, kms.Errorf(kms.CodeValidation, "TagResource needs at least one tag")
	}
	arn, err := s.resolveAndAuthorize(c, in.KeyId, "")
	if err != nil {
		return response{}, err
	}
	return response{v: emptyOutput{}}, s.store.TagResource(c.ctx, arn, tagMap(in.Tags))
}

func (s *Server) untagResource(c *call, body []byte) (response, error) {
	var in tagResourceInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	if err := keyIDOnly(in.KeyId); err != nil {
		return response{}, err
	}
	if len(in.TagKeys) == 0 {
		return response{}, kms.Errorf(kms.CodeValidation, "UntagResource needs at least one tag key")
	}
	arn, err := s.resolveAndAuthorize(c, in.KeyId, "")
	if err != nil {
		return response{}, err
	}
	return response{v: emptyOutput{}}, s.store.UntagResource(c.ctx, arn, in.TagKeys)
}

func (s *Server) listResourceTags(c *call, body []byte) (response, error) {
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
	m, err := s.store.ListResourceTags(c.ctx, arn)
	if err != nil {
		return response{}, err
	}
	tags := make([]tagJSON, 0, len(m))
	for k, v := range m {
		tags = append(tags, tagJSON{TagKey: k, TagValue: v})
	}
	pg, next, err := listPage(tags, func(t *tagJSON) string { return t.TagKey }, in.Limit, in.Marker)
	if err != nil {
		return response{}, err
	}
	return response{v: listResourceTagsOutput{Tags: pg, Truncated: next != "", NextMarker: next}}, nil
}

// listKeyPolicies: a key has exactly one policy, named "default".
func (s *Server) listKeyPolicies(c *call, body []byte) (response, error) {
	var in listInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	if _, err := s.resolveAndAuthorize(c, in.KeyId, ""); err != nil {
		return response{}, err
	}
	if in.Limit < 0 || in.Limit > 1000 {
		return response{}, kms.Errorf(kms.CodeValidation, "Limit %d outside 1..1000", in.Limit)
	}
	return response{v: listKeyPoliciesOutput{PolicyNames: []string{"default"}}}, nil
}

// listRetirableGrants lists the grants on the caller's account's keys that
// the given principal may retire. AWS authorises it with IAM alone; this
// server has no IAM, so, like ListKeys, any principal of the account may call it.
func (s *Server) listRetirableGrants(c *call, body []byte) (response, error) {
	var in listInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	if _, err := AccountOf(in.RetiringPrincipal); err != nil {
		return response{}, kms.Errorf(kms.CodeValidation, "RetiringPrincipal: %v", err)
	}
	keys, err := s.store.ListKeys(c.ctx)
	if err != nil {
		return response{}, err
	}
	var matched []kms.Grant
	for _, k := range keys {
		if arnAccount(k.ARN) != c.cred.Account {
			continue
		}
		grants, err := s.store.ListGrants(c.ctx, k.ARN)
		if err != nil {
			if kms.Code(err) == kms.CodeNotFound {
				continue // deleted meanwhile
			}
			return response{}, err
		}
		for _, g := range grants {
			if g.RetiringPrincipal == in.RetiringPrincipal {
				g.KeyID = k.ARN
				matched = append(matched, g)
			}
		}
	}
	return s.grantPage(matched, in)
}
