package volume

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kmsfs/kmsfs/backend"
	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/kms"
)

// RewrapOptions configure Rewrap.
type RewrapOptions struct {
	// ToKey is the KMS key (ID, ARN or alias) every key is re-wrapped under.
	// Empty: the volume's own key, which re-wraps every file under its
	// current backing material (what to do after a rotation, before old
	// material is retired).
	ToKey string
	// Parallel is how many files are in flight at once (0: 8). Each costs
	// one KMS round trip in per-object mode, so this hides KMS latency.
	Parallel int
	// Progress, if set, is called about once a second and once at the end.
	Progress func(RewrapProgress)
	// ProgressEvery overrides the one second.
	ProgressEvery time.Duration
	Logger        *slog.Logger
}

// RewrapProgress counts what a rewrap has done so far.
type RewrapProgress struct {
	Files      int    // regular files reached
	Rewrapped  int    // headers rewritten
	Skipped    int    // empty, already under the destination key, another link of a rewrapped file, or done by an earlier run
	Failed     int    // could not be rewrapped (each logged with its path)
	ReEncrypts int    // KMS ReEncrypt calls (one per file; one per bucket key in bucket-key mode)
	KeyARN     string // the destination key's ARN, once known
	Done       bool
}

// Rewrap re-wraps the data key of every file of the volume in be, the
// volume's metadata key, and every bucket key, under another KMS key or the
// current backing material of the same key, with the KMS's ReEncrypt: the
// plaintext keys never leave the KMS and no data block is read or written;
// only headers (their key slot) change (docs/FORMAT.md section 3). The
// volume config then names the new key, so new files use it.
//
// It holds the volume lock, so it refuses a volume mounted read-write.
// Each header is rewritten in place, announced as an intent first on
// backends that can tear a write, and synced; the job record in the
// metadata area remembers how far the walk got, so a rewrap that was
// interrupted (Ctrl-C, crash, a KMS error) resumes when run again with the
// same ToKey. Until it finishes, files not yet reached keep their old key
// slot, which still decrypts under the old key: a rewrap never leaves a file
// unreadable. Files it cannot rewrap are logged, counted and reported in the
// returned error; they keep their old slot.
func Rewrap(ctx context.Context, be backend.Backend, crypto kms.Crypto, opt RewrapOptions) (RewrapProgress, error) {
	var prog RewrapProgress
	cfg, err := ReadConfig(ctx, be)
	if err != nil {
		return prog, err
	}
	unlock, err := lockVolume(ctx, be)
	if err != nil {
		return prog, err
	}
	if unlock != nil {
		defer unlock()
	}
	log := opt.Logger
	if log == nil {
		log = slog.Default()
	}
	r := &rewrapper{
		be: be, crypto: crypto, cfg: cfg, log: log,
		layout:  envelope.Layout{HeaderSize: int64(cfg.HeaderSize), BlockSize: int64(cfg.BlockSize)},
		bucket:  map[bucketSlot]*rewrappedBucketKey{},
		visited: map[uint64]bool{},
	}
	r.id, _ = cfg.ID()

	job, resumed, err := loadRewrapCheckpoint(ctx, be, opt.ToKey, time.Now())
	if err != nil {
		return prog, err
	}
	if resumed {
		log.Info("resuming an interrupted rewrap", "key", job.KeyARN, "done_through", "/"+job.DoneThrough, "started", job.Started)
	}
	r.job = job
	if !job.MetaDone {
		if err := r.rewrapMetaKey(ctx); err != nil {
			return prog, err
		}
		prog.ReEncrypts++
	}
	r.dest = job.KeyARN
	prog.KeyARN = job.KeyARN

	parallel := opt.Parallel
	if parallel <= 0 {
		parallel = 8
	}
	every := opt.ProgressEvery
	if every <= 0 {
		every = time.Second
	}

	// The walk hands out files in order, numbered; workers rewrap them in
	// any order; the checkpoint advances over them (rewrapCheckpoint.advance).
	type task struct {
		seq  int
		name string
	}
	type result struct {
		seq   int
		name  string
		state fileRewrap
		calls int
		err   error
	}
	tasks := make(chan task)
	results := make(chan result)
	walkCtx, stopWalk := context.WithCancel(ctx)
	defer stopWalk()
	var walkErr error
	resumeAfter := job.DoneThrough // the loop below moves job.DoneThrough on
	go func() {
		defer close(tasks)
		seq := 0
		walkErr = walkFiles(walkCtx, be, "", func(name string) error {
			if cfg.HasFeature(FeatureNameEncrypt) {
				if _, leaf := splitPath(name); leaf == DirIDName || isSideFile(leaf) {
					return nil // a directory's ID or a long name's side file
				}
			}
			if resumeAfter != "" && !walkOrderAfter(name, resumeAfter) {
				seq++ // counted, not sent: an earlier run did it
				select {
				case results <- result{seq: seq - 1, name: name, state: rewrapSkipped}:
					return nil
				case <-walkCtx.Done():
					return walkCtx.Err()
				}
			}
			select {
			case tasks <- task{seq, name}:
				seq++
				return nil
			case <-walkCtx.Done():
				return walkCtx.Err()
			}
		})
	}()
	// A file once started is finished even when ctx is cancelled (Ctrl-C):
	// the walk stops handing out more, and the checkpoint stays exact.
	fileCtx := context.WithoutCancel(ctx)
	var workers sync.WaitGroup
	for range parallel {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for t := range tasks {
				state, calls, err := r.rewrapFile(fileCtx, t.name)
				results <- result{t.seq, t.name, state, calls, err}
			}
		}()
	}
	go func() {
		workers.Wait()
		// The walker closed tasks; its skipped results were sent before.
		close(results)
	}()

	lastReport := time.Now()
	for res := range results {
		prog.Files++
		prog.ReEncrypts += res.calls
		switch {
		case res.err != nil:
			prog.Failed++
			log.Error("rewrap failed; the file keeps its old key slot", "path", "/"+res.name, "err", res.err)
		case res.state == rewrapDone:
			prog.Rewrapped++
		default:
			prog.Skipped++
		}
		job.advance(res.seq, res.name, res.err != nil)
		if time.Since(lastReport) >= every {
			lastReport = time.Now()
			if err := job.save(ctx, be); err != nil {
				log.Warn("rewrap: could not save progress", "err", err)
			}
			if opt.Progress != nil {
				opt.Progress(prog)
			}
		}
	}
	if walkErr == nil {
		walkErr = ctx.Err()
	}
	job.Finished = walkErr == nil && prog.Failed == 0
	if err := job.save(context.WithoutCancel(ctx), be); err != nil && walkErr == nil {
		walkErr = fmt.Errorf("save rewrap progress: %w", err)
	}
	prog.Done = job.Finished
	if opt.Progress != nil {
		opt.Progress(prog)
	}
	if walkErr != nil {
		return prog, fmt.Errorf("rewrap stopped (run it again to resume): %w", walkErr)
	}
	if prog.Failed > 0 {
		return prog, fmt.Errorf("%d of %d files could not be rewrapped and keep their old key (see the log; run again to retry them)", prog.Failed, prog.Files)
	}
	return prog, nil
}

