package server

import (
	"context"
	"slices"
	"time"

	"github.com/kmsfs/kmsfs/kms"
	"github.com/kmsfs/kmsfs/kms/keystore"
)

// Multi-Region keys across servers. Each `kmsfs kms serve` is one region; a
// replica lives in another server, named in this one's peers (Config.Peers).
//
// ReplicateKey, on the primary's server:
//  1. authorises kms:ReplicateKey on the primary key (its key policy);
//  2. asks the replica's server for a wrapping key (KmsfsReplicaWrappingKey):
//     that server authorises this server's principal for kms:CreateKey, as
//     AWS requires in the replica region, and hands out a fresh RSA-3072
//     public key and a token naming its private key;
//  3. wraps every material version to that key with RSAES_OAEP_SHA_256
//     (the keystore's ExportReplica);
//  4. sends the wrapped material with the replica's policy, description and
//     tags (KmsfsImportReplica; authorised again for kms:CreateKey); the
//     replica's keystore unwraps it and seals it under its own KEK;
//  5. records the new replica region on the primary key.
//
// Plaintext material never crosses the network, even without TLS, and
// appears in no log or audit entry: the requests carry only RSA-OAEP
// ciphertext for a private key that never leaves the replica's keystore.
//
// UpdatePrimaryRegion, on the primary's server, authorises
// kms:UpdatePrimaryRegion on the primary key, tells the new primary's server
// (KmsfsSetMultiRegionConfiguration, authorised there by
// kms:UpdatePrimaryRegion on the replica key's policy), then changes its own
// key, then tells the other replicas' servers it knows. A replica whose
// server is not among the peers keeps its old view until told.

// multiRegionStore is what the multi-Region operations need of the store;
// the embedded keystore has it.
type multiRegionStore interface {
	ReplicaWrappingKey(ctx context.Context, keyID string) (token, publicKey []byte, err error)
	ExportReplica(ctx context.Context, keyID, replicaRegion string, wrappingKey []byte) (keystore.ReplicaExport, error)
	ImportReplica(ctx context.Context, importToken []byte, ex keystore.ReplicaExport, in keystore.ReplicaInput) (kms.KeyMetadata, error)
	AddReplicaRegion(ctx context.Context, keyID, region string) error
	DropReplicaRegion(ctx context.Context, keyID, region string) error
	CheckPrimaryUpdate(ctx context.Context, keyID, region string) error
	UpdatePrimaryRegion(ctx context.Context, keyID, region string) (primary string, replicas []string, err error)
	SetMultiRegionConfiguration(ctx context.Context, keyID, primary string, replicas []string) error
}

func (s *Server) multiRegion() (multiRegionStore, error) {
	mr, ok := s.store.(multiRegionStore)
	if !ok {
		return nil, kms.Errorf(kms.CodeUnsupportedOperation, "this key store has no multi-Region keys")
	}
	return mr, nil
}

type multiRegionKeyJSON struct {
	Arn    string `json:"Arn"`
	Region string `json:"Region"`
}

type multiRegionConfigurationJSON struct {
	MultiRegionKeyType string               `json:"MultiRegionKeyType"`
	PrimaryKey         multiRegionKeyJSON   `json:"PrimaryKey"`
	ReplicaKeys        []multiRegionKeyJSON `json:"ReplicaKeys"`
}

func multiRegionJSON(c *kms.MultiRegionConfiguration) *multiRegionConfigurationJSON {
	if c == nil {
		return nil
	}
	out := &multiRegionConfigurationJSON{
		MultiRegionKeyType: c.KeyType,
		PrimaryKey:         multiRegionKeyJSON{Arn: c.PrimaryKey.ARN, Region: c.PrimaryKey.Region},
		ReplicaKeys:        []multiRegionKeyJSON{},
	}
	for _, r := range c.ReplicaKeys {
		out.ReplicaKeys = append(out.ReplicaKeys, multiRegionKeyJSON{Arn: r.ARN, Region: r.Region})
	}
	return out
}

type replicateKeyInput struct {
	KeyId                          string    `json:"KeyId"`
	ReplicaRegion                  string    `json:"ReplicaRegion"`
	Policy                         string    `json:"Policy"`
	BypassPolicyLockoutSafetyCheck bool      `json:"BypassPolicyLockoutSafetyCheck"`
	Description                    string    `json:"Description"`
	Tags                           []tagJSON `json:"Tags"`
}

