package server

import (
	"strings"
	"time"

	"github.com/kmsfs/kmsfs/kms"
)

// The operation handlers. Each decodes its input, resolves the key(s) it
// names, authorises the caller against the key policy and grants, and only
// then calls the store. The store enforces key states and key rules (4096-byte
// Encrypt limit, deletion window, rotation period, context match).

var errDryRun = kms.Errorf("DryRunOperationException", "The request would have succeeded, but the DryRun option is set.")

func (s *Server) createKey(c *call, body []byte) (response, error) {
	var in createKeyInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	for _, spec := range []string{in.KeySpec, in.CustomerMasterKeySpec} {
		if spec != "" && spec != symmetricDefault {
			return response{}, kms.Errorf("UnsupportedOperationException", "KeySpec %s is not supported: this KMS holds SYMMETRIC_DEFAULT keys only", spec)
		}
	}
	if in.KeyUsage != "" && in.KeyUsage != "ENCRYPT_DECRYPT" {
		return response{}, kms.Errorf("UnsupportedOperationException", "KeyUsage %s is not supported: this KMS holds ENCRYPT_DECRYPT keys only", in.KeyUsage)
	}
	if in.MultiRegion {
		return response{}, kms.Errorf("UnsupportedOperationException", "multi-Region keys are not supported")
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
		Description: in.Description,
		Policy:      policy,
		Principal:   c.cred.Principal,
		Origin:      in.Origin,
	})
	if err != nil {
		return response{}, err
	}
	c.entry.KeyARN = meta.ARN
	return response{v: keyMetadataOutput{KeyMetadata: metadataJSON(meta)}}, nil
}

func (s *Server) lockoutSafe(c *call, p *Policy, resource string) bool {
	rc := RequestContext{Principal: c.cred.Principal, Account: c.cred.Account, Action: "kms:PutKeyPolicy", Resource: resource}
	return p.Evaluate(&rc) == Allow
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

// ListKeys, ListAliases, CreateKey and GenerateRandom are account-level
// operations that AWS authorises with IAM policies, not key policies; this
// server has no IAM, so every authenticated principal may call them.

func (s *Server) listKeys(c *call, body []byte) (response, error) {
	var in listInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	keys, err := s.store.ListKeys(c.ctx)
	if err != nil {
		return response{}, err
	}
	start, end, next, err := page(len(keys), in.Limit, in.Marker)
	if err != nil {
		return response{}, err
	}
	out := listKeysOutput{Keys: make([]keyListEntry, 0, end-start), Truncated: next != "", NextMarker: next}
	for _, k := range keys[start:end] {
		out.Keys = append(out.Keys, keyListEntry{KeyId: k.KeyID, KeyArn: k.ARN})
	}
	return response{v: out}, nil
}

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
	aliases, err := s.store.ListAliases(c.ctx, keyID)
	if err != nil {
		return response{}, err
	}
	start, end, next, err := page(len(aliases), in.Limit, in.Marker)
	if err != nil {
		return response{}, err
	}
	out := listAliasesOutput{Aliases: make([]aliasListEntry, 0, end-start), Truncated: next != "", NextMarker: next}
	for _, a := range aliases[start:end] {
		out.Aliases = append(out.Aliases, aliasListEntry{AliasName: a.Name, AliasArn: a.ARN, TargetKeyId: a.TargetKeyID})
	}
	return response{v: out}, nil
}

func (s *Server) createAlias(c *call, body []byte) (response, error) {
	var in aliasInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	if _, err := s.resolveAndAuthorize(c, in.TargetKeyId, ""); err != nil {
		return response{}, err
	}
	return response{v: emptyOutput{}}, s.store.CreateAlias(c.ctx, in.AliasName, in.TargetKeyId)
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
	if err := s.authorize(c, "kms:UpdateAlias", newARN, nil, "", nil); err != nil {
		return response{}, err
	}
	return response{v: emptyOutput{}}, s.store.UpdateAlias(c.ctx, in.AliasName, in.TargetKeyId)
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
	return response{v: emptyOutput{}}, s.store.DeleteAlias(c.ctx, in.AliasName)
}

