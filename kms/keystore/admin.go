package keystore

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/kmsfs/kmsfs/kms"
)

// AWS limits used by the control-plane operations.
const (
	maxDescriptionLen = 8192  // CreateKey Description
	maxPolicyLen      = 32768 // key policy document size
	maxAliasNameLen   = 256   // including "alias/"
	maxGrantNameLen   = 256
	aliasPrefix       = "alias/"
	reservedAlias     = "alias/aws/" // reserved for AWS managed keys
)

// validGrantOperation reports whether op is an operation name AWS accepts in
// CreateGrant.
func validGrantOperation(op string) bool {
	switch op {
	case "Decrypt", "Encrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext",
		"ReEncryptFrom", "ReEncryptTo", "Sign", "Verify", "GetPublicKey", "CreateGrant",
		"RetireGrant", "DescribeKey", "GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext",
		"GenerateMac", "VerifyMac", "DeriveSharedSecret":
		return true
	}
	return false
}

// view runs fn on the current state under mu.
func (k *Keystore) view(ctx context.Context, fn func(st *state, now time.Time) error) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.refresh(ctx); err != nil {
		return err
	}
	return fn(k.st, k.now())
}

// change runs a read-modify-write of the state under mu and the file lock.
func (k *Keystore) change(ctx context.Context, fn func(st *state, now time.Time) (bool, error)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	_, err := k.mutate(ctx, fn)
	return err
}

// changeKey is change on the key keyID names.
func (k *Keystore) changeKey(ctx context.Context, keyID string, fn func(st *state, rec *keyRecord, now time.Time) (bool, error)) error {
	return k.change(ctx, func(st *state, now time.Time) (bool, error) {
		rec, err := k.resolve(st, keyID, now)
		if err != nil {
			return false, err
		}
		return fn(st, rec, now)
	})
}

func rootARN(account string) string { return "arn:aws:iam::" + account + ":root" }

// defaultPolicy is the key policy AWS gives a key created without one: the
// owning account's root principal may do kms:* on the key, which delegates
// access control to IAM policies in the account.
func defaultPolicy(account string) string {
	return `{
  "Version": "2012-10-17",
  "Id": "key-default-1",
  "Statement": [
    {
      "Sid": "Enable IAM User Permissions",
      "Effect": "Allow",
      "Principal": {
        "AWS": "` + rootARN(account) + `"
      },
      "Action": "kms:*",
      "Resource": "*"
    }
  ]
}`
}

// checkPolicy accepts a policy document that parses as a JSON object. The
// keystore stores policies; the server evaluates them.
func checkPolicy(policy string) error {
	if len(policy) > maxPolicyLen {
		return kms.Errorf(kms.CodeMalformedPolicy, "key policy is %d bytes, more than %d", len(policy), maxPolicyLen)
	}
	var doc map[string]json.RawMessage
	dec := json.NewDecoder(strings.NewReader(policy))
	if err := dec.Decode(&doc); err != nil || doc == nil {
		return kms.Errorf(kms.CodeMalformedPolicy, "key policy is not a JSON object")
	}
	if dec.More() {
		return kms.Errorf(kms.CodeMalformedPolicy, "key policy has data after the JSON object")
	}
	return nil
}

func (k *Keystore) metadata(rec *keyRecord) kms.KeyMetadata {
	md := kms.KeyMetadata{
		KeyID:                rec.ID,
		ARN:                  k.keyARN(rec),
		Description:          rec.Description,
		State:                rec.State,
		CreationDate:         rec.Created,
		Origin:               rec.Origin,
		KeyManager:           rec.KeyManager,
		RotationEnabled:      rec.Rotation.Enabled,
		CurrentVersion:       rec.CurrentVersion,
		Versions:             len(rec.Versions),
		LastRotationDate:     rec.Rotation.Last,
		CreatingPrincipalARN: rec.CreatingPrincipal,
	}
	algorithms(rec, &md)
	k.multiRegionMetadata(rec, &md)
	k.storeMetadata(rec, &md)
	if rec.State == kms.KeyPendingDeletion {
		md.DeletionDate = rec.DeletionDate
	}
	if rec.Import != nil && rec.hasMaterial() {
		md.ExpirationModel = "KEY_MATERIAL_DOES_NOT_EXPIRE"
		if !rec.Import.ValidTo.IsZero() {
			md.ExpirationModel, md.ValidTo = "KEY_MATERIAL_EXPIRES", rec.Import.ValidTo
		}
	}
	if rec.Rotation.Enabled {
		md.RotationPeriodDays = rec.Rotation.PeriodDays
		md.NextRotationDate = rec.Rotation.next()
	}
	return md
}