type replicateKeyOutput struct {
	ReplicaKeyMetadata keyMetadataJSON `json:"ReplicaKeyMetadata"`
	ReplicaPolicy      string          `json:"ReplicaPolicy"`
	ReplicaTags        []tagJSON       `json:"ReplicaTags"`
}

type updatePrimaryRegionInput struct {
	KeyId         string `json:"KeyId"`
	PrimaryRegion string `json:"PrimaryRegion"`
}

// The peer operations' bodies (docs/FORMAT.md, "Multi-Region replication").
type replicaWrappingKeyInput struct {
	KeyId string `json:"KeyId"`
}

type replicaWrappingKeyOutput struct {
	ImportToken       []byte `json:"ImportToken"`
	PublicKey         []byte `json:"PublicKey"`
	WrappingAlgorithm string `json:"WrappingAlgorithm"`
}

type replicaMaterialJSON struct {
	Version              int     `json:"Version"`
	CreationDate         float64 `json:"CreationDate"`
	Rotation             string  `json:"Rotation,omitempty"`
	EncryptedKeyMaterial []byte  `json:"EncryptedKeyMaterial"`
}

type importReplicaInput struct {
	ImportToken                    []byte                `json:"ImportToken"`
	KeyId                          string                `json:"KeyId"`
	AWSAccountId                   string                `json:"AWSAccountId"`
	PrimaryRegion                  string                `json:"PrimaryRegion"`
	ReplicaRegions                 []string              `json:"ReplicaRegions"`
	CurrentVersion                 int                   `json:"CurrentVersion"`
	Versions                       []replicaMaterialJSON `json:"Versions"`
	Policy                         string                `json:"Policy"`
	BypassPolicyLockoutSafetyCheck bool                  `json:"BypassPolicyLockoutSafetyCheck"`
	Description                    string                `json:"Description"`
	Tags                           []tagJSON             `json:"Tags"`
	Principal                      string                `json:"Principal"`
}

type setMultiRegionConfigurationInput struct {
	KeyId          string   `json:"KeyId"`
	PrimaryRegion  string   `json:"PrimaryRegion"`
	ReplicaRegions []string `json:"ReplicaRegions"`
}

func (s *Server) replicateKey(c *call, body []byte) (response, error) {
	var in replicateKeyInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	mr, err := s.multiRegion()
	if err != nil {
		return response{}, err
	}
	if in.ReplicaRegion == "" {
		return response{}, kms.Errorf(kms.CodeValidation, "ReplicaRegion is required")
	}
	if in.Policy != "" {
		if _, err := ParsePolicy(in.Policy); err != nil {
			return response{}, err
		}
	}
	arn, err := s.resolveAndAuthorize(c, in.KeyId, "")
	if err != nil {
		return response{}, err
	}
	md, err := s.store.DescribeKey(c.ctx, arn)
	if err != nil {
		return response{}, err
	}
	if md.MultiRegionConfiguration == nil || md.MultiRegionConfiguration.KeyType != kms.MultiRegionPrimary {
		return response{}, kms.Errorf(kms.CodeUnsupportedOperation, "key %s is not a multi-Region primary key", arn)
	}
	if in.ReplicaRegion == s.region {
		return response{}, kms.Errorf(kms.CodeValidation, "ReplicaRegion %s is the region of the primary key %s", in.ReplicaRegion, arn)
	}
	listed := false
	for _, r := range md.MultiRegionConfiguration.ReplicaKeys {
		listed = listed || r.Region == in.ReplicaRegion
	}
	peer, err := s.peerFor(in.ReplicaRegion)
	if err != nil {
		if listed {
			return response{}, kms.Errorf(kms.CodeAlreadyExists, "key %s already has a replica in %s", arn, in.ReplicaRegion)
		}
		return response{}, err
	}
	// The replica's server answers AlreadyExistsException if it has the
	// key. If it has not, a replica the primary still lists there was
	// deleted, and a new one may be made, as in AWS.
	var wk replicaWrappingKeyOutput
	if err := peer.call(c.ctx, "KmsfsReplicaWrappingKey", replicaWrappingKeyInput{KeyId: md.KeyID}, &wk); err != nil {
		return response{}, err
	}
	if listed {
		if err := mr.DropReplicaRegion(c.ctx, arn, in.ReplicaRegion); err != nil {
			return response{}, err
		}
	}
	ex, err := mr.ExportReplica(c.ctx, arn, in.ReplicaRegion, wk.PublicKey)
	if err != nil {
		return response{}, err
	}
	req := importReplicaInput{
		ImportToken: wk.ImportToken, KeyId: ex.KeyID, AWSAccountId: ex.Account,
		PrimaryRegion: ex.PrimaryRegion, ReplicaRegions: ex.ReplicaRegions, CurrentVersion: ex.CurrentVersion,
		Policy: in.Policy, BypassPolicyLockoutSafetyCheck: in.BypassPolicyLockoutSafetyCheck,
		Description: in.Description, Tags: in.Tags, Principal: c.cred.Principal,
	}
	for _, v := range ex.Versions {
		req.Versions = append(req.Versions, replicaMaterialJSON{Version: v.Version, CreationDate: epoch(v.Created), Rotation: v.Rotation, EncryptedKeyMaterial: v.Wrapped})
	}
	var out replicateKeyOutput
	if err := peer.call(c.ctx, "KmsfsImportReplica", req, &out); err != nil {
		return response{}, err
	}
	if err := mr.AddReplicaRegion(c.ctx, arn, in.ReplicaRegion); err != nil {
		return response{}, err
	}
	return response{v: out}, nil
}