func checkAlgorithm(alg string) error {
	if alg != "" && alg != symmetricDefault {
		return kms.Errorf(kms.CodeValidation, "EncryptionAlgorithm %s is not supported for symmetric keys; use SYMMETRIC_DEFAULT", alg)
	}
	return nil
}

func (s *Server) encrypt(c *call, body []byte) (response, error) {
	var in encryptInput
	err := decode(body, &in)
	defer kms.Zero(in.Plaintext)
	if err != nil {
		return response{}, err
	}
	c.entry.EncryptionContext = in.EncryptionContext
	if len(in.Plaintext) == 0 || len(in.Plaintext) > kms.MaxEncryptPlaintext {
		return response{}, kms.Errorf(kms.CodeValidation, "1 validation error detected: Value at 'plaintext' failed to satisfy constraint: Member must have length between 1 and %d (got %d bytes)", kms.MaxEncryptPlaintext, len(in.Plaintext))
	}
	if err := checkAlgorithm(in.EncryptionAlgorithm); err != nil {
		return response{}, err
	}
	arn, err := s.resolve(c, in.KeyId)
	if err != nil {
		return response{}, err
	}
	if err := s.authorize(c, "kms:Encrypt", arn, in.EncryptionContext, "Encrypt", nil); err != nil {
		return response{}, err
	}
	if in.DryRun {
		return response{}, errDryRun
	}
	ct, keyARN, err := s.store.Encrypt(c.ctx, arn, in.Plaintext, in.EncryptionContext)
	if err != nil {
		return response{}, err
	}
	return response{v: encryptOutput{CiphertextBlob: ct, KeyId: keyARN, EncryptionAlgorithm: symmetricDefault}}, nil
}

// ciphertextKey finds the key a ciphertext names; if the caller also named a
// key, it must be that one (IncorrectKeyException otherwise, as in AWS).
func (s *Server) ciphertextKey(c *call, blob []byte, keyID string) (string, error) {
	if len(blob) == 0 {
		return "", kms.Errorf(kms.CodeValidation, "1 validation error detected: Value null at 'ciphertextBlob' failed to satisfy constraint: Member must not be null")
	}
	arn, err := s.store.CiphertextKeyARN(blob)
	if err != nil {
		return "", err
	}
	c.entry.KeyARN = arn
	if keyID != "" {
		named, err := s.lookupARN(c, keyID)
		if err != nil {
			return "", err
		}
		if named != arn {
			return "", kms.Errorf(kms.CodeIncorrectKey, "The key ID in the request does not identify a KMS key that can perform this operation.")
		}
	}
	return arn, nil
}

func (s *Server) decrypt(c *call, body []byte) (response, error) {
	var in decryptInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	c.entry.EncryptionContext = in.EncryptionContext
	if err := checkAlgorithm(in.EncryptionAlgorithm); err != nil {
		return response{}, err
	}
	arn, err := s.ciphertextKey(c, in.CiphertextBlob, in.KeyId)
	if err != nil {
		return response{}, err
	}
	if err := s.authorize(c, "kms:Decrypt", arn, in.EncryptionContext, "Decrypt", nil); err != nil {
		return response{}, err
	}
	if in.DryRun {
		return response{}, errDryRun
	}
	pt, keyARN, err := s.store.Decrypt(c.ctx, arn, in.CiphertextBlob, in.EncryptionContext)
	if err != nil {
		return response{}, err
	}
	j := secretJSON{b: make([]byte, 0, 128+len(keyARN)+len(pt)*4/3)}
	j.open()
	j.str("KeyId", keyARN)
	j.blob("Plaintext", pt)
	j.str("EncryptionAlgorithm", symmetricDefault)
	j.close()
	kms.Zero(pt)
	return response{secret: j.b}, nil
}

