package awskms

import (
	"context"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/kmsfs/kmsfs/kms"
)

func optBool(b bool) *bool {
	if !b {
		return nil
	}
	return aws.Bool(true)
}

func multiRegionConfiguration(c *types.MultiRegionConfiguration) *kms.MultiRegionConfiguration {
	if c == nil {
		return nil
	}
	out := &kms.MultiRegionConfiguration{KeyType: string(c.MultiRegionKeyType)}
	if c.PrimaryKey != nil {
		out.PrimaryKey = kms.MultiRegionKey{ARN: aws.ToString(c.PrimaryKey.Arn), Region: aws.ToString(c.PrimaryKey.Region)}
	}
	for _, r := range c.ReplicaKeys {
		out.ReplicaKeys = append(out.ReplicaKeys, kms.MultiRegionKey{ARN: aws.ToString(r.Arn), Region: aws.ToString(r.Region)})
	}
	return out
}

// ReplicateKeyInput carries ReplicateKey's options.
type ReplicateKeyInput struct {
	KeyID         string
	ReplicaRegion string
	Description   string
	Policy        string // empty: the KMS's default policy
	Tags          map[string]string
}

// ReplicateKey makes a replica of the multi-Region primary key in.KeyID in
// in.ReplicaRegion and returns the replica's metadata.
func (c *Client) ReplicateKey(ctx context.Context, in ReplicateKeyInput) (kms.KeyMetadata, error) {
	out, err := call(c, ctx, "ReplicateKey", in.KeyID, func(ctx context.Context) (*awskms.ReplicateKeyOutput, error) {
		return c.api.ReplicateKey(ctx, &awskms.ReplicateKeyInput{
			KeyId:         aws.String(in.KeyID),
			ReplicaRegion: aws.String(in.ReplicaRegion),
			Description:   optString(in.Description),
			Policy:        optString(in.Policy),
			Tags:          tagList(in.Tags),
		})
	})
	if err != nil {
		return kms.KeyMetadata{}, err
	}
	return metadata(out.ReplicaKeyMetadata), nil
}

// UpdatePrimaryRegion makes the replica of keyID in region the primary key.
func (c *Client) UpdatePrimaryRegion(ctx context.Context, keyID, region string) error {
	_, err := call(c, ctx, "UpdatePrimaryRegion", keyID, func(ctx context.Context) (*awskms.UpdatePrimaryRegionOutput, error) {
		return c.api.UpdatePrimaryRegion(ctx, &awskms.UpdatePrimaryRegionInput{KeyId: aws.String(keyID), PrimaryRegion: aws.String(region)})
	})
	return err
}

// Endpoint is the KMS the client calls: its URL, or "AWS KMS in REGION".
func (c *Client) Endpoint() string { return c.endpoint }
