// Package kms defines the key management operations kmsfs needs, shaped after
// the AWS KMS API (GenerateDataKey, Decrypt, Encrypt, ReEncrypt, ...), and the
// errors they return. Implementations live in sub-packages: the embedded
// keystore (kms/keystore), the AWS-API client (kms/awskms) and the server behind
// `kmsfs kms serve` (kms/server).
//
// This package never imports the FUSE layer or a storage backend.
package kms

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"time"
)

// MaxEncryptPlaintext is the largest plaintext Encrypt accepts. AWS KMS rejects
// larger inputs with a ValidationException; so do we.
const MaxEncryptPlaintext = 4096

// EncryptionContext is the AWS KMS encryption context: non-secret key/value
// pairs bound to a ciphertext as additional authenticated data. Decrypt fails
// unless it is given exactly the context used to encrypt.
type EncryptionContext map[string]string

// Canonical returns the byte encoding of the context that ciphertexts bind:
// the pairs sorted by key, each key and value as a big-endian uint16 length
// followed by its UTF-8 bytes, preceded by a uint16 pair count. Two contexts
// have the same encoding if and only if they are equal.
func (c EncryptionContext) Canonical() []byte {
	keys := make([]string, 0, len(c))
	n := 2
	for k, v := range c {
		keys = append(keys, k)
		n += 4 + len(k) + len(v)
	}
	sort.Strings(keys)
	out := make([]byte, 0, n)
	out = binary.BigEndian.AppendUint16(out, uint16(len(keys)))
	for _, k := range keys {
		v := c[k]
		out = binary.BigEndian.AppendUint16(out, uint16(len(k)))
		out = append(out, k...)
		out = binary.BigEndian.AppendUint16(out, uint16(len(v)))
		out = append(out, v...)
	}
	return out
}

// DataKey is the result of GenerateDataKey. Plaintext is secret: callers zero it
// (Zero) as soon as they have derived what they need from it.
type DataKey struct {
	KeyID          string // ARN of the KMS key that wrapped the data key
	Plaintext      []byte
	CiphertextBlob []byte // the wrapped data key, safe to store
}

// Zero overwrites the plaintext key in place.
func (d *DataKey) Zero() { Zero(d.Plaintext) }

// Zero overwrites b with zeros. Used for every plaintext key we drop.
func Zero(b []byte) {
	for i := range b {
		b[i] = 0
	}
}

// Crypto is the set of cryptographic operations a mount needs. Every call takes
// a context.Context (deadline, cancellation) and an encryption context.
//
// keyID may be a key ID, a key ARN, an alias name ("alias/x") or an alias ARN.
// Decrypt's keyID is optional: the ciphertext blob names its key; when keyID is
// given it must match, as in AWS KMS.
type Crypto interface {
	GenerateDataKey(ctx context.Context, keyID string, numBytes int, ec EncryptionContext) (DataKey, error)
	GenerateDataKeyWithoutPlaintext(ctx context.Context, keyID string, numBytes int, ec EncryptionContext) (ciphertext []byte, keyARN string, err error)
	Encrypt(ctx context.Context, keyID string, plaintext []byte, ec EncryptionContext) (ciphertext []byte, keyARN string, err error)
	Decrypt(ctx context.Context, keyID string, ciphertext []byte, ec EncryptionContext) (plaintext []byte, keyARN string, err error)
	ReEncrypt(ctx context.Context, ciphertext []byte, srcEC EncryptionContext, destKeyID string, destEC EncryptionContext) (newCiphertext []byte, srcKeyARN, destKeyARN string, err error)
}

// KeyState is the lifecycle state of a KMS key, with AWS's names.
type KeyState string

const (
	KeyEnabled         KeyState = "Enabled"
	KeyDisabled        KeyState = "Disabled"
	KeyPendingDeletion KeyState = "PendingDeletion"
	KeyPendingImport   KeyState = "PendingImport"
)

// Deletion window bounds and default (days), as in AWS ScheduleKeyDeletion.
const (
	MinDeletionWindowDays     = 7
	MaxDeletionWindowDays     = 30
	DefaultDeletionWindowDays = 30
)

