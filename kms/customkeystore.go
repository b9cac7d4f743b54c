package kms

import (
	"context"
	"time"
)

// Custom key stores, as AWS KMS calls them: a key store whose keys are
// generated and used inside a hardware security module the customer
// controls. AWS's CloudHSM type is carried over onto a PKCS#11 token (an
// HSM, SoftHSM2 in tests): a key in the store is a non-extractable AES-256
// key in the token, and every Encrypt, Decrypt, GenerateDataKey and
// ReEncrypt under it runs CKM_AES_GCM inside the token.

// CustomKeyStoreTypeCloudHSM is the only custom key store type supported
// (AWS's EXTERNAL_KEY_STORE is not).
const CustomKeyStoreTypeCloudHSM = "AWS_CLOUDHSM"

// OriginCloudHSM is the origin of keys created in a custom key store.
const OriginCloudHSM = "AWS_CLOUDHSM"

// KeyUnavailable is the key state AWS reports for a key whose custom key
// store is not connected (a key pending deletion keeps PendingDeletion).
// It is derived from the store's connection state, never stored.
const KeyUnavailable KeyState = "Unavailable"

// Connection states of a custom key store, with AWS's names.
const (
	ConnectionConnected    = "CONNECTED"
	ConnectionConnecting   = "CONNECTING"
	ConnectionDisconnected = "DISCONNECTED"
	ConnectionFailed       = "FAILED"
)

// ConnectionErrorCode values (AWS's names) used for a token: why the last
// ConnectCustomKeyStore left the store FAILED.
const (
	// ConnErrInvalidCredentials: the token refused the PIN.
	ConnErrInvalidCredentials = "INVALID_CREDENTIALS"
	// ConnErrClusterNotFound: no token with the store's label, or one
	// whose identity does not match the trust anchor.
	ConnErrClusterNotFound = "CLUSTER_NOT_FOUND"
	// ConnErrUserLockedOut: the token locked its user PIN.
	ConnErrUserLockedOut = "USER_LOCKED_OUT"
	// ConnErrUserNotFound: the token's user PIN was never set.
	ConnErrUserNotFound = "USER_NOT_FOUND"
	// ConnErrNetworkErrors: the PKCS#11 module could not be loaded or
	// initialised (the token is unreachable from this process).
	ConnErrNetworkErrors = "NETWORK_ERRORS"
	// ConnErrInternal: any other failure.
	ConnErrInternal = "INTERNAL_ERROR"
)

// The error codes of the custom key store operations, with AWS's names.
const (
	CodeCustomKeyStoreNotFound     = "CustomKeyStoreNotFoundException"
	CodeCustomKeyStoreInvalidState = "CustomKeyStoreInvalidStateException"
	CodeCustomKeyStoreNameInUse    = "CustomKeyStoreNameInUseException"
	CodeCustomKeyStoreHasCMKs      = "CustomKeyStoreHasCMKsException"
	CodeCloudHsmClusterInUse       = "CloudHsmClusterInUseException"
	CodeCloudHsmClusterNotFound    = "CloudHsmClusterNotFoundException"
	CodeCloudHsmClusterNotRelated  = "CloudHsmClusterNotRelatedException"
	CodeIncorrectTrustAnchor       = "IncorrectTrustAnchorException"
)

// Sentinels for errors.Is.
var (
	ErrCustomKeyStoreNotFound     = &Error{Code: CodeCustomKeyStoreNotFound}
	ErrCustomKeyStoreInvalidState = &Error{Code: CodeCustomKeyStoreInvalidState}
)

// CustomKeyStore is DescribeCustomKeyStores' view of a store. For a PKCS#11
// token, CloudHsmClusterID is the token's label and TrustAnchorCertificate
// is the RFC 7512 PKCS#11 URI that pins the token's identity (serial,
// manufacturer, model). The PIN (AWS's KeyStorePassword) is never returned.
type CustomKeyStore struct {
	ID                     string
	Name                   string
	Type                   string // CustomKeyStoreTypeCloudHSM
	CloudHsmClusterID      string
	TrustAnchorCertificate string
	ConnectionState        string
	ConnectionErrorCode    string // set when ConnectionState is FAILED
	CreationDate           time.Time
}

// CreateCustomKeyStoreInput carries CreateCustomKeyStore's parameters.
type CreateCustomKeyStoreInput struct {
	Name              string
	Type              string // "" or AWS_CLOUDHSM
	CloudHsmClusterID string // the token label
	// TrustAnchorCertificate is a PKCS#11 URI naming the token; empty lets
	// the embedded keystore pin the token found under the label now.
	TrustAnchorCertificate string
	// KeyStorePassword is the token's user PIN. The store keeps it only
	// sealed under the keystore's key-encryption key; callers zero it.
	KeyStorePassword []byte
	// Account owns the store; empty means the account of the key store.
	Account string
}

// UpdateCustomKeyStoreInput carries UpdateCustomKeyStore's parameters; empty
// fields are left unchanged.
type UpdateCustomKeyStoreInput struct {
	ID                string
	NewName           string
	CloudHsmClusterID string
	KeyStorePassword  []byte
	Account           string // the caller's account ("": the key store's)
}

// CustomKeyStores is the custom key store surface of AWS KMS. A store
// belongs to an account, as in AWS: account is the caller's ("" means the
// account of the key store), and another account's store is not found.
type CustomKeyStores interface {
	CreateCustomKeyStore(ctx context.Context, in CreateCustomKeyStoreInput) (id string, err error)
	// ConnectCustomKeyStore succeeds once the attempt is made, as AWS's
	// does: a failed connection leaves the store FAILED with its
	// ConnectionErrorCode, which DescribeCustomKeyStores reports.
	ConnectCustomKeyStore(ctx context.Context, account, id string) error
	DisconnectCustomKeyStore(ctx context.Context, account, id string) error
	// DescribeCustomKeyStores lists every store of the account when id
	// and name are empty, else the one named (CustomKeyStoreNotFoundException
	// if none).
	DescribeCustomKeyStores(ctx context.Context, account, id, name string) ([]CustomKeyStore, error)
	UpdateCustomKeyStore(ctx context.Context, in UpdateCustomKeyStoreInput) error
	DeleteCustomKeyStore(ctx context.Context, account, id string) error
}