// CreateKey creates a key: symmetric AES-256 unless in.KeySpec names an
// asymmetric or HMAC spec (see asymmetric.go). Origin AWS_KMS (the default)
// generates version 1 of the backing material; EXTERNAL creates the key in
// PendingImport with no material, as AWS does before ImportKeyMaterial.
func (k *Keystore) CreateKey(ctx context.Context, in kms.CreateKeyInput) (kms.KeyMetadata, error) {
	if len(in.Description) > maxDescriptionLen {
		return kms.KeyMetadata{}, kms.Errorf(kms.CodeValidation, "description is %d characters, more than %d", len(in.Description), maxDescriptionLen)
	}
	account := in.Account
	if account == "" {
		account = k.account
	}
	if !isAccountID(account) {
		return kms.KeyMetadata{}, kms.Errorf(kms.CodeValidation, "account %q is not a 12-digit account ID", in.Account)
	}
	policy := in.Policy
	if policy == "" {
		policy = defaultPolicy(account)
	} else if err := checkPolicy(policy); err != nil {
		return kms.KeyMetadata{}, err
	}
	if err := CheckTags(in.Tags); err != nil {
		return kms.KeyMetadata{}, err
	}
	origin := in.Origin
	if origin == "" {
		origin = originAWSKMS
	}
	if origin != originAWSKMS && origin != originExternal && origin != kms.OriginCloudHSM {
		return kms.KeyMetadata{}, kms.Errorf(kms.CodeValidation, "origin %q is not supported (use %s, %s or %s)", origin, originAWSKMS, originExternal, kms.OriginCloudHSM)
	}
	if (origin == kms.OriginCloudHSM) != (in.CustomKeyStoreID != "") {
		// AWS: a key in a custom key store takes both.
		return kms.KeyMetadata{}, kms.Errorf(kms.CodeValidation, "a key in a custom key store needs Origin %s and a CustomKeyStoreId, together", kms.OriginCloudHSM)
	}
	spec, usage, err := checkSpec(in.KeySpec, in.KeyUsage, origin)
	if err != nil {
		return kms.KeyMetadata{}, err
	}
	u, id, mr, err := k.newKeyID(in.MultiRegion, spec, origin)
	if err != nil {
		return kms.KeyMetadata{}, err
	}
	var md kms.KeyMetadata
	inToken := false // made in a token: destroyed there if the state write fails
	err = k.change(ctx, func(st *state, now time.Time) (bool, error) {
		rec := &keyRecord{
			ID:                id,
			MultiRegion:       mr,
			Account:           k.owner(account),
			Description:       in.Description,
			State:             kms.KeyEnabled,
			Created:           now,
			Origin:            origin,
			KeyManager:        keyManager,
			CreatingPrincipal: in.Principal,
			Policy:            policy,
			Tags:              maps.Clone(in.Tags),
			KeySpec:           spec,
			KeyUsage:          usage,
			uuid:              u,
		}
		if spec != "" {
			if err := k.addAsymmetricVersion(rec, now); err != nil {
				return false, err
			}
		} else if origin == originExternal {
			rec.State = kms.KeyPendingImport
		} else if origin == kms.OriginCloudHSM {
			if err := k.createInStore(st, rec, in.CustomKeyStoreID, now); err != nil {
				return false, err
			}
			inToken = true
		} else if err := k.addVersion(rec, now, ""); err != nil {
			return false, err
		}
		if _, dup := st.Keys[rec.ID]; dup {
			return false, kms.Errorf(kms.CodeInternal, "key ID collision")
		}
		st.Keys[rec.ID] = rec
		md = k.metadata(rec)
		return true, nil
	})
	if err != nil {
		if inToken {
			k.mu.Lock()
			k.abandonInStore(in.CustomKeyStoreID, u)
			k.mu.Unlock()
		}
		return kms.KeyMetadata{}, fmt.Errorf("CreateKey: %w", err)
	}
	return md, nil
}

