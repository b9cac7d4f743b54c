package compose

import (
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/kms"
	"github.com/kmsfs/kmsfs/kms/keystore"
	"github.com/kmsfs/kmsfs/kms/server"
	"github.com/kmsfs/kmsfs/metrics"
)

const testAccount = "000000000000"

var failoverCreds = server.Credentials{
	"AKIDFAILOVER": {AccessKeyID: "AKIDFAILOVER", SecretAccessKey: "failover-secret", Principal: "arn:aws:iam::" + testAccount + ":user/mount", Account: testAccount},
}

// regionKMS is a `kmsfs kms serve` in process: a keystore of one region
// behind the server, on an address that survives a stop and a start.
type regionKMS struct {
	t    *testing.T
	ks   *keystore.Keystore
	srv  *server.Server
	addr string
	http *http.Server
}

func newRegionKMS(t *testing.T, region string) *regionKMS {
	t.Helper()
	ks, err := keystore.Open(filepath.Join(t.TempDir(), "ks"), keystore.Options{Region: region, Warn: func(string) {}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ks.Close() })
	srv, err := server.New(server.Config{Store: ks, Credentials: failoverCreds, Region: region})
	if err != nil {
		t.Fatal(err)
	}
	r := &regionKMS{t: t, ks: ks, srv: srv, addr: "127.0.0.1:0"}
	r.start()
	t.Cleanup(r.stop)
	return r
}

func (r *regionKMS) start() {
	ln, err := net.Listen("tcp", r.addr)
	if err != nil {
		r.t.Fatal(err)
	}
	r.addr = ln.Addr().String()
	r.http = &http.Server{Handler: r.srv}
	go r.http.Serve(ln)
}

func (r *regionKMS) stop() {
	if r.http != nil {
		r.http.Close()
		r.http = nil
	}
}

func (r *regionKMS) url() string { return "http://" + r.addr }

// logLines collects the failover's warnings.
type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) warn(msg string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, msg)
}

func (l *logLines) count(sub string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range l.lines {
		if strings.Contains(line, sub) {
			n++
		}
	}
	return n
}

