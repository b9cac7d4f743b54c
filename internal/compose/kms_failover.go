package compose

import (
	"context"
	"errors"
	"fmt"
	"github.com/kmsfs/kmsfs/metrics"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/kmsfs/kmsfs/kms"
	"github.com/kmsfs/kmsfs/kms/awskms"
)

// KMSReplica is another region's KMS holding replicas of a volume's
// multi-Region key: where a mount unwraps keys when the primary KMS cannot
// be reached.
type KMSReplica struct {
	Region string
	URL    string
}

// String is the form ParseKMSReplica reads and the volume config records.
func (r KMSReplica) String() string { return r.Region + "=" + r.URL }

// ParseKMSReplica reads "REGION=URL", or the URL of an AWS KMS regional
// endpoint (https://kms.REGION.amazonaws.com), whose region it names.
func ParseKMSReplica(s string) (KMSReplica, error) {
	region, raw, ok := strings.Cut(s, "=")
	if !ok {
		raw = s
		region = ""
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return KMSReplica{}, fmt.Errorf("KMS replica %q: want REGION=URL with an http(s) URL", s)
	}
	if !ok {
		parts := strings.Split(u.Hostname(), ".")
		if len(parts) < 4 || parts[0] != "kms" || parts[2] != "amazonaws" {
			return KMSReplica{}, fmt.Errorf("KMS replica %q: name its region (REGION=URL); only an AWS endpoint https://kms.REGION.amazonaws.com says it", s)
		}
		region = parts[1]
	}
	if region == "" || strings.ContainsAny(region, ":/ ") {
		return KMSReplica{}, fmt.Errorf("KMS replica %q: %q is not a region name", s, region)
	}
	return KMSReplica{Region: region, URL: raw}, nil
}

// Failover timing: a primary that was unreachable is tried again after
// failoverProbeMin, then after twice as long each time it still is, up to
// failoverProbeMax.
const (
	failoverProbeMin = time.Second
	failoverProbeMax = 15 * time.Second
	// probeTimeout bounds one probe of the primary.
	probeTimeout = 5 * time.Second
)

// failoverKMS is a remote KMS whose key is a multi-Region key: the
// cryptographic calls go to the primary KMS, and to the replicas (same key
// ID, the replica region's ARN) while the primary cannot be reached:
// connection refused, reset or timed out (kms.ErrUnavailable). An answer
// from the primary, whatever it says (AccessDenied, Disabled,
// InvalidCiphertext for tampered data), is final: failing over then would
// let a replica's state override the primary's decision.
//
// Key ARNs are rewritten on the way: a call to a replica names the key by
// the replica region's ARN, and ARNs the replica returns are turned back
// into the primary region's, so the volume (which stores the key ARN in
// every file header) never sees which region answered. Ciphertext blobs
// are the same in every region of the set.
//
// The switch to a replica is logged once; the primary is then probed (a
// DescribeKey of the last key used) in the background with backoff, and
// used again, with a log line, as soon as it answers.
type failoverKMS struct {
	remoteKMS // the primary; Admin calls go only to it
	home      string
	replicas  []failoverTarget
	warn      func(string)
	now       func() time.Time

	mu        sync.Mutex
	down      bool      // the primary is unreachable
	downSince time.Time // when it was found so
	using     string    // region of the replica last used while down
	nextProbe time.Time
	backoff   time.Duration
	probing   bool
	lastKey   string
	closed    bool
	probeDone chan struct{} // closed when the running probe ends
}

type failoverTarget struct {
	region string
	c      *awskms.Client
}

var _ KMS = (*failoverKMS)(nil)