// authorizeReplicaCreation is AWS's rule for the replica region of
// ReplicateKey: the caller needs kms:CreateKey there (identity policy).
func (s *Server) authorizeReplicaCreation(c *call) error {
	if c.cred.Identity == nil {
		return nil
	}
	const action = "kms:CreateKey"
	rc := s.requestContext(c, action, "*")
	switch c.cred.Identity.Evaluate(&rc) {
	case Allow:
		return nil
	case Deny:
		return denied(c, action, "*", "with an explicit deny in an identity-based policy")
	}
	return denied(c, action, "*", "because no identity-based policy allows the "+action+" action")
}

func (s *Server) replicaWrappingKey(c *call, body []byte) (response, error) {
	var in replicaWrappingKeyInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	mr, err := s.multiRegion()
	if err != nil {
		return response{}, err
	}
	if err := s.authorizeReplicaCreation(c); err != nil {
		return response{}, err
	}
	c.entry.KeyARN = "arn:aws:kms:" + s.region + ":" + c.cred.Account + ":key/" + in.KeyId
	token, pub, err := mr.ReplicaWrappingKey(c.ctx, in.KeyId)
	if err != nil {
		return response{}, err
	}
	return response{v: replicaWrappingKeyOutput{ImportToken: token, PublicKey: pub, WrappingAlgorithm: kms.WrappingRSAOAEPSHA256}}, nil
}

