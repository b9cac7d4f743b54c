package awskms

import (
	"context"
	"maps"
	"slices"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/kmsfs/kmsfs/kms"
)

// tagList is tags in the API's form, in key order (a stable request body).
func tagList(tags map[string]string) []types.Tag {
	if len(tags) == 0 {
		return nil
	}
	out := make([]types.Tag, 0, len(tags))
	for _, k := range slices.Sorted(maps.Keys(tags)) {
		out = append(out, types.Tag{TagKey: aws.String(k), TagValue: aws.String(tags[k])})
	}
	return out
}

// UpdateKeyDescription replaces a key's description.
func (c *Client) UpdateKeyDescription(ctx context.Context, keyID, description string) error {
	_, err := call(c, ctx, "UpdateKeyDescription", keyID, func(ctx context.Context) (*awskms.UpdateKeyDescriptionOutput, error) {
		return c.api.UpdateKeyDescription(ctx, &awskms.UpdateKeyDescriptionInput{KeyId: &keyID, Description: &description})
	})
	return err
}

// TagResource adds tags to a key, replacing the values of keys it has.
func (c *Client) TagResource(ctx context.Context, keyID string, tags map[string]string) error {
	_, err := call(c, ctx, "TagResource", keyID, func(ctx context.Context) (*awskms.TagResourceOutput, error) {
		return c.api.TagResource(ctx, &awskms.TagResourceInput{KeyId: &keyID, Tags: tagList(tags)})
	})
	return err
}

// UntagResource removes the named tags from a key.
func (c *Client) UntagResource(ctx context.Context, keyID string, tagKeys []string) error {
	_, err := call(c, ctx, "UntagResource", keyID, func(ctx context.Context) (*awskms.UntagResourceOutput, error) {
		return c.api.UntagResource(ctx, &awskms.UntagResourceInput{KeyId: &keyID, TagKeys: tagKeys})
	})
	return err
}

// ListResourceTags returns a key's tags (every page).
func (c *Client) ListResourceTags(ctx context.Context, keyID string) (map[string]string, error) {
	tags := map[string]string{}
	var marker *string
	for {
		out, err := call(c, ctx, "ListResourceTags", keyID, func(ctx context.Context) (*awskms.ListResourceTagsOutput, error) {
			return c.api.ListResourceTags(ctx, &awskms.ListResourceTagsInput{KeyId: &keyID, Marker: marker})
		})
		if err != nil {
			return nil, err
		}
		for _, t := range out.Tags {
			tags[aws.ToString(t.TagKey)] = aws.ToString(t.TagValue)
		}
		if !out.Truncated || out.NextMarker == nil {
			return tags, nil
		}
		marker = out.NextMarker
	}
}

// ListKeyRotations returns a key's completed rotations, oldest first (every
// page). The API does not number material versions: Version counts the
// rotations listed, so the first rotation made version 2.
func (c *Client) ListKeyRotations(ctx context.Context, keyID string) ([]kms.KeyRotation, error) {
	var rots []kms.KeyRotation
	var marker *string
	for {
		out, err := call(c, ctx, "ListKeyRotations", keyID, func(ctx context.Context) (*awskms.ListKeyRotationsOutput, error) {
			return c.api.ListKeyRotations(ctx, &awskms.ListKeyRotationsInput{KeyId: &keyID, Marker: marker})
		})
		if err != nil {
			return nil, err
		}
		for _, r := range out.Rotations {
			rots = append(rots, kms.KeyRotation{Version: len(rots) + 2, Date: aws.ToTime(r.RotationDate), Type: string(r.RotationType)})
		}
		if !out.Truncated || out.NextMarker == nil {
			return rots, nil
		}
		marker = out.NextMarker
	}
}
