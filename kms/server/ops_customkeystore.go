package server

import (
	"github.com/kmsfs/kmsfs/kms"
)

// Custom key stores (AWS_CLOUDHSM on a PKCS#11 token; see
// kms/keystore/customkeystore.go for how AWS's parameters map onto a
// token). AWS authorises these operations with IAM policies only
// (Resource "*", no cross-account use), so they are in identityOnlyOps and
// act on the stores of the caller's account. KeyStorePassword (the PIN) is
// never logged: the audit entry carries the store ID only.

type createCustomKeyStoreInput struct {
	CustomKeyStoreName     string `json:"CustomKeyStoreName"`
	CloudHsmClusterId      string `json:"CloudHsmClusterId"`
	TrustAnchorCertificate string `json:"TrustAnchorCertificate"`
	KeyStorePassword       string `json:"KeyStorePassword"`
	CustomKeyStoreType     string `json:"CustomKeyStoreType"`
	XksProxyUriEndpoint    string `json:"XksProxyUriEndpoint"`
}

type customKeyStoreIDInput struct {
	CustomKeyStoreId string `json:"CustomKeyStoreId"`
}

type customKeyStoreIDOutput struct {
	CustomKeyStoreId string `json:"CustomKeyStoreId"`
}

type describeCustomKeyStoresInput struct {
	CustomKeyStoreId   string `json:"CustomKeyStoreId"`
	CustomKeyStoreName string `json:"CustomKeyStoreName"`
	Limit              int    `json:"Limit"`
	Marker             string `json:"Marker"`
}

type customKeyStoreJSON struct {
	CustomKeyStoreId       string  `json:"CustomKeyStoreId"`
	CustomKeyStoreName     string  `json:"CustomKeyStoreName"`
	CustomKeyStoreType     string  `json:"CustomKeyStoreType"`
	CloudHsmClusterId      string  `json:"CloudHsmClusterId"`
	TrustAnchorCertificate string  `json:"TrustAnchorCertificate"`
	ConnectionState        string  `json:"ConnectionState"`
	ConnectionErrorCode    string  `json:"ConnectionErrorCode,omitempty"`
	CreationDate           float64 `json:"CreationDate"`
}

type describeCustomKeyStoresOutput struct {
	CustomKeyStores []customKeyStoreJSON `json:"CustomKeyStores"`
	NextMarker      string               `json:"NextMarker,omitempty"`
	Truncated       bool                 `json:"Truncated"`
}

type updateCustomKeyStoreInput struct {
	CustomKeyStoreId      string  `json:"CustomKeyStoreId"`
	NewCustomKeyStoreName string  `json:"NewCustomKeyStoreName"`
	KeyStorePassword      *string `json:"KeyStorePassword"`
	CloudHsmClusterId     string  `json:"CloudHsmClusterId"`
	XksProxyUriEndpoint   string  `json:"XksProxyUriEndpoint"`
}

func (s *Server) createCustomKeyStore(c *call, body []byte) (response, error) {
	var in createCustomKeyStoreInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	pin := []byte(in.KeyStorePassword)
	defer kms.Zero(pin)
	switch {
	case in.CustomKeyStoreType == "EXTERNAL_KEY_STORE" || in.XksProxyUriEndpoint != "":
		return response{}, kms.Errorf(kms.CodeUnsupportedOperation, "external key stores are not supported; use CustomKeyStoreType %s (a PKCS#11 token)", kms.CustomKeyStoreTypeCloudHSM)
	case in.CustomKeyStoreName == "":
		return response{}, kms.Errorf(kms.CodeValidation, "CustomKeyStoreName is required")
	case in.CloudHsmClusterId == "":
		return response{}, kms.Errorf(kms.CodeValidation, "CloudHsmClusterId (the PKCS#11 token label) is required for an %s key store", kms.CustomKeyStoreTypeCloudHSM)
	case in.TrustAnchorCertificate == "":
		// AWS requires it for a CloudHSM key store; here it is the
		// PKCS#11 URI that pins the token's serial number.
		return response{}, kms.Errorf(kms.CodeValidation, "TrustAnchorCertificate (a PKCS#11 URI naming the token: pkcs11:token=LABEL;serial=SERIAL) is required for an %s key store", kms.CustomKeyStoreTypeCloudHSM)
	case in.KeyStorePassword == "":
		return response{}, kms.Errorf(kms.CodeValidation, "KeyStorePassword (the token's user PIN) is required for an %s key store", kms.CustomKeyStoreTypeCloudHSM)
	}
	id, err := s.store.CreateCustomKeyStore(c.ctx, kms.CreateCustomKeyStoreInput{
		Name:                   in.CustomKeyStoreName,
		Type:                   in.CustomKeyStoreType,
		CloudHsmClusterID:      in.CloudHsmClusterId,
		TrustAnchorCertificate: in.TrustAnchorCertificate,
		KeyStorePassword:       pin,
		Account:                c.cred.Account,
	})
	if err != nil {
		return response{}, err
	}
	c.entry.CustomKeyStoreID = id
	return response{v: customKeyStoreIDOutput{CustomKeyStoreId: id}}, nil
}

