package awskms

import (
	"context"
	"errors"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/kmsfs/kmsfs/kms"
)

// optString is nil for "", so optional members stay absent on the wire.
func optString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func ctxMap(ec kms.EncryptionContext) map[string]string {
	if len(ec) == 0 {
		return nil
	}
	return ec
}

// dataKeySize asks for AES_256/AES_128 by KeySpec (what AWS documents for
// data keys) and any other size by NumberOfBytes.
func dataKeySize(numBytes int) (types.DataKeySpec, *int32) {
	switch numBytes {
	case 32:
		return types.DataKeySpecAes256, nil
	case 16:
		return types.DataKeySpecAes128, nil
	}
	return "", aws.Int32(int32(numBytes))
}

// GenerateDataKey returns a new data key, in plaintext and wrapped by keyID.
func (c *Client) GenerateDataKey(ctx context.Context, keyID string, numBytes int, ec kms.EncryptionContext) (kms.DataKey, error) {
	spec, n := dataKeySize(numBytes)
	out, err := call(c, ctx, "GenerateDataKey", keyID, func(ctx context.Context) (*awskms.GenerateDataKeyOutput, error) {
		return c.api.GenerateDataKey(ctx, &awskms.GenerateDataKeyInput{KeyId: &keyID, KeySpec: spec, NumberOfBytes: n, EncryptionContext: ctxMap(ec)})
	})
	if err != nil {
		return kms.DataKey{}, err
	}
	return kms.DataKey{KeyID: aws.ToString(out.KeyId), Plaintext: out.Plaintext, CiphertextBlob: out.CiphertextBlob}, nil
}

// GenerateDataKeyWithoutPlaintext returns a new data key wrapped by keyID only.
func (c *Client) GenerateDataKeyWithoutPlaintext(ctx context.Context, keyID string, numBytes int, ec kms.EncryptionContext) ([]byte, string, error) {
	spec, n := dataKeySize(numBytes)
	out, err := call(c, ctx, "GenerateDataKeyWithoutPlaintext", keyID, func(ctx context.Context) (*awskms.GenerateDataKeyWithoutPlaintextOutput, error) {
		return c.api.GenerateDataKeyWithoutPlaintext(ctx, &awskms.GenerateDataKeyWithoutPlaintextInput{KeyId: &keyID, KeySpec: spec, NumberOfBytes: n, EncryptionContext: ctxMap(ec)})
	})
	if err != nil {
		return nil, "", err
	}
	return out.CiphertextBlob, aws.ToString(out.KeyId), nil
}

// Encrypt wraps up to 4096 bytes under keyID.
func (c *Client) Encrypt(ctx context.Context, keyID string, plaintext []byte, ec kms.EncryptionContext) ([]byte, string, error) {
	out, err := call(c, ctx, "Encrypt", keyID, func(ctx context.Context) (*awskms.EncryptOutput, error) {
		return c.api.Encrypt(ctx, &awskms.EncryptInput{KeyId: &keyID, Plaintext: plaintext, EncryptionContext: ctxMap(ec)})
	})
	if err != nil {
		return nil, "", err
	}
	return out.CiphertextBlob, aws.ToString(out.KeyId), nil
}

// Decrypt unwraps a ciphertext blob; keyID is optional.
func (c *Client) Decrypt(ctx context.Context, keyID string, ciphertext []byte, ec kms.EncryptionContext) ([]byte, string, error) {
	out, err := call(c, ctx, "Decrypt", keyID, func(ctx context.Context) (*awskms.DecryptOutput, error) {
		return c.api.Decrypt(ctx, &awskms.DecryptInput{KeyId: optString(keyID), CiphertextBlob: ciphertext, EncryptionContext: ctxMap(ec)})
	})
	if err != nil {
		return nil, "", err
	}
	return out.Plaintext, aws.ToString(out.KeyId), nil
}

