package server

import (
	"github.com/kmsfs/kmsfs/kms"
)

func (s *Server) lockoutSafe(c *call, p *Policy, resource string) bool {
	rc := s.requestContext(c, "kms:PutKeyPolicy", resource)
	ok := p.Evaluate(&rc) == Allow
	c.attrErr = nil // a lookup that failed only makes the check fail
	return ok
}

func checkPolicyName(name string) error {
	if name != "" && name != "default" {
		return kms.Errorf(kms.CodeNotFound, "policy %q not found: a key has only the policy named default", name)
	}
	return nil
}

func (s *Server) getKeyPolicy(c *call, body []byte) (response, error) {
	var in keyPolicyInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	arn, err := s.resolveAndAuthorize(c, in.KeyId, "")
	if err != nil {
		return response{}, err
	}
	if err := checkPolicyName(in.PolicyName); err != nil {
		return response{}, err
	}
	doc, err := s.store.GetKeyPolicy(c.ctx, arn)
	if err != nil {
		return response{}, err
	}
	return response{v: keyPolicyOutput{Policy: doc, PolicyName: "default"}}, nil
}

func (s *Server) putKeyPolicy(c *call, body []byte) (response, error) {
	var in keyPolicyInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	arn, err := s.resolveAndAuthorize(c, in.KeyId, "")
	if err != nil {
		return response{}, err
	}
	if err := checkPolicyName(in.PolicyName); err != nil {
		return response{}, err
	}
	p, err := ParsePolicy(in.Policy)
	if err != nil {
		return response{}, err
	}
	if !in.BypassPolicyLockoutSafetyCheck && !s.lockoutSafe(c, p, arn) {
		return response{}, kms.Errorf(kms.CodeMalformedPolicy, "The new key policy will not allow you to update the key policy in the future.")
	}
	return response{v: emptyOutput{}}, s.store.PutKeyPolicy(c.ctx, arn, in.Policy)
}