// DescribeKey returns the key's metadata, in any key state.
func (k *Keystore) DescribeKey(ctx context.Context, keyID string) (kms.KeyMetadata, error) {
	var md kms.KeyMetadata
	err := k.view(ctx, func(st *state, now time.Time) error {
		rec, err := k.resolve(st, keyID, now)
		if err != nil {
			return err
		}
		md = k.metadata(rec)
		return nil
	})
	return md, err
}

// ListKeys returns every key, oldest first.
func (k *Keystore) ListKeys(ctx context.Context) ([]kms.KeyMetadata, error) {
	var out []kms.KeyMetadata
	err := k.view(ctx, func(st *state, now time.Time) error {
		for _, rec := range st.Keys {
			if !rec.expired(now) {
				out = append(out, k.metadata(rec))
			}
		}
		return nil
	})
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreationDate.Equal(out[j].CreationDate) {
			return out[i].CreationDate.Before(out[j].CreationDate)
		}
		return out[i].KeyID < out[j].KeyID
	})
	return out, err
}

// checkAliasName applies AWS's alias name rules: "alias/" followed by
// [a-zA-Z0-9/_-], at most 256 characters in all, not in the reserved
// "alias/aws/" namespace.
func checkAliasName(name string) error {
	if !strings.HasPrefix(name, aliasPrefix) {
		return kms.Errorf(kms.CodeInvalidAliasName, "alias name %q must begin with %q", name, aliasPrefix)
	}
	if len(name) == len(aliasPrefix) {
		return kms.Errorf(kms.CodeInvalidAliasName, "alias name %q is empty after %q", name, aliasPrefix)
	}
	if len(name) > maxAliasNameLen {
		return kms.Errorf(kms.CodeInvalidAliasName, "alias name is %d characters, more than %d", len(name), maxAliasNameLen)
	}
	if strings.HasPrefix(name, reservedAlias) {
		return kms.Errorf(kms.CodeInvalidAliasName, "alias name %q: the %q prefix is reserved for AWS managed keys", name, reservedAlias)
	}
	for _, c := range name[len(aliasPrefix):] {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '/' || c == '_' || c == '-') {
			return kms.Errorf(kms.CodeInvalidAliasName, "alias name %q: character %q is not allowed (use a-z A-Z 0-9 / _ -)", name, c)
		}
	}
	return nil
}

// aliasTarget resolves an alias target: a key ID or key ARN (AWS does not
// accept an alias here) of a key not pending deletion, in the alias's
// account (AWS: an alias and its key are in the same account).
func (k *Keystore) aliasTarget(st *state, account, targetKeyID string, now time.Time) (*keyRecord, error) {
	rec, err := k.resolveKey(st, targetKeyID, now)
	if err != nil {
		return nil, err
	}
	if k.accountOf(rec) != account {
		return nil, kms.Errorf(kms.CodeNotFound, "key %s not found in account %s, the alias's account", targetKeyID, account)
	}
	if rec.State == kms.KeyPendingDeletion {
		return nil, kms.Errorf(kms.CodeInvalidState, "key %s is pending deletion", rec.ID)
	}
	return rec, nil
}