// ReEncrypt re-wraps a ciphertext under destKeyID without exposing the plaintext.
func (c *Client) ReEncrypt(ctx context.Context, ciphertext []byte, srcEC kms.EncryptionContext, destKeyID string, destEC kms.EncryptionContext) ([]byte, string, string, error) {
	out, err := call(c, ctx, "ReEncrypt", destKeyID, func(ctx context.Context) (*awskms.ReEncryptOutput, error) {
		return c.api.ReEncrypt(ctx, &awskms.ReEncryptInput{
			CiphertextBlob:               ciphertext,
			SourceEncryptionContext:      ctxMap(srcEC),
			DestinationKeyId:             &destKeyID,
			DestinationEncryptionContext: ctxMap(destEC),
		})
	})
	if err != nil {
		return nil, "", "", err
	}
	return out.CiphertextBlob, aws.ToString(out.SourceKeyId), aws.ToString(out.KeyId), nil
}

// GenerateRandom returns numBytes random bytes from the KMS.
func (c *Client) GenerateRandom(ctx context.Context, numBytes int) ([]byte, error) {
	out, err := call(c, ctx, "GenerateRandom", "", func(ctx context.Context) (*awskms.GenerateRandomOutput, error) {
		return c.api.GenerateRandom(ctx, &awskms.GenerateRandomInput{NumberOfBytes: aws.Int32(int32(numBytes))})
	})
	if err != nil {
		return nil, err
	}
	return out.Plaintext, nil
}

func metadata(m *types.KeyMetadata) kms.KeyMetadata {
	if m == nil {
		return kms.KeyMetadata{}
	}
	return kms.KeyMetadata{
		KeyID:           aws.ToString(m.KeyId),
		ARN:             aws.ToString(m.Arn),
		Description:     aws.ToString(m.Description),
		State:           kms.KeyState(m.KeyState),
		CreationDate:    aws.ToTime(m.CreationDate),
		DeletionDate:    aws.ToTime(m.DeletionDate),
		Origin:          string(m.Origin),
		KeyManager:      string(m.KeyManager),
		ExpirationModel: string(m.ExpirationModel),
		ValidTo:         aws.ToTime(m.ValidTo),
		KeySpec:         string(m.KeySpec),
		KeyUsage:        string(m.KeyUsage),

		EncryptionAlgorithms: enumStrings(m.EncryptionAlgorithms),
		SigningAlgorithms:    enumStrings(m.SigningAlgorithms),
		MacAlgorithms:        enumStrings(m.MacAlgorithms),

		MultiRegion:              aws.ToBool(m.MultiRegion),
		MultiRegionConfiguration: multiRegionConfiguration(m.MultiRegionConfiguration),
		CustomKeyStoreID:         aws.ToString(m.CustomKeyStoreId),
		CloudHsmClusterID:        aws.ToString(m.CloudHsmClusterId),
	}
}

// CreateKey creates a key (symmetric unless in.KeySpec says otherwise).
// in.Principal is ignored: the KMS knows who calls.
func (c *Client) CreateKey(ctx context.Context, in kms.CreateKeyInput) (kms.KeyMetadata, error) {
	out, err := call(c, ctx, "CreateKey", "", func(ctx context.Context) (*awskms.CreateKeyOutput, error) {
		return c.api.CreateKey(ctx, &awskms.CreateKeyInput{
			Description:      optString(in.Description),
			Policy:           optString(in.Policy),
			Origin:           types.OriginType(in.Origin),
			Tags:             tagList(in.Tags),
			KeySpec:          types.KeySpec(in.KeySpec),
			KeyUsage:         types.KeyUsageType(in.KeyUsage),
			MultiRegion:      optBool(in.MultiRegion),
			CustomKeyStoreId: optString(in.CustomKeyStoreID),
		})
	})
	if err != nil {
		return kms.KeyMetadata{}, err
	}
	return metadata(out.KeyMetadata), nil
}

