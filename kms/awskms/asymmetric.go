package awskms

import (
	"context"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/kmsfs/kmsfs/kms"
)

var _ kms.Asymmetric = (*Client)(nil)

// enumStrings turns a list of SDK enum values into plain strings (nil for
// none).
func enumStrings[T ~string](in []T) []string {
	if len(in) == 0 {
		return nil
	}
	out := make([]string, len(in))
	for i, v := range in {
		out[i] = string(v)
	}
	return out
}

// GetPublicKey returns an asymmetric key's public key (DER SubjectPublicKeyInfo).
func (c *Client) GetPublicKey(ctx context.Context, keyID string) (kms.PublicKey, error) {
	out, err := call(c, ctx, "GetPublicKey", keyID, func(ctx context.Context) (*awskms.GetPublicKeyOutput, error) {
		return c.api.GetPublicKey(ctx, &awskms.GetPublicKeyInput{KeyId: &keyID})
	})
	if err != nil {
		return kms.PublicKey{}, err
	}
	return kms.PublicKey{
		KeyARN: aws.ToString(out.KeyId), KeySpec: string(out.KeySpec), KeyUsage: string(out.KeyUsage), PublicKey: out.PublicKey,
		EncryptionAlgorithms: enumStrings(out.EncryptionAlgorithms), SigningAlgorithms: enumStrings(out.SigningAlgorithms),
	}, nil
}

// Sign signs message (RAW) or a digest (DIGEST) with an asymmetric key.
func (c *Client) Sign(ctx context.Context, keyID string, message []byte, messageType, algorithm string) ([]byte, string, error) {
	out, err := call(c, ctx, "Sign", keyID, func(ctx context.Context) (*awskms.SignOutput, error) {
		return c.api.Sign(ctx, &awskms.SignInput{KeyId: &keyID, Message: message, MessageType: types.MessageType(messageType),
			SigningAlgorithm: types.SigningAlgorithmSpec(algorithm)})
	})
	if err != nil {
		return nil, "", err
	}
	return out.Signature, aws.ToString(out.KeyId), nil
}

// Verify checks a signature; KMSInvalidSignatureException when it does not
// verify.
func (c *Client) Verify(ctx context.Context, keyID string, message []byte, messageType string, signature []byte, algorithm string) (string, error) {
	out, err := call(c, ctx, "Verify", keyID, func(ctx context.Context) (*awskms.VerifyOutput, error) {
		return c.api.Verify(ctx, &awskms.VerifyInput{KeyId: &keyID, Message: message, MessageType: types.MessageType(messageType),
			Signature: signature, SigningAlgorithm: types.SigningAlgorithmSpec(algorithm)})
	})
	if err != nil {
		return "", err
	}
	if !out.SignatureValid {
		return "", kms.Errorf(kms.CodeKMSInvalidSignature, "KMS Verify %s: signature not valid", keyID)
	}
	return aws.ToString(out.KeyId), nil
}

// EncryptAsymmetric encrypts with an RSA key and an RSAES_OAEP_* algorithm.
func (c *Client) EncryptAsymmetric(ctx context.Context, keyID string, plaintext []byte, algorithm string) ([]byte, string, error) {
	out, err := call(c, ctx, "Encrypt", keyID, func(ctx context.Context) (*awskms.EncryptOutput, error) {
		return c.api.Encrypt(ctx, &awskms.EncryptInput{KeyId: &keyID, Plaintext: plaintext, EncryptionAlgorithm: types.EncryptionAlgorithmSpec(algorithm)})
	})
	if err != nil {
		return nil, "", err
	}
	return out.CiphertextBlob, aws.ToString(out.KeyId), nil
}

