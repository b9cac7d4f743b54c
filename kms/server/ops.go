package server

import (
	"github.com/kmsfs/kmsfs/kms"
)

// The operation handlers. Each decodes its input, resolves the key(s) it
// names, authorises the caller against the key policy and grants, and only
// then calls the store. The store enforces key states and key rules (4096-byte
// Encrypt limit, deletion window, rotation period, context match).

var errDryRun = kms.Errorf("DryRunOperationException", "The request would have succeeded, but the DryRun option is set.")

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