// storeOp runs an operation that takes only a CustomKeyStoreId.
func (s *Server) storeOp(c *call, body []byte, fn func(id string) error) (response, error) {
	var in customKeyStoreIDInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	if in.CustomKeyStoreId == "" {
		return response{}, kms.Errorf(kms.CodeValidation, "CustomKeyStoreId is required")
	}
	c.entry.CustomKeyStoreID = in.CustomKeyStoreId
	if err := fn(in.CustomKeyStoreId); err != nil {
		return response{}, err
	}
	return response{v: emptyOutput{}}, nil
}

func (s *Server) connectCustomKeyStore(c *call, body []byte) (response, error) {
	return s.storeOp(c, body, func(id string) error { return s.store.ConnectCustomKeyStore(c.ctx, c.cred.Account, id) })
}

func (s *Server) disconnectCustomKeyStore(c *call, body []byte) (response, error) {
	return s.storeOp(c, body, func(id string) error { return s.store.DisconnectCustomKeyStore(c.ctx, c.cred.Account, id) })
}

func (s *Server) deleteCustomKeyStore(c *call, body []byte) (response, error) {
	return s.storeOp(c, body, func(id string) error { return s.store.DeleteCustomKeyStore(c.ctx, c.cred.Account, id) })
}

func (s *Server) describeCustomKeyStores(c *call, body []byte) (response, error) {
	var in describeCustomKeyStoresInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	if in.CustomKeyStoreId != "" && in.CustomKeyStoreName != "" {
		// AWS takes one or the other.
		return response{}, kms.Errorf(kms.CodeValidation, "give CustomKeyStoreId or CustomKeyStoreName, not both")
	}
	c.entry.CustomKeyStoreID = in.CustomKeyStoreId
	stores, err := s.store.DescribeCustomKeyStores(c.ctx, c.cred.Account, in.CustomKeyStoreId, in.CustomKeyStoreName)
	if err != nil {
		return response{}, err
	}
	pg, next, err := listPage(stores, func(k *kms.CustomKeyStore) string { return timeOrderKey(k.CreationDate, k.ID) }, in.Limit, in.Marker)
	if err != nil {
		return response{}, err
	}
	out := describeCustomKeyStoresOutput{CustomKeyStores: make([]customKeyStoreJSON, 0, len(pg)), NextMarker: next, Truncated: next != ""}
	for _, k := range pg {
		out.CustomKeyStores = append(out.CustomKeyStores, customKeyStoreJSON{
			CustomKeyStoreId:       k.ID,
			CustomKeyStoreName:     k.Name,
			CustomKeyStoreType:     k.Type,
			CloudHsmClusterId:      k.CloudHsmClusterID,
			TrustAnchorCertificate: k.TrustAnchorCertificate,
			ConnectionState:        k.ConnectionState,
			ConnectionErrorCode:    k.ConnectionErrorCode,
			CreationDate:           epoch(k.CreationDate),
		})
	}
	return response{v: out}, nil
}

func (s *Server) updateCustomKeyStore(c *call, body []byte) (response, error) {
	var in updateCustomKeyStoreInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	if in.CustomKeyStoreId == "" {
		return response{}, kms.Errorf(kms.CodeValidation, "CustomKeyStoreId is required")
	}
	if in.XksProxyUriEndpoint != "" {
		return response{}, kms.Errorf(kms.CodeUnsupportedOperation, "external key stores are not supported")
	}
	c.entry.CustomKeyStoreID = in.CustomKeyStoreId
	var pin []byte
	if in.KeyStorePassword != nil {
		pin = []byte(*in.KeyStorePassword)
		defer kms.Zero(pin)
	}
	err := s.store.UpdateCustomKeyStore(c.ctx, kms.UpdateCustomKeyStoreInput{
		ID:                in.CustomKeyStoreId,
		NewName:           in.NewCustomKeyStoreName,
		CloudHsmClusterID: in.CloudHsmClusterId,
		KeyStorePassword:  pin,
		Account:           c.cred.Account,
	})
	if err != nil {
		return response{}, err
	}
	return response{v: emptyOutput{}}, nil
}
