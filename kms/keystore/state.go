package keystore

import (
	"encoding/json"
	"fmt"
	"maps"
	"time"

	"github.com/kmsfs/kmsfs/kms"
)

// The versions of the keystore.json layout. Format 2 adds keys and aliases
// of accounts other than the keystore's (the account fields below); a state
// without any is still written as format 1, so that an older kmsfs keeps
// reading it, and an older kmsfs refuses a format 2 state rather than
// taking other accounts' keys for its own. Format 3 adds asymmetric and
// HMAC keys (key_spec, key_usage); a state with none is written as format 1
// or 2 as before, and an older kmsfs refuses a format 3 state rather than
// taking a private key for AES material. Format 4 adds multi-Region keys
// (multi_region, key IDs "mrk-..."; see multiregion.go); a state with none
// is written in the lowest format above. Format 5 adds custom key stores
// (customkeystore.go). Open refuses any other version.
const (
	stateFormatV1 = 1
	stateFormatV2 = 2
	stateFormatV3 = 3
	stateFormatV4 = 4
	stateFormat   = stateFormatCustomKeyStores
)

// Key origins, as AWS names them.
const (
	originAWSKMS   = "AWS_KMS"
	originExternal = "EXTERNAL"
	keyManager     = "CUSTOMER"
)

// state is the whole keystore, persisted as one JSON document (keystore.json).
// Key material appears only sealed under the KEK (see master.go). Layout:
//
//	format       1; 2 when some key or alias belongs to another account
//	             than the keystore's; 3 when some key is asymmetric or
//	             HMAC; 4 when some key is multi-Region; any other value
//	             is refused
//	generation   write counter
//	protection   {kind: "passphrase-argon2id" | "root-key-file" | "pkcs11",
//	              argon2id: {salt, time, memory_kib, threads} (passphrase only),
//	              pkcs11: {token, key} (labels of the token and of the AES key
//	                       in it that is the KEK; pkcs11 only),
//	              check: base64(nonce || AES-GCM_KEK("kmsfs keystore check v1"))}
//	keys         {"<key ID>": {id, description, state, created, deletion_date,
//	              account (format 2: the owning account when it is not the
//	                       keystore's; absent: the keystore's account, the
//	                       one given to Open),
//	              key_spec, key_usage (format 3; absent: SYMMETRIC_DEFAULT,
//	                       ENCRYPT_DECRYPT),
//	              origin, key_manager, creating_principal, policy (verbatim),
//	              tags: {"<key>": "<value>"} (absent: none),
//	              rotation: {enabled, period_days, base, last, on_demand},
//	              current_version,
//	              versions: [{version, created, rotation (AUTOMATIC|ON_DEMAND),
//	                          material: base64(nonce || AES-GCM_KEK(256-bit key;
//	                                    PKCS #8 DER private key for RSA and
//	                                    ECC specs; the HMAC key for HMAC specs))
//	                                    (absent: imported material deleted)}],
//	              import: {digest, valid_to} (origin EXTERNAL, once imported),
//	              multi_region: {primary_region, replica_regions: [...]}
//	                       (format 4; only for key IDs "mrk-" + 32 hex,
//	                       which every other key ID is not: a UUID)}}
//	aliases      {"alias/<name>": "<uuid>"}: the keystore account's aliases
//	account_aliases  (format 2) {"<account>": {"alias/<name>": "<uuid>"}}:
//	             the aliases of other accounts, each naming a key of its account
//	alias_dates  {"alias/<name>" (keystore account) or "<account>:alias/<name>":
//	              {created, updated}}
//	grants       {"<grant id>": kms.Grant fields; KeyID is the key UUID}
//	custom_key_stores  (format 5) see customkeystore.go
//	imports      {"<token id>": {key_id, algorithm, valid_to,
//	              private_key: base64(nonce || AES-GCM_KEK(PKCS #8 RSA key))}}
//
// A wrapping private key's additional data is "kmsfs/keystore/import/v1" NUL
// <token id>; an import's digest is SHA-256("kmsfs keystore imported
// material v1" NUL <uuid> NUL material), so a re-import can be checked to be
// the same material without keeping it.
//
// Sealed material's additional data is "kmsfs/keystore/material/v1" NUL
// <uuid> NUL uint32(version), so material cannot be moved between keys or
// versions. Times are RFC 3339 UTC.
type state struct {
	Format int `json:"format"`
	// Generation counts writes; it makes every write distinct and helps a
	// human reading two copies of the file tell which is newer.
	Generation uint64                `json:"generation"`
	Protection protection            `json:"protection"`
	Keys       map[string]*keyRecord `json:"keys"`    // by key ID (UUID)
	Aliases    map[string]string     `json:"aliases"` // "alias/name" -> key ID
	// AccountAliases are the alias namespaces of other accounts than the
	// keystore's: account -> "alias/name" -> key ID.
	AccountAliases map[string]map[string]string `json:"account_aliases,omitempty"`
	// AliasDates are when each alias was created and last pointed at a
	// key, by aliasDateKey. Aliases made before they were recorded have
	// none; a kmsfs that predates them ignores them.
	AliasDates map[string]aliasDates `json:"alias_dates,omitempty"`
	Grants     map[string]*kms.Grant `json:"grants"` // by grant ID
	// Imports are the outstanding GetParametersForImport results, by token
	// ID: a private key each, sealed, until used or 24 hours old.
	Imports map[string]*pendingImport `json:"imports,omitempty"`
	// CustomKeyStores (format 5) are the custom key stores, by ID.
	CustomKeyStores map[string]*customKeyStoreRecord `json:"custom_key_stores,omitempty"`
}