// DescribeKey returns a key's metadata. The rotation fields come from a
// second call (GetKeyRotationStatus), left zero if the caller may not make
// it; the KMS API does not expose material versions, so CurrentVersion and
// Versions stay zero.
func (c *Client) DescribeKey(ctx context.Context, keyID string) (kms.KeyMetadata, error) {
	out, err := call(c, ctx, "DescribeKey", keyID, func(ctx context.Context) (*awskms.DescribeKeyOutput, error) {
		return c.api.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: &keyID})
	})
	if err != nil {
		return kms.KeyMetadata{}, err
	}
	md := metadata(out.KeyMetadata)
	if md.State != kms.KeyPendingDeletion {
		if on, period, next, err := c.GetKeyRotationStatus(ctx, md.ARN); err == nil {
			md.RotationEnabled, md.RotationPeriodDays, md.NextRotationDate = on, period, next
		}
	}
	return md, nil
}

// ListKeys lists every key (ListKeys pages, then DescribeKey for each).
func (c *Client) ListKeys(ctx context.Context) ([]kms.KeyMetadata, error) {
	var all []kms.KeyMetadata
	var marker *string
	for {
		out, err := call(c, ctx, "ListKeys", "", func(ctx context.Context) (*awskms.ListKeysOutput, error) {
			return c.api.ListKeys(ctx, &awskms.ListKeysInput{Marker: marker})
		})
		if err != nil {
			return nil, err
		}
		for _, k := range out.Keys {
			md, err := c.DescribeKey(ctx, aws.ToString(k.KeyArn))
			if err != nil {
				if errors.Is(err, kms.ErrAccessDenied) || errors.Is(err, kms.ErrNotFound) {
					// Listed but not ours to describe (or just deleted).
					all = append(all, kms.KeyMetadata{KeyID: aws.ToString(k.KeyId), ARN: aws.ToString(k.KeyArn)})
					continue
				}
				return nil, err
			}
			all = append(all, md)
		}
		if !out.Truncated || out.NextMarker == nil {
			return all, nil
		}
		marker = out.NextMarker
	}
}

// CreateAlias points a new alias at a key.
func (c *Client) CreateAlias(ctx context.Context, aliasName, targetKeyID string) error {
	_, err := call(c, ctx, "CreateAlias", aliasName, func(ctx context.Context) (*awskms.CreateAliasOutput, error) {
		return c.api.CreateAlias(ctx, &awskms.CreateAliasInput{AliasName: &aliasName, TargetKeyId: &targetKeyID})
	})
	return err
}

// UpdateAlias points an existing alias at another key.
func (c *Client) UpdateAlias(ctx context.Context, aliasName, targetKeyID string) error {
	_, err := call(c, ctx, "UpdateAlias", aliasName, func(ctx context.Context) (*awskms.UpdateAliasOutput, error) {
		return c.api.UpdateAlias(ctx, &awskms.UpdateAliasInput{AliasName: &aliasName, TargetKeyId: &targetKeyID})
	})
	return err
}

// DeleteAlias removes an alias (the key is untouched).
func (c *Client) DeleteAlias(ctx context.Context, aliasName string) error {
	_, err := call(c, ctx, "DeleteAlias", aliasName, func(ctx context.Context) (*awskms.DeleteAliasOutput, error) {
		return c.api.DeleteAlias(ctx, &awskms.DeleteAliasInput{AliasName: &aliasName})
	})
	return err
}

// ListAliases lists aliases, all of them or those of keyID.
func (c *Client) ListAliases(ctx context.Context, keyID string) ([]kms.Alias, error) {
	var all []kms.Alias
	var marker *string
	for {
		out, err := call(c, ctx, "ListAliases", keyID, func(ctx context.Context) (*awskms.ListAliasesOutput, error) {
			return c.api.ListAliases(ctx, &awskms.ListAliasesInput{KeyId: optString(keyID), Marker: marker})
		})
		if err != nil {
			return nil, err
		}
		for _, a := range out.Aliases {
			all = append(all, kms.Alias{Name: aws.ToString(a.AliasName), ARN: aws.ToString(a.AliasArn), TargetKeyID: aws.ToString(a.TargetKeyId)})
		}
		if !out.Truncated || out.NextMarker == nil {
			return all, nil
		}
		marker = out.NextMarker
	}
}