// Automatic rotation period bounds and default (days), as in AWS EnableKeyRotation.
const (
	MinRotationPeriodDays     = 90
	MaxRotationPeriodDays     = 2560
	DefaultRotationPeriodDays = 365
)

// KeyMetadata describes a key, following AWS's DescribeKey output.
type KeyMetadata struct {
	KeyID                string
	ARN                  string
	Description          string
	State                KeyState
	CreationDate         time.Time
	DeletionDate         time.Time // zero unless PendingDeletion
	Origin               string    // "AWS_KMS" (generated) or "EXTERNAL" (imported)
	KeyManager           string    // "CUSTOMER"
	RotationEnabled      bool
	RotationPeriodDays   int
	NextRotationDate     time.Time // zero unless rotation enabled
	CurrentVersion       int       // backing material version used for new ciphertext (1-based)
	Versions             int       // number of backing material versions kept
	LastRotationDate     time.Time
	CreatingPrincipalARN string
	// Imported material (Origin EXTERNAL): "KEY_MATERIAL_EXPIRES" or
	// "KEY_MATERIAL_DOES_NOT_EXPIRE" once imported, and when it expires.
	ExpirationModel string
	ValidTo         time.Time
	// KeySpec and KeyUsage, with AWS's names; empty means
	// SYMMETRIC_DEFAULT and ENCRYPT_DECRYPT. The algorithm lists are
	// those the key supports (empty: none of that kind).
	KeySpec              string
	KeyUsage             string
	EncryptionAlgorithms []string
	SigningAlgorithms    []string
	MacAlgorithms        []string
	// CustomKeyStoreID and CloudHsmClusterID are set for a key in a
	// custom key store (Origin AWS_CLOUDHSM; see customkeystore.go).
	CustomKeyStoreID  string
	CloudHsmClusterID string
	// MultiRegion marks a multi-Region key (ID "mrk-..."); its
	// MultiRegionConfiguration says which region holds the primary and
	// which hold replicas (nil for single-Region keys).
	MultiRegion              bool
	MultiRegionConfiguration *MultiRegionConfiguration
}

// Multi-Region key types, as AWS names them.
const (
	MultiRegionPrimary = "PRIMARY"
	MultiRegionReplica = "REPLICA"
)

// MultiRegionKey names one key of a set of related multi-Region keys.
type MultiRegionKey struct {
	ARN    string
	Region string
}

// MultiRegionConfiguration is DescribeKey's view of a multi-Region key: whether
// this one is the primary or a replica, the primary, and every replica.
type MultiRegionConfiguration struct {
	KeyType     string // MultiRegionPrimary or MultiRegionReplica
	PrimaryKey  MultiRegionKey
	ReplicaKeys []MultiRegionKey
}

// Wrapping algorithms and key specs for GetParametersForImport, with AWS's
// names. Key material is 256 bits, RSA-OAEP encrypted to the public key.
const (
	WrappingRSAOAEPSHA1   = "RSAES_OAEP_SHA_1"
	WrappingRSAOAEPSHA256 = "RSAES_OAEP_SHA_256"
	WrappingKeyRSA2048    = "RSA_2048"
	WrappingKeyRSA3072    = "RSA_3072"
	WrappingKeyRSA4096    = "RSA_4096"
)

// ImportParametersValidity is how long a public key and import token from
// GetParametersForImport can be used, as in AWS.
const ImportParametersValidity = 24 * time.Hour

// ImportParameters is the result of GetParametersForImport: a public key to
// encrypt key material to, and the token that names the matching private
// key in ImportKeyMaterial.
type ImportParameters struct {
	KeyARN      string
	ImportToken []byte
	PublicKey   []byte // DER, PKIX (SubjectPublicKeyInfo)
	ValidTo     time.Time
}