type keyRecord struct {
	ID string `json:"id"`
	// Account owns the key when it is not the keystore's account ("").
	Account           string       `json:"account,omitempty"`
	Description       string       `json:"description,omitempty"`
	State             kms.KeyState `json:"state"`
	Created           time.Time    `json:"created"`
	DeletionDate      time.Time    `json:"deletion_date,omitzero"`
	Origin            string       `json:"origin"`
	KeyManager        string       `json:"key_manager"`
	CreatingPrincipal string       `json:"creating_principal,omitempty"`
	// Policy is the key policy document, stored verbatim.
	Policy string `json:"policy"`
	// Tags are the key's resource tags. A kmsfs that predates them
	// ignores them (they grant nothing) and drops them if it rewrites the
	// state.
	Tags     map[string]string `json:"tags,omitempty"`
	Rotation rotationRecord    `json:"rotation"`
	// CurrentVersion is the material version new ciphertext uses; 0 while
	// the key has no material (origin EXTERNAL before import).
	CurrentVersion int             `json:"current_version"`
	Versions       []versionRecord `json:"versions"` // Versions[i].Version == i+1
	// Import describes imported material (origin EXTERNAL), once there has
	// been any: after DeleteImportedKeyMaterial the version keeps no
	// material, and only material with this digest may be imported again.
	Import *importedMaterial `json:"import,omitempty"`

	// KeySpec and KeyUsage are AWS's names; empty for symmetric
	// (SYMMETRIC_DEFAULT, ENCRYPT_DECRYPT) keys, so that states without
	// other keys keep their format.
	KeySpec  string `json:"key_spec,omitempty"`
	KeyUsage string `json:"key_usage,omitempty"`
	// CustomKeyStore (format 5) is the ID of the custom key store whose
	// token holds the key (origin AWS_CLOUDHSM).
	CustomKeyStore string `json:"custom_key_store,omitempty"`

	// MultiRegion is set for multi-Region keys (format 4; multiregion.go).
	MultiRegion *multiRegionRecord `json:"multi_region,omitempty"`

	uuid keyUUID // parsed ID, set by index
}

type rotationRecord struct {
	Enabled    bool `json:"enabled"`
	PeriodDays int  `json:"period_days,omitempty"`
	// Base is when the current automatic-rotation period started: when
	// rotation was enabled, or the last automatic rotation. The next
	// automatic rotation is Base + PeriodDays.
	Base time.Time `json:"base,omitzero"`
	// Last is the last rotation of either kind (automatic or on demand).
	Last time.Time `json:"last,omitzero"`
	// OnDemand counts on-demand rotations (AWS allows 10 per key). A
	// format 1 state written before it was kept counts from 0.
	OnDemand int `json:"on_demand,omitempty"`
}

func (r rotationRecord) next() time.Time {
	if !r.Enabled {
		return time.Time{}
	}
	return r.Base.Add(days(r.PeriodDays))
}

type versionRecord struct {
	Version int       `json:"version"`
	Created time.Time `json:"created"`
	// Material is the 256-bit AES key, sealed under the KEK with
	// materialAADFor(key ID, version) as additional data.
	Material []byte `json:"material"`
	// Rotation is how a version after the first came: "AUTOMATIC" or
	// "ON_DEMAND" (absent for the first version, and for versions made
	// before it was recorded).
	Rotation string `json:"rotation,omitempty"`
}