// DecryptAsymmetric decrypts RSA-OAEP ciphertext with an RSA key.
func (c *Client) DecryptAsymmetric(ctx context.Context, keyID string, ciphertext []byte, algorithm string) ([]byte, string, error) {
	out, err := call(c, ctx, "Decrypt", keyID, func(ctx context.Context) (*awskms.DecryptOutput, error) {
		return c.api.Decrypt(ctx, &awskms.DecryptInput{KeyId: &keyID, CiphertextBlob: ciphertext, EncryptionAlgorithm: types.EncryptionAlgorithmSpec(algorithm)})
	})
	if err != nil {
		return nil, "", err
	}
	return out.Plaintext, aws.ToString(out.KeyId), nil
}

// GenerateMac computes an HMAC with an HMAC key.
func (c *Client) GenerateMac(ctx context.Context, keyID string, message []byte, algorithm string) ([]byte, string, error) {
	out, err := call(c, ctx, "GenerateMac", keyID, func(ctx context.Context) (*awskms.GenerateMacOutput, error) {
		return c.api.GenerateMac(ctx, &awskms.GenerateMacInput{KeyId: &keyID, Message: message, MacAlgorithm: types.MacAlgorithmSpec(algorithm)})
	})
	if err != nil {
		return nil, "", err
	}
	return out.Mac, aws.ToString(out.KeyId), nil
}

// VerifyMac checks an HMAC; KMSInvalidMacException when it does not match.
func (c *Client) VerifyMac(ctx context.Context, keyID string, message, mac []byte, algorithm string) (string, error) {
	out, err := call(c, ctx, "VerifyMac", keyID, func(ctx context.Context) (*awskms.VerifyMacOutput, error) {
		return c.api.VerifyMac(ctx, &awskms.VerifyMacInput{KeyId: &keyID, Message: message, Mac: mac, MacAlgorithm: types.MacAlgorithmSpec(algorithm)})
	})
	if err != nil {
		return "", err
	}
	if !out.MacValid {
		return "", kms.Errorf(kms.CodeKMSInvalidMac, "KMS VerifyMac %s: MAC not valid", keyID)
	}
	return aws.ToString(out.KeyId), nil
}

// GenerateDataKeyPair returns a new key pair with its private key wrapped by
// the symmetric key keyID (and in plaintext unless withoutPlaintext).
func (c *Client) GenerateDataKeyPair(ctx context.Context, keyID, keyPairSpec string, ec kms.EncryptionContext, withoutPlaintext bool) (kms.DataKeyPair, error) {
	spec := types.DataKeyPairSpec(keyPairSpec)
	if withoutPlaintext {
		out, err := call(c, ctx, "GenerateDataKeyPairWithoutPlaintext", keyID, func(ctx context.Context) (*awskms.GenerateDataKeyPairWithoutPlaintextOutput, error) {
			return c.api.GenerateDataKeyPairWithoutPlaintext(ctx, &awskms.GenerateDataKeyPairWithoutPlaintextInput{KeyId: &keyID, KeyPairSpec: spec, EncryptionContext: ctxMap(ec)})
		})
		if err != nil {
			return kms.DataKeyPair{}, err
		}
		return kms.DataKeyPair{KeyARN: aws.ToString(out.KeyId), KeyPairSpec: string(out.KeyPairSpec), PublicKey: out.PublicKey,
			PrivateKeyCiphertextBlob: out.PrivateKeyCiphertextBlob}, nil
	}
	out, err := call(c, ctx, "GenerateDataKeyPair", keyID, func(ctx context.Context) (*awskms.GenerateDataKeyPairOutput, error) {
		return c.api.GenerateDataKeyPair(ctx, &awskms.GenerateDataKeyPairInput{KeyId: &keyID, KeyPairSpec: spec, EncryptionContext: ctxMap(ec)})
	})
	if err != nil {
		return kms.DataKeyPair{}, err
	}
	return kms.DataKeyPair{KeyARN: aws.ToString(out.KeyId), KeyPairSpec: string(out.KeyPairSpec), PublicKey: out.PublicKey,
		PrivateKeyPlaintext: out.PrivateKeyPlaintext, PrivateKeyCiphertextBlob: out.PrivateKeyCiphertextBlob}, nil
}