// Importer is the bring-your-own-key surface of AWS KMS: keys created with
// origin EXTERNAL get their 256-bit material from the caller, encrypted to a
// one-off RSA public key so that it never travels in the clear. Such a key
// cannot be rotated; its material can be deleted (the key becomes
// PendingImport and everything under it is unreadable) and imported again,
// but only the same material.
type Importer interface {
	GetParametersForImport(ctx context.Context, keyID, wrappingAlgorithm, wrappingKeySpec string) (ImportParameters, error)
	// ImportKeyMaterial imports material encrypted to the public key that
	// importToken names. A zero validTo means the material does not expire
	// (KEY_MATERIAL_DOES_NOT_EXPIRE); otherwise it is deleted at validTo.
	ImportKeyMaterial(ctx context.Context, keyID string, importToken, encryptedMaterial []byte, validTo time.Time) error
	DeleteImportedKeyMaterial(ctx context.Context, keyID string) error
}

// Alias maps a friendly name ("alias/...") to a key.
type Alias struct {
	Name        string // "alias/name"
	ARN         string // alias ARN
	TargetKeyID string
	// CreationDate and LastUpdatedDate are zero when the store does not
	// know them (aliases made before it recorded them).
	CreationDate    time.Time
	LastUpdatedDate time.Time
}

// Grant gives a grantee principal the named operations on a key, as in AWS CreateGrant.
type Grant struct {
	GrantID           string
	Token             string
	KeyID             string
	Name              string
	GranteePrincipal  string
	RetiringPrincipal string
	Operations        []string
	// Constraints: when set, the request's encryption context must equal
	// (ContextEquals) or contain (ContextSubset) these pairs.
	ContextEquals  map[string]string
	ContextSubset  map[string]string
	IssuingAccount string
	CreationDate   time.Time
}

// KeyRotation is one rotation of a key's material, as ListKeyRotations
// reports it.
type KeyRotation struct {
	Version int       // the material version the rotation made
	Date    time.Time // when
	Type    string    // "AUTOMATIC" or "ON_DEMAND"; "" if not recorded
}

// CreateKeyInput carries CreateKey's options.
type CreateKeyInput struct {
	Description string
	Policy      string // JSON key policy; empty means the default policy
	Principal   string // ARN of the creating principal (for the default policy)
	Origin      string // "AWS_KMS" (default) or "EXTERNAL"
	// Account owns the key (its ARN's account); empty means the account
	// of the store. A remote KMS takes it from the caller's credentials.
	Account string
	// Tags are resource tags for the key (AWS's limits apply).
	Tags map[string]string
	// KeySpec (empty: SYMMETRIC_DEFAULT) and KeyUsage (empty: the spec's
	// only usage, or ENCRYPT_DECRYPT for RSA) as AWS names them.
	KeySpec  string
	KeyUsage string
	// MultiRegion creates a multi-Region primary key (key ID "mrk-...").
	MultiRegion bool
	// CustomKeyStoreID names the custom key store a key of Origin
	// AWS_CLOUDHSM is generated in.
	CustomKeyStoreID string
}

// Admin is the key management surface: the AWS KMS control-plane operations
// the server exposes and the `kmsfs kms` admin commands use.
type Admin interface {
	CreateKey(ctx context.Context, in CreateKeyInput) (KeyMetadata, error)
	DescribeKey(ctx context.Context, keyID string) (KeyMetadata, error)
	ListKeys(ctx context.Context) ([]KeyMetadata, error)

	CreateAlias(ctx context.Context, aliasName, targetKeyID string) error
	UpdateAlias(ctx context.Context, aliasName, targetKeyID string) error
	DeleteAlias(ctx context.Context, aliasName string) error
	ListAliases(ctx context.Context, keyID string) ([]Alias, error) // keyID "" lists all

	EnableKey(ctx context.Context, keyID string) error
	DisableKey(ctx context.Context, keyID string) error
	// ScheduleKeyDeletion puts the key in PendingDeletion for windowDays
	// (0 means the default, 30); outside 7..30 is a ValidationException.
	ScheduleKeyDeletion(ctx context.Context, keyID string, windowDays int) (deletionDate time.Time, err error)
	// CancelKeyDeletion leaves the key Disabled, as AWS does.
	CancelKeyDeletion(ctx context.Context, keyID string) error

	EnableKeyRotation(ctx context.Context, keyID string, periodDays int) error // 0 means 365
	DisableKeyRotation(ctx context.Context, keyID string) error
	GetKeyRotationStatus(ctx context.Context, keyID string) (enabled bool, periodDays int, next time.Time, err error)
	RotateKeyOnDemand(ctx context.Context, keyID string) error

	GetKeyPolicy(ctx context.Context, keyID string) (string, error)
	PutKeyPolicy(ctx context.Context, keyID, policy string) error

	CreateGrant(ctx context.Context, g Grant) (grantID, token string, err error)
	ListGrants(ctx context.Context, keyID string) ([]Grant, error)
	RevokeGrant(ctx context.Context, keyID, grantID string) error
	// RetireGrant removes a grant by token, or by key and grant ID.
	RetireGrant(ctx context.Context, token, keyID, grantID string) error

	GenerateRandom(ctx context.Context, numBytes int) ([]byte, error)
}