// aliasName splits an alias name ("alias/x", in the keystore's account) or
// alias ARN (in its account) into the account and the name, checked against
// AWS's rules.
func (k *Keystore) aliasName(alias string) (account, name string, err error) {
	account, name, err = k.splitName(alias)
	if err != nil {
		return "", "", kms.Errorf(kms.CodeInvalidAliasName, "%s is not an alias name or alias ARN", alias)
	}
	if err := checkAliasName(name); err != nil {
		return "", "", err
	}
	return account, name, nil
}

// CreateAlias points a new alias at a key of the alias's account. The alias
// is a name ("alias/x": the keystore's account) or an alias ARN.
func (k *Keystore) CreateAlias(ctx context.Context, alias, targetKeyID string) error {
	account, name, err := k.aliasName(alias)
	if err != nil {
		return err
	}
	return k.change(ctx, func(st *state, now time.Time) (bool, error) {
		owner := k.owner(account)
		if _, exists := st.aliases(owner)[name]; exists {
			return false, kms.Errorf(kms.CodeAlreadyExists, "alias %s already exists", alias)
		}
		rec, err := k.aliasTarget(st, account, targetKeyID, now)
		if err != nil {
			return false, err
		}
		st.setAlias(owner, name, rec.ID, now)
		return true, nil
	})
}

// UpdateAlias points an existing alias at another key of its account.
func (k *Keystore) UpdateAlias(ctx context.Context, alias, targetKeyID string) error {
	account, name, err := k.aliasName(alias)
	if err != nil {
		return err
	}
	return k.change(ctx, func(st *state, now time.Time) (bool, error) {
		owner := k.owner(account)
		if _, exists := st.aliases(owner)[name]; !exists {
			return false, kms.Errorf(kms.CodeNotFound, "alias %s not found", alias)
		}
		rec, err := k.aliasTarget(st, account, targetKeyID, now)
		if err != nil {
			return false, err
		}
		st.setAlias(owner, name, rec.ID, now)
		return true, nil
	})
}

// DeleteAlias removes an alias; the key is not affected.
func (k *Keystore) DeleteAlias(ctx context.Context, alias string) error {
	account, name, err := k.splitName(alias)
	if err != nil || !strings.HasPrefix(name, aliasPrefix) {
		return kms.Errorf(kms.CodeInvalidAliasName, "alias name %q must begin with %q", alias, aliasPrefix)
	}
	return k.change(ctx, func(st *state, now time.Time) (bool, error) {
		owner := k.owner(account)
		if _, exists := st.aliases(owner)[name]; !exists {
			return false, kms.Errorf(kms.CodeNotFound, "alias %s not found", alias)
		}
		st.deleteAlias(owner, name)
		return true, nil
	})
}

// ListAliases lists the aliases of keyID, or every alias of every account
// when keyID is "", sorted by account and name. Each alias's ARN names its
// account.
func (k *Keystore) ListAliases(ctx context.Context, keyID string) ([]kms.Alias, error) {
	var out []kms.Alias
	err := k.view(ctx, func(st *state, now time.Time) error {
		only := ""
		if keyID != "" {
			rec, err := k.resolve(st, keyID, now)
			if err != nil {
				return err
			}
			only = rec.ID
		}
		add := func(account string, names map[string]string) {
			for name, target := range names {
				if rec := st.Keys[target]; rec == nil || rec.expired(now) || (only != "" && target != only) {
					continue
				}
				d := st.AliasDates[aliasDateKey(k.owner(account), name)]
				out = append(out, kms.Alias{Name: name, ARN: k.aliasARN(account, name), TargetKeyID: target,
					CreationDate: d.Created, LastUpdatedDate: d.Updated})
			}
		}
		add(k.account, st.Aliases)
		for account, names := range st.AccountAliases {
			add(account, names)
		}
		return nil
	})
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].ARN < out[j].ARN
	})
	return out, err
}

// EnableKey makes a Disabled key usable again. A key pending deletion must
// first have its deletion cancelled (KMSInvalidStateException).
func (k *Keystore) EnableKey(ctx context.Context, keyID string) error {
	return k.switchState(ctx, keyID, kms.KeyDisabled, kms.KeyEnabled, "enabled")
}