type fileRewrap int

const (
	rewrapSkipped fileRewrap = iota
	rewrapDone
)

type rewrapper struct {
	be     backend.Backend
	crypto kms.Crypto
	cfg    *Config
	id     [envelope.IDLen]byte
	layout envelope.Layout
	log    *slog.Logger
	job    *rewrapCheckpoint
	dest   string // destination key ARN

	mu      sync.Mutex
	bucket  map[bucketSlot]*rewrappedBucketKey
	visited map[uint64]bool // inodes with several links already handled
}

// bucketSlot names one bucket key as stored: its ID and the hash of its
// wrapped form (a bucket key ID with two wrappings is two slots).
type bucketSlot struct {
	id      [envelope.IDLen]byte
	wrapped [sha256.Size]byte
}

// rewrappedBucketKey is one bucket key's ReEncrypt, done once for all the
// files that share it.
type rewrappedBucketKey struct {
	once    sync.Once
	keyARN  string
	wrapped []byte
	err     error
}

// rewrapMetaKey re-wraps the volume's metadata key under the destination
// and writes a config naming the destination key (atomically: WriteMeta).
func (r *rewrapper) rewrapMetaKey(ctx context.Context) error {
	dest := r.job.ToKey
	if dest == "" {
		dest = r.cfg.KeyID
	}
	mctx := metaContext(r.cfg.VolumeID)
	wrapped, _, destARN, err := r.crypto.ReEncrypt(ctx, r.cfg.WrappedMetaKey, mctx, dest, mctx)
	if err != nil {
		return fmt.Errorf("re-wrap the volume metadata key under %s: %w", dest, err)
	}
	cfg := *r.cfg
	cfg.KeyID, cfg.WrappedMetaKey = destARN, wrapped
	data, err := json.MarshalIndent(&cfg, "", "  ")
	if err != nil {
		return err
	}
	// The job record first: should the config be written and the process
	// die before the record says so, the next run only re-wraps the
	// metadata key once more.
	r.job.KeyARN = destARN
	r.job.Refresh = destARN == r.cfg.KeyID
	if err := r.job.save(ctx, r.be); err != nil {
		return fmt.Errorf("save rewrap job: %w", err)
	}
	if err := r.be.WriteMeta(ctx, ConfigName, append(data, '\n')); err != nil {
		return fmt.Errorf("write volume config: %w", err)
	}
	r.cfg = &cfg
	r.job.MetaDone = true
	return r.job.save(ctx, r.be)
}