// EnableKey enables a disabled key.
func (c *Client) EnableKey(ctx context.Context, keyID string) error {
	_, err := call(c, ctx, "EnableKey", keyID, func(ctx context.Context) (*awskms.EnableKeyOutput, error) {
		return c.api.EnableKey(ctx, &awskms.EnableKeyInput{KeyId: &keyID})
	})
	return err
}

// DisableKey disables a key: it refuses use at once.
func (c *Client) DisableKey(ctx context.Context, keyID string) error {
	_, err := call(c, ctx, "DisableKey", keyID, func(ctx context.Context) (*awskms.DisableKeyOutput, error) {
		return c.api.DisableKey(ctx, &awskms.DisableKeyInput{KeyId: &keyID})
	})
	return err
}

// ScheduleKeyDeletion schedules deletion after windowDays (0: 30).
func (c *Client) ScheduleKeyDeletion(ctx context.Context, keyID string, windowDays int) (time.Time, error) {
	var days *int32
	if windowDays != 0 {
		days = aws.Int32(int32(windowDays))
	}
	out, err := call(c, ctx, "ScheduleKeyDeletion", keyID, func(ctx context.Context) (*awskms.ScheduleKeyDeletionOutput, error) {
		return c.api.ScheduleKeyDeletion(ctx, &awskms.ScheduleKeyDeletionInput{KeyId: &keyID, PendingWindowInDays: days})
	})
	if err != nil {
		return time.Time{}, err
	}
	return aws.ToTime(out.DeletionDate), nil
}

// CancelKeyDeletion cancels a scheduled deletion; the key is left Disabled.
func (c *Client) CancelKeyDeletion(ctx context.Context, keyID string) error {
	_, err := call(c, ctx, "CancelKeyDeletion", keyID, func(ctx context.Context) (*awskms.CancelKeyDeletionOutput, error) {
		return c.api.CancelKeyDeletion(ctx, &awskms.CancelKeyDeletionInput{KeyId: &keyID})
	})
	return err
}

// EnableKeyRotation turns on automatic rotation every periodDays (0: 365).
func (c *Client) EnableKeyRotation(ctx context.Context, keyID string, periodDays int) error {
	var period *int32
	if periodDays != 0 {
		period = aws.Int32(int32(periodDays))
	}
	_, err := call(c, ctx, "EnableKeyRotation", keyID, func(ctx context.Context) (*awskms.EnableKeyRotationOutput, error) {
		return c.api.EnableKeyRotation(ctx, &awskms.EnableKeyRotationInput{KeyId: &keyID, RotationPeriodInDays: period})
	})
	return err
}

// DisableKeyRotation turns off automatic rotation.
func (c *Client) DisableKeyRotation(ctx context.Context, keyID string) error {
	_, err := call(c, ctx, "DisableKeyRotation", keyID, func(ctx context.Context) (*awskms.DisableKeyRotationOutput, error) {
		return c.api.DisableKeyRotation(ctx, &awskms.DisableKeyRotationInput{KeyId: &keyID})
	})
	return err
}

// GetKeyRotationStatus reports automatic rotation settings.
func (c *Client) GetKeyRotationStatus(ctx context.Context, keyID string) (bool, int, time.Time, error) {
	out, err := call(c, ctx, "GetKeyRotationStatus", keyID, func(ctx context.Context) (*awskms.GetKeyRotationStatusOutput, error) {
		return c.api.GetKeyRotationStatus(ctx, &awskms.GetKeyRotationStatusInput{KeyId: &keyID})
	})
	if err != nil {
		return false, 0, time.Time{}, err
	}
	return out.KeyRotationEnabled, int(aws.ToInt32(out.RotationPeriodInDays)), aws.ToTime(out.NextRotationDate), nil
}

