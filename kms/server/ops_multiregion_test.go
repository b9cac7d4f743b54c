package server

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	sdkkms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"

	"github.com/kmsfs/kmsfs/kms/auditlog"
	"github.com/kmsfs/kmsfs/kms/keystore"
)

// regionServer is one region's server on its own keystore.
type regionServer struct {
	region string
	srv    *Server
	http   *httptest.Server
	audit  string
}

func newRegionServer(t *testing.T, region string) *regionServer {
	t.Helper()
	return newRegionServerWith(t, region, testCreds, nil)
}

// newRegionServerWith is newRegionServer serving creds, with the
// keystore's clock now (nil: time.Now).
func newRegionServerWith(t *testing.T, region string, creds Credentials, now func() time.Time) *regionServer {
	t.Helper()
	dir := t.TempDir()
	ks, err := keystore.Open(filepath.Join(dir, "ks"), keystore.Options{Region: region, Account: testAccount, Now: now, Warn: func(string) {}})
	if err != nil {
		t.Fatal(err)
	}
	r := &regionServer{region: region, audit: filepath.Join(dir, "audit.log")}
	al, err := auditlog.Open(r.audit, auditlog.Options{})
	if err != nil {
		t.Fatal(err)
	}
	r.srv, err = New(Config{Store: ks, Credentials: creds, Region: region, Audit: al})
	if err != nil {
		t.Fatal(err)
	}
	r.http = httptest.NewServer(r.srv)
	t.Cleanup(func() {
		r.http.Close()
		al.Close()
		ks.Close()
	})
	return r
}

func (r *regionServer) sdk(akid, secret string) *sdkkms.Client {
	return sdkkms.New(sdkkms.Options{
		Region:       r.region,
		BaseEndpoint: aws.String(r.http.URL),
		Credentials:  credentials.NewStaticCredentialsProvider(akid, secret, ""),
	})
}

func wantAPIError(t *testing.T, err error, code string) {
	t.Helper()
	var api smithy.APIError
	if !errors.As(err, &api) || api.ErrorCode() != code {
		t.Fatalf("got %v, want %s", err, code)
	}
}

