// Command kmsload measures how many GenerateDataKey and Decrypt requests per
// second a KMS speaking the AWS KMS API (e.g. `kmsfs kms serve`) answers.
//
// Two modes:
//
//   - raw (default): a lean load generator. It signs each distinct request once
//     with SigV4 (re-signing every minute, well inside the 5-minute skew
//     window) and replays the bytes over keep-alive HTTP/1.1 connections,
//     parsing only the status line and Content-Length of each answer. Its
//     cost per request is a fraction of the server's, so it measures the
//     server's capacity.
//   - sdk: N goroutines, each with its own Go SDK client (kms/awskms), call the
//     operation in a loop: what a mount sees end to end, client costs included.
//
// Usage:
//
//	kmsload --endpoint http://127.0.0.1:8900 --region local \
//	    --access-key AKID --secret SECRET [--key KEY | --custom-key-store-id ID] \
//	    --op GenerateDataKey|Decrypt [--mode raw|sdk] [--conns 32] [--duration 10s]
//
// Credentials may also come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
// Without --key a key is created first (in the custom key store ID, with
// --custom-key-store-id).
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime/pprof"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/kmsfs/kmsfs/kms"
	"github.com/kmsfs/kmsfs/kms/awskms"
)

type config struct {
	endpoint  string
	region    string
	accessKey string
	secret    string
	key       string
	store     string
	op        string
	mode      string
	conns     int
	duration  time.Duration
	warmup    time.Duration
	blobs     int
}

func main() {
	var c config
	flag.StringVar(&c.endpoint, "endpoint", "http://127.0.0.1:8900", "KMS endpoint URL (http only in raw mode)")
	flag.StringVar(&c.region, "region", "local", "region to sign for")
	flag.StringVar(&c.accessKey, "access-key", os.Getenv("AWS_ACCESS_KEY_ID"), "access key ID")
	flag.StringVar(&c.secret, "secret", os.Getenv("AWS_SECRET_ACCESS_KEY"), "secret access key")
	flag.StringVar(&c.key, "key", "", "key ID, ARN or alias (default: create one)")
	flag.StringVar(&c.store, "custom-key-store-id", "", "without --key, create the key in this custom key store (origin AWS_CLOUDHSM: the token does the AES-GCM)")
	flag.StringVar(&c.op, "op", "GenerateDataKey", "GenerateDataKey or Decrypt")
	flag.StringVar(&c.mode, "mode", "raw", "raw (lean replay: server capacity) or sdk (Go SDK clients: end to end)")
	flag.IntVar(&c.conns, "conns", 32, "concurrent connections (raw) or SDK clients (sdk)")
	flag.DurationVar(&c.duration, "duration", 10*time.Second, "measured time")
	flag.DurationVar(&c.warmup, "warmup", 2*time.Second, "unmeasured warm-up time")
	flag.IntVar(&c.blobs, "blobs", 256, "distinct ciphertexts replayed by Decrypt")
	cpuProfile := flag.String("cpuprofile", "", "write the load generator's CPU profile here")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "kmsload:", err)
			os.Exit(1)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	if err := run(c); err != nil {
		pprof.StopCPUProfile()
		fmt.Fprintln(os.Stderr, "kmsload:", err)
		os.Exit(1)
	}
}