// rewrapFile rewrites one stored file's key slot. It returns how many
// ReEncrypt calls it made.
func (r *rewrapper) rewrapFile(ctx context.Context, name string) (fileRewrap, int, error) {
	var st syscall.Stat_t
	if err := r.be.Lstat(ctx, name, &st); err != nil {
		return 0, 0, err
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG || st.Size == 0 {
		return rewrapSkipped, 0, nil // empty files have no header (FORMAT.md section 2)
	}
	if st.Nlink > 1 {
		// Another name of a file already handled (hard links share the
		// inode, and so the header).
		r.mu.Lock()
		seen := r.visited[st.Ino]
		r.visited[st.Ino] = true
		r.mu.Unlock()
		if seen {
			return rewrapSkipped, 0, nil
		}
	}
	f, err := r.be.Open(ctx, name, syscall.O_RDWR, 0, nil)
	if err != nil {
		return 0, 0, err
	}
	// Closed exactly once: a second Close of a local file would close
	// whatever descriptor another worker has opened under the same number.
	open := true
	defer func() {
		if open {
			f.Close()
		}
	}()
	region := make([]byte, r.layout.HeaderSize)
	readHeader := func() error {
		if _, err := f.ReadAt(region, 0); err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("header: %w: file shorter than its header", envelope.ErrCorrupt)
			}
			return fmt.Errorf("read header: %w", err)
		}
		return nil
	}
	if err := readHeader(); err != nil {
		return 0, 0, err
	}
	// A change a crash interrupted (a mount's overwrite, or an earlier
	// rewrap of this header) is finished first: the intent is keyed by the
	// file ID, and this rewrite's own intent would replace it.
	if id, ok := envelope.HeaderFileID(region); ok {
		replayed, err := finishIntent(ctx, r.be, r.log, name, id, false)
		if err != nil {
			return 0, 0, err
		}
		if replayed {
			if err := readHeader(); err != nil {
				return 0, 0, err
			}
		}
	}
	p, err := envelope.ParseHeader(region)
	if err != nil {
		return 0, 0, fmt.Errorf("header: %w", err)
	}
	if p.VolumeID != r.id {
		return 0, 0, fmt.Errorf("header: %w: file belongs to volume %x, not this volume", envelope.ErrAuth, p.VolumeID)
	}
	if !r.job.Refresh && p.KeyID == r.dest {
		return rewrapSkipped, 0, nil
	}
	keyARN, wrapped, calls, err := r.reEncryptSlot(ctx, p)
	if err != nil {
		return 0, calls, err
	}
	newRegion, err := p.ReplaceKeySlot(keyARN, wrapped)
	if err != nil {
		return 0, calls, err
	}
	done, err := announce(ctx, r.be, &intent{fileID: p.FileID, truncateTo: -1, data: newRegion})
	if err != nil {
		return 0, calls, err
	}
	if _, err := f.WriteAt(newRegion, 0); err != nil {
		return 0, calls, fmt.Errorf("write header: %w", err)
	}
	if err := f.Sync(); err != nil {
		return 0, calls, fmt.Errorf("sync header: %w", err)
	}
	if err := done(); err != nil {
		return 0, calls, err
	}
	open = false
	if err := f.Close(); err != nil {
		return 0, calls, err
	}
	// The plaintext file did not change: keep the times rsync and make
	// compare (the backing file's are the plaintext file's).
	atime, mtime := time.Unix(st.Atim.Unix()), time.Unix(st.Mtim.Unix())
	if err := r.be.Utimens(ctx, name, &atime, &mtime); err != nil {
		return 0, calls, fmt.Errorf("restore times: %w", err)
	}
	return rewrapDone, calls, nil
}

