// Package auditlog is the format of kmsfs's KMS audit logs: the log
// `kmsfs kms serve` keeps of every request, and the log a client process
// (mount, init, cat, rewrap with --audit-log) keeps of every KMS call it
// makes. Both are checked by `kmsfs kms audit verify`.
//
// A log is JSON lines. Each line is one Entry as a JSON object, its fields
// in the order of the struct with empty optional fields left out and map keys
// sorted, ending with "prev" (the hash of the line before, 64 zeros for the
// first) and then "hash": the lowercase hex SHA-256 of the line's bytes
// without its hash field (that is, the object closed right after "prev").
// Editing a line breaks its own hash; removing, inserting or reordering one
// breaks the chain at the next line.
//
// The chain alone has no key: whoever can write the file can rewrite it
// whole, or cut lines off its end, and it still verifies. A log opened with
// a signing key therefore also carries signed digests (digest.go), as
// CloudTrail's digest files do: every DigestInterval, and when it is closed,
// a line that signs the hash of the line before it (which commits to every
// earlier line) and the number of lines it covers. A verifier holding the
// public key detects a rewritten log (no valid signature), and, by the age
// of the last digest, a log cut short.
package auditlog

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/kmsfs/kmsfs/kms/internal/jsonstr"
)

// Entry is one line of the audit log: one request, allowed or refused.
// It never carries plaintext, data keys or key material.
type Entry struct {
	Time              string            `json:"time"` // RFC 3339, UTC, nanoseconds
	RequestID         string            `json:"requestId"`
	Operation         string            `json:"operation"`
	Principal         string            `json:"principal,omitempty"`
	AccessKeyID       string            `json:"accessKeyId,omitempty"`
	KeyARN            string            `json:"keyArn,omitempty"`
	DestKeyARN        string            `json:"destinationKeyArn,omitempty"` // ReEncrypt
	GrantID           string            `json:"grantId,omitempty"`
	CustomKeyStoreID  string            `json:"customKeyStoreId,omitempty"` // the custom key store a request acted on
	EncryptionContext map[string]string `json:"encryptionContext,omitempty"`
	DestContext       map[string]string `json:"destinationEncryptionContext,omitempty"`
	SourceAddress     string            `json:"sourceAddress"`
	Result            string            `json:"result"` // "Success" or the AWS error code
	ErrorMessage      string            `json:"errorMessage,omitempty"`
	// Speculative marks a call a client made ahead of need (a data key
	// unwrapped before the file it protects was opened), as opposed to one
	// a reader waited for. Client-side logs only; absent when false.
	Speculative bool `json:"speculative,omitempty"`
	// SignedEntries, SigningKey and Signature are set on digest lines only
	// (Operation DigestOperation, digest.go): how many lines come before it,
	// the signing key's fingerprint, and the Ed25519 signature.
	SignedEntries uint64 `json:"signedEntries,omitempty"`
	SigningKey    string `json:"signingKey,omitempty"`
	Signature     string `json:"signature,omitempty"`
	// Prev is the hash of the previous line (64 zeros for the first), which
	// chains the lines: editing, removing or reordering one breaks the chain.
	Prev string `json:"prev"`

	digest bool // a digest line to be signed when it is written
}

// ResultSuccess is Entry.Result for a request that succeeded.
const ResultSuccess = "Success"

// genesisHash is the Prev of the first line of a log.
const genesisHash = "0000000000000000000000000000000000000000000000000000000000000000"

// hashSuffixLen is len(`,"hash":"` + 64 hex digits + `"}`).
const hashSuffixLen = 9 + 64 + 2

// Options tunes the audit log's durability.
type Options struct {
	// Fsync makes every batch of lines durable (fsync) before the requests
	// in it are answered. Without it, lines are written to the OS before the
	// answer (they survive a crash of the server, not of the machine).
	Fsync bool
	// Signer, if set, makes the log write a signed digest every
	// DigestInterval (default DefaultDigestInterval) and when it is closed.
	Signer ed25519.PrivateKey
	// DigestInterval is how often a digest is written, whether or not
	// anything was logged since: a verifier tells a log cut short by the age
	// of its last digest.
	DigestInterval time.Duration
	// Now is the clock of digest times; nil means time.Now.
	Now func() time.Time
}