// DisableKey stops every cryptographic use of the key at once, in this and
// every other process sharing the keystore.
func (k *Keystore) DisableKey(ctx context.Context, keyID string) error {
	return k.switchState(ctx, keyID, kms.KeyEnabled, kms.KeyDisabled, "disabled")
}

// switchState moves a key from state from to state to; a key already in to
// is left alone, a key in any other state is KMSInvalidStateException.
func (k *Keystore) switchState(ctx context.Context, keyID string, from, to kms.KeyState, verb string) error {
	return k.changeKey(ctx, keyID, func(st *state, rec *keyRecord, now time.Time) (bool, error) {
		switch rec.State {
		case to:
			return false, nil
		case from:
			rec.State = to
			return true, nil
		default:
			return false, kms.Errorf(kms.CodeInvalidState, "key %s is %s and cannot be %s", rec.ID, rec.State, verb)
		}
	})
}

// ScheduleKeyDeletion puts the key in PendingDeletion for windowDays (0 means
// 30; AWS accepts 7..30). When the window has passed the key's material is
// destroyed, with its aliases and grants.
func (k *Keystore) ScheduleKeyDeletion(ctx context.Context, keyID string, windowDays int) (time.Time, error) {
	if windowDays == 0 {
		windowDays = kms.DefaultDeletionWindowDays
	}
	if windowDays < kms.MinDeletionWindowDays || windowDays > kms.MaxDeletionWindowDays {
		return time.Time{}, kms.Errorf(kms.CodeValidation, "PendingWindowInDays %d outside %d..%d", windowDays, kms.MinDeletionWindowDays, kms.MaxDeletionWindowDays)
	}
	var when time.Time
	err := k.changeKey(ctx, keyID, func(st *state, rec *keyRecord, now time.Time) (bool, error) {
		if rec.State == kms.KeyPendingDeletion {
			return false, kms.Errorf(kms.CodeInvalidState, "key %s is already pending deletion (on %s)", rec.ID, rec.DeletionDate.Format(time.RFC3339))
		}
		rec.State = kms.KeyPendingDeletion
		rec.DeletionDate = now.Add(days(windowDays))
		when = rec.DeletionDate
		return true, nil
	})
	return when, err
}

// CancelKeyDeletion takes a key out of PendingDeletion. As in AWS it is then
// Disabled (PendingImport if it never had material).
func (k *Keystore) CancelKeyDeletion(ctx context.Context, keyID string) error {
	return k.changeKey(ctx, keyID, func(st *state, rec *keyRecord, now time.Time) (bool, error) {
		if rec.State != kms.KeyPendingDeletion {
			return false, kms.Errorf(kms.CodeInvalidState, "key %s is %s, not pending deletion", rec.ID, rec.State)
		}
		rec.State = kms.KeyDisabled
		if !rec.hasMaterial() {
			rec.State = kms.KeyPendingImport
		}
		rec.DeletionDate = time.Time{}
		return true, nil
	})
}

// rotatable checks the conditions AWS puts on rotation operations: key
// material generated by KMS (UnsupportedOperationException otherwise, as in
// AWS), key enabled.
func rotatable(rec *keyRecord) error {
	if err := multiRegionRotatable(rec); err != nil {
		return err
	}
	if rec.KeySpec != "" {
		return kms.Errorf(kms.CodeUnsupportedOperation, "key %s has KeySpec %s; only %s keys rotate", rec.ID, rec.KeySpec, kms.KeySpecSymmetric)
	}
	if rec.Origin != originAWSKMS {
		return kms.Errorf(kms.CodeUnsupportedOperation, "key %s has origin %s; rotation is supported only for %s keys", rec.ID, rec.Origin, originAWSKMS)
	}
	return usable(rec)
}

// MaxOnDemandRotations is how many times a key may be rotated on demand
// (AWS's limit; LimitExceededException beyond it).
const MaxOnDemandRotations = 10