// RotateKeyOnDemand adds new backing material now.
func (c *Client) RotateKeyOnDemand(ctx context.Context, keyID string) error {
	_, err := call(c, ctx, "RotateKeyOnDemand", keyID, func(ctx context.Context) (*awskms.RotateKeyOnDemandOutput, error) {
		return c.api.RotateKeyOnDemand(ctx, &awskms.RotateKeyOnDemandInput{KeyId: &keyID})
	})
	return err
}

// GetKeyPolicy returns the key's (default) policy document.
func (c *Client) GetKeyPolicy(ctx context.Context, keyID string) (string, error) {
	out, err := call(c, ctx, "GetKeyPolicy", keyID, func(ctx context.Context) (*awskms.GetKeyPolicyOutput, error) {
		return c.api.GetKeyPolicy(ctx, &awskms.GetKeyPolicyInput{KeyId: &keyID, PolicyName: aws.String("default")})
	})
	if err != nil {
		return "", err
	}
	return aws.ToString(out.Policy), nil
}

// PutKeyPolicy replaces the key's policy.
func (c *Client) PutKeyPolicy(ctx context.Context, keyID, policy string) error {
	_, err := call(c, ctx, "PutKeyPolicy", keyID, func(ctx context.Context) (*awskms.PutKeyPolicyOutput, error) {
		return c.api.PutKeyPolicy(ctx, &awskms.PutKeyPolicyInput{KeyId: &keyID, Policy: &policy, PolicyName: aws.String("default")})
	})
	return err
}

// CreateGrant gives g.GranteePrincipal g.Operations on g.KeyID.
func (c *Client) CreateGrant(ctx context.Context, g kms.Grant) (string, string, error) {
	ops := make([]types.GrantOperation, len(g.Operations))
	for i, op := range g.Operations {
		ops[i] = types.GrantOperation(op)
	}
	in := &awskms.CreateGrantInput{
		KeyId:             &g.KeyID,
		GranteePrincipal:  &g.GranteePrincipal,
		RetiringPrincipal: optString(g.RetiringPrincipal),
		Operations:        ops,
		Name:              optString(g.Name),
	}
	if g.ContextEquals != nil || g.ContextSubset != nil {
		in.Constraints = &types.GrantConstraints{EncryptionContextEquals: g.ContextEquals, EncryptionContextSubset: g.ContextSubset}
	}
	out, err := call(c, ctx, "CreateGrant", g.KeyID, func(ctx context.Context) (*awskms.CreateGrantOutput, error) {
		return c.api.CreateGrant(ctx, in)
	})
	if err != nil {
		return "", "", err
	}
	return aws.ToString(out.GrantId), aws.ToString(out.GrantToken), nil
}

// ListGrants lists the grants on a key (tokens are not returned by the API).
func (c *Client) ListGrants(ctx context.Context, keyID string) ([]kms.Grant, error) {
	var all []kms.Grant
	var marker *string
	for {
		out, err := call(c, ctx, "ListGrants", keyID, func(ctx context.Context) (*awskms.ListGrantsOutput, error) {
			return c.api.ListGrants(ctx, &awskms.ListGrantsInput{KeyId: &keyID, Marker: marker})
		})
		if err != nil {
			return nil, err
		}
		for _, g := range out.Grants {
			kg := kms.Grant{
				GrantID:           aws.ToString(g.GrantId),
				KeyID:             aws.ToString(g.KeyId),
				Name:              aws.ToString(g.Name),
				GranteePrincipal:  aws.ToString(g.GranteePrincipal),
				RetiringPrincipal: aws.ToString(g.RetiringPrincipal),
				IssuingAccount:    aws.ToString(g.IssuingAccount),
				CreationDate:      aws.ToTime(g.CreationDate),
			}
			for _, op := range g.Operations {
				kg.Operations = append(kg.Operations, string(op))
			}
			if g.Constraints != nil {
				kg.ContextEquals = g.Constraints.EncryptionContextEquals
				kg.ContextSubset = g.Constraints.EncryptionContextSubset
			}
			all = append(all, kg)
		}
		if !out.Truncated || out.NextMarker == nil {
			return all, nil
		}
		marker = out.NextMarker
	}
}

