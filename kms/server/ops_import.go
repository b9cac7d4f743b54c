package server

import (
	"time"

	"github.com/kmsfs/kmsfs/kms"
)

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

// maxValidTo is how far ahead imported key material may expire (AWS: 365 days).
const maxValidTo = 365 * 24 * time.Hour

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
		if validTo.After(c.now.Add(maxValidTo)) {
			return response{}, kms.Errorf(kms.CodeValidation, "ValidTo %s is more than 365 days from now", validTo.Format(time.RFC3339))
		}
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
