package server

import (
	"encoding/base64"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/kmsfs/kmsfs/kms"
	"github.com/kmsfs/kmsfs/kms/internal/jsonstr"
)

// AWS KMS JSON 1.1 request and response shapes. Blobs are []byte, which
// encoding/json writes and reads as standard base64, as the protocol wants;
// timestamps are epoch seconds (float64), as awsJson1_1 serialises them.

type keyIDInput struct {
	KeyId string `json:"KeyId"`
}

type createKeyInput struct {
	Policy                         string    `json:"Policy"`
	Description                    string    `json:"Description"`
	KeyUsage                       string    `json:"KeyUsage"`
	KeySpec                        string    `json:"KeySpec"`
	CustomerMasterKeySpec          string    `json:"CustomerMasterKeySpec"`
	Origin                         string    `json:"Origin"`
	MultiRegion                    bool      `json:"MultiRegion"`
	BypassPolicyLockoutSafetyCheck bool      `json:"BypassPolicyLockoutSafetyCheck"`
	CustomKeyStoreId               string    `json:"CustomKeyStoreId"`
	XksKeyId                       string    `json:"XksKeyId"`
	Tags                           []tagJSON `json:"Tags"`
}

type tagJSON struct {
	TagKey   string `json:"TagKey"`
	TagValue string `json:"TagValue"`
}

// tagMap turns a request's tag list into a map (a repeated key: the last
// value).
func tagMap(tags []tagJSON) map[string]string {
	if len(tags) == 0 {
		return nil
	}
	m := make(map[string]string, len(tags))
	for _, t := range tags {
		m[t.TagKey] = t.TagValue
	}
	return m
}

type tagResourceInput struct {
	KeyId   string    `json:"KeyId"`
	Tags    []tagJSON `json:"Tags"`
	TagKeys []string  `json:"TagKeys"`
}

type listResourceTagsOutput struct {
	Tags       []tagJSON `json:"Tags"`
	Truncated  bool      `json:"Truncated"`
	NextMarker string    `json:"NextMarker,omitempty"`
}

type updateKeyDescriptionInput struct {
	KeyId       string `json:"KeyId"`
	Description string `json:"Description"`
}

type listKeyPoliciesOutput struct {
	PolicyNames []string `json:"PolicyNames"`
	Truncated   bool     `json:"Truncated"`
}

type keyMetadataJSON struct {
	AWSAccountId          string   `json:"AWSAccountId"`
	KeyId                 string   `json:"KeyId"`
	Arn                   string   `json:"Arn"`
	CreationDate          float64  `json:"CreationDate"`
	Enabled               bool     `json:"Enabled"`
	Description           string   `json:"Description"`
	KeyUsage              string   `json:"KeyUsage"`
	KeyState              string   `json:"KeyState"`
	DeletionDate          float64  `json:"DeletionDate,omitempty"`
	Origin                string   `json:"Origin"`
	KeyManager            string   `json:"KeyManager"`
	CustomerMasterKeySpec string   `json:"CustomerMasterKeySpec"`
	KeySpec               string   `json:"KeySpec"`
	EncryptionAlgorithms  []string `json:"EncryptionAlgorithms,omitempty"`
	SigningAlgorithms     []string `json:"SigningAlgorithms,omitempty"`
	MacAlgorithms         []string `json:"MacAlgorithms,omitempty"`
	MultiRegion           bool     `json:"MultiRegion"`
	// MultiRegionConfiguration: ops_multiregion.go.
	MultiRegionConfiguration *multiRegionConfigurationJSON `json:"MultiRegionConfiguration,omitempty"`
	ExpirationModel          string                        `json:"ExpirationModel,omitempty"`
	ValidTo                  float64                       `json:"ValidTo,omitempty"`
	CustomKeyStoreId         string                        `json:"CustomKeyStoreId,omitempty"`
	CloudHsmClusterId        string                        `json:"CloudHsmClusterId,omitempty"`
}

type getParametersForImportInput struct {
	KeyId             string `json:"KeyId"`
	WrappingAlgorithm string `json:"WrappingAlgorithm"`
	WrappingKeySpec   string `json:"WrappingKeySpec"`
}

type getParametersForImportOutput struct {
	KeyId             string  `json:"KeyId"`
	ImportToken       []byte  `json:"ImportToken"`
	PublicKey         []byte  `json:"PublicKey"`
	ParametersValidTo float64 `json:"ParametersValidTo"`
}