// openFailoverKMS builds the clients: the primary's with few attempts, so
// that an unreachable primary is noticed in a fraction of a second
// (connection refused) or one attempt timeout, not after the default ten
// attempts.
func openFailoverKMS(ctx context.Context, o KMSOptions) (*failoverKMS, error) {
	if o.Region == "" {
		return nil, fmt.Errorf("KMS %s: with KMS replicas, the primary's region must be known: give --kms-region", o.URL)
	}
	quick := awskms.Options{MaxAttempts: 2, AttemptTimeout: 5 * time.Second, Timeout: 10 * time.Second}
	po := quick
	po.Endpoint, po.Region = o.URL, o.Region
	primary, err := awskms.New(ctx, po)
	if err != nil {
		return nil, fmt.Errorf("KMS %s: %w", o.URL, err)
	}
	f := &failoverKMS{remoteKMS: remoteKMS{primary}, home: o.Region, warn: o.Warn, now: time.Now}
	if f.warn == nil {
		f.warn = func(string) {}
	}
	for _, r := range o.replicas {
		if r.Region == o.Region {
			return nil, fmt.Errorf("KMS replica %s is in the primary's region %s", r, o.Region)
		}
		ro := quick
		ro.Endpoint, ro.Region = r.URL, r.Region
		c, err := awskms.New(ctx, ro)
		if err != nil {
			return nil, fmt.Errorf("KMS replica %s: %w", r, err)
		}
		f.replicas = append(f.replicas, failoverTarget{region: r.Region, c: c})
	}
	return f, nil
}

// Close waits for a running probe.
func (f *failoverKMS) Close() error {
	f.mu.Lock()
	f.closed = true
	done := f.probeDone
	f.mu.Unlock()
	if done != nil {
		<-done
	}
	return nil
}

// inRegion rewrites a multi-Region key's ARN for region; other key names
// (IDs, aliases, single-Region keys) are left alone.
func inRegion(keyID, region string) string {
	parts := strings.SplitN(keyID, ":", 6)
	if len(parts) != 6 || parts[0] != "arn" || parts[2] != "kms" || !strings.HasPrefix(parts[5], "key/mrk-") {
		return keyID
	}
	parts[3] = region
	return strings.Join(parts, ":")
}

func unreachable(err error) bool { return errors.Is(err, kms.ErrUnavailable) }

// usePrimary says whether a call should try the primary first; while it
// is down it starts the background probe when one is due.
func (f *failoverKMS) usePrimary(keyID string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if keyID != "" {
		f.lastKey = keyID
	}
	if !f.down {
		return true
	}
	if !f.probing && !f.closed && !f.now().Before(f.nextProbe) && f.lastKey != "" {
		f.probing = true
		f.probeDone = make(chan struct{})
		go f.probe(f.lastKey, f.probeDone)
	}
	return false
}

func (f *failoverKMS) probe(keyID string, done chan struct{}) {
	defer close(done)
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	_, err := f.remoteKMS.DescribeKey(ctx, keyID)
	cancel()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.probing = false
	if err != nil && unreachable(err) {
		f.backoff = min(2*f.backoff, failoverProbeMax)
		f.nextProbe = f.now().Add(f.backoff)
		return
	}
	f.down, f.using = false, ""
	f.warn(fmt.Sprintf("KMS primary %s (%s) answers again; using it instead of the replicas", f.endpoint(), f.home))
}

func (f *failoverKMS) endpoint() string { return f.remoteKMS.Client.Endpoint() }

// primaryDown records that the primary could not be reached.
func (f *failoverKMS) primaryDown(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return
	}
	f.down, f.downSince = true, f.now()
	f.backoff = failoverProbeMin
	f.nextProbe = f.now().Add(f.backoff)
	f.warn(fmt.Sprintf("KMS primary %s (%s) is unreachable (%v); unwrapping keys with its replicas until it answers", f.endpoint(), f.home, err))
}

// FailoverState is where calls go now, for `kmsfs stats` and /metrics.
func (f *failoverKMS) FailoverState() metrics.FailoverState {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := metrics.FailoverState{PrimaryRegion: f.home, PrimaryDown: f.down, Replica: f.using}
	if f.down {
		st.DownSince = f.downSince
	}
	for _, r := range f.replicas {
		st.Replicas = append(st.Replicas, r.region)
	}
	return st
}

// replicaUsed logs the replica that answers, once per switch.
func (f *failoverKMS) replicaUsed(region string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down && f.using != region {
		f.using = region
		f.warn(fmt.Sprintf("KMS replica in %s answers for the primary", region))
	}
}