func run(c config) error {
	if c.accessKey == "" || c.secret == "" {
		return errors.New("no credentials: give --access-key/--secret or set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
	}
	if c.op != "GenerateDataKey" && c.op != "Decrypt" {
		return fmt.Errorf("--op %q: want GenerateDataKey or Decrypt", c.op)
	}
	ctx := context.Background()
	client, err := sdkClient(ctx, c)
	if err != nil {
		return err
	}
	if c.key == "" {
		in := kms.CreateKeyInput{Description: "kmsload"}
		if c.store != "" {
			in.Origin, in.CustomKeyStoreID = kms.OriginCloudHSM, c.store
		}
		md, err := client.CreateKey(ctx, in)
		if err != nil {
			return err
		}
		c.key = md.ARN
	}
	ec := kms.EncryptionContext{"volume": "kmsload", "file": "f"}
	var blobs [][]byte
	if c.op == "Decrypt" {
		for range c.blobs {
			ct, _, err := client.GenerateDataKeyWithoutPlaintext(ctx, c.key, 32, ec)
			if err != nil {
				return err
			}
			blobs = append(blobs, ct)
		}
	}
	var res result
	switch c.mode {
	case "raw":
		res, err = runRaw(c, ec, blobs)
	case "sdk":
		res, err = runSDK(ctx, c, ec, blobs)
	default:
		return fmt.Errorf("--mode %q: want raw or sdk", c.mode)
	}
	if err != nil {
		return err
	}
	fmt.Printf("%s mode=%s conns=%d duration=%v: %d ok, %d errors, %.0f requests/s, latency p50 %v p99 %v\n",
		c.op, c.mode, c.conns, c.duration, res.ok, res.errs, float64(res.ok)/c.duration.Seconds(), res.p50, res.p99)
	if res.firstErr != "" {
		fmt.Printf("first error: %s\n", res.firstErr)
	}
	return nil
}

func sdkClient(ctx context.Context, c config) (*awskms.Client, error) {
	return awskms.New(ctx, awskms.Options{
		Endpoint:    c.endpoint,
		Region:      c.region,
		Credentials: credentials.NewStaticCredentialsProvider(c.accessKey, c.secret, ""),
	})
}

type result struct {
	ok, errs int64
	p50, p99 time.Duration
	firstErr string
}

// counters are shared by the workers; only the measured window counts.
type counters struct {
	measuring atomic.Bool
	ok, errs  atomic.Int64
	mu        sync.Mutex
	lat       []time.Duration // sampled latencies
	firstErr  string
}

func (k *counters) record(d time.Duration, err error) {
	if !k.measuring.Load() {
		return
	}
	if err != nil {
		k.errs.Add(1)
		k.mu.Lock()
		if k.firstErr == "" {
			k.firstErr = err.Error()
		}
		k.mu.Unlock()
		return
	}
	if k.ok.Add(1)%16 == 0 { // sample: a lock per request would cost more than the request
		k.mu.Lock()
		k.lat = append(k.lat, d)
		k.mu.Unlock()
	}
}

func (k *counters) result() result {
	r := result{ok: k.ok.Load(), errs: k.errs.Load(), firstErr: k.firstErr}
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.lat) > 0 {
		slices.Sort(k.lat)
		r.p50 = k.lat[len(k.lat)/2]
		r.p99 = k.lat[len(k.lat)*99/100]
	}
	return r
}

// measure runs workers for warm-up plus duration and returns the counts of
// the measured window. Each worker loops until stop is closed.
func measure(c config, worker func(stop <-chan struct{}, k *counters)) result {
	var k counters
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range c.conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			worker(stop, &k)
		}()
	}
	time.Sleep(c.warmup)
	k.measuring.Store(true)
	time.Sleep(c.duration)
	k.measuring.Store(false)
	close(stop)
	wg.Wait()
	return k.result()
}

func runSDK(ctx context.Context, c config, ec kms.EncryptionContext, blobs [][]byte) (result, error) {
	clients := make([]*awskms.Client, c.conns)
	for i := range clients {
		cl, err := sdkClient(ctx, c)
		if err != nil {
			return result{}, err
		}
		clients[i] = cl
	}
	var next atomic.Int64
	return measure(c, func(stop <-chan struct{}, k *counters) {
		cl := clients[next.Add(1)-1]
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			start := time.Now()
			var err error
			if c.op == "Decrypt" {
				var pt []byte
				pt, _, err = cl.Decrypt(ctx, "", blobs[i%len(blobs)], ec)
				kms.Zero(pt)
			} else {
				var dk kms.DataKey
				dk, err = cl.GenerateDataKey(ctx, c.key, 32, ec)
				dk.Zero()
			}
			k.record(time.Since(start), err)
		}
	}), nil
}

// signedRequests holds the pre-signed request bytes, replaced every minute.
type signedRequests struct {
	mu   sync.RWMutex
	reqs [][]byte
}

func (s *signedRequests) get(i int) []byte {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.reqs[i%len(s.reqs)]
}