type importKeyMaterialInput struct {
	KeyId                string  `json:"KeyId"`
	ImportToken          []byte  `json:"ImportToken"`
	EncryptedKeyMaterial []byte  `json:"EncryptedKeyMaterial"`
	ValidTo              float64 `json:"ValidTo"`
	ExpirationModel      string  `json:"ExpirationModel"`
}

type importKeyMaterialOutput struct {
	KeyId string `json:"KeyId"`
}

type keyMetadataOutput struct {
	KeyMetadata keyMetadataJSON `json:"KeyMetadata"`
}

type listInput struct {
	KeyId             string `json:"KeyId"`
	Limit             int    `json:"Limit"`
	Marker            string `json:"Marker"`
	GrantId           string `json:"GrantId"`
	GranteePrincipal  string `json:"GranteePrincipal"`
	RetiringPrincipal string `json:"RetiringPrincipal"`
}

type keyListEntry struct {
	KeyId  string `json:"KeyId"`
	KeyArn string `json:"KeyArn"`
}

type listKeysOutput struct {
	Keys       []keyListEntry `json:"Keys"`
	Truncated  bool           `json:"Truncated"`
	NextMarker string         `json:"NextMarker,omitempty"`
}

type aliasInput struct {
	AliasName   string `json:"AliasName"`
	TargetKeyId string `json:"TargetKeyId"`
}

type aliasListEntry struct {
	AliasName       string  `json:"AliasName"`
	AliasArn        string  `json:"AliasArn"`
	TargetKeyId     string  `json:"TargetKeyId,omitempty"`
	CreationDate    float64 `json:"CreationDate,omitempty"`
	LastUpdatedDate float64 `json:"LastUpdatedDate,omitempty"`
}

type listAliasesOutput struct {
	Aliases    []aliasListEntry `json:"Aliases"`
	Truncated  bool             `json:"Truncated"`
	NextMarker string           `json:"NextMarker,omitempty"`
}

type encryptInput struct {
	KeyId               string            `json:"KeyId"`
	Plaintext           []byte            `json:"Plaintext"`
	EncryptionContext   map[string]string `json:"EncryptionContext"`
	GrantTokens         []string          `json:"GrantTokens"`
	EncryptionAlgorithm string            `json:"EncryptionAlgorithm"`
	DryRun              bool              `json:"DryRun"`
}

type encryptOutput struct {
	CiphertextBlob      []byte `json:"CiphertextBlob"`
	KeyId               string `json:"KeyId"`
	EncryptionAlgorithm string `json:"EncryptionAlgorithm"`
}

type decryptInput struct {
	CiphertextBlob      []byte            `json:"CiphertextBlob"`
	EncryptionContext   map[string]string `json:"EncryptionContext"`
	GrantTokens         []string          `json:"GrantTokens"`
	KeyId               string            `json:"KeyId"`
	EncryptionAlgorithm string            `json:"EncryptionAlgorithm"`
	DryRun              bool              `json:"DryRun"`
}

type reEncryptInput struct {
	CiphertextBlob                 []byte            `json:"CiphertextBlob"`
	SourceEncryptionContext        map[string]string `json:"SourceEncryptionContext"`
	SourceKeyId                    string            `json:"SourceKeyId"`
	DestinationKeyId               string            `json:"DestinationKeyId"`
	DestinationEncryptionContext   map[string]string `json:"DestinationEncryptionContext"`
	SourceEncryptionAlgorithm      string            `json:"SourceEncryptionAlgorithm"`
	DestinationEncryptionAlgorithm string            `json:"DestinationEncryptionAlgorithm"`
	GrantTokens                    []string          `json:"GrantTokens"`
	DryRun                         bool              `json:"DryRun"`
}

type reEncryptOutput struct {
	CiphertextBlob                 []byte `json:"CiphertextBlob"`
	SourceKeyId                    string `json:"SourceKeyId"`
	KeyId                          string `json:"KeyId"`
	SourceEncryptionAlgorithm      string `json:"SourceEncryptionAlgorithm"`
	DestinationEncryptionAlgorithm string `json:"DestinationEncryptionAlgorithm"`
}

type generateDataKeyInput struct {
	KeyId             string            `json:"KeyId"`
	EncryptionContext map[string]string `json:"EncryptionContext"`
	NumberOfBytes     int               `json:"NumberOfBytes"`
	KeySpec           string            `json:"KeySpec"`
	GrantTokens       []string          `json:"GrantTokens"`
	DryRun            bool              `json:"DryRun"`
}

