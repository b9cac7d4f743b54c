package server

import (
	"encoding/json"
	"strings"

	"github.com/kmsfs/kmsfs/kms"
)

// The asymmetric and HMAC key operations. Like the others, each resolves
// its key, authorises kms:<Operation> against the key policy and grants
// (with the request's algorithm and message type as condition keys, as in
// AWS), and only then calls the store, which checks the key's spec, usage
// and state.

type getPublicKeyInput struct {
	KeyId       string   `json:"KeyId"`
	GrantTokens []string `json:"GrantTokens"`
}

type getPublicKeyOutput struct {
	KeyId                 string   `json:"KeyId"`
	PublicKey             []byte   `json:"PublicKey"`
	CustomerMasterKeySpec string   `json:"CustomerMasterKeySpec"`
	KeySpec               string   `json:"KeySpec"`
	KeyUsage              string   `json:"KeyUsage"`
	EncryptionAlgorithms  []string `json:"EncryptionAlgorithms,omitempty"`
	SigningAlgorithms     []string `json:"SigningAlgorithms,omitempty"`
}

type signInput struct {
	KeyId            string   `json:"KeyId"`
	Message          []byte   `json:"Message"`
	MessageType      string   `json:"MessageType"`
	Signature        []byte   `json:"Signature"` // Verify only
	SigningAlgorithm string   `json:"SigningAlgorithm"`
	GrantTokens      []string `json:"GrantTokens"`
	DryRun           bool     `json:"DryRun"`
}

type signOutput struct {
	KeyId            string `json:"KeyId"`
	Signature        []byte `json:"Signature"`
	SigningAlgorithm string `json:"SigningAlgorithm"`
}

type verifyOutput struct {
	KeyId            string `json:"KeyId"`
	SignatureValid   bool   `json:"SignatureValid"`
	SigningAlgorithm string `json:"SigningAlgorithm"`
}

type macInput struct {
	KeyId        string   `json:"KeyId"`
	Message      []byte   `json:"Message"`
	Mac          []byte   `json:"Mac"` // VerifyMac only
	MacAlgorithm string   `json:"MacAlgorithm"`
	GrantTokens  []string `json:"GrantTokens"`
	DryRun       bool     `json:"DryRun"`
}

type generateMacOutput struct {
	KeyId        string `json:"KeyId"`
	Mac          []byte `json:"Mac"`
	MacAlgorithm string `json:"MacAlgorithm"`
}

type verifyMacOutput struct {
	KeyId        string `json:"KeyId"`
	MacValid     bool   `json:"MacValid"`
	MacAlgorithm string `json:"MacAlgorithm"`
}

type dataKeyPairInput struct {
	KeyId             string            `json:"KeyId"`
	KeyPairSpec       string            `json:"KeyPairSpec"`
	EncryptionContext map[string]string `json:"EncryptionContext"`
	GrantTokens       []string          `json:"GrantTokens"`
	DryRun            bool              `json:"DryRun"`
	Recipient         json.RawMessage   `json:"Recipient"`
}

type dataKeyPairWithoutPlaintextOutput struct {
	KeyId                    string `json:"KeyId"`
	KeyPairSpec              string `json:"KeyPairSpec"`
	PrivateKeyCiphertextBlob []byte `json:"PrivateKeyCiphertextBlob"`
	PublicKey                []byte `json:"PublicKey"`
}

// required is AWS's ValidationException for a missing member.
func required(v bool, member string) error {
	if v {
		return nil
	}
	return kms.Errorf(kms.CodeValidation, "1 validation error detected: Value null at '%s' failed to satisfy constraint: Member must not be null", member)
}

// keyRequest is the prologue the asymmetric operations share: resolve,
// authorise kms:<op> with extra condition keys, grant tokens, DryRun.
func (s *Server) keyRequest(c *call, keyID string, ec kms.EncryptionContext, tokens []string, dryRun bool, extra map[string][]string) (string, error) {
	arn, err := s.resolve(c, keyID)
	if err != nil {
		return "", err
	}
	if err := s.authorize(c, "kms:"+c.op, arn, ec, c.op, extra); err != nil {
		return "", err
	}
	if err := s.checkGrantTokens(c, tokens, arn); err != nil {
		return "", err
	}
	if dryRun {
		return "", s.dryRun(c, true, arn)
	}
	return arn, nil
}

