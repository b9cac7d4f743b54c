package awskms

import (
	"context"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/kmsfs/kmsfs/kms"
)

// The custom key store operations. The account arguments are ignored: the
// KMS acts on the caller's own account's stores.
var _ kms.CustomKeyStores = (*Client)(nil)

func (c *Client) CreateCustomKeyStore(ctx context.Context, in kms.CreateCustomKeyStoreInput) (string, error) {
	pin := string(in.KeyStorePassword)
	out, err := call(c, ctx, "CreateCustomKeyStore", "", func(ctx context.Context) (*awskms.CreateCustomKeyStoreOutput, error) {
		return c.api.CreateCustomKeyStore(ctx, &awskms.CreateCustomKeyStoreInput{
			CustomKeyStoreName:     &in.Name,
			CustomKeyStoreType:     types.CustomKeyStoreType(in.Type),
			CloudHsmClusterId:      optString(in.CloudHsmClusterID),
			TrustAnchorCertificate: optString(in.TrustAnchorCertificate),
			KeyStorePassword:       optString(pin),
		})
	})
	if err != nil {
		return "", err
	}
	return aws.ToString(out.CustomKeyStoreId), nil
}

func (c *Client) ConnectCustomKeyStore(ctx context.Context, _, id string) error {
	_, err := call(c, ctx, "ConnectCustomKeyStore", "", func(ctx context.Context) (*awskms.ConnectCustomKeyStoreOutput, error) {
		return c.api.ConnectCustomKeyStore(ctx, &awskms.ConnectCustomKeyStoreInput{CustomKeyStoreId: &id})
	})
	return err
}

func (c *Client) DisconnectCustomKeyStore(ctx context.Context, _, id string) error {
	_, err := call(c, ctx, "DisconnectCustomKeyStore", "", func(ctx context.Context) (*awskms.DisconnectCustomKeyStoreOutput, error) {
		return c.api.DisconnectCustomKeyStore(ctx, &awskms.DisconnectCustomKeyStoreInput{CustomKeyStoreId: &id})
	})
	return err
}

func (c *Client) DeleteCustomKeyStore(ctx context.Context, _, id string) error {
	_, err := call(c, ctx, "DeleteCustomKeyStore", "", func(ctx context.Context) (*awskms.DeleteCustomKeyStoreOutput, error) {
		return c.api.DeleteCustomKeyStore(ctx, &awskms.DeleteCustomKeyStoreInput{CustomKeyStoreId: &id})
	})
	return err
}

// DescribeCustomKeyStores follows the pages.
func (c *Client) DescribeCustomKeyStores(ctx context.Context, _, id, name string) ([]kms.CustomKeyStore, error) {
	var all []kms.CustomKeyStore
	var marker *string
	for {
		out, err := call(c, ctx, "DescribeCustomKeyStores", "", func(ctx context.Context) (*awskms.DescribeCustomKeyStoresOutput, error) {
			return c.api.DescribeCustomKeyStores(ctx, &awskms.DescribeCustomKeyStoresInput{
				CustomKeyStoreId: optString(id), CustomKeyStoreName: optString(name), Marker: marker,
			})
		})
		if err != nil {
			return nil, err
		}
		for _, s := range out.CustomKeyStores {
			all = append(all, kms.CustomKeyStore{
				ID:                     aws.ToString(s.CustomKeyStoreId),
				Name:                   aws.ToString(s.CustomKeyStoreName),
				Type:                   string(s.CustomKeyStoreType),
				CloudHsmClusterID:      aws.ToString(s.CloudHsmClusterId),
				TrustAnchorCertificate: aws.ToString(s.TrustAnchorCertificate),
				ConnectionState:        string(s.ConnectionState),
				ConnectionErrorCode:    string(s.ConnectionErrorCode),
				CreationDate:           aws.ToTime(s.CreationDate),
			})
		}
		if !out.Truncated || out.NextMarker == nil {
			return all, nil
		}
		marker = out.NextMarker
	}
}

func (c *Client) UpdateCustomKeyStore(ctx context.Context, in kms.UpdateCustomKeyStoreInput) error {
	var pin *string
	if in.KeyStorePassword != nil {
		pin = aws.String(string(in.KeyStorePassword))
	}
	_, err := call(c, ctx, "UpdateCustomKeyStore", "", func(ctx context.Context) (*awskms.UpdateCustomKeyStoreOutput, error) {
		return c.api.UpdateCustomKeyStore(ctx, &awskms.UpdateCustomKeyStoreInput{
			CustomKeyStoreId:      &in.ID,
			NewCustomKeyStoreName: optString(in.NewName),
			CloudHsmClusterId:     optString(in.CloudHsmClusterID),
			KeyStorePassword:      pin,
		})
	})
	return err
}

// GenerateRandomInStore is GenerateRandom with random bytes from the token
// (AWS: the CloudHSM cluster) of a connected custom key store.
func (c *Client) GenerateRandomInStore(ctx context.Context, storeID string, numBytes int) ([]byte, error) {
	out, err := call(c, ctx, "GenerateRandom", "", func(ctx context.Context) (*awskms.GenerateRandomOutput, error) {
		return c.api.GenerateRandom(ctx, &awskms.GenerateRandomInput{NumberOfBytes: aws.Int32(int32(numBytes)), CustomKeyStoreId: &storeID})
	})
	if err != nil {
		return nil, err
	}
	return out.Plaintext, nil
}