type generateDataKeyWithoutPlaintextOutput struct {
	CiphertextBlob []byte `json:"CiphertextBlob"`
	KeyId          string `json:"KeyId"`
}

type generateRandomInput struct {
	NumberOfBytes    int    `json:"NumberOfBytes"`
	CustomKeyStoreId string `json:"CustomKeyStoreId"`
}

type scheduleKeyDeletionInput struct {
	KeyId               string `json:"KeyId"`
	PendingWindowInDays int    `json:"PendingWindowInDays"`
}

type scheduleKeyDeletionOutput struct {
	KeyId               string  `json:"KeyId"`
	DeletionDate        float64 `json:"DeletionDate"`
	KeyState            string  `json:"KeyState"`
	PendingWindowInDays int     `json:"PendingWindowInDays"`
}

type enableKeyRotationInput struct {
	KeyId                string `json:"KeyId"`
	RotationPeriodInDays int    `json:"RotationPeriodInDays"`
}

type keyRotationStatusOutput struct {
	KeyRotationEnabled   bool    `json:"KeyRotationEnabled"`
	KeyId                string  `json:"KeyId"`
	RotationPeriodInDays int     `json:"RotationPeriodInDays,omitempty"`
	NextRotationDate     float64 `json:"NextRotationDate,omitempty"`
}

type keyRotationJSON struct {
	KeyId        string  `json:"KeyId"`
	RotationDate float64 `json:"RotationDate"`
	RotationType string  `json:"RotationType,omitempty"`
}

type listKeyRotationsOutput struct {
	Rotations  []keyRotationJSON `json:"Rotations"`
	Truncated  bool              `json:"Truncated"`
	NextMarker string            `json:"NextMarker,omitempty"`
}

type keyIDOutput struct {
	KeyId string `json:"KeyId"`
}

type keyPolicyInput struct {
	KeyId                          string `json:"KeyId"`
	PolicyName                     string `json:"PolicyName"`
	Policy                         string `json:"Policy"`
	BypassPolicyLockoutSafetyCheck bool   `json:"BypassPolicyLockoutSafetyCheck"`
}

type keyPolicyOutput struct {
	Policy     string `json:"Policy"`
	PolicyName string `json:"PolicyName"`
}

type grantConstraintsJSON struct {
	EncryptionContextSubset map[string]string `json:"EncryptionContextSubset,omitempty"`
	EncryptionContextEquals map[string]string `json:"EncryptionContextEquals,omitempty"`
}

type createGrantInput struct {
	KeyId             string                `json:"KeyId"`
	GranteePrincipal  string                `json:"GranteePrincipal"`
	RetiringPrincipal string                `json:"RetiringPrincipal"`
	Operations        []string              `json:"Operations"`
	Constraints       *grantConstraintsJSON `json:"Constraints"`
	GrantTokens       []string              `json:"GrantTokens"`
	Name              string                `json:"Name"`
	DryRun            bool                  `json:"DryRun"`
}

type createGrantOutput struct {
	GrantToken string `json:"GrantToken"`
	GrantId    string `json:"GrantId"`
}

type grantListEntry struct {
	KeyId             string                `json:"KeyId"`
	GrantId           string                `json:"GrantId"`
	Name              string                `json:"Name,omitempty"`
	CreationDate      float64               `json:"CreationDate"`
	GranteePrincipal  string                `json:"GranteePrincipal"`
	RetiringPrincipal string                `json:"RetiringPrincipal,omitempty"`
	IssuingAccount    string                `json:"IssuingAccount"`
	Operations        []string              `json:"Operations"`
	Constraints       *grantConstraintsJSON `json:"Constraints,omitempty"`
}

type listGrantsOutput struct {
	Grants     []grantListEntry `json:"Grants"`
	Truncated  bool             `json:"Truncated"`
	NextMarker string           `json:"NextMarker,omitempty"`
}

type grantIDInput struct {
	KeyId      string `json:"KeyId"`
	GrantId    string `json:"GrantId"`
	GrantToken string `json:"GrantToken"`
	DryRun     bool   `json:"DryRun"`
}

type emptyOutput struct{}

// epoch converts a time to awsJson's epoch seconds (0 for the zero time).
func epoch(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixMilli()) / 1000
}

const symmetricDefault = "SYMMETRIC_DEFAULT"