func (s *Server) reEncrypt(c *call, body []byte) (response, error) {
	var in reEncryptInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	c.entry.EncryptionContext = in.SourceEncryptionContext
	c.entry.DestContext = in.DestinationEncryptionContext
	if err := checkAlgorithm(in.SourceEncryptionAlgorithm); err != nil {
		return response{}, err
	}
	if err := checkAlgorithm(in.DestinationEncryptionAlgorithm); err != nil {
		return response{}, err
	}
	src, err := s.ciphertextKey(c, in.CiphertextBlob, in.SourceKeyId)
	if err != nil {
		return response{}, err
	}
	if in.DestinationKeyId == "" {
		return response{}, kms.Errorf(kms.CodeValidation, "1 validation error detected: Value null at 'destinationKeyId' failed to satisfy constraint: Member must not be null")
	}
	dest, err := s.lookupARN(c, in.DestinationKeyId)
	if err != nil {
		return response{}, err
	}
	c.entry.DestKeyARN = dest
	if err := s.authorize(c, "kms:ReEncryptFrom", src, in.SourceEncryptionContext, "ReEncryptFrom", nil); err != nil {
		return response{}, err
	}
	if err := s.authorize(c, "kms:ReEncryptTo", dest, in.DestinationEncryptionContext, "ReEncryptTo", nil); err != nil {
		return response{}, err
	}
	if in.DryRun {
		return response{}, errDryRun
	}
	ct, srcARN, destARN, err := s.store.ReEncrypt(c.ctx, in.CiphertextBlob, in.SourceEncryptionContext, dest, in.DestinationEncryptionContext)
	if err != nil {
		return response{}, err
	}
	return response{v: reEncryptOutput{
		CiphertextBlob:                 ct,
		SourceKeyId:                    srcARN,
		KeyId:                          destARN,
		SourceEncryptionAlgorithm:      symmetricDefault,
		DestinationEncryptionAlgorithm: symmetricDefault,
	}}, nil
}

// dataKeySize turns GenerateDataKey's KeySpec / NumberOfBytes into a length:
// exactly one of the two must be given (AWS ValidationException otherwise).
func dataKeySize(in generateDataKeyInput) (int, error) {
	switch {
	case in.KeySpec != "" && in.NumberOfBytes != 0:
		return 0, kms.Errorf(kms.CodeValidation, "specify either KeySpec or NumberOfBytes, not both")
	case in.KeySpec == "AES_256":
		return 32, nil
	case in.KeySpec == "AES_128":
		return 16, nil
	case in.KeySpec != "":
		return 0, kms.Errorf(kms.CodeValidation, "KeySpec %q must be AES_256 or AES_128", in.KeySpec)
	case in.NumberOfBytes == 0:
		return 0, kms.Errorf(kms.CodeValidation, "specify either KeySpec or NumberOfBytes")
	}
	return in.NumberOfBytes, nil
}

// dataKeyRequest is what GenerateDataKey and GenerateDataKeyWithoutPlaintext
// share before they call the store: decode, size check, key resolution,
// authorisation of op, and DryRun.
func (s *Server) dataKeyRequest(c *call, body []byte, op string) (in generateDataKeyInput, n int, arn string, err error) {
	if err = decode(body, &in); err != nil {
		return in, 0, "", err
	}
	c.entry.EncryptionContext = in.EncryptionContext
	if n, err = dataKeySize(in); err != nil {
		return in, 0, "", err
	}
	if arn, err = s.resolve(c, in.KeyId); err != nil {
		return in, 0, "", err
	}
	if err = s.authorize(c, "kms:"+op, arn, in.EncryptionContext, op, nil); err != nil {
		return in, 0, "", err
	}
	if in.DryRun {
		return in, 0, "", errDryRun
	}
	return in, n, arn, nil
}

func (s *Server) generateDataKey(c *call, body []byte) (response, error) {
	in, n, arn, err := s.dataKeyRequest(c, body, "GenerateDataKey")
	if err != nil {
		return response{}, err
	}
	dk, err := s.store.GenerateDataKey(c.ctx, arn, n, in.EncryptionContext)
	if err != nil {
		return response{}, err
	}
	j := secretJSON{b: make([]byte, 0, 128+len(dk.KeyID)+(len(dk.CiphertextBlob)+len(dk.Plaintext))*4/3)}
	j.open()
	j.blob("CiphertextBlob", dk.CiphertextBlob)
	j.str("KeyId", dk.KeyID)
	j.blob("Plaintext", dk.Plaintext)
	j.close()
	dk.Zero()
	return response{secret: j.b}, nil
}