// EnableKeyRotation turns on automatic rotation every periodDays (0 means
// 365; AWS accepts 90..2560). The first rotation is periodDays from now; if
// rotation was already on, only the period changes, counted from the same
// start, so a shortened period may make a rotation due at once.
func (k *Keystore) EnableKeyRotation(ctx context.Context, keyID string, periodDays int) error {
	if periodDays == 0 {
		periodDays = kms.DefaultRotationPeriodDays
	}
	if periodDays < kms.MinRotationPeriodDays || periodDays > kms.MaxRotationPeriodDays {
		return kms.Errorf(kms.CodeValidation, "RotationPeriodInDays %d outside %d..%d", periodDays, kms.MinRotationPeriodDays, kms.MaxRotationPeriodDays)
	}
	return k.changeKey(ctx, keyID, func(st *state, rec *keyRecord, now time.Time) (bool, error) {
		if err := rotatable(rec); err != nil {
			return false, err
		}
		if !rec.Rotation.Enabled {
			rec.Rotation.Enabled = true
			rec.Rotation.Base = now
		}
		rec.Rotation.PeriodDays = periodDays
		return true, nil
	})
}

// DisableKeyRotation turns off automatic rotation.
func (k *Keystore) DisableKeyRotation(ctx context.Context, keyID string) error {
	return k.changeKey(ctx, keyID, func(st *state, rec *keyRecord, now time.Time) (bool, error) {
		if err := rotatable(rec); err != nil {
			return false, err
		}
		if !rec.Rotation.Enabled {
			return false, nil
		}
		rec.Rotation.Enabled = false
		rec.Rotation.Base = time.Time{}
		rec.Rotation.PeriodDays = 0
		return true, nil
	})
}

// GetKeyRotationStatus reports whether automatic rotation is on, its period
// and the next rotation date (zero values when off).
func (k *Keystore) GetKeyRotationStatus(ctx context.Context, keyID string) (bool, int, time.Time, error) {
	var r rotationRecord
	err := k.view(ctx, func(st *state, now time.Time) error {
		rec, err := k.resolve(st, keyID, now)
		if err != nil {
			return err
		}
		r = rec.Rotation
		return nil
	})
	if err != nil || !r.Enabled {
		return false, 0, time.Time{}, err
	}
	return true, r.PeriodDays, r.next(), nil
}

// RotateKeyOnDemand adds a new version of backing material now, under the
// same key ID; new ciphertext uses it and older versions stay available for
// decryption. The automatic rotation schedule is unchanged, as in AWS.
func (k *Keystore) RotateKeyOnDemand(ctx context.Context, keyID string) error {
	return k.changeKey(ctx, keyID, func(st *state, rec *keyRecord, now time.Time) (bool, error) {
		if err := rotatable(rec); err != nil {
			return false, err
		}
		if rec.Rotation.OnDemand >= MaxOnDemandRotations {
			return false, kms.Errorf(kms.CodeLimitExceeded, "key %s has been rotated on demand %d times, the most allowed", rec.ID, MaxOnDemandRotations)
		}
		if err := k.addVersion(rec, now, rotationOnDemand); err != nil {
			return false, err
		}
		rec.Rotation.OnDemand++
		return true, nil
	})
}

// ListKeyRotations lists the key's rotations (every material version after
// the first), oldest first. Keys with imported material do not rotate
// (UnsupportedOperationException).
func (k *Keystore) ListKeyRotations(ctx context.Context, keyID string) ([]kms.KeyRotation, error) {
	var out []kms.KeyRotation
	err := k.view(ctx, func(st *state, now time.Time) error {
		rec, err := k.resolveKey(st, keyID, now)
		if err != nil {
			return err
		}
		if rec.KeySpec != "" {
			return kms.Errorf(kms.CodeUnsupportedOperation, "key %s has KeySpec %s; only %s keys rotate", rec.ID, rec.KeySpec, kms.KeySpecSymmetric)
		}
		if rec.Origin != originAWSKMS {
			return kms.Errorf(kms.CodeUnsupportedOperation, "key %s has origin %s; only %s keys rotate", rec.ID, rec.Origin, originAWSKMS)
		}
		for _, v := range rec.Versions[1:] {
			out = append(out, kms.KeyRotation{Version: v.Version, Date: v.Created, Type: v.Rotation})
		}
		return nil
	})
	return out, err
}