func days(n int) time.Duration { return time.Duration(n) * 24 * time.Hour }

func newState(p protection) *state {
	return &state{
		Format:     stateFormatV1,
		Protection: p,
		Keys:       map[string]*keyRecord{},
		Aliases:    map[string]string{},
		Grants:     map[string]*kms.Grant{},
	}
}

// decodeState parses and validates a state file.
func decodeState(data []byte) (*state, error) {
	var st state
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("parse state: %w", err)
	}
	if st.Format < stateFormatV1 || st.Format > stateFormat {
		return nil, fmt.Errorf("state format %d is not supported (this kmsfs reads formats %d to %d)", st.Format, stateFormatV1, stateFormat)
	}
	if st.Keys == nil {
		st.Keys = map[string]*keyRecord{}
	}
	if st.Aliases == nil {
		st.Aliases = map[string]string{}
	}
	if st.Grants == nil {
		st.Grants = map[string]*kms.Grant{}
	}
	if st.Imports == nil {
		st.Imports = map[string]*pendingImport{}
	}
	if err := st.index(); err != nil {
		return nil, err
	}
	return &st, nil
}

// index checks the invariants the code relies on and fills derived fields.
func (st *state) index() error {
	for id, rec := range st.Keys {
		if rec == nil || rec.ID != id {
			return fmt.Errorf("state: key entry %q is inconsistent", id)
		}
		u, err := parseStateKeyID(rec)
		if err != nil {
			return err
		}
		rec.uuid = u
		for i, v := range rec.Versions {
			if v.Version != i+1 {
				return fmt.Errorf("state: key %s: version %d at position %d", id, v.Version, i+1)
			}
		}
		if rec.CurrentVersion < 0 || rec.CurrentVersion > len(rec.Versions) || (rec.CurrentVersion == 0) != (len(rec.Versions) == 0) {
			return fmt.Errorf("state: key %s: current version %d of %d", id, rec.CurrentVersion, len(rec.Versions))
		}
	}
	for name, id := range st.Aliases {
		if rec, ok := st.Keys[id]; !ok || rec.Account != "" {
			return fmt.Errorf("state: alias %s names missing key %s", name, id)
		}
	}
	for account, names := range st.AccountAliases {
		if !isAccountID(account) {
			return fmt.Errorf("state: alias namespace %q is not an account ID", account)
		}
		for name, id := range names {
			if rec, ok := st.Keys[id]; !ok || rec.Account != account {
				return fmt.Errorf("state: alias %s of account %s names missing key %s", name, account, id)
			}
		}
	}
	for gid, g := range st.Grants {
		if g == nil || g.GrantID != gid {
			return fmt.Errorf("state: grant entry %q is inconsistent", gid)
		}
	}
	if err := st.indexCustomKeyStores(); err != nil {
		return err
	}
	return nil
}

// clone returns a deep copy, so a failed write never leaves a half-applied
// change in memory.
func (st *state) clone() *state {
	c := &state{
		Format:     st.Format,
		Generation: st.Generation,
		Protection: st.Protection,
		Keys:       make(map[string]*keyRecord, len(st.Keys)),
		Aliases:    maps.Clone(st.Aliases),
		Grants:     make(map[string]*kms.Grant, len(st.Grants)),
		AliasDates: maps.Clone(st.AliasDates),
	}
	c.CustomKeyStores = cloneCustomKeyStores(st.CustomKeyStores)
	if st.AccountAliases != nil {
		c.AccountAliases = make(map[string]map[string]string, len(st.AccountAliases))
		for account, names := range st.AccountAliases {
			c.AccountAliases[account] = maps.Clone(names)
		}
	}
	c.Imports = make(map[string]*pendingImport, len(st.Imports))
	for id, rec := range st.Keys {
		r := *rec
		r.Versions = append([]versionRecord(nil), rec.Versions...)
		r.Tags = maps.Clone(rec.Tags)
		r.MultiRegion = rec.MultiRegion.clone()
		if rec.Import != nil {
			im := *rec.Import
			r.Import = &im
		}
		c.Keys[id] = &r
	}
	for id, p := range st.Imports {
		pi := *p
		c.Imports[id] = &pi
	}
	for id, g := range st.Grants {
		c.Grants[id] = cloneGrant(g)
	}
	return c
}

func cloneGrant(g *kms.Grant) *kms.Grant {
	c := *g
	c.Operations = append([]string(nil), g.Operations...)
	c.ContextEquals = maps.Clone(g.ContextEquals)
	c.ContextSubset = maps.Clone(g.ContextSubset)
	return &c
}