func TestFailoverToReplicaAndBack(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDFAILOVER")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "failover-secret")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	ctx := context.Background()
	primary, replica := newRegionKMS(t, "eu-west-1"), newRegionKMS(t, "us-east-2")
	md, err := primary.ks.CreateKey(ctx, kms.CreateKeyInput{MultiRegion: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := keystore.Replicate(ctx, primary.ks, replica.ks, md.KeyID, keystore.ReplicaInput{}); err != nil {
		t.Fatal(err)
	}
	var log logLines
	k, err := OpenKMS(ctx, KMSOptions{URL: primary.url(), Region: "eu-west-1", Replicas: []string{"us-east-2=" + replica.url()}, Warn: log.warn})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	state := func() metrics.FailoverState { return k.(*failoverKMS).FailoverState() }
	if st := state(); st.PrimaryDown || st.PrimaryRegion != "eu-west-1" || len(st.Replicas) != 1 || st.Replicas[0] != "us-east-2" {
		t.Fatalf("failover state before any call: %+v", st)
	}
	ec := kms.EncryptionContext{"file": "1"}
	dk, err := k.GenerateDataKey(ctx, md.ARN, 32, ec)
	if err != nil || dk.KeyID != md.ARN {
		t.Fatalf("GenerateDataKey on the primary: %v (key %s)", err, dk.KeyID)
	}

	// An answer from the primary is final: a key disabled there stays
	// unusable although the replica's is enabled.
	if err := primary.ks.DisableKey(ctx, md.KeyID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := k.Decrypt(ctx, md.ARN, dk.CiphertextBlob, ec); !errors.Is(err, kms.ErrDisabled) {
		t.Fatalf("Decrypt with the primary's key disabled: %v", err)
	}
	if err := primary.ks.EnableKey(ctx, md.KeyID); err != nil {
		t.Fatal(err)
	}

	primary.stop()
	for i := 0; i < 3; i++ {
		pt, arn, err := k.Decrypt(ctx, md.ARN, dk.CiphertextBlob, ec)
		if err != nil || string(pt) != string(dk.Plaintext) || arn != md.ARN {
			t.Fatalf("Decrypt with the primary down: %v (key %s)", err, arn)
		}
	}
	dk2, err := k.GenerateDataKey(ctx, md.ARN, 32, ec)
	if err != nil || dk2.KeyID != md.ARN {
		t.Fatalf("GenerateDataKey with the primary down: %v (key %s)", err, dk2.KeyID)
	}
	if n := log.count("is unreachable"); n != 1 {
		t.Fatalf("the switch to the replica was logged %d times, want once: %q", n, log.lines)
	}
	if st := state(); !st.PrimaryDown || st.Replica != "us-east-2" || st.DownSince.IsZero() {
		t.Fatalf("failover state with the primary down: %+v", st)
	}
	// Tampered ciphertext is refused by the replica, not retried elsewhere.
	bad := append([]byte(nil), dk.CiphertextBlob...)
	bad[len(bad)-1] ^= 1
	if _, _, err := k.Decrypt(ctx, md.ARN, bad, ec); !errors.Is(err, kms.ErrInvalidCiphertext) {
		t.Fatalf("tampered ciphertext through the replica: %v", err)
	}

	primary.start()
	deadline := time.Now().Add(30 * time.Second)
	for log.count("answers again") == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the failover never went back to the primary: %q", log.lines)
		}
		if _, _, err := k.Decrypt(ctx, md.ARN, dk2.CiphertextBlob, ec); err != nil {
			t.Fatalf("Decrypt while the primary comes back: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st := state(); st.PrimaryDown || st.Replica != "" {
		t.Fatalf("failover state after the primary came back: %+v", st)
	}
	// Back on the primary: its key state rules again.
	if err := primary.ks.DisableKey(ctx, md.KeyID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := k.Decrypt(ctx, md.ARN, dk2.CiphertextBlob, ec); !errors.Is(err, kms.ErrDisabled) {
		t.Fatalf("Decrypt after the primary came back, key disabled there: %v", err)
	}
}

func TestParseKMSReplica(t *testing.T) {
	for in, want := range map[string]string{
		"us-east-2=http://127.0.0.1:8901":     "us-east-2=http://127.0.0.1:8901",
		"https://kms.eu-west-1.amazonaws.com": "eu-west-1=https://kms.eu-west-1.amazonaws.com",
		"http://127.0.0.1:8901":               "",
		"us-east-2=127.0.0.1:8901":            "",
		"bad region=http://127.0.0.1:8901":    "",
		"=http://127.0.0.1:8901":              "",
	} {
		r, err := ParseKMSReplica(in)
		if (err == nil) != (want != "") || (err == nil && r.String() != want) {
			t.Errorf("ParseKMSReplica(%q) = %v, %v; want %q", in, r, err, want)
		}
	}
}

func TestInRegionRewritesOnlyMultiRegionKeyARNs(t *testing.T) {
	for in, want := range map[string]string{
		"arn:aws:kms:eu-west-1:000000000000:key/mrk-0123456789abcdef0123456789abcdef": "arn:aws:kms:us-east-2:000000000000:key/mrk-0123456789abcdef0123456789abcdef",
		"arn:aws:kms:eu-west-1:000000000000:key/0e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b": "arn:aws:kms:eu-west-1:000000000000:key/0e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b",
		"arn:aws:kms:eu-west-1:000000000000:alias/mrk-x":                              "arn:aws:kms:eu-west-1:000000000000:alias/mrk-x",
		"mrk-0123456789abcdef0123456789abcdef":                                        "mrk-0123456789abcdef0123456789abcdef",
	} {
		if got := inRegion(in, "us-east-2"); got != want {
			t.Errorf("inRegion(%s) = %s, want %s", in, got, want)
		}
	}
}
