package keystore

import (
	"context"
	"maps"
	"strings"
	"time"

	"github.com/kmsfs/kmsfs/kms"
)

// AWS's limits on resource tags.
const (
	maxTags        = 50
	maxTagKeyLen   = 128
	maxTagValueLen = 256
	codeTag        = "TagException"
)

// CheckTags applies AWS's rules to tags for a key: at most 50, keys of
// 1..128 characters outside the reserved "aws:" prefix, values up to 256
// characters (TagException otherwise).
func CheckTags(tags map[string]string) error {
	if len(tags) > maxTags {
		return kms.Errorf(codeTag, "%d tags, more than %d", len(tags), maxTags)
	}
	for k, v := range tags {
		if k == "" || len(k) > maxTagKeyLen {
			return kms.Errorf(codeTag, "tag key %q must be 1 to %d characters", k, maxTagKeyLen)
		}
		if strings.HasPrefix(strings.ToLower(k), "aws:") {
			return kms.Errorf(codeTag, "tag key %q: the aws: prefix is reserved", k)
		}
		if len(v) > maxTagValueLen {
			return kms.Errorf(codeTag, "tag value for %q is more than %d characters", k, maxTagValueLen)
		}
	}
	return nil
}

// notPendingDeletion is the key state rule of the control-plane operations
// that change a key's metadata.
func notPendingDeletion(rec *keyRecord) error {
	if rec.State == kms.KeyPendingDeletion {
		return kms.Errorf(kms.CodeInvalidState, "key %s is pending deletion", rec.ID)
	}
	return nil
}

// UpdateKeyDescription replaces the key's description.
func (k *Keystore) UpdateKeyDescription(ctx context.Context, keyID, description string) error {
	if len(description) > maxDescriptionLen {
		return kms.Errorf(kms.CodeValidation, "description is %d characters, more than %d", len(description), maxDescriptionLen)
	}
	return k.changeKey(ctx, keyID, func(st *state, rec *keyRecord, now time.Time) (bool, error) {
		if err := notPendingDeletion(rec); err != nil {
			return false, err
		}
		if rec.Description == description {
			return false, nil
		}
		rec.Description = description
		return true, nil
	})
}

// TagResource adds or replaces tags on a key (key ID or key ARN).
func (k *Keystore) TagResource(ctx context.Context, keyID string, tags map[string]string) error {
	if err := CheckTags(tags); err != nil {
		return err
	}
	return k.change(ctx, func(st *state, now time.Time) (bool, error) {
		rec, err := k.resolveKey(st, keyID, now)
		if err != nil {
			return false, err
		}
		if err := notPendingDeletion(rec); err != nil {
			return false, err
		}
		merged := maps.Clone(rec.Tags)
		if merged == nil {
			merged = map[string]string{}
		}
		maps.Copy(merged, tags)
		if err := CheckTags(merged); err != nil {
			return false, err
		}
		rec.Tags = merged
		return true, nil
	})
}

// UntagResource removes tags from a key; keys it does not have are ignored.
func (k *Keystore) UntagResource(ctx context.Context, keyID string, tagKeys []string) error {
	return k.change(ctx, func(st *state, now time.Time) (bool, error) {
		rec, err := k.resolveKey(st, keyID, now)
		if err != nil {
			return false, err
		}
		if err := notPendingDeletion(rec); err != nil {
			return false, err
		}
		changed := false
		rec.Tags = maps.Clone(rec.Tags)
		for _, t := range tagKeys {
			if _, ok := rec.Tags[t]; ok {
				delete(rec.Tags, t)
				changed = true
			}
		}
		if len(rec.Tags) == 0 {
			rec.Tags = nil
		}
		return changed, nil
	})
}

// ListResourceTags returns a key's tags.
func (k *Keystore) ListResourceTags(ctx context.Context, keyID string) (map[string]string, error) {
	var out map[string]string
	err := k.view(ctx, func(st *state, now time.Time) error {
		rec, err := k.resolveKey(st, keyID, now)
		if err != nil {
			return err
		}
		out = maps.Clone(rec.Tags)
		return nil
	})
	return out, err
}