// Log is an append-only, hash-chained JSON-lines log. Record is safe for
// concurrent use; concurrent records are written in batches (group commit):
// one write (and at most one fsync) per batch, never one per request.
type Log struct {
	f     *os.File
	fsync bool

	mu       sync.Mutex
	cond     *sync.Cond
	pending  []*Entry
	queued   uint64 // entries ever queued
	written  uint64 // entries ever written (or failed: see err)
	err      error  // sticky write error: the log refuses further records
	closed   bool
	writerOn bool

	head  string // hash of the last line written; owned by the writer
	lines uint64 // lines in the file; owned by the writer
	buf   []byte // owned by the writer

	signer     ed25519.PrivateKey // nil: no digests
	signerID   string
	now        func() time.Time
	stopDigest chan struct{} // closed by Close to end the digest ticker
	digestDone chan struct{}
}

// Open opens (creating if needed) the log at path and resumes its
// hash chain from the last line.
func Open(path string, opts Options) (*Log, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	head, err := lastHash(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open audit log %s: %w", path, err)
	}
	l := &Log{f: f, fsync: opts.Fsync, head: head, now: opts.Now}
	if l.now == nil {
		l.now = time.Now
	}
	l.cond = sync.NewCond(&l.mu)
	if opts.Signer != nil {
		// Digests say how many lines they cover: count the lines there are.
		if l.lines, err = countLines(f); err != nil {
			f.Close()
			return nil, fmt.Errorf("open audit log %s: %w", path, err)
		}
		l.signer = opts.Signer
		l.signerID = KeyFingerprint(opts.Signer.Public().(ed25519.PublicKey))
		interval := opts.DigestInterval
		if interval <= 0 {
			interval = DefaultDigestInterval
		}
		l.stopDigest, l.digestDone = make(chan struct{}), make(chan struct{})
		go l.digestEvery(interval)
	}
	return l, nil
}

// lastHash returns the hash of the log's last line, or genesisHash if empty.
func lastHash(f *os.File) (string, error) {
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	size := st.Size()
	if size == 0 {
		return genesisHash, nil
	}
	const tail = 1 << 16
	off := max(size-tail, 0)
	buf := make([]byte, size-off)
	if _, err := f.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	if buf[len(buf)-1] != '\n' {
		return "", fmt.Errorf("log ends with a partial line (interrupted write?): inspect it with 'kmsfs kms audit verify' and truncate the partial line before serving")
	}
	line := buf[:len(buf)-1]
	if i := bytes.LastIndexByte(line, '\n'); i >= 0 {
		line = line[i+1:]
	} else if off > 0 {
		return "", fmt.Errorf("last line longer than %d bytes", tail)
	}
	_, sum, err := splitLine(line)
	if err != nil {
		return "", fmt.Errorf("last line: %w", err)
	}
	return sum, nil
}

// Record appends e (setting e.Prev) and returns once it is written (and
// fsynced, if asked). An error means the entry may not be in the log: the
// caller must not report the request as successful.
func (l *Log) Record(e *Entry) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return l.err
	}
	if l.closed {
		return errors.New("audit log closed")
	}
	l.pending = append(l.pending, e)
	l.queued++
	seq := l.queued
	if !l.writerOn {
		l.writerOn = true
		go l.writeBatches()
	}
	for l.written < seq {
		l.cond.Wait()
	}
	return l.err
}

// writeBatches writes queued entries until the queue is empty. While it
// writes one batch, new entries gather for the next: that is the group commit.
func (l *Log) writeBatches() {
	l.mu.Lock()
	for len(l.pending) > 0 && l.err == nil {
		batch := l.pending
		l.pending = nil
		l.mu.Unlock()
		err := l.writeBatch(batch)
		clear(batch)
		l.mu.Lock()
		if err != nil {
			l.err = fmt.Errorf("audit log write: %w", err)
		}
		l.written += uint64(len(batch))
		l.cond.Broadcast()
	}
	if l.err != nil {
		l.written = l.queued
		l.pending = nil
	}
	l.writerOn = false
	l.cond.Broadcast()
	l.mu.Unlock()
}

