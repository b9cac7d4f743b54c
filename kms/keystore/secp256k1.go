package keystore

import (
	"crypto"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	k1ecdsa "github.com/decred/dcrd/dcrec/secp256k1/v4/ecdsa"
)

// ECC_SECG_P256K1 keys: secp256k1, the curve of Bitcoin and Ethereum
// signatures, which crypto/ecdsa and crypto/x509 do not have. The curve
// arithmetic and RFC 6979 deterministic signing come from
// github.com/decred/dcrd/dcrec/secp256k1; the encodings are written here,
// the same ones crypto/x509 uses for the NIST curves, so that the material
// is PKCS #8 DER like every other private key of the keystore and
// GetPublicKey returns a SubjectPublicKeyInfo that openssl reads:
//
//	PrivateKeyInfo ::= SEQUENCE { version 0, AlgorithmIdentifier, OCTET STRING ECPrivateKey }   (RFC 5208)
//	ECPrivateKey ::= SEQUENCE { version 1, privateKey OCTET STRING (32 bytes),
//	                            [0] parameters OID, [1] publicKey BIT STRING }                  (RFC 5915)
//	SubjectPublicKeyInfo ::= SEQUENCE { AlgorithmIdentifier, BIT STRING (uncompressed point) } (RFC 5480)
//	AlgorithmIdentifier ::= SEQUENCE { id-ecPublicKey, secp256k1 }

var (
	oidECPublicKey = asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}
	oidSecp256k1   = asn1.ObjectIdentifier{1, 3, 132, 0, 10} // SEC 2, section A.2.1
)

// k1Private is a secp256k1 private key as a crypto.Signer: Sign returns a
// DER ECDSA signature of the digest, as AWS KMS does.
type k1Private struct{ key *secp256k1.PrivateKey }

// k1Public is a secp256k1 public key.
type k1Public struct{ key *secp256k1.PublicKey }

func (k k1Private) Public() crypto.PublicKey { return k1Public{k.key.PubKey()} }

// Sign signs a digest (RFC 6979: no randomness is used, rand is ignored).
func (k k1Private) Sign(_ io.Reader, digest []byte, _ crypto.SignerOpts) ([]byte, error) {
	return k1ecdsa.Sign(k.key, digest).Serialize(), nil
}

func generateK1() (k1Private, error) {
	key, err := secp256k1.GeneratePrivateKey()
	if err != nil {
		return k1Private{}, fmt.Errorf("generate secp256k1 key: %w", err)
	}
	return k1Private{key}, nil
}

// verifyK1 checks a DER ECDSA signature of digest.
func verifyK1(pub k1Public, digest, sig []byte) bool {
	s, err := k1ecdsa.ParseDERSignature(sig)
	return err == nil && s.Verify(digest, pub.key)
}

type k1AlgorithmID struct {
	Algorithm asn1.ObjectIdentifier
	Curve     asn1.ObjectIdentifier
}

type k1PKCS8 struct {
	Version    int
	Algorithm  k1AlgorithmID
	PrivateKey []byte
}

type k1ECPrivateKey struct {
	Version    int
	PrivateKey []byte
	Curve      asn1.ObjectIdentifier `asn1:"optional,explicit,tag:0"`
	PublicKey  asn1.BitString        `asn1:"optional,explicit,tag:1"`
}

type k1SPKI struct {
	Algorithm k1AlgorithmID
	PublicKey asn1.BitString
}

func marshalK1PKCS8(k k1Private) ([]byte, error) {
	scalar := k.key.Serialize()
	defer clear(scalar)
	pub := k.key.PubKey().SerializeUncompressed()
	inner, err := asn1.Marshal(k1ECPrivateKey{Version: 1, PrivateKey: scalar, Curve: oidSecp256k1,
		PublicKey: asn1.BitString{Bytes: pub, BitLength: 8 * len(pub)}})
	if err != nil {
		return nil, err
	}
	defer clear(inner)
	return asn1.Marshal(k1PKCS8{Algorithm: k1AlgorithmID{oidECPublicKey, oidSecp256k1}, PrivateKey: inner})
}

// parseK1PKCS8 parses what marshalK1PKCS8 (or openssl's pkcs8 of a
// secp256k1 key) wrote; ok is false for a key of another kind.
func parseK1PKCS8(der []byte) (k k1Private, ok bool, err error) {
	var p k1PKCS8
	if rest, err := asn1.Unmarshal(der, &p); err != nil || len(rest) != 0 {
		return k, false, nil
	}
	if !p.Algorithm.Algorithm.Equal(oidECPublicKey) || !p.Algorithm.Curve.Equal(oidSecp256k1) {
		return k, false, nil
	}
	var ec k1ECPrivateKey
	if rest, err := asn1.Unmarshal(p.PrivateKey, &ec); err != nil || len(rest) != 0 {
		return k, true, errors.New("secp256k1 private key: malformed ECPrivateKey")
	}
	defer clear(ec.PrivateKey)
	if ec.Version != 1 || len(ec.PrivateKey) != 32 {
		return k, true, errors.New("secp256k1 private key: not a 32-byte version 1 key")
	}
	return k1Private{secp256k1.PrivKeyFromBytes(ec.PrivateKey)}, true, nil
}

func marshalK1SPKI(pub k1Public) ([]byte, error) {
	pt := pub.key.SerializeUncompressed()
	return asn1.Marshal(k1SPKI{Algorithm: k1AlgorithmID{oidECPublicKey, oidSecp256k1},
		PublicKey: asn1.BitString{Bytes: pt, BitLength: 8 * len(pt)}})
}