func (s *Server) getPublicKey(c *call, body []byte) (response, error) {
	var in getPublicKeyInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	arn, err := s.keyRequest(c, in.KeyId, nil, in.GrantTokens, false, nil)
	if err != nil {
		return response{}, err
	}
	pk, err := s.store.GetPublicKey(c.ctx, arn)
	if err != nil {
		return response{}, err
	}
	return response{v: getPublicKeyOutput{
		KeyId: pk.KeyARN, PublicKey: pk.PublicKey, CustomerMasterKeySpec: pk.KeySpec, KeySpec: pk.KeySpec,
		KeyUsage: pk.KeyUsage, EncryptionAlgorithms: pk.EncryptionAlgorithms, SigningAlgorithms: pk.SigningAlgorithms,
	}}, nil
}

// signRequest decodes and authorises Sign and Verify.
func (s *Server) signRequest(c *call, body []byte) (signInput, string, error) {
	var in signInput
	if err := decode(body, &in); err != nil {
		return in, "", err
	}
	if err := required(len(in.Message) > 0, "message"); err != nil {
		return in, "", err
	}
	if err := required(in.SigningAlgorithm != "", "signingAlgorithm"); err != nil {
		return in, "", err
	}
	if c.op == "Verify" {
		if err := required(len(in.Signature) > 0, "signature"); err != nil {
			return in, "", err
		}
	}
	mt := in.MessageType
	if mt == "" {
		mt = kms.MessageTypeRaw
	}
	arn, err := s.keyRequest(c, in.KeyId, nil, in.GrantTokens, in.DryRun, map[string][]string{
		"kms:signingalgorithm": {in.SigningAlgorithm},
		"kms:messagetype":      {mt},
	})
	return in, arn, err
}

func (s *Server) sign(c *call, body []byte) (response, error) {
	in, arn, err := s.signRequest(c, body)
	if err != nil {
		return response{}, err
	}
	sig, keyARN, err := s.store.Sign(c.ctx, arn, in.Message, in.MessageType, in.SigningAlgorithm)
	if err != nil {
		return response{}, err
	}
	return response{v: signOutput{KeyId: keyARN, Signature: sig, SigningAlgorithm: in.SigningAlgorithm}}, nil
}

func (s *Server) verify(c *call, body []byte) (response, error) {
	in, arn, err := s.signRequest(c, body)
	if err != nil {
		return response{}, err
	}
	keyARN, err := s.store.Verify(c.ctx, arn, in.Message, in.MessageType, in.Signature, in.SigningAlgorithm)
	if err != nil {
		return response{}, err
	}
	return response{v: verifyOutput{KeyId: keyARN, SignatureValid: true, SigningAlgorithm: in.SigningAlgorithm}}, nil
}

// macRequest decodes and authorises GenerateMac and VerifyMac.
func (s *Server) macRequest(c *call, body []byte) (macInput, string, error) {
	var in macInput
	if err := decode(body, &in); err != nil {
		return in, "", err
	}
	if err := required(len(in.Message) > 0, "message"); err != nil {
		return in, "", err
	}
	if err := required(in.MacAlgorithm != "", "macAlgorithm"); err != nil {
		return in, "", err
	}
	if c.op == "VerifyMac" {
		if err := required(len(in.Mac) > 0, "mac"); err != nil {
			return in, "", err
		}
	}
	arn, err := s.keyRequest(c, in.KeyId, nil, in.GrantTokens, in.DryRun, map[string][]string{
		"kms:macalgorithm": {in.MacAlgorithm},
	})
	return in, arn, err
}

func (s *Server) generateMac(c *call, body []byte) (response, error) {
	in, arn, err := s.macRequest(c, body)
	if err != nil {
		return response{}, err
	}
	mac, keyARN, err := s.store.GenerateMac(c.ctx, arn, in.Message, in.MacAlgorithm)
	if err != nil {
		return response{}, err
	}
	return response{v: generateMacOutput{KeyId: keyARN, Mac: mac, MacAlgorithm: in.MacAlgorithm}}, nil
}

func (s *Server) verifyMac(c *call, body []byte) (response, error) {
	in, arn, err := s.macRequest(c, body)
	if err != nil {
		return response{}, err
	}
	keyARN, err := s.store.VerifyMac(c.ctx, arn, in.Message, in.Mac, in.MacAlgorithm)
	if err != nil {
		return response{}, err
	}
	return response{v: verifyMacOutput{KeyId: keyARN, MacValid: true, MacAlgorithm: in.MacAlgorithm}}, nil
}