// expired reports whether a key's deletion window has passed: from then on
// the key is gone, whether or not the purge has been written yet.
func (r *keyRecord) expired(now time.Time) bool {
	return r.State == kms.KeyPendingDeletion && !now.Before(r.DeletionDate)
}

// rotationDue reports whether automatic rotation should add a version now.
// AWS rotates only enabled keys; a key disabled past its date rotates when it
// is enabled again. Imported material is never rotated automatically.
func (r *keyRecord) rotationDue(now time.Time) bool {
	return r.State == kms.KeyEnabled && r.Origin == originAWSKMS && r.Rotation.Enabled && !now.Before(r.Rotation.next())
}

// nextDue is the earliest time at which some key needs maintenance (purge or
// automatic rotation); zero if none ever will without a state change.
func (st *state) nextDue() time.Time {
	var due time.Time
	consider := func(t time.Time) {
		if due.IsZero() || t.Before(due) {
			due = t
		}
	}
	for _, rec := range st.Keys {
		if rec.State == kms.KeyPendingDeletion {
			consider(rec.DeletionDate)
		}
		if rec.materialExpires() {
			consider(rec.Import.ValidTo)
		}
		if rec.State == kms.KeyEnabled && rec.Origin == originAWSKMS && rec.Rotation.Enabled {
			consider(rec.Rotation.next())
		}
	}
	return due
}

// purge destroys a key: its material, its aliases and its grants, as AWS does
// at the end of the deletion window.
func (st *state) purge(id string) {
	delete(st.Keys, id)
	for name, target := range st.Aliases {
		if target == id {
			st.deleteAlias("", name)
		}
	}
	for account, names := range st.AccountAliases {
		for name, target := range names {
			if target == id {
				st.deleteAlias(account, name)
			}
		}
	}
	for gid, g := range st.Grants {
		if g.KeyID == id {
			delete(st.Grants, gid)
		}
	}
	for tid, p := range st.Imports {
		if p.KeyID == id {
			delete(st.Imports, tid)
		}
	}
}

// aliases returns the alias namespace of owner ("" for the keystore's
// account); nil (reads as empty) if that account has none yet.
func (st *state) aliases(owner string) map[string]string {
	if owner == "" {
		return st.Aliases
	}
	return st.AccountAliases[owner]
}

type aliasDates struct {
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
}

// aliasDateKey names an alias in AliasDates.
func aliasDateKey(owner, name string) string {
	if owner == "" {
		return name
	}
	return owner + ":" + name
}

// setAlias points name in owner's namespace at key id, now.
func (st *state) setAlias(owner, name, id string, now time.Time) {
	if st.AliasDates == nil {
		st.AliasDates = map[string]aliasDates{}
	}
	dk := aliasDateKey(owner, name)
	d := st.AliasDates[dk]
	if _, exists := st.aliases(owner)[name]; !exists {
		d = aliasDates{Created: now}
	}
	d.Updated = now
	st.AliasDates[dk] = d
	if owner == "" {
		st.Aliases[name] = id
		return
	}
	if st.AccountAliases == nil {
		st.AccountAliases = map[string]map[string]string{}
	}
	if st.AccountAliases[owner] == nil {
		st.AccountAliases[owner] = map[string]string{}
	}
	st.AccountAliases[owner][name] = id
}

// deleteAlias removes name from owner's namespace.
func (st *state) deleteAlias(owner, name string) {
	delete(st.AliasDates, aliasDateKey(owner, name))
	if owner == "" {
		delete(st.Aliases, name)
		return
	}
	delete(st.AccountAliases[owner], name)
	if len(st.AccountAliases[owner]) == 0 {
		delete(st.AccountAliases, owner)
	}
}

// format is the layout version st needs: 5 once it holds a custom key
// store, 4 once it holds a multi-Region key, 3 once it holds an asymmetric or HMAC key, 2 once it holds a key or
// an alias of another account, else 1 (see stateFormat).
func (st *state) format() int {
	if len(st.CustomKeyStores) > 0 {
		return stateFormatCustomKeyStores
	}
	f := stateFormatV1
	if len(st.AccountAliases) > 0 {
		f = stateFormatV2
	}
	for _, rec := range st.Keys {
		if rec.KeySpec != "" {
			f = max(f, stateFormatV3)
		}
		if rec.Account != "" {
			f = max(f, stateFormatV2)
		}
		if rec.MultiRegion != nil {
			f = max(f, stateFormatV4)
		}
	}
	return f
}