// Error codes, the names AWS KMS uses in its "__type" error field.
const (
	CodeNotFound           = "NotFoundException"
	CodeDisabled           = "DisabledException"
	CodeInvalidState       = "KMSInvalidStateException"
	CodeInvalidCiphertext  = "InvalidCiphertextException"
	CodeIncorrectKey       = "IncorrectKeyException"
	CodeValidation         = "ValidationException"
	CodeAccessDenied       = "AccessDeniedException"
	CodeThrottling         = "ThrottlingException"
	CodeInternal           = "KMSInternalException"
	CodeDependencyTimeout  = "DependencyTimeoutException"
	CodeAlreadyExists      = "AlreadyExistsException"
	CodeInvalidAliasName   = "InvalidAliasNameException"
	CodeInvalidGrantToken  = "InvalidGrantTokenException"
	CodeInvalidGrantID     = "InvalidGrantIdException"
	CodeMalformedPolicy    = "MalformedPolicyDocumentException"
	CodeUnrecognizedClient = "UnrecognizedClientException"
	CodeInvalidSignature   = "InvalidSignatureException"
	CodeUnavailable        = "KMSUnavailable" // client side: the KMS could not be reached

	CodeUnsupportedOperation = "UnsupportedOperationException"
	CodeLimitExceeded        = "LimitExceededException"
	CodeInvalidImportToken   = "InvalidImportTokenException"
	CodeExpiredImportToken   = "ExpiredImportTokenException"
	CodeIncorrectKeyMaterial = "IncorrectKeyMaterialException"

	CodeInvalidKeyUsage     = "InvalidKeyUsageException"
	CodeKMSInvalidSignature = "KMSInvalidSignatureException"
	CodeKMSInvalidMac       = "KMSInvalidMacException"
)

// Error is a KMS failure with an AWS error code. Compare codes with errors.Is
// against the sentinel values below (ErrDisabled, ...).
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string {
	if e.Message == "" {
		return e.Code
	}
	return e.Code + ": " + e.Message
}

// Is matches another *Error with the same Code, so errors.Is(err, kms.ErrDisabled) works.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Errorf builds an *Error with the given code.
func Errorf(code, format string, args ...any) error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Sentinels for errors.Is.
var (
	ErrNotFound          = &Error{Code: CodeNotFound}
	ErrDisabled          = &Error{Code: CodeDisabled}
	ErrInvalidState      = &Error{Code: CodeInvalidState}
	ErrInvalidCiphertext = &Error{Code: CodeInvalidCiphertext}
	ErrIncorrectKey      = &Error{Code: CodeIncorrectKey}
	ErrValidation        = &Error{Code: CodeValidation}
	ErrAccessDenied      = &Error{Code: CodeAccessDenied}
	ErrThrottling        = &Error{Code: CodeThrottling}
	ErrUnavailable       = &Error{Code: CodeUnavailable}

	ErrInvalidImportToken   = &Error{Code: CodeInvalidImportToken}
	ErrExpiredImportToken   = &Error{Code: CodeExpiredImportToken}
	ErrIncorrectKeyMaterial = &Error{Code: CodeIncorrectKeyMaterial}

	ErrInvalidKeyUsage     = &Error{Code: CodeInvalidKeyUsage}
	ErrKMSInvalidSignature = &Error{Code: CodeKMSInvalidSignature}
	ErrKMSInvalidMac       = &Error{Code: CodeKMSInvalidMac}
)