// failover runs op on the primary, or on the replicas when the primary is
// (or turns out to be) unreachable.
func failover[T any](f *failoverKMS, keyID string, op func(c kms.Crypto, region string) (T, error)) (T, error) {
	var err error
	if f.usePrimary(keyID) {
		var v T
		v, err = op(f.remoteKMS.Client, f.home)
		if err == nil || !unreachable(err) {
			return v, err
		}
		f.primaryDown(err)
	}
	for _, r := range f.replicas {
		v, rerr := op(r.c, r.region)
		if rerr == nil {
			f.replicaUsed(r.region)
			return v, nil
		}
		if !unreachable(rerr) {
			return v, rerr
		}
		err = errors.Join(err, rerr)
	}
	if err == nil {
		err = kms.Errorf(kms.CodeUnavailable, "KMS primary %s is unreachable and no replica answers", f.endpoint())
	}
	var zero T
	return zero, err
}

func (f *failoverKMS) GenerateDataKey(ctx context.Context, keyID string, n int, ec kms.EncryptionContext) (kms.DataKey, error) {
	return failover(f, keyID, func(c kms.Crypto, region string) (kms.DataKey, error) {
		dk, err := c.GenerateDataKey(ctx, inRegion(keyID, region), n, ec)
		dk.KeyID = inRegion(dk.KeyID, f.home)
		return dk, err
	})
}

type wrapped struct {
	blob []byte
	arn  string
}

func (f *failoverKMS) GenerateDataKeyWithoutPlaintext(ctx context.Context, keyID string, n int, ec kms.EncryptionContext) ([]byte, string, error) {
	w, err := failover(f, keyID, func(c kms.Crypto, region string) (wrapped, error) {
		b, arn, err := c.GenerateDataKeyWithoutPlaintext(ctx, inRegion(keyID, region), n, ec)
		return wrapped{b, inRegion(arn, f.home)}, err
	})
	return w.blob, w.arn, err
}

func (f *failoverKMS) Encrypt(ctx context.Context, keyID string, pt []byte, ec kms.EncryptionContext) ([]byte, string, error) {
	w, err := failover(f, keyID, func(c kms.Crypto, region string) (wrapped, error) {
		b, arn, err := c.Encrypt(ctx, inRegion(keyID, region), pt, ec)
		return wrapped{b, inRegion(arn, f.home)}, err
	})
	return w.blob, w.arn, err
}

func (f *failoverKMS) Decrypt(ctx context.Context, keyID string, ct []byte, ec kms.EncryptionContext) ([]byte, string, error) {
	w, err := failover(f, keyID, func(c kms.Crypto, region string) (wrapped, error) {
		b, arn, err := c.Decrypt(ctx, inRegion(keyID, region), ct, ec)
		return wrapped{b, inRegion(arn, f.home)}, err
	})
	return w.blob, w.arn, err
}

type reEncrypted struct {
	blob      []byte
	src, dest string
}

func (f *failoverKMS) ReEncrypt(ctx context.Context, ct []byte, srcEC kms.EncryptionContext, destKeyID string, destEC kms.EncryptionContext) ([]byte, string, string, error) {
	r, err := failover(f, destKeyID, func(c kms.Crypto, region string) (reEncrypted, error) {
		b, src, dest, err := c.ReEncrypt(ctx, ct, srcEC, inRegion(destKeyID, region), destEC)
		return reEncrypted{b, inRegion(src, f.home), inRegion(dest, f.home)}, err
	})
	return r.blob, r.src, r.dest, err
}

// openWithReplicas opens a remote KMS with replicas (o.Replicas).
func openWithReplicas(ctx context.Context, o KMSOptions) (KMS, error) {
	for _, raw := range o.Replicas {
		r, err := ParseKMSReplica(raw)
		if err != nil {
			return nil, err
		}
		o.replicas = append(o.replicas, r)
	}
	return openFailoverKMS(ctx, o)
}
