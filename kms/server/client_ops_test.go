package server

import (
	"context"
	"maps"
	"testing"

	"github.com/kmsfs/kmsfs/kms"
	"github.com/kmsfs/kmsfs/kms/awskms"
)

// TestControlPlaneThroughClient: the awskms client's tag, description and
// rotation listing operations, and CreateKey's tags, over the wire.
func TestControlPlaneThroughClient(t *testing.T) {
	h := newHarness(t, 0)
	ctx := context.Background()
	alice := h.client("AKIDALICE", awskms.Options{})
	md, err := alice.CreateKey(ctx, kms.CreateKeyInput{Description: "first", Tags: map[string]string{"env": "prod", "team": "a"}})
	if err != nil {
		t.Fatal(err)
	}
	tags, err := alice.ListResourceTags(ctx, md.KeyID)
	if err != nil || !maps.Equal(tags, map[string]string{"env": "prod", "team": "a"}) {
		t.Fatalf("tags after CreateKey: %v %v", tags, err)
	}
	if err := alice.TagResource(ctx, md.KeyID, map[string]string{"env": "dev", "owner": "ops"}); err != nil {
		t.Fatal(err)
	}
	if err := alice.UntagResource(ctx, md.ARN, []string{"team"}); err != nil {
		t.Fatal(err)
	}
	tags, err = alice.ListResourceTags(ctx, md.ARN)
	if err != nil || !maps.Equal(tags, map[string]string{"env": "dev", "owner": "ops"}) {
		t.Fatalf("tags after changes: %v %v", tags, err)
	}
	if err := alice.UpdateKeyDescription(ctx, md.KeyID, "second"); err != nil {
		t.Fatal(err)
	}
	if got, err := alice.DescribeKey(ctx, md.KeyID); err != nil || got.Description != "second" {
		t.Fatalf("description: %q %v", got.Description, err)
	}
	rots, err := alice.ListKeyRotations(ctx, md.KeyID)
	if err != nil || len(rots) != 0 {
		t.Fatalf("rotations of a new key: %+v %v", rots, err)
	}
	for range 2 {
		if err := alice.RotateKeyOnDemand(ctx, md.KeyID); err != nil {
			t.Fatal(err)
		}
	}
	rots, err = alice.ListKeyRotations(ctx, md.KeyID)
	if err != nil || len(rots) != 2 || rots[0].Version != 2 || rots[1].Version != 3 ||
		rots[0].Type != "ON_DEMAND" || rots[0].Date.IsZero() || rots[1].Date.Before(rots[0].Date) {
		t.Fatalf("rotations: %+v %v", rots, err)
	}
	// Mallory's account has no business with alice's key's tags.
	mallory := h.client("AKIDMAL", awskms.Options{MaxAttempts: 1})
	_, err = mallory.ListResourceTags(ctx, md.ARN)
	wantCode(t, err, kms.ErrAccessDenied)
}