func TestReplicateKeyAcrossServers(t *testing.T) {
	ctx := context.Background()
	a, b := newRegionServer(t, "eu-west-1"), newRegionServer(t, "us-east-2")
	a.srv.peers = Peers{"us-east-2": {Endpoint: b.http.URL, AccessKeyID: "AKIDBOB", SecretAccessKey: "bob-secret"}}
	b.srv.peers = Peers{"eu-west-1": {Endpoint: a.http.URL, AccessKeyID: "AKIDBOB", SecretAccessKey: "bob-secret"}}
	ca, cb := a.sdk("AKIDALICE", "alice-secret"), b.sdk("AKIDALICE", "alice-secret")

	created, err := ca.CreateKey(ctx, &sdkkms.CreateKeyInput{MultiRegion: aws.Bool(true), Description: aws.String("primary")})
	if err != nil {
		t.Fatal(err)
	}
	id := *created.KeyMetadata.KeyId
	if !strings.HasPrefix(id, "mrk-") || !*created.KeyMetadata.MultiRegion || created.KeyMetadata.MultiRegionConfiguration.MultiRegionKeyType != types.MultiRegionKeyTypePrimary {
		t.Fatalf("CreateKey MultiRegion: %+v", created.KeyMetadata)
	}
	enc, err := ca.Encrypt(ctx, &sdkkms.EncryptInput{KeyId: aws.String(id), Plaintext: []byte("across regions")})
	if err != nil {
		t.Fatal(err)
	}

	rep, err := ca.ReplicateKey(ctx, &sdkkms.ReplicateKeyInput{KeyId: aws.String(id), ReplicaRegion: aws.String("us-east-2"),
		Description: aws.String("replica"), Tags: []types.Tag{{TagKey: aws.String("region"), TagValue: aws.String("b")}}})
	if err != nil {
		t.Fatalf("ReplicateKey: %v", err)
	}
	if *rep.ReplicaKeyMetadata.Arn != "arn:aws:kms:us-east-2:"+testAccount+":key/"+id || *rep.ReplicaKeyMetadata.Description != "replica" || len(rep.ReplicaTags) != 1 {
		t.Fatalf("ReplicateKey output: %+v", rep)
	}
	dec, err := cb.Decrypt(ctx, &sdkkms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
	if err != nil || string(dec.Plaintext) != "across regions" || *dec.KeyId != *rep.ReplicaKeyMetadata.Arn {
		t.Fatalf("Decrypt in the replica region: %v", err)
	}
	d, err := ca.DescribeKey(ctx, &sdkkms.DescribeKeyInput{KeyId: aws.String(id)})
	if err != nil {
		t.Fatal(err)
	}
	if c := d.KeyMetadata.MultiRegionConfiguration; len(c.ReplicaKeys) != 1 || *c.ReplicaKeys[0].Region != "us-east-2" {
		t.Fatalf("primary's configuration: %+v", c)
	}

	// AWS's error types.
	_, err = ca.ReplicateKey(ctx, &sdkkms.ReplicateKeyInput{KeyId: aws.String(id), ReplicaRegion: aws.String("us-east-2")})
	wantAPIError(t, err, "AlreadyExistsException")
	_, err = ca.ReplicateKey(ctx, &sdkkms.ReplicateKeyInput{KeyId: aws.String(id), ReplicaRegion: aws.String("eu-west-1")})
	wantAPIError(t, err, "ValidationException")
	_, err = cb.ReplicateKey(ctx, &sdkkms.ReplicateKeyInput{KeyId: aws.String(id), ReplicaRegion: aws.String("eu-west-1")})
	wantAPIError(t, err, "UnsupportedOperationException")
	single, err := ca.CreateKey(ctx, &sdkkms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = ca.ReplicateKey(ctx, &sdkkms.ReplicateKeyInput{KeyId: single.KeyMetadata.KeyId, ReplicaRegion: aws.String("us-east-2")})
	wantAPIError(t, err, "UnsupportedOperationException")
	// Mallory is of another account: the primary's policy refuses her.
	_, err = a.sdk("AKIDMAL", "mal-secret").ReplicateKey(ctx, &sdkkms.ReplicateKeyInput{KeyId: created.KeyMetadata.Arn, ReplicaRegion: aws.String("us-east-2")})
	wantAPIError(t, err, "AccessDeniedException")

	// UpdatePrimaryRegion changes both sides.
	_, err = ca.UpdatePrimaryRegion(ctx, &sdkkms.UpdatePrimaryRegionInput{KeyId: aws.String(id), PrimaryRegion: aws.String("ap-south-1")})
	wantAPIError(t, err, "NotFoundException")
	if _, err := ca.UpdatePrimaryRegion(ctx, &sdkkms.UpdatePrimaryRegionInput{KeyId: aws.String(id), PrimaryRegion: aws.String("us-east-2")}); err != nil {
		t.Fatalf("UpdatePrimaryRegion: %v", err)
	}
	for _, tc := range []struct {
		c    *sdkkms.Client
		want types.MultiRegionKeyType
	}{{ca, types.MultiRegionKeyTypeReplica}, {cb, types.MultiRegionKeyTypePrimary}} {
		d, err := tc.c.DescribeKey(ctx, &sdkkms.DescribeKeyInput{KeyId: aws.String(id)})
		if err != nil {
			t.Fatal(err)
		}
		c := d.KeyMetadata.MultiRegionConfiguration
		if c.MultiRegionKeyType != tc.want || *c.PrimaryKey.Region != "us-east-2" || len(c.ReplicaKeys) != 1 || *c.ReplicaKeys[0].Region != "eu-west-1" {
			t.Fatalf("after UpdatePrimaryRegion: %+v", c)
		}
	}

	// The audit logs record the operations, on both sides; neither log
	// holds the material (nor any request body).
	for _, r := range []*regionServer{a, b} {
		data, err := os.ReadFile(r.audit)
		if err != nil {
			t.Fatal(err)
		}
		for _, op := range map[string][]string{
			"eu-west-1": {`"ReplicateKey"`, `"UpdatePrimaryRegion"`},
			"us-east-2": {`"KmsfsReplicaWrappingKey"`, `"KmsfsImportReplica"`, `"KmsfsSetMultiRegionConfiguration"`},
		}[r.region] {
			if !bytes.Contains(data, []byte(op)) {
				t.Errorf("audit log of %s has no %s entry", r.region, op)
			}
		}
		if bytes.Contains(data, []byte("EncryptedKeyMaterial")) {
			t.Errorf("audit log of %s holds request bodies", r.region)
		}
	}
}

func TestReplicateKeyPeerAuthorisation(t *testing.T) {
	ctx := context.Background()
	a, b := newRegionServer(t, "eu-west-1"), newRegionServer(t, "us-east-2")
	// The peer signs as Mallory, of another account: the replica's server
	// refuses to create a key of Alice's account for her.
	a.srv.peers = Peers{"us-east-2": {Endpoint: b.http.URL, AccessKeyID: "AKIDMAL", SecretAccessKey: "mal-secret"}}
	ca := a.sdk("AKIDALICE", "alice-secret")
	created, err := ca.CreateKey(ctx, &sdkkms.CreateKeyInput{MultiRegion: aws.Bool(true)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = ca.ReplicateKey(ctx, &sdkkms.ReplicateKeyInput{KeyId: created.KeyMetadata.KeyId, ReplicaRegion: aws.String("us-east-2")})
	wantAPIError(t, err, "AccessDeniedException")
	// Bob may not create keys in the replica region (his identity
	// policy): the replica's server refuses him as the peer, before it
	// hands out a wrapping key.
	onlyUse, err := ParseIdentityPolicy(`{"Statement":[{"Effect":"Allow","Action":["kms:Encrypt","kms:Decrypt"],"Resource":"*"}]}`)
	if err != nil {
		t.Fatal(err)
	}
	restricted := Credentials{}
	for id, c := range testCreds {
		restricted[id] = c
	}
	bob := restricted["AKIDBOB"]
	bob.Identity = onlyUse
	restricted["AKIDBOB"] = bob
	c := newRegionServerWith(t, "ap-south-1", restricted, nil)
	a.srv.peers = Peers{"ap-south-1": {Endpoint: c.http.URL, AccessKeyID: "AKIDBOB", SecretAccessKey: "bob-secret"}}
	_, err = ca.ReplicateKey(ctx, &sdkkms.ReplicateKeyInput{KeyId: created.KeyMetadata.KeyId, ReplicaRegion: aws.String("ap-south-1")})
	wantAPIError(t, err, "AccessDeniedException")
	if data, _ := os.ReadFile(c.audit); !bytes.Contains(data, []byte(`"operation":"KmsfsReplicaWrappingKey"`)) || !bytes.Contains(data, []byte(`"result":"AccessDeniedException"`)) {
		t.Errorf("the replica's audit log does not record the refused peer call:\n%s", data)
	}
	// A wrong secret fails the peer's signature check.
	a.srv.peers = Peers{"us-east-2": {Endpoint: b.http.URL, AccessKeyID: "AKIDBOB", SecretAccessKey: "wrong"}}
	_, err = ca.ReplicateKey(ctx, &sdkkms.ReplicateKeyInput{KeyId: created.KeyMetadata.KeyId, ReplicaRegion: aws.String("us-east-2")})
	wantAPIError(t, err, "InvalidSignatureException")
	// No peer for the region.
	_, err = ca.ReplicateKey(ctx, &sdkkms.ReplicateKeyInput{KeyId: created.KeyMetadata.KeyId, ReplicaRegion: aws.String("sa-east-1")})
	wantAPIError(t, err, "ValidationException")
	// A peer that is down.
	b.http.Close()
	a.srv.peers = Peers{"us-east-2": {Endpoint: b.http.URL, AccessKeyID: "AKIDBOB", SecretAccessKey: "bob-secret"}}
	_, err = ca.ReplicateKey(ctx, &sdkkms.ReplicateKeyInput{KeyId: created.KeyMetadata.KeyId, ReplicaRegion: aws.String("us-east-2")})
	wantAPIError(t, err, "DependencyTimeoutException")
	d, err := ca.DescribeKey(ctx, &sdkkms.DescribeKeyInput{KeyId: created.KeyMetadata.KeyId})
	if err != nil || len(d.KeyMetadata.MultiRegionConfiguration.ReplicaKeys) != 0 {
		t.Fatalf("failed replications left replicas on the primary: %v %+v", err, d.KeyMetadata.MultiRegionConfiguration)
	}
}

func TestLoadPeers(t *testing.T) {
	dir := t.TempDir()
	for body, want := range map[string]string{
		`{"us-east-2": {"Endpoint": "http://127.0.0.1:1", "AccessKeyId": "A", "SecretAccessKey": "S"}}`: "",
		`{"us-east-2": {"Endpoint": "127.0.0.1:1", "AccessKeyId": "A", "SecretAccessKey": "S"}}`:        "not an http(s) URL",
		`{"us-east-2": {"Endpoint": "http://x", "AccessKeyId": "A"}}`:                                   "are required",
		`{"bad region": {"Endpoint": "http://x", "AccessKeyId": "A", "SecretAccessKey": "S"}}`:          "not a region name",
		`{"r": {"Endpoint": "http://x", "Secret": "S"}}`:                                                "unknown field",
	} {
		p := filepath.Join(dir, "peers.json")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := LoadPeers(p)
		if (want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), want)) {
			t.Errorf("LoadPeers(%s): %v, want %q", body, err, want)
		}
	}
}

// TestReplicateKeyToTLSPeer: a peer over HTTPS whose certificate the
// system does not trust is reached with the peers file's CAFile, and not
// without it.
func TestReplicateKeyToTLSPeer(t *testing.T) {
	ctx := context.Background()
	a := newRegionServer(t, "eu-west-1")
	b := newRegionServer(t, "us-east-2")
	b.http.Close()
	b.http = httptest.NewTLSServer(b.srv)
	t.Cleanup(b.http.Close)
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: b.http.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	load := func(withCA bool) Peers {
		peer := map[string]string{"Endpoint": b.http.URL, "AccessKeyId": "AKIDBOB", "SecretAccessKey": "bob-secret"}
		if withCA {
			peer["CAFile"] = ca
		}
		data, _ := json.Marshal(map[string]any{"us-east-2": peer})
		p := filepath.Join(dir, "peers.json")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		peers, err := LoadPeers(p)
		if err != nil {
			t.Fatal(err)
		}
		return peers
	}
	ca1 := a.sdk("AKIDALICE", "alice-secret")
	created, err := ca1.CreateKey(ctx, &sdkkms.CreateKeyInput{MultiRegion: aws.Bool(true)})
	if err != nil {
		t.Fatal(err)
	}
	a.srv.peers = load(false)
	_, err = ca1.ReplicateKey(ctx, &sdkkms.ReplicateKeyInput{KeyId: created.KeyMetadata.KeyId, ReplicaRegion: aws.String("us-east-2")})
	wantAPIError(t, err, "DependencyTimeoutException")
	a.srv.peers = load(true)
	if _, err := ca1.ReplicateKey(ctx, &sdkkms.ReplicateKeyInput{KeyId: created.KeyMetadata.KeyId, ReplicaRegion: aws.String("us-east-2")}); err != nil {
		t.Fatalf("ReplicateKey over TLS with the peer's CA: %v", err)
	}
}

// TestReplicateKeyAgainAfterTheReplicaIsDeleted: the primary's server
// still lists a replica whose key was deleted in its region; ReplicateKey
// there makes a new one, as AWS allows.
func TestReplicateKeyAgainAfterTheReplicaIsDeleted(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	offset := time.Duration(0)
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return time.Now().Add(offset)
	}
	a := newRegionServer(t, "eu-west-1")
	b := newRegionServerWith(t, "us-east-2", testCreds, clock)
	a.srv.peers = Peers{"us-east-2": {Endpoint: b.http.URL, AccessKeyID: "AKIDBOB", SecretAccessKey: "bob-secret"}}
	ca, cb := a.sdk("AKIDALICE", "alice-secret"), b.sdk("AKIDALICE", "alice-secret")
	created, err := ca.CreateKey(ctx, &sdkkms.CreateKeyInput{MultiRegion: aws.Bool(true)})
	if err != nil {
		t.Fatal(err)
	}
	id := created.KeyMetadata.KeyId
	rep := &sdkkms.ReplicateKeyInput{KeyId: id, ReplicaRegion: aws.String("us-east-2")}
	if _, err := ca.ReplicateKey(ctx, rep); err != nil {
		t.Fatal(err)
	}
	if _, err := cb.ScheduleKeyDeletion(ctx, &sdkkms.ScheduleKeyDeletionInput{KeyId: id, PendingWindowInDays: aws.Int32(7)}); err != nil {
		t.Fatal(err)
	}
	_, err = ca.ReplicateKey(ctx, rep)
	wantAPIError(t, err, "AlreadyExistsException")
	mu.Lock()
	offset = 8 * 24 * time.Hour
	mu.Unlock()
	if _, err := ca.ReplicateKey(ctx, rep); err != nil {
		t.Fatalf("ReplicateKey after the replica was deleted: %v", err)
	}
	d, err := cb.DescribeKey(ctx, &sdkkms.DescribeKeyInput{KeyId: id})
	if err != nil || d.KeyMetadata.KeyState != types.KeyStateEnabled {
		t.Fatalf("the new replica: %v %+v", err, d)
	}
}