func (s *Server) importReplica(c *call, body []byte) (response, error) {
	var in importReplicaInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	mr, err := s.multiRegion()
	if err != nil {
		return response{}, err
	}
	if err := s.authorizeReplicaCreation(c); err != nil {
		return response{}, err
	}
	// A replica belongs to the primary's account, and only that account's
	// principals may make one (AWS has no cross-account replicas).
	if in.AWSAccountId != c.cred.Account {
		return response{}, kms.Errorf(kms.CodeAccessDenied, "User: %s may not create a replica key in account %s", c.cred.Principal, in.AWSAccountId)
	}
	policy := in.Policy
	if policy == "" {
		policy = DefaultPolicy(c.cred.Account)
	} else {
		p, err := ParsePolicy(policy)
		if err != nil {
			return response{}, err
		}
		if !in.BypassPolicyLockoutSafetyCheck && !s.lockoutSafe(c, p, "*") {
			return response{}, kms.Errorf(kms.CodeMalformedPolicy, "The new key policy will not allow you to update the key policy in the future.")
		}
	}
	ex := keystore.ReplicaExport{
		KeyID: in.KeyId, Account: in.AWSAccountId, PrimaryRegion: in.PrimaryRegion,
		ReplicaRegions: in.ReplicaRegions, CurrentVersion: in.CurrentVersion,
	}
	for _, v := range in.Versions {
		ex.Versions = append(ex.Versions, keystore.ReplicaMaterial{
			Version: v.Version, Created: time.UnixMilli(int64(v.CreationDate * 1000)).UTC(), Rotation: v.Rotation, Wrapped: v.EncryptedKeyMaterial,
		})
	}
	// The creating principal is the primary's caller, as the primary's
	// server says; only one of the calling server's own account is taken.
	principal := in.Principal
	if principal == "" || arnAccount(principal) != c.cred.Account {
		principal = c.cred.Principal
	}
	md, err := mr.ImportReplica(c.ctx, in.ImportToken, ex, keystore.ReplicaInput{
		Policy: policy, Description: in.Description, Tags: tagMap(in.Tags), Principal: principal,
	})
	if err != nil {
		return response{}, err
	}
	c.entry.KeyARN = md.ARN
	tags := in.Tags
	if tags == nil {
		tags = []tagJSON{}
	}
	return response{v: replicateKeyOutput{ReplicaKeyMetadata: metadataJSON(md), ReplicaPolicy: policy, ReplicaTags: tags}}, nil
}

func (s *Server) updatePrimaryRegion(c *call, body []byte) (response, error) {
	var in updatePrimaryRegionInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	mr, err := s.multiRegion()
	if err != nil {
		return response{}, err
	}
	if in.PrimaryRegion == "" {
		return response{}, kms.Errorf(kms.CodeValidation, "PrimaryRegion is required")
	}
	arn, err := s.resolveAndAuthorize(c, in.KeyId, "")
	if err != nil {
		return response{}, err
	}
	if err := mr.CheckPrimaryUpdate(c.ctx, arn, in.PrimaryRegion); err != nil {
		return response{}, err
	}
	md, err := s.store.DescribeKey(c.ctx, arn)
	if err != nil {
		return response{}, err
	}
	peer, err := s.peerFor(in.PrimaryRegion)
	if err != nil {
		return response{}, err
	}
	// The configuration after the change: what UpdatePrimaryRegion below
	// makes of the primary key's, computed first to tell the new primary.
	var replicas []string
	for _, r := range md.MultiRegionConfiguration.ReplicaKeys {
		if r.Region != in.PrimaryRegion {
			replicas = append(replicas, r.Region)
		}
	}
	replicas = append(replicas, s.region)
	slices.Sort(replicas)
	set := setMultiRegionConfigurationInput{KeyId: md.KeyID, PrimaryRegion: in.PrimaryRegion, ReplicaRegions: replicas}
	if err := peer.call(c.ctx, "KmsfsSetMultiRegionConfiguration", set, &emptyOutput{}); err != nil {
		return response{}, err
	}
	if _, _, err := mr.UpdatePrimaryRegion(c.ctx, arn, in.PrimaryRegion); err != nil {
		return response{}, err
	}
	for _, r := range replicas {
		if r == s.region {
			continue
		}
		other, err := s.peerFor(r)
		if err == nil {
			err = other.call(c.ctx, "KmsfsSetMultiRegionConfiguration", set, &emptyOutput{})
		}
		if err != nil {
			s.logf("UpdatePrimaryRegion %s: the replica in %s was not told of the new primary %s: %v", md.KeyID, r, in.PrimaryRegion, err)
		}
	}
	return response{v: emptyOutput{}}, nil
}

func (s *Server) setMultiRegionConfiguration(c *call, body []byte) (response, error) {
	var in setMultiRegionConfigurationInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	mr, err := s.multiRegion()
	if err != nil {
		return response{}, err
	}
	arn, err := s.resolve(c, in.KeyId)
	if err != nil {
		return response{}, err
	}
	if err := s.authorize(c, "kms:UpdatePrimaryRegion", arn, nil, "", nil); err != nil {
		return response{}, err
	}
	if err := mr.SetMultiRegionConfiguration(c.ctx, arn, in.PrimaryRegion, in.ReplicaRegions); err != nil {
		return response{}, err
	}
	return response{v: emptyOutput{}}, nil
}
