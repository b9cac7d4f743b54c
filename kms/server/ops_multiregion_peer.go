package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"github.com/kmsfs/kmsfs/kms"
)

// Peer is another region's `kmsfs kms serve`: where it listens, and the
// access key this server signs its requests to it with (SigV4, like any
// client). The peer authorises those requests with its own credentials
// file, identity policies and key policies.
type Peer struct {
	Endpoint        string `json:"Endpoint"`
	AccessKeyID     string `json:"AccessKeyId"`
	SecretAccessKey string `json:"SecretAccessKey"`
	// CAFile, if set, is a PEM file of the certificates that sign the
	// peer's TLS certificate (default: the system's roots).
	CAFile string `json:"CAFile,omitempty"`

	http *http.Client
}

// Peers maps a region to its server.
type Peers map[string]Peer

// PeersFileHelp describes the --peers file.
const PeersFileHelp = `Peers file (--peers): a JSON object mapping each other region's name to
its 'kmsfs kms serve' and the access key this server signs with there:
  {"us-east-2": {"Endpoint": "https://kms-b.example:8900",
                 "AccessKeyId": "AKIDPEER", "SecretAccessKey": "...",
                 "CAFile": "/etc/kmsfs/peer-ca.pem"}}
CAFile is optional (default: the system's roots).
ReplicateKey and UpdatePrimaryRegion call the peer of the region they
name; key material crosses only wrapped (RSAES_OAEP_SHA_256) to a key pair
the receiving server made for that one transfer.`

// LoadPeers reads a peers file (PeersFileHelp).
func LoadPeers(path string) (Peers, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("peers file: %w", err)
	}
	var p Peers
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("peers file %s: %w", path, err)
	}
	for region, peer := range p {
		if region == "" || strings.ContainsAny(region, ":/ ") {
			return nil, fmt.Errorf("peers file %s: %q is not a region name", path, region)
		}
		if !strings.HasPrefix(peer.Endpoint, "http://") && !strings.HasPrefix(peer.Endpoint, "https://") {
			return nil, fmt.Errorf("peers file %s: region %s: Endpoint %q is not an http(s) URL", path, region, peer.Endpoint)
		}
		if peer.AccessKeyID == "" || peer.SecretAccessKey == "" {
			return nil, fmt.Errorf("peers file %s: region %s: AccessKeyId and SecretAccessKey are required", path, region)
		}
		if peer.CAFile != "" {
			pem, err := os.ReadFile(peer.CAFile)
			if err != nil {
				return nil, fmt.Errorf("peers file %s: region %s: %w", path, region, err)
			}
			roots := x509.NewCertPool()
			if !roots.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("peers file %s: region %s: %s holds no PEM certificate", path, region, peer.CAFile)
			}
			peer.http = &http.Client{Timeout: peerTimeout, Transport: &http.Transport{
				TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
			}}
			p[region] = peer
		}
	}
	return p, nil
}

// peerTimeout bounds one request to a peer: generating the replica's
// RSA-3072 wrapping key can take a few seconds on a busy machine.
const peerTimeout = 60 * time.Second

// peerClient calls a peer's operations.
type peerClient struct {
	region string
	peer   Peer
	http   *http.Client
}

func (s *Server) peerFor(region string) (*peerClient, error) {
	p, ok := s.peers[region]
	if !ok {
		return nil, kms.Errorf(kms.CodeValidation, "no KMS server is configured for region %s (the server's --peers file)", region)
	}
	hc := p.http
	if hc == nil {
		hc = s.peerHTTP
	}
	return &peerClient{region: region, peer: p, http: hc}, nil
}

// call sends one signed request to the peer and decodes its answer into
// out; an AWS-style error answer comes back as a *kms.Error with the
// peer's code, and an unreachable peer as DependencyTimeoutException.
func (p *peerClient) call(ctx context.Context, op string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, peerTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.peer.Endpoint, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", targetPrefix+op)
	sum := sha256.Sum256(body)
	creds := aws.Credentials{AccessKeyID: p.peer.AccessKeyID, SecretAccessKey: p.peer.SecretAccessKey}
	if err := v4.NewSigner().SignHTTP(ctx, creds, req, hex.EncodeToString(sum[:]), "kms", p.region, time.Now()); err != nil {
		return fmt.Errorf("sign request to %s: %w", p.region, err)
	}
	resp, err := p.http.Do(req)
	if err != nil {
		return kms.Errorf(kms.CodeDependencyTimeout, "the KMS server of region %s (%s) cannot be reached: %v", p.region, p.peer.Endpoint, errors.Unwrap(err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxRequestBody))
	if err != nil {
		return kms.Errorf(kms.CodeDependencyTimeout, "the KMS server of region %s: read answer: %v", p.region, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Type    string `json:"__type"`
			Message string `json:"message"`
		}
		if json.Unmarshal(data, &e) != nil || e.Type == "" {
			return kms.Errorf(kms.CodeInternal, "the KMS server of region %s answered HTTP %d", p.region, resp.StatusCode)
		}
		if i := strings.LastIndexByte(e.Type, '#'); i >= 0 {
			e.Type = e.Type[i+1:]
		}
		return kms.Errorf(e.Type, "region %s: %s", p.region, e.Message)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return kms.Errorf(kms.CodeInternal, "the KMS server of region %s: malformed answer to %s", p.region, op)
	}
	return nil
}