func (s *Server) dataKeyPair(c *call, body []byte, withoutPlaintext bool) (response, error) {
	var in dataKeyPairInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	c.entry.EncryptionContext = in.EncryptionContext
	if err := required(in.KeyPairSpec != "", "keyPairSpec"); err != nil {
		return response{}, err
	}
	if len(in.Recipient) > 0 && string(in.Recipient) != "null" {
		return response{}, kms.Errorf(kms.CodeUnsupportedOperation, "Recipient: attested enclave requests are not supported")
	}
	arn, err := s.keyRequest(c, in.KeyId, in.EncryptionContext, in.GrantTokens, in.DryRun, map[string][]string{
		"kms:datakeypairspec": {in.KeyPairSpec},
	})
	if err != nil {
		return response{}, err
	}
	dk, err := s.store.GenerateDataKeyPair(c.ctx, arn, in.KeyPairSpec, in.EncryptionContext, withoutPlaintext)
	if err != nil {
		return response{}, err
	}
	if withoutPlaintext {
		return response{v: dataKeyPairWithoutPlaintextOutput{KeyId: dk.KeyARN, KeyPairSpec: dk.KeyPairSpec,
			PrivateKeyCiphertextBlob: dk.PrivateKeyCiphertextBlob, PublicKey: dk.PublicKey}}, nil
	}
	j := secretJSON{b: make([]byte, 0, 160+len(dk.KeyARN)+(len(dk.PrivateKeyCiphertextBlob)+len(dk.PrivateKeyPlaintext)+len(dk.PublicKey))*4/3)}
	j.open()
	j.str("KeyId", dk.KeyARN)
	j.str("KeyPairSpec", dk.KeyPairSpec)
	j.blob("PrivateKeyCiphertextBlob", dk.PrivateKeyCiphertextBlob)
	j.blob("PrivateKeyPlaintext", dk.PrivateKeyPlaintext)
	j.blob("PublicKey", dk.PublicKey)
	j.close()
	dk.Zero()
	return response{secret: j.b}, nil
}

func (s *Server) generateDataKeyPair(c *call, body []byte) (response, error) {
	return s.dataKeyPair(c, body, false)
}

func (s *Server) generateDataKeyPairWithoutPlaintext(c *call, body []byte) (response, error) {
	return s.dataKeyPair(c, body, true)
}

// isRSAEncryption reports whether an EncryptionAlgorithm is one of the RSA
// ones, which Encrypt and Decrypt hand to the asymmetric path.
func isRSAEncryption(alg string) bool { return strings.HasPrefix(alg, "RSAES_") }

// encryptAsymmetric is Encrypt with an RSA key: the ciphertext is plain
// RSAES-OAEP, which anyone with the public key can also make.
func (s *Server) encryptAsymmetric(c *call, in encryptInput) (response, error) {
	if len(in.EncryptionContext) > 0 {
		return response{}, kms.Errorf(kms.CodeValidation, "EncryptionContext is not supported with %s", in.EncryptionAlgorithm)
	}
	arn, err := s.keyRequest(c, in.KeyId, nil, in.GrantTokens, in.DryRun, map[string][]string{
		"kms:encryptionalgorithm": {in.EncryptionAlgorithm},
	})
	if err != nil {
		return response{}, err
	}
	ct, keyARN, err := s.store.EncryptAsymmetric(c.ctx, arn, in.Plaintext, in.EncryptionAlgorithm)
	if err != nil {
		return response{}, err
	}
	return response{v: encryptOutput{CiphertextBlob: ct, KeyId: keyARN, EncryptionAlgorithm: in.EncryptionAlgorithm}}, nil
}

// decryptAsymmetric is Decrypt with an RSA key; AWS requires KeyId here,
// since RSA ciphertext does not name its key.
func (s *Server) decryptAsymmetric(c *call, in decryptInput) (response, error) {
	if err := required(in.KeyId != "", "keyId"); err != nil {
		return response{}, err
	}
	if err := required(len(in.CiphertextBlob) > 0, "ciphertextBlob"); err != nil {
		return response{}, err
	}
	if len(in.EncryptionContext) > 0 {
		return response{}, kms.Errorf(kms.CodeValidation, "EncryptionContext is not supported with %s", in.EncryptionAlgorithm)
	}
	arn, err := s.keyRequest(c, in.KeyId, nil, in.GrantTokens, in.DryRun, map[string][]string{
		"kms:encryptionalgorithm": {in.EncryptionAlgorithm},
	})
	if err != nil {
		return response{}, err
	}
	pt, keyARN, err := s.store.DecryptAsymmetric(c.ctx, arn, in.CiphertextBlob, in.EncryptionAlgorithm)
	if err != nil {
		return response{}, err
	}
	j := secretJSON{b: make([]byte, 0, 128+len(keyARN)+len(pt)*4/3)}
	j.open()
	j.str("KeyId", keyARN)
	j.blob("Plaintext", pt)
	j.str("EncryptionAlgorithm", in.EncryptionAlgorithm)
	j.close()
	kms.Zero(pt)
	return response{secret: j.b}, nil
}

// orDefault is v, or def when v is empty.
func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}