func (s *Server) generateDataKeyWithoutPlaintext(c *call, body []byte) (response, error) {
	in, n, arn, err := s.dataKeyRequest(c, body, "GenerateDataKeyWithoutPlaintext")
	if err != nil {
		return response{}, err
	}
	ct, keyARN, err := s.store.GenerateDataKeyWithoutPlaintext(c.ctx, arn, n, in.EncryptionContext)
	if err != nil {
		return response{}, err
	}
	return response{v: generateDataKeyWithoutPlaintextOutput{CiphertextBlob: ct, KeyId: keyARN}}, nil
}

func (s *Server) generateRandom(c *call, body []byte) (response, error) {
	var in generateRandomInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	if in.CustomKeyStoreId != "" {
		return response{}, kms.Errorf("CustomKeyStoreNotFoundException", "custom key store %s not found", in.CustomKeyStoreId)
	}
	b, err := s.store.GenerateRandom(c.ctx, in.NumberOfBytes)
	if err != nil {
		return response{}, err
	}
	j := secretJSON{b: make([]byte, 0, 32+len(b)*4/3)}
	j.open()
	j.blob("Plaintext", b)
	j.close()
	kms.Zero(b)
	return response{secret: j.b}, nil
}

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

func (s *Server) enableKey(c *call, body []byte) (response, error) {
	return s.keyOp(c, body, func(arn string) error { return s.store.EnableKey(c.ctx, arn) })
}

func (s *Server) disableKey(c *call, body []byte) (response, error) {
	return s.keyOp(c, body, func(arn string) error { return s.store.DisableKey(c.ctx, arn) })
}

func (s *Server) disableKeyRotation(c *call, body []byte) (response, error) {
	return s.keyOp(c, body, func(arn string) error { return s.store.DisableKeyRotation(c.ctx, arn) })
}