func buildRequests(c config, u *url.URL, bodies [][]byte, at time.Time) ([][]byte, error) {
	signer := v4.NewSigner()
	creds := aws.Credentials{AccessKeyID: c.accessKey, SecretAccessKey: c.secret}
	out := make([][]byte, 0, len(bodies))
	for _, body := range bodies {
		r, err := http.NewRequest(http.MethodPost, u.String(), bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		r.Header.Set("Content-Type", "application/x-amz-json-1.1")
		r.Header.Set("X-Amz-Target", "TrentService."+c.op)
		sum := sha256.Sum256(body)
		if err := signer.SignHTTP(context.Background(), creds, r, hex.EncodeToString(sum[:]), "kms", c.region, at); err != nil {
			return nil, err
		}
		var b bytes.Buffer
		fmt.Fprintf(&b, "POST / HTTP/1.1\r\nHost: %s\r\n", u.Host)
		for name, vals := range r.Header {
			for _, v := range vals {
				fmt.Fprintf(&b, "%s: %s\r\n", name, v)
			}
		}
		fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n", len(body))
		b.Write(body)
		out = append(out, b.Bytes())
	}
	return out, nil
}

func runRaw(c config, ec kms.EncryptionContext, blobs [][]byte) (result, error) {
	u, err := url.Parse(c.endpoint)
	if err != nil {
		return result{}, err
	}
	if u.Scheme != "http" {
		return result{}, errors.New("raw mode speaks plain HTTP only; use --mode sdk for https")
	}
	u.Path = "/"
	var bodies [][]byte
	if c.op == "Decrypt" {
		for _, b := range blobs {
			body, _ := json.Marshal(map[string]any{"CiphertextBlob": b, "EncryptionContext": ec})
			bodies = append(bodies, body)
		}
	} else {
		body, _ := json.Marshal(map[string]any{"KeyId": c.key, "KeySpec": "AES_256", "EncryptionContext": ec})
		bodies = append(bodies, body)
	}
	reqs, err := buildRequests(c, u, bodies, time.Now())
	if err != nil {
		return result{}, err
	}
	signed := &signedRequests{reqs: reqs}
	done := make(chan struct{})
	defer close(done)
	go func() {
		t := time.NewTicker(time.Minute)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case now := <-t.C:
				if reqs, err := buildRequests(c, u, bodies, now); err == nil {
					signed.mu.Lock()
					signed.reqs = reqs
					signed.mu.Unlock()
				}
			}
		}
	}()
	var connID atomic.Int64
	return measure(c, func(stop <-chan struct{}, k *counters) {
		id := int(connID.Add(1))
		var conn net.Conn
		var br *bufio.Reader
		for i := id * 7919; ; i++ {
			select {
			case <-stop:
				if conn != nil {
					conn.Close()
				}
				return
			default:
			}
			if conn == nil {
				var err error
				if conn, err = net.Dial("tcp", u.Host); err != nil {
					k.record(0, err)
					time.Sleep(10 * time.Millisecond)
					continue
				}
				br = bufio.NewReaderSize(conn, 8192)
			}
			start := time.Now()
			status, err := roundTrip(conn, br, signed.get(i))
			if err == nil && status != 200 {
				err = fmt.Errorf("HTTP %d", status)
			}
			if err != nil && status == 0 {
				conn.Close()
				conn = nil
			}
			k.record(time.Since(start), err)
		}
	}), nil
}

// roundTrip writes one request and reads one response, returning its status.
// It reads only what keep-alive needs: the status line, Content-Length (or
// chunked framing) and the body.
func roundTrip(conn net.Conn, br *bufio.Reader, req []byte) (int, error) {
	if _, err := conn.Write(req); err != nil {
		return 0, err
	}
	line, err := br.ReadSlice('\n')
	if err != nil {
		return 0, err
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.1 ")) {
		return 0, fmt.Errorf("bad status line %q", line)
	}
	status, err := strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, fmt.Errorf("bad status line %q", line)
	}
	length, chunked := -1, false
	for {
		h, err := br.ReadSlice('\n')
		if err != nil {
			return 0, err
		}
		if len(h) <= 2 {
			break
		}
		if name, val, ok := bytes.Cut(h, []byte(":")); ok {
			switch {
			case bytes.EqualFold(name, []byte("Content-Length")):
				length, _ = strconv.Atoi(string(bytes.TrimSpace(val)))
			case bytes.EqualFold(name, []byte("Transfer-Encoding")):
				chunked = bytes.Contains(bytes.ToLower(val), []byte("chunked"))
			}
		}
	}
	switch {
	case chunked:
		for {
			sz, err := br.ReadSlice('\n')
			if err != nil {
				return 0, err
			}
			n, err := strconv.ParseInt(string(bytes.TrimSpace(sz)), 16, 32)
			if err != nil {
				return 0, fmt.Errorf("bad chunk size %q", sz)
			}
			if _, err := br.Discard(int(n) + 2); err != nil {
				return 0, err
			}
			if n == 0 {
				return status, nil
			}
		}
	case length >= 0:
		if _, err := br.Discard(length); err != nil {
			return 0, err
		}
		return status, nil
	}
	return 0, io.ErrUnexpectedEOF
}
