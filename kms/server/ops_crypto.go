package server

import (
	"github.com/kmsfs/kmsfs/kms"
)

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
	if isRSAEncryption(in.EncryptionAlgorithm) {
		return s.encryptAsymmetric(c, in)
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
	if err := s.checkGrantTokens(c, in.GrantTokens, arn); err != nil {
		return response{}, err
	}
	if in.DryRun {
		return response{}, s.dryRun(c, true, arn)
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
	if isRSAEncryption(in.EncryptionAlgorithm) {
		return s.decryptAsymmetric(c, in)
	}
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
	if err := s.checkGrantTokens(c, in.GrantTokens, arn); err != nil {
		return response{}, err
	}
	if in.DryRun {
		return response{}, s.dryRun(c, true, arn)
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
	if err := s.checkGrantTokens(c, in.GrantTokens, src, dest); err != nil {
		return response{}, err
	}
	if in.DryRun {
		return response{}, s.dryRun(c, true, src, dest)
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
	if err = s.checkGrantTokens(c, in.GrantTokens, arn); err != nil {
		return in, 0, "", err
	}
	if in.DryRun {
		return in, 0, "", s.dryRun(c, true, arn)
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
	var b []byte
	var err error
	if in.CustomKeyStoreId != "" {
		// Random bytes from the store's token (AWS: from the CloudHSM
		// cluster).
		c.entry.CustomKeyStoreID = in.CustomKeyStoreId
		b, err = s.store.GenerateRandomInStore(c.ctx, c.cred.Account, in.CustomKeyStoreId, in.NumberOfBytes)
	} else {
		b, err = s.store.GenerateRandom(c.ctx, in.NumberOfBytes)
	}
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