func (l *Log) writeBatch(batch []*Entry) error {
	b := l.buf[:0]
	head := l.head
	lines := l.lines
	for _, e := range batch {
		e.Prev = head
		if e.digest {
			l.sign(e, lines)
		}
		lines++
		start := len(b)
		b = e.appendJSON(b)
		sum := sha256.Sum256(b[start:])
		head = hex.EncodeToString(sum[:])
		b = b[:len(b)-1] // reopen the object for the hash field
		b = append(b, `,"hash":"`...)
		b = append(b, head...)
		b = append(b, "\"}\n"...)
	}
	l.buf = b
	if _, err := l.f.Write(b); err != nil {
		return err
	}
	if l.fsync {
		if err := l.f.Sync(); err != nil {
			return err
		}
	}
	l.head, l.lines = head, lines
	return nil
}

// Close writes a last digest (for a signing log), waits for queued entries
// to be written and closes the file.
func (l *Log) Close() error {
	if l.signer != nil {
		close(l.stopDigest)
		<-l.digestDone
		if err := l.Record(l.digestEntry()); err != nil {
			l.f.Close()
			return err
		}
	}
	l.mu.Lock()
	l.closed = true
	for l.writerOn {
		l.cond.Wait()
	}
	l.mu.Unlock()
	if err := l.f.Sync(); err != nil {
		l.f.Close()
		return fmt.Errorf("audit log sync: %w", err)
	}
	return l.f.Close()
}

// splitLine splits a log line (without newline) into the hashed body (the
// line with its hash field removed) and the hash it claims.
func splitLine(line []byte) (body []byte, sum string, err error) {
	n := len(line)
	if n < hashSuffixLen+2 || string(line[n-hashSuffixLen:n-hashSuffixLen+9]) != `,"hash":"` || string(line[n-2:]) != `"}` {
		return nil, "", errors.New("no hash field at the end of the line")
	}
	sum = string(line[n-2-64 : n-2])
	if _, err := hex.DecodeString(sum); err != nil {
		return nil, "", errors.New("hash field is not hex")
	}
	body = make([]byte, 0, n-hashSuffixLen+1)
	body = append(body, line[:n-hashSuffixLen]...)
	body = append(body, '}')
	return body, sum, nil
}

// Summary is the result of a successful verification.
type Summary struct {
	Entries int
	Head    string // hash of the last line: record it to detect later truncation
	// Digests counts the digest lines; Signed those whose signature was
	// checked (VerifyOptions.PublicKeys).
	Digests, Signed int
	// LastSigned is the time of the last checked digest; Unsigned counts
	// the lines after it (written since, or not covered by any signature).
	LastSigned time.Time
	Unsigned   int
}

// Verify checks every line's hash and the chain between lines. An
// edited line fails its own hash; a removed, inserted or reordered line breaks
// the chain at the next line. Removing lines from the end leaves a valid
// shorter chain: compare Head (or Entries) with a value recorded earlier, or
// check signed digests with VerifyWith.
func Verify(r io.Reader) (Summary, error) { return VerifyWith(r, VerifyOptions{}) }