// Code returns the AWS error code carried by err, or "" if it has none.
func Code(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// Key specs, key usages and algorithms, with AWS's names.
const (
	KeySpecSymmetric = "SYMMETRIC_DEFAULT"
	KeySpecRSA2048   = "RSA_2048"
	KeySpecRSA3072   = "RSA_3072"
	KeySpecRSA4096   = "RSA_4096"
	KeySpecP256      = "ECC_NIST_P256"
	KeySpecP384      = "ECC_NIST_P384"
	KeySpecP521      = "ECC_NIST_P521"
	KeySpecSecp256k1 = "ECC_SECG_P256K1"
	KeySpecHMAC224   = "HMAC_224"
	KeySpecHMAC256   = "HMAC_256"
	KeySpecHMAC384   = "HMAC_384"
	KeySpecHMAC512   = "HMAC_512"

	KeyUsageEncryptDecrypt    = "ENCRYPT_DECRYPT"
	KeyUsageSignVerify        = "SIGN_VERIFY"
	KeyUsageGenerateVerifyMac = "GENERATE_VERIFY_MAC"

	MessageTypeRaw    = "RAW"
	MessageTypeDigest = "DIGEST"
)

// MaxSignMessage is the largest message Sign, Verify, GenerateMac and
// VerifyMac accept, as in AWS.
const MaxSignMessage = 4096

// PublicKey is GetPublicKey's result.
type PublicKey struct {
	KeyARN               string
	KeySpec              string
	KeyUsage             string
	PublicKey            []byte // DER, PKIX (SubjectPublicKeyInfo)
	EncryptionAlgorithms []string
	SigningAlgorithms    []string
}

// DataKeyPair is GenerateDataKeyPair's result. PrivateKeyPlaintext (PKCS #8
// DER) is secret: callers zero it (Zero) once used; it is nil from
// GenerateDataKeyPairWithoutPlaintext.
type DataKeyPair struct {
	KeyARN                   string // the symmetric key that wraps the private key
	KeyPairSpec              string
	PublicKey                []byte // DER, PKIX
	PrivateKeyPlaintext      []byte
	PrivateKeyCiphertextBlob []byte
}

// Zero overwrites the plaintext private key in place.
func (d *DataKeyPair) Zero() { Zero(d.PrivateKeyPlaintext) }

// Asymmetric is the asymmetric and HMAC key surface of AWS KMS: the
// private and HMAC keys stay inside the KMS; signatures, MACs and
// RSA-OAEP decryption are computed there.
type Asymmetric interface {
	GetPublicKey(ctx context.Context, keyID string) (PublicKey, error)
	Sign(ctx context.Context, keyID string, message []byte, messageType, algorithm string) (signature []byte, keyARN string, err error)
	// Verify fails with KMSInvalidSignatureException when the signature
	// does not verify.
	Verify(ctx context.Context, keyID string, message []byte, messageType string, signature []byte, algorithm string) (keyARN string, err error)
	// EncryptAsymmetric and DecryptAsymmetric are Encrypt and Decrypt with
	// an RSA key and an RSAES_OAEP_* algorithm.
	EncryptAsymmetric(ctx context.Context, keyID string, plaintext []byte, algorithm string) (ciphertext []byte, keyARN string, err error)
	DecryptAsymmetric(ctx context.Context, keyID string, ciphertext []byte, algorithm string) (plaintext []byte, keyARN string, err error)
	GenerateMac(ctx context.Context, keyID string, message []byte, algorithm string) (mac []byte, keyARN string, err error)
	// VerifyMac fails with KMSInvalidMacException when the MAC does not
	// match.
	VerifyMac(ctx context.Context, keyID string, message, mac []byte, algorithm string) (keyARN string, err error)
	// GenerateDataKeyPair makes a key pair of keyPairSpec and returns its
	// private key encrypted under the symmetric key keyID (and, unless
	// withoutPlaintext, in plaintext too).
	GenerateDataKeyPair(ctx context.Context, keyID, keyPairSpec string, ec EncryptionContext, withoutPlaintext bool) (DataKeyPair, error)
}