// GetKeyPolicy returns the key policy document as stored.
func (k *Keystore) GetKeyPolicy(ctx context.Context, keyID string) (string, error) {
	var policy string
	err := k.view(ctx, func(st *state, now time.Time) error {
		rec, err := k.resolve(st, keyID, now)
		if err != nil {
			return err
		}
		policy = rec.Policy
		return nil
	})
	return policy, err
}

// PutKeyPolicy replaces the key policy; the document is stored verbatim
// once it parses as a JSON object (MalformedPolicyDocumentException otherwise).
func (k *Keystore) PutKeyPolicy(ctx context.Context, keyID, policy string) error {
	if err := checkPolicy(policy); err != nil {
		return err
	}
	return k.changeKey(ctx, keyID, func(st *state, rec *keyRecord, now time.Time) (bool, error) {
		if rec.Policy == policy {
			return false, nil
		}
		rec.Policy = policy
		return true, nil
	})
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

func checkGrantName(name string) error {
	if len(name) > maxGrantNameLen {
		return kms.Errorf(kms.CodeValidation, "grant name is %d characters, more than %d", len(name), maxGrantNameLen)
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == ':' || c == '/' || c == '_' || c == '-') {
			return kms.Errorf(kms.CodeValidation, "grant name %q: character %q is not allowed", name, c)
		}
	}
	return nil
}

// sameGrant reports whether two grants have the same parameters, for
// CreateGrant's idempotency on a repeated name.
func sameGrant(a, b *kms.Grant) bool {
	return a.KeyID == b.KeyID && a.Name == b.Name && a.GranteePrincipal == b.GranteePrincipal &&
		a.RetiringPrincipal == b.RetiringPrincipal && slices.Equal(a.Operations, b.Operations) &&
		maps.Equal(a.ContextEquals, b.ContextEquals) && maps.Equal(a.ContextSubset, b.ContextSubset)
}

// CreateGrant stores a grant on the key g.KeyID (key ID or key ARN) and
// returns its random ID and token. Repeating a named grant with identical
// parameters returns the existing grant, as AWS does. The keystore only
// stores grants; the server evaluates them.
func (k *Keystore) CreateGrant(ctx context.Context, g kms.Grant) (string, string, error) {
	if g.GranteePrincipal == "" {
		return "", "", kms.Errorf(kms.CodeValidation, "GranteePrincipal is required")
	}
	if len(g.Operations) == 0 {
		return "", "", kms.Errorf(kms.CodeValidation, "Operations is required")
	}
	for _, op := range g.Operations {
		if !validGrantOperation(op) {
			return "", "", kms.Errorf(kms.CodeValidation, "grant operation %q is not valid", op)
		}
	}
	if len(g.ContextEquals) > 0 && len(g.ContextSubset) > 0 {
		return "", "", kms.Errorf(kms.CodeValidation, "a grant constraint may have EncryptionContextEquals or EncryptionContextSubset, not both")
	}
	if err := checkGrantName(g.Name); err != nil {
		return "", "", err
	}
	gid, err := randomHex(32) // AWS grant IDs are 64 hex digits
	if err != nil {
		return "", "", fmt.Errorf("CreateGrant: %w", err)
	}
	// A leading version byte, 1: the token then starts with "AQ".."Af"
	// (AWS's start with "AQ" too), never with "-", which a command-line
	// client such as the aws CLI would take for an option. The rest is
	// 48 random bytes.
	tok := make([]byte, 49)
	tok[0] = 1
	if _, err := rand.Read(tok[1:]); err != nil {
		return "", "", fmt.Errorf("CreateGrant: %w", err)
	}
	token := base64.RawURLEncoding.EncodeToString(tok)
	var outID, outToken string
	err = k.change(ctx, func(st *state, now time.Time) (bool, error) {
		rec, err := k.resolveKey(st, g.KeyID, now)
		if err != nil {
			return false, err
		}
		if rec.State == kms.KeyPendingDeletion {
			return false, kms.Errorf(kms.CodeInvalidState, "key %s is pending deletion", rec.ID)
		}
		ng := cloneGrant(&g)
		ng.KeyID = rec.ID
		ng.GrantID = gid
		ng.Token = token
		ng.IssuingAccount = rootARN(k.accountOf(rec))
		ng.CreationDate = now
		if ng.Name != "" {
			for _, old := range st.Grants {
				if sameGrant(old, ng) {
					outID, outToken = old.GrantID, old.Token
					return false, nil
				}
			}
		}
		st.Grants[gid] = ng
		outID, outToken = gid, token
		return true, nil
	})
	if err != nil {
		return "", "", err
	}
	return outID, outToken, nil
}