// RevokeGrant deletes a grant (a key administrator's action).
func (c *Client) RevokeGrant(ctx context.Context, keyID, grantID string) error {
	_, err := call(c, ctx, "RevokeGrant", keyID, func(ctx context.Context) (*awskms.RevokeGrantOutput, error) {
		return c.api.RevokeGrant(ctx, &awskms.RevokeGrantInput{KeyId: &keyID, GrantId: &grantID})
	})
	return err
}

// RetireGrant deletes a grant by token, or by key and grant ID (the retiring
// or grantee principal's action).
func (c *Client) RetireGrant(ctx context.Context, token, keyID, grantID string) error {
	_, err := call(c, ctx, "RetireGrant", keyID, func(ctx context.Context) (*awskms.RetireGrantOutput, error) {
		return c.api.RetireGrant(ctx, &awskms.RetireGrantInput{GrantToken: optString(token), KeyId: optString(keyID), GrantId: optString(grantID)})
	})
	return err
}

var _ kms.Importer = (*Client)(nil)

// GetParametersForImport fetches a wrapping public key and import token for
// an EXTERNAL key.
func (c *Client) GetParametersForImport(ctx context.Context, keyID, wrappingAlgorithm, wrappingKeySpec string) (kms.ImportParameters, error) {
	out, err := call(c, ctx, "GetParametersForImport", keyID, func(ctx context.Context) (*awskms.GetParametersForImportOutput, error) {
		return c.api.GetParametersForImport(ctx, &awskms.GetParametersForImportInput{
			KeyId:             &keyID,
			WrappingAlgorithm: types.AlgorithmSpec(wrappingAlgorithm),
			WrappingKeySpec:   types.WrappingKeySpec(wrappingKeySpec),
		})
	})
	if err != nil {
		return kms.ImportParameters{}, err
	}
	return kms.ImportParameters{
		KeyARN: aws.ToString(out.KeyId), ImportToken: out.ImportToken,
		PublicKey: out.PublicKey, ValidTo: aws.ToTime(out.ParametersValidTo),
	}, nil
}

// ImportKeyMaterial imports material encrypted to the import token's public
// key; a zero validTo is KEY_MATERIAL_DOES_NOT_EXPIRE.
func (c *Client) ImportKeyMaterial(ctx context.Context, keyID string, importToken, encryptedMaterial []byte, validTo time.Time) error {
	in := &awskms.ImportKeyMaterialInput{
		KeyId: &keyID, ImportToken: importToken, EncryptedKeyMaterial: encryptedMaterial,
		ExpirationModel: types.ExpirationModelTypeKeyMaterialDoesNotExpire,
	}
	if !validTo.IsZero() {
		in.ExpirationModel, in.ValidTo = types.ExpirationModelTypeKeyMaterialExpires, &validTo
	}
	_, err := call(c, ctx, "ImportKeyMaterial", keyID, func(ctx context.Context) (*awskms.ImportKeyMaterialOutput, error) {
		return c.api.ImportKeyMaterial(ctx, in)
	})
	return err
}

// DeleteImportedKeyMaterial deletes an EXTERNAL key's material.
func (c *Client) DeleteImportedKeyMaterial(ctx context.Context, keyID string) error {
	_, err := call(c, ctx, "DeleteImportedKeyMaterial", keyID, func(ctx context.Context) (*awskms.DeleteImportedKeyMaterialOutput, error) {
		return c.api.DeleteImportedKeyMaterial(ctx, &awskms.DeleteImportedKeyMaterialInput{KeyId: &keyID})
	})
	return err
}