func (s *Server) scheduleKeyDeletion(c *call, body []byte) (response, error) {
	var in scheduleKeyDeletionInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	arn, err := s.resolveAndAuthorize(c, in.KeyId, "")
	if err != nil {
		return response{}, err
	}
	when, err := s.store.ScheduleKeyDeletion(c.ctx, arn, in.PendingWindowInDays)
	if err != nil {
		return response{}, err
	}
	days := in.PendingWindowInDays
	if days == 0 {
		days = kms.DefaultDeletionWindowDays
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

func (s *Server) enableKeyRotation(c *call, body []byte) (response, error) {
	var in enableKeyRotationInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	arn, err := s.resolveAndAuthorize(c, in.KeyId, "")
	if err != nil {
		return response{}, err
	}
	return response{v: emptyOutput{}}, s.store.EnableKeyRotation(c.ctx, arn, in.RotationPeriodInDays)
}

func (s *Server) getKeyRotationStatus(c *call, body []byte) (response, error) {
	var in keyIDInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	arn, err := s.resolveAndAuthorize(c, in.KeyId, "")
	if err != nil {
		return response{}, err
	}
	enabled, period, next, err := s.store.GetKeyRotationStatus(c.ctx, arn)
	if err != nil {
		return response{}, err
	}
	out := keyRotationStatusOutput{KeyRotationEnabled: enabled, KeyId: arn}
	if enabled {
		out.RotationPeriodInDays = period
		out.NextRotationDate = epoch(next)
	}
	return response{v: out}, nil
}

func (s *Server) rotateKeyOnDemand(c *call, body []byte) (response, error) {
	var in keyIDInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	arn, err := s.resolveAndAuthorize(c, in.KeyId, "")
	if err != nil {
		return response{}, err
	}
	if err := s.store.RotateKeyOnDemand(c.ctx, arn); err != nil {
		return response{}, err
	}
	return response{v: keyIDOutput{KeyId: arn}}, nil
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

func (s *Server) createGrant(c *call, body []byte) (response, error) {
	var in createGrantInput
	if err := decode(body, &in); err != nil {
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
	if in.DryRun {
		return response{}, errDryRun
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
	d, err := s.decide(c, "kms:CreateGrant", arn, nil, extra)
	if err != nil {
		return err
	}
	switch d {
	case Allow:
		return nil
	case Deny:
		return denied(c, "kms:CreateGrant", arn, true)
	}
	grants, err := s.store.ListGrants(c.ctx, arn)
	if err != nil {
		return err
	}
	for _, g := range grants {
		if g.GranteePrincipal != c.cred.Principal || !contains(g.Operations, "CreateGrant") {
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
	return denied(c, "kms:CreateGrant", arn, false)
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
	start, end, next, err := page(len(matched), in.Limit, in.Marker)
	if err != nil {
		return response{}, err
	}
	out := listGrantsOutput{Grants: make([]grantListEntry, 0, end-start), Truncated: next != "", NextMarker: next}
	for _, g := range matched[start:end] {
		e := grantListEntry{
			KeyId:             arn,
			GrantId:           g.GrantID,
			Name:              g.Name,
			CreationDate:      epoch(g.CreationDate),
			GranteePrincipal:  g.GranteePrincipal,
			RetiringPrincipal: g.RetiringPrincipal,
			IssuingAccount:    "arn:aws:iam::" + g.IssuingAccount + ":root",
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
	g, err := s.findGrant(c, in)
	if err != nil {
		return response{}, err
	}
	c.entry.GrantID = g.GrantID
	p := c.cred.Principal
	if p != g.RetiringPrincipal &&
		!(p == g.GranteePrincipal && contains(g.Operations, "RetireGrant")) &&
		p != "arn:aws:iam::"+g.IssuingAccount+":root" {
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

// checkAliasPrefix refuses an alias name that does not start with "alias/"
// before any lookup, as AWS does (InvalidAliasNameException).
func checkAliasPrefix(name string) error {
	if !strings.HasPrefix(name, "alias/") {
		return kms.Errorf(kms.CodeInvalidAliasName, "alias name %q must begin with alias/", name)
	}
	return nil
}

func (s *Server) getParametersForImport(c *call, body []byte) (response, error) {
	var in getParametersForImportInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	arn, err := s.resolveAndAuthorize(c, in.KeyId, "")
	if err != nil {
		return response{}, err
	}
	p, err := s.store.GetParametersForImport(c.ctx, arn, in.WrappingAlgorithm, in.WrappingKeySpec)
	if err != nil {
		return response{}, err
	}
	return response{v: getParametersForImportOutput{KeyId: p.KeyARN, ImportToken: p.ImportToken, PublicKey: p.PublicKey, ParametersValidTo: epoch(p.ValidTo)}}, nil
}

// importKeyMaterial follows AWS's rules for the expiration model: with
// KEY_MATERIAL_EXPIRES (the default) ValidTo is required; with
// KEY_MATERIAL_DOES_NOT_EXPIRE it must be absent.
func (s *Server) importKeyMaterial(c *call, body []byte) (response, error) {
	var in importKeyMaterialInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	var validTo time.Time
	switch in.ExpirationModel {
	case "", "KEY_MATERIAL_EXPIRES":
		if in.ValidTo == 0 {
			return response{}, kms.Errorf(kms.CodeValidation, "ValidTo is required when ExpirationModel is KEY_MATERIAL_EXPIRES")
		}
		validTo = time.UnixMilli(int64(in.ValidTo * 1000)).UTC()
	case "KEY_MATERIAL_DOES_NOT_EXPIRE":
		if in.ValidTo != 0 {
			return response{}, kms.Errorf(kms.CodeValidation, "ValidTo must not be set when ExpirationModel is KEY_MATERIAL_DOES_NOT_EXPIRE")
		}
	default:
		return response{}, kms.Errorf(kms.CodeValidation, "ExpirationModel %q is not KEY_MATERIAL_EXPIRES or KEY_MATERIAL_DOES_NOT_EXPIRE", in.ExpirationModel)
	}
	arn, err := s.resolveAndAuthorize(c, in.KeyId, "")
	if err != nil {
		return response{}, err
	}
	if err := s.store.ImportKeyMaterial(c.ctx, arn, in.ImportToken, in.EncryptedKeyMaterial, validTo); err != nil {
		return response{}, err
	}
	return response{v: importKeyMaterialOutput{KeyId: arn}}, nil
}

func (s *Server) deleteImportedKeyMaterial(c *call, body []byte) (response, error) {
	return s.keyOp(c, body, func(arn string) error { return s.store.DeleteImportedKeyMaterial(c.ctx, arn) })
}