// ListGrants returns the grants on keyID (key ID or key ARN), oldest first.
// Each Grant's KeyID is the key ARN. Tokens are included: this is an
// in-process API; a server must not return them over the wire (AWS's
// ListGrants does not).
func (k *Keystore) ListGrants(ctx context.Context, keyID string) ([]kms.Grant, error) {
	var out []kms.Grant
	err := k.view(ctx, func(st *state, now time.Time) error {
		rec, err := k.resolveKey(st, keyID, now)
		if err != nil {
			return err
		}
		for _, g := range st.Grants {
			if g.KeyID == rec.ID {
				c := cloneGrant(g)
				c.KeyID = k.keyARN(rec)
				out = append(out, *c)
			}
		}
		return nil
	})
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreationDate.Equal(out[j].CreationDate) {
			return out[i].CreationDate.Before(out[j].CreationDate)
		}
		return out[i].GrantID < out[j].GrantID
	})
	return out, err
}

// RevokeGrant deletes the grant grantID on keyID.
func (k *Keystore) RevokeGrant(ctx context.Context, keyID, grantID string) error {
	if grantID == "" {
		return kms.Errorf(kms.CodeInvalidGrantID, "grant ID is required")
	}
	return k.change(ctx, func(st *state, now time.Time) (bool, error) {
		rec, err := k.resolveKey(st, keyID, now)
		if err != nil {
			return false, err
		}
		g, ok := st.Grants[grantID]
		if !ok || g.KeyID != rec.ID {
			return false, kms.Errorf(kms.CodeNotFound, "grant %s on key %s not found", grantID, rec.ID)
		}
		delete(st.Grants, grantID)
		return true, nil
	})
}

// RetireGrant deletes a grant identified by its token, or by key and grant ID.
func (k *Keystore) RetireGrant(ctx context.Context, token, keyID, grantID string) error {
	if token == "" && (keyID == "" || grantID == "") {
		return kms.Errorf(kms.CodeValidation, "RetireGrant needs a grant token, or both a key ID and a grant ID")
	}
	return k.change(ctx, func(st *state, now time.Time) (bool, error) {
		if token != "" {
			for gid, g := range st.Grants {
				if subtle.ConstantTimeCompare([]byte(g.Token), []byte(token)) == 1 {
					delete(st.Grants, gid)
					return true, nil
				}
			}
			return false, kms.Errorf(kms.CodeInvalidGrantToken, "grant token not recognised")
		}
		rec, err := k.resolveKey(st, keyID, now)
		if err != nil {
			return false, err
		}
		g, ok := st.Grants[grantID]
		if !ok || g.KeyID != rec.ID {
			return false, kms.Errorf(kms.CodeNotFound, "grant %s on key %s not found", grantID, rec.ID)
		}
		delete(st.Grants, grantID)
		return true, nil
	})
}
