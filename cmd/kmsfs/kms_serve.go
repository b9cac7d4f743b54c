package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"time"

	"github.com/spf13/pflag"

	"github.com/kmsfs/kmsfs/internal/compose"
	"github.com/kmsfs/kmsfs/kms/auditlog"
	"github.com/kmsfs/kmsfs/kms/server"
)

const kmsServeAbout = `Serves the keys of a keystore over the AWS KMS API (JSON 1.1 protocol, SigV4),
so that the AWS SDKs, 'aws kms ... --endpoint-url URL' and 'kmsfs mount --kms URL'
can use them. Every request must be signed with an access key from the
credentials file; each request, allowed or refused, is appended to the
hash-chained audit log ('kmsfs kms audit verify' checks it).

Clients sign for the server's --region; key ARNs are
arn:aws:kms:REGION:ACCOUNT:key/ID. Keys created without a policy (by
'kmsfs kms create-key' on the keystore, or by CreateKey) let every principal of
the owning account administer and use them.`

// kmsServeCommand is `kmsfs kms serve`.
func kmsServeCommand() *command {
	return &command{
		name: "serve", summary: "serve a keystore over the AWS KMS API",
		about: kmsServeAbout, footer: server.CredentialsFileHelp + "\n\n" + server.PeersFileHelp,
		setup: func(fs *pflag.FlagSet) runFunc {
			var o serveFlags
			o.register(fs)
			return func(ctx context.Context, inv *invocation) error { return kmsServe(ctx, inv, &o) }
		},
	}
}

type serveFlags struct {
	listen              string
	keystore            keystoreFlags
	credFile, auditPath string
	auditFsync          bool
	auditSigningKey     string
	auditDigestEvery    time.Duration
	rate                float64
	burst               int
	region, account     string
	tlsCert, tlsKey     string
	peersFile           string
}

func (o *serveFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&o.listen, "listen", "127.0.0.1:8900", "`ADDR` to listen on (port 0: any free port; the address is printed)")
	o.keystore.register(fs)
	fs.StringVar(&o.credFile, "credentials", "", "JSON `FILE` of access keys and their principals (required; format below)")
	fs.StringVar(&o.auditPath, "audit-log", "", "audit log `FILE` (default KEYSTORE/audit.log)")
	fs.BoolVar(&o.auditFsync, "audit-fsync", false, "fsync the audit log before answering (group commit) instead of only writing it")
	fs.StringVar(&o.auditSigningKey, "audit-signing-key", "", "sign digests of the audit log with the Ed25519 key in `FILE` (created if missing, with its public key in FILE.pub for 'kmsfs kms audit verify --public-key'): a rewritten or truncated log then fails verification")
	fs.DurationVar(&o.auditDigestEvery, "audit-digest-interval", auditlog.DefaultDigestInterval, "with --audit-signing-key, write a signed digest every `DURATION` (and at shutdown)")
	fs.Float64Var(&o.rate, "rate", 0, "cryptographic requests per second (`RATE`) allowed per account (0: unlimited); above it, ThrottlingException")
	fs.IntVar(&o.burst, "burst", 0, "token bucket size (`N`) for --rate (default: one second's worth)")
	fs.StringVar(&o.region, "region", "local", "`REGION` of the key ARNs, and the region clients must sign for (e.g. us-east-1)")
	fs.StringVar(&o.account, "account", "000000000000", "default `ACCOUNT` ID: of keys the keystore holds without one (created before accounts were recorded, or by 'kmsfs kms create-key'); each principal's own account comes from its ARN")
	fs.StringVar(&o.tlsCert, "tls-cert", "", "serve HTTPS with the certificate in `FILE` (PEM)")
	fs.StringVar(&o.tlsKey, "tls-key", "", "private key `FILE` for --tls-cert (PEM)")
	fs.StringVar(&o.peersFile, "peers", "", "JSON `FILE` naming the servers of other regions, for ReplicateKey and UpdatePrimaryRegion of multi-Region keys (format below)")
}

func kmsServe(ctx context.Context, inv *invocation, o *serveFlags) error {
	stdout, stderr := inv.stdout, inv.stderr
	if o.credFile == "" {
		return usagef("--credentials FILE is required: nothing is served unauthenticated (see --help for the format)")
	}
	if (o.tlsCert == "") != (o.tlsKey == "") {
		return usagef("--tls-cert and --tls-key go together")
	}
	creds, err := server.LoadCredentials(o.credFile)
	if err != nil {
		return err
	}
	var peers server.Peers
	if o.peersFile != "" {
		if peers, err = server.LoadPeers(o.peersFile); err != nil {
			return err
		}
		if _, self := peers[o.region]; self {
			return usagef("--peers %s names this server's own region %s; peers are the servers of other regions", o.peersFile, o.region)
		}
	}
	ko, err := o.keystore.options(stderr)
	if err != nil {
		return err
	}
	ko.Region, ko.Account = o.region, o.account
	ks, err := compose.OpenKeystore(ko)
	if err != nil {
		return err
	}
	defer ks.Close()
	auditPath := o.auditPath
	if auditPath == "" {
		auditPath = filepath.Join(ks.Dir(), "audit.log")
	}
	auditOpts := auditlog.Options{Fsync: o.auditFsync, DigestInterval: o.auditDigestEvery}
	if o.auditSigningKey != "" {
		if auditOpts.Signer, err = auditlog.LoadOrCreateSigningKey(o.auditSigningKey); err != nil {
			return err
		}
	}
	audit, err := auditlog.Open(auditPath, auditOpts)
	if err != nil {
		return err
	}
	defer audit.Close()
	srv, err := server.New(server.Config{
		Store:       ks,
		Credentials: creds,
		Region:      o.region,
		Audit:       audit,
		Rate:        o.rate,
		Burst:       o.burst,
		Peers:       peers,
		Logf:        func(format string, a ...any) { fmt.Fprintf(stderr, "kmsfs kms serve: "+format+"\n", a...) },
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return err
	}
	hs := &http.Server{
		Handler:           srv,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          nil,
	}
	scheme := "http"
	if o.tlsCert != "" {
		scheme = "https"
	}
	fmt.Fprintf(stdout, "kmsfs kms serve: listening on %s://%s (region %s, keystore %s, audit log %s)\n",
		scheme, ln.Addr(), o.region, ks.Dir(), auditPath)
	errc := make(chan error, 1)
	go func() {
		if o.tlsCert != "" {
			errc <- hs.ServeTLS(ln, o.tlsCert, o.tlsKey)
		} else {
			errc <- hs.Serve(ln)
		}
	}()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}