// VerifyWith is Verify that also checks the digests' signatures against
// o.PublicKeys: a log rewritten without the signing key fails, and with
// o.MaxAge so does one whose last digest is too old (a log cut short).
func VerifyWith(r io.Reader, o VerifyOptions) (Summary, error) {
	keys := map[string]ed25519.PublicKey{}
	for _, k := range o.PublicKeys {
		keys[KeyFingerprint(k)] = k
	}
	br := bufio.NewReaderSize(r, 1<<16)
	prev := genesisHash
	var sum Summary
	n := 0
	for {
		line, err := br.ReadBytes('\n')
		if len(line) == 0 && errors.Is(err, io.EOF) {
			break
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return Summary{}, fmt.Errorf("read line %d: %w", n+1, err)
		}
		n++
		if line[len(line)-1] != '\n' {
			return Summary{}, fmt.Errorf("line %d: partial line at end of log", n)
		}
		body, hash, serr := splitLine(line[:len(line)-1])
		if serr != nil {
			return Summary{}, fmt.Errorf("line %d: %v", n, serr)
		}
		got := sha256.Sum256(body)
		if hex.EncodeToString(got[:]) != hash {
			return Summary{}, fmt.Errorf("line %d: hash mismatch: the line was edited", n)
		}
		var e Entry
		if err := json.Unmarshal(body, &e); err != nil {
			return Summary{}, fmt.Errorf("line %d: not a JSON audit entry: %v", n, err)
		}
		if e.Prev != prev {
			return Summary{}, fmt.Errorf("line %d: chain broken: it follows %s, but the line before it hashes to %s (a line was removed, inserted or reordered)", n, short(e.Prev), short(prev))
		}
		prev = hash
		sum.Unsigned++
		if e.Operation == DigestOperation && e.Signature != "" {
			signed, at, err := checkDigest(&e, n, keys)
			if err != nil {
				return Summary{}, err
			}
			sum.Digests++
			if signed {
				sum.Signed++
				sum.LastSigned, sum.Unsigned = at, 0
			}
		}
	}
	sum.Entries, sum.Head = n, prev
	if len(keys) > 0 {
		if sum.Signed == 0 {
			return sum, errors.New("no digest signed by the given key: the log was rewritten, or written without a signing key")
		}
		now := time.Now
		if o.Now != nil {
			now = o.Now
		}
		if age := now().Sub(sum.LastSigned); o.MaxAge > 0 && age > o.MaxAge {
			return sum, fmt.Errorf("last signed digest is %s old (at %s), more than %s: lines were removed from the end, or the server stopped writing", age.Round(time.Second), sum.LastSigned.Format(time.RFC3339), o.MaxAge)
		}
	}
	return sum, nil
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12] + "…"
	}
	return h
}

// appendJSON appends e as a JSON object, with the same field names and
// order as encoding/json would use, without reflection: the audit writer
// encodes every request on one goroutine, so this is on the hot path.
func (e *Entry) appendJSON(b []byte) []byte {
	b = append(b, `{"time":`...)
	b = jsonstr.Append(b, e.Time)
	b = append(b, `,"requestId":`...)
	b = jsonstr.Append(b, e.RequestID)
	b = append(b, `,"operation":`...)
	b = jsonstr.Append(b, e.Operation)
	b = appendOptString(b, "principal", e.Principal)
	b = appendOptString(b, "accessKeyId", e.AccessKeyID)
	b = appendOptString(b, "keyArn", e.KeyARN)
	b = appendOptString(b, "destinationKeyArn", e.DestKeyARN)
	b = appendOptString(b, "grantId", e.GrantID)
	b = appendOptString(b, "customKeyStoreId", e.CustomKeyStoreID)
	b = appendOptMap(b, "encryptionContext", e.EncryptionContext)
	b = appendOptMap(b, "destinationEncryptionContext", e.DestContext)
	b = append(b, `,"sourceAddress":`...)
	b = jsonstr.Append(b, e.SourceAddress)
	b = append(b, `,"result":`...)
	b = jsonstr.Append(b, e.Result)
	b = appendOptString(b, "errorMessage", e.ErrorMessage)
	if e.Speculative {
		b = append(b, `,"speculative":true`...)
	}
	if e.SignedEntries != 0 || e.Signature != "" {
		b = append(b, `,"signedEntries":`...)
		b = strconv.AppendUint(b, e.SignedEntries, 10)
	}
	b = appendOptString(b, "signingKey", e.SigningKey)
	b = appendOptString(b, "signature", e.Signature)
	b = append(b, `,"prev":`...)
	b = jsonstr.Append(b, e.Prev)
	return append(b, '}')
}

func appendOptString(b []byte, name, v string) []byte {
	if v == "" {
		return b
	}
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, '"', ':')
	return jsonstr.Append(b, v)
}

func appendOptMap(b []byte, name string, m map[string]string) []byte {
	if len(m) == 0 {
		return b
	}
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, `":{`...)
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = jsonstr.Append(b, k)
		b = append(b, ':')
		b = jsonstr.Append(b, m[k])
	}
	return append(b, '}')
}
