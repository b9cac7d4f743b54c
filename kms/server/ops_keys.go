package server

import (
	"strconv"

	"github.com/kmsfs/kmsfs/kms"
)

func (s *Server) createKey(c *call, body []byte) (response, error) {
	var in createKeyInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	// KeySpec supersedes the deprecated CustomerMasterKeySpec; AWS
	// refuses both at once. The store checks the spec and usage.
	spec := in.KeySpec
	if in.CustomerMasterKeySpec != "" {
		if spec != "" {
			return response{}, kms.Errorf(kms.CodeValidation, "specify KeySpec or CustomerMasterKeySpec, not both")
		}
		spec = in.CustomerMasterKeySpec
	}
	// Never create something other than what was asked for.
	switch {
	case in.XksKeyId != "":
		return response{}, kms.Errorf(kms.CodeUnsupportedOperation, "XksKeyId: external key stores are not supported")
	}
	policy := in.Policy
	if policy == "" {
		policy = DefaultPolicy(c.cred.Account)
	} else {
		p, err := ParsePolicy(policy)
		if err != nil {
			return response{}, err
		}
		// AWS's policy lockout safety check: refuse a policy that would not
		// let the creator manage the key's policy later. The key's ARN is
		// not known yet, so only statements on Resource "*" count.
		if !in.BypassPolicyLockoutSafetyCheck && !s.lockoutSafe(c, p, "*") {
			return response{}, kms.Errorf(kms.CodeMalformedPolicy, "The new key policy will not allow you to update the key policy in the future.")
		}
	}
	meta, err := s.store.CreateKey(c.ctx, kms.CreateKeyInput{
		Description:      in.Description,
		Policy:           policy,
		Principal:        c.cred.Principal,
		Origin:           in.Origin,
		Account:          c.cred.Account,
		Tags:             tagMap(in.Tags),
		KeySpec:          spec,
		KeyUsage:         in.KeyUsage,
		MultiRegion:      in.MultiRegion,
		CustomKeyStoreID: in.CustomKeyStoreId,
	})
	if err != nil {
		return response{}, err
	}
	c.entry.KeyARN = meta.ARN
	c.entry.CustomKeyStoreID = meta.CustomKeyStoreID
	return response{v: keyMetadataOutput{KeyMetadata: metadataJSON(meta)}}, nil
}

func (s *Server) describeKey(c *call, body []byte) (response, error) {
	var in keyIDInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	arn, err := s.resolveAndAuthorize(c, in.KeyId, "DescribeKey")
	if err != nil {
		return response{}, err
	}
	meta, err := s.store.DescribeKey(c.ctx, arn)
	if err != nil {
		return response{}, err
	}
	return response{v: keyMetadataOutput{KeyMetadata: metadataJSON(meta)}}, nil
}

func (s *Server) listKeys(c *call, body []byte) (response, error) {
	var in listInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	all, err := s.store.ListKeys(c.ctx)
	if err != nil {
		return response{}, err
	}
	// The caller's account's keys only.
	keys := all[:0]
	for _, k := range all {
		if arnAccount(k.ARN) == c.cred.Account {
			keys = append(keys, k)
		}
	}
	pg, next, err := listPage(keys, func(k *kms.KeyMetadata) string { return timeOrderKey(k.CreationDate, k.KeyID) }, in.Limit, in.Marker)
	if err != nil {
		return response{}, err
	}
	out := listKeysOutput{Keys: make([]keyListEntry, 0, len(pg)), Truncated: next != "", NextMarker: next}
	for _, k := range pg {
		out.Keys = append(out.Keys, keyListEntry{KeyId: k.KeyID, KeyArn: k.ARN})
	}
	return response{v: out}, nil
}

func (s *Server) enableKey(c *call, body []byte) (response, error) {
	return s.keyOp(c, body, func(arn string) error { return s.store.EnableKey(c.ctx, arn) })
}

func (s *Server) disableKey(c *call, body []byte) (response, error) {
	return s.keyOp(c, body, func(arn string) error { return s.store.DisableKey(c.ctx, arn) })
}

func (s *Server) scheduleKeyDeletion(c *call, body []byte) (response, error) {
	var in scheduleKeyDeletionInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	days := in.PendingWindowInDays
	if days == 0 {
		days = kms.DefaultDeletionWindowDays
	}
	arn, err := s.resolveAndAuthorizeWith(c, in.KeyId, "", map[string][]string{
		"kms:schedulekeydeletionpendingwindowindays": {strconv.Itoa(days)},
	})
	if err != nil {
		return response{}, err
	}
	when, err := s.store.ScheduleKeyDeletion(c.ctx, arn, in.PendingWindowInDays)
	if err != nil {
		return response{}, err
	}
	return response{v: scheduleKeyDeletionOutput{KeyId: arn, DeletionDate: epoch(when), KeyState: string(kms.KeyPendingDeletion), PendingWindowInDays: days}}, nil
}

func (s *Server) cancelKeyDeletion(c *call, body []byte) (response, error) {
	var in keyIDInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	arn, err := s.resolveAndAuthorize(c, in.KeyId, "")
	if err != nil {
		return response{}, err
	}
	if err := s.store.CancelKeyDeletion(c.ctx, arn); err != nil {
		return response{}, err
	}
	return response{v: keyIDOutput{KeyId: arn}}, nil
}