func metadataJSON(m kms.KeyMetadata) keyMetadataJSON {
	account := ""
	if parts := strings.SplitN(m.ARN, ":", 6); len(parts) == 6 {
		account = parts[4]
	}
	origin := m.Origin
	if origin == "" {
		origin = "AWS_KMS"
	}
	manager := m.KeyManager
	if manager == "" {
		manager = "CUSTOMER"
	}
	return keyMetadataJSON{
		AWSAccountId:          account,
		KeyId:                 m.KeyID,
		Arn:                   m.ARN,
		CreationDate:          epoch(m.CreationDate),
		Enabled:               m.State == kms.KeyEnabled,
		Description:           m.Description,
		KeyUsage:              orDefault(m.KeyUsage, kms.KeyUsageEncryptDecrypt),
		KeyState:              string(m.State),
		DeletionDate:          epoch(m.DeletionDate),
		Origin:                origin,
		KeyManager:            manager,
		CustomerMasterKeySpec: orDefault(m.KeySpec, symmetricDefault),
		KeySpec:               orDefault(m.KeySpec, symmetricDefault),
		EncryptionAlgorithms:  m.EncryptionAlgorithms,
		SigningAlgorithms:     m.SigningAlgorithms,
		MacAlgorithms:         m.MacAlgorithms,
		ExpirationModel:       m.ExpirationModel,
		ValidTo:               epoch(m.ValidTo),

		MultiRegion:              m.MultiRegion,
		MultiRegionConfiguration: multiRegionJSON(m.MultiRegionConfiguration),
		CustomKeyStoreId:         m.CustomKeyStoreID,
		CloudHsmClusterId:        m.CloudHsmClusterID,
	}
}

// secretJSON builds the few responses that carry plaintext key material by
// hand, into one buffer the server zeroes after writing it (encoding/json
// would leave copies in its pooled buffers).
type secretJSON struct{ b []byte }

func (j *secretJSON) open()  { j.b = append(j.b, '{') }
func (j *secretJSON) close() { j.b = append(j.b, '}') }

func (j *secretJSON) field(name string) {
	if len(j.b) > 1 {
		j.b = append(j.b, ',')
	}
	j.b = append(j.b, '"')
	j.b = append(j.b, name...)
	j.b = append(j.b, '"', ':')
}

func (j *secretJSON) blob(name string, v []byte) {
	j.field(name)
	j.b = append(j.b, '"')
	j.b = base64.StdEncoding.AppendEncode(j.b, v)
	j.b = append(j.b, '"')
}

func (j *secretJSON) str(name, v string) {
	j.field(name)
	j.b = jsonstr.Append(j.b, v)
}

// listPage returns one page of items for a Limit/Marker request. Items are
// put in the order of their sort key (unique per item), and a marker names
// the last item returned: the next page resumes after that item, so items
// added or removed between pages are neither skipped nor repeated. Markers
// are opaque to clients (base64url of the sort key).
func listPage[T any](items []T, sortKey func(*T) string, limit int, marker string) (page []T, next string, err error) {
	if limit == 0 {
		limit = 100
	}
	if limit < 1 || limit > 1000 {
		return nil, "", kms.Errorf(kms.CodeValidation, "Limit %d outside 1..1000", limit)
	}
	keys := make([]string, len(items))
	for i := range items {
		keys[i] = sortKey(&items[i])
	}
	sort.Sort(byKey[T]{items, keys})
	start := 0
	if marker != "" {
		after, derr := base64.RawURLEncoding.DecodeString(marker)
		if derr != nil || len(after) == 0 {
			return nil, "", kms.Errorf("InvalidMarkerException", "marker %q is not valid", marker)
		}
		start = sort.SearchStrings(keys, string(after))
		if start < len(keys) && keys[start] == string(after) {
			start++
		}
	}
	end := min(start+limit, len(items))
	if end < len(items) {
		next = base64.RawURLEncoding.EncodeToString([]byte(keys[end-1]))
	}
	return items[start:end], next, nil
}

type byKey[T any] struct {
	items []T
	keys  []string
}

func (b byKey[T]) Len() int           { return len(b.items) }
func (b byKey[T]) Less(i, j int) bool { return b.keys[i] < b.keys[j] }
func (b byKey[T]) Swap(i, j int) {
	b.items[i], b.items[j] = b.items[j], b.items[i]
	b.keys[i], b.keys[j] = b.keys[j], b.keys[i]
}

// timeOrderKey is a sort key that orders by creation time, then ID.
func timeOrderKey(t time.Time, id string) string {
	return fmt.Sprintf("%020d/%s", t.UnixNano(), id)
}