// reEncryptSlot has the KMS re-wrap a header's key slot under the
// destination: the file's own data key in per-object mode, the shared
// bucket key (once per run) in bucket-key mode.
func (r *rewrapper) reEncryptSlot(ctx context.Context, p *envelope.ParsedHeader) (keyARN string, wrapped []byte, calls int, err error) {
	dest := r.dest
	if p.Mode != envelope.ModeBucketKey {
		fctx := fileContext(r.cfg.VolumeID, p.FileID)
		wrapped, _, keyARN, err = r.crypto.ReEncrypt(ctx, p.WrappedKey, fctx, dest, fctx)
		if err != nil {
			return "", nil, 1, fmt.Errorf("re-wrap data key: %w", err)
		}
		return keyARN, wrapped, 1, nil
	}
	slot := bucketSlot{id: p.BucketKeyID, wrapped: sha256.Sum256(p.WrappedKey)}
	r.mu.Lock()
	bk := r.bucket[slot]
	if bk == nil {
		bk = &rewrappedBucketKey{}
		r.bucket[slot] = bk
	}
	r.mu.Unlock()
	bk.once.Do(func() {
		calls = 1
		bctx := bucketContext(r.cfg.VolumeID)
		bk.wrapped, _, bk.keyARN, bk.err = r.crypto.ReEncrypt(ctx, p.WrappedKey, bctx, dest, bctx)
		if bk.err != nil {
			bk.err = fmt.Errorf("re-wrap bucket key %x: %w", p.BucketKeyID, bk.err)
		}
	})
	return bk.keyARN, bk.wrapped, calls, bk.err
}

// walkFiles calls fn for every regular file below dir, depth first, names
// sorted bytewise: the order walkOrderAfter compares in.
func walkFiles(ctx context.Context, be backend.Backend, dir string, fn func(name string) error) error {
	ents, err := be.ReadDir(ctx, dir)
	if err != nil {
		return fmt.Errorf("list /%s: %w", dir, err)
	}
	slices.SortFunc(ents, func(a, b backend.DirEntry) int { return strings.Compare(a.Name, b.Name) })
	for _, e := range ents {
		if err := ctx.Err(); err != nil {
			return err
		}
		name := e.Name
		if dir != "" {
			name = dir + "/" + e.Name
		}
		typ := e.Mode & syscall.S_IFMT
		if typ == 0 {
			// Type unknown from the listing (S3 lists objects without
			// saying file or symlink; some filesystems give DT_UNKNOWN).
			var st syscall.Stat_t
			if err := be.Lstat(ctx, name, &st); err != nil {
				return fmt.Errorf("stat /%s: %w", name, err)
			}
			typ = st.Mode & syscall.S_IFMT
		}
		switch typ {
		case syscall.S_IFDIR:
			if err := walkFiles(ctx, be, name, fn); err != nil {
				return err
			}
		case syscall.S_IFREG:
			if err := fn(name); err != nil {
				return err
			}
		}
	}
	return nil
}

// walkOrderAfter reports whether path a comes after path b in walkFiles's
// order: component by component, bytewise, a directory before what is in it.
func walkOrderAfter(a, b string) bool {
	ac, bc := strings.Split(a, "/"), strings.Split(b, "/")
	for i := range min(len(ac), len(bc)) {
		if c := strings.Compare(ac[i], bc[i]); c != 0 {
			return c > 0
		}
	}
	return len(ac) > len(bc)
}

// warnUnfinishedRewrap logs a rewrap that was interrupted: every file is
// readable meanwhile, but some are still under the old key, which must not
// be disabled or deleted yet.
func (v *Volume) warnUnfinishedRewrap(ctx context.Context) {
	job, err := readRewrapCheckpoint(ctx, v.be)
	if err == nil && job != nil && !job.Finished {
		v.log.Warn("a kmsfs rewrap of this volume was interrupted; some files are still under the old key: run kmsfs rewrap again before disabling it",
			"to_key", job.KeyARN, "done_through", "/"+job.DoneThrough, "started", job.Started)
	}
}
