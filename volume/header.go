package volume

import (
	"context"
	"crypto/rand"
	"fmt"
	"time"

	"github.com/kmsfs/kmsfs/backend"
	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/kms"
)

// fileKeys returns the file's keys, reading and authenticating the header on
// first use. With create, an empty file gets a new header and key; without,
// an empty file returns nil keys.
func (h *Handle) fileKeys(ctx context.Context, create bool) (*envelope.FileKeys, error) {
	st := h.st
	st.keyMu.Lock()
	defer st.keyMu.Unlock()
	if st.keys != nil {
		return st.keys, nil
	}
	ctx, cancel := detachKeyWork(ctx)
	defer cancel()
	// The key read-ahead (prefetch.go) learns from this Decrypt which file
	// the reader opened.
	ctx = withOpening(ctx, h.name)
	cs, err := h.cipherSize()
	if err != nil {
		return nil, err
	}
	if cs == 0 {
		if !create {
			return nil, nil
		}
		keys, err := h.v.newHeader(ctx, h.f, h.name)
		if err != nil {
			return nil, err
		}
		st.keys = keys
		st.openTail = false
		return keys, nil
	}
	region := make([]byte, h.v.layout.HeaderSize)
	if _, err := h.f.ReadAt(region, 0); err != nil {
		return nil, fmt.Errorf("read header: %w", err)
	}
	keys, p, err := h.v.openHeader(ctx, region)
	if err != nil {
		// A header rewrite (kmsfs rewrap) that a crash tore leaves a
		// header that does not parse or unwrap; its intent completes it.
		id, ok := envelope.HeaderFileID(region)
		if !ok {
			return nil, err
		}
		if replayed, rerr := h.replayIntent(ctx, id); rerr != nil || !replayed {
			return nil, err
		}
		if _, err := h.f.ReadAt(region, 0); err != nil {
			return nil, fmt.Errorf("read header: %w", err)
		}
		if keys, p, err = h.v.openHeader(ctx, region); err != nil {
			return nil, err
		}
	}
	replayed, err := h.replayIntent(ctx, keys.FileID())
	if err != nil {
		keys.Zero()
		return nil, err
	}
	if replayed {
		// The change replayed may have rewritten the header (a compressed
		// file rewritten whole, compress.go): read it again.
		keys.Zero()
		if _, err := h.f.ReadAt(region, 0); err != nil {
			return nil, fmt.Errorf("read header: %w", err)
		}
		if keys, p, err = h.v.openHeader(ctx, region); err != nil {
			return nil, err
		}
		if cs, err = h.cipherSize(); err != nil {
			keys.Zero()
			return nil, err
		}
	}
	if keys.Version() == envelope.Version4 {
		if err := h.indexUnits(p.Header, cs); err != nil {
			keys.Zero()
			return nil, err
		}
	}
	st.keys = keys
	return keys, nil
}

// detachKeyWork gives the KMS work for a shared key (a file's data key, the
// volume's metadata key) a context of its own. A FUSE request is interrupted
// (its context cancelled) whenever the calling thread gets any signal, Go's
// own preemption signals and SIGCHLD included, and applications do not
// expect EINTR from read(2), write(2) or getxattr(2) on a regular file: the
// kernel passes the daemon's EINTR straight back, SA_RESTART or not, which is
// why libfuse leaves interrupts off unless mounted with -o intr. So the work
// runs detached from the request, bounded by keyTimeout: throttling is waited
// out, not surfaced, and the key it yields is cached for the retry. The key
// is shared by every handle of the file (or every file, for the metadata
// key), so one caller's interrupt must not fail the others either.
func detachKeyWork(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), keyTimeout)
}

// keyTimeout bounds the KMS work for a shared key once it is detached from
// the request.
const keyTimeout = 2 * time.Minute

// newHeader creates a file's key and writes its header.
func (v *Volume) newHeader(ctx context.Context, f backend.File, name string) (*envelope.FileKeys, error) {
	h, keys, err := v.makeHeader(ctx, envelope.CurrentVersion)
	if err != nil {
		return nil, err
	}
	region, err := h.Marshal(keys.MACKey())
	if err != nil {
		keys.Zero()
		return nil, err
	}
	if _, err := f.WriteAt(region, 0); err != nil {
		keys.Zero()
		return nil, fmt.Errorf("write header: %w", err)
	}
	return keys, nil
}

// makeHeader creates a new file's key and ID, and the header that holds
// them, for a file of format version version; nothing is written.
func (v *Volume) makeHeader(ctx context.Context, version uint8) (envelope.Header, *envelope.FileKeys, error) {
	var fileID [envelope.IDLen]byte
	var dk kms.DataKey
	if v.mode == envelope.ModePerObject {
		// The data key's context names the file ID, so both come together,
		// from the prefetch pool when there is one.
		var err error
		if v.pool != nil {
			fileID, dk, err = v.pool.take(ctx)
		} else {
			fileID, dk, err = (&keyPool{v: v}).fetch(ctx)
		}
		if err != nil {
			return envelope.Header{}, nil, fmt.Errorf("generate data key: %w", err)
		}
	} else if _, err := rand.Read(fileID[:]); err != nil {
		return envelope.Header{}, nil, err
	}
	h := envelope.Header{
		Version: version, RegionSize: int(v.layout.HeaderSize), Mode: v.mode, Suite: envelope.SuiteAES256GCM,
		BlockSize: int(v.layout.BlockSize), FileID: fileID, VolumeID: v.id,
	}
	var fileKey []byte
	switch v.mode {
	case envelope.ModeBucketKey:
		var bk bucketKey
		var err error
		fileKey, bk, err = v.bucket.newFileKey(ctx, v, fileID)
		if err != nil {
			return envelope.Header{}, nil, fmt.Errorf("bucket key: %w", err)
		}
		h.BucketKeyID, h.KeyID, h.WrappedKey = bk.id, bk.keyARN, bk.wrapped
	default:
		h.KeyID, h.WrappedKey, fileKey = dk.KeyID, dk.CiphertextBlob, dk.Plaintext
	}
	defer kms.Zero(fileKey)
	keys, err := envelope.DeriveFileKeys(fileKey, fileID, version)
	if err != nil {
		return envelope.Header{}, nil, err
	}
	v.stats.filesCreated.Add(1)
	return h, keys, nil
}

// openHeader parses a header region, unwraps its key through the key cache
// and authenticates the header.
func (v *Volume) openHeader(ctx context.Context, region []byte) (*envelope.FileKeys, *envelope.ParsedHeader, error) {
	p, err := envelope.ParseHeader(region)
	if err != nil {
		return nil, nil, fmt.Errorf("header: %w", err)
	}
	if p.VolumeID != v.id {
		return nil, nil, fmt.Errorf("header: %w: file belongs to volume %x, not this volume", envelope.ErrAuth, p.VolumeID)
	}
	// A compressed file (version 4) sizes its own region, never more than
	// the volume's (compress.go).
	if (p.Version != envelope.Version4 && int64(p.RegionSize) != v.layout.HeaderSize) || int64(p.RegionSize) > v.layout.HeaderSize ||
		int64(p.BlockSize) != v.layout.BlockSize {
		return nil, nil, fmt.Errorf("header: %w: geometry %d/%d differs from the volume's", envelope.ErrCorrupt, p.RegionSize, p.BlockSize)
	}
	var fileKey []byte
	switch p.Mode {
	case envelope.ModeBucketKey:
		bucketKey, _, err := v.keys.Decrypt(ctx, p.KeyID, p.WrappedKey, bucketContext(v.cfg.VolumeID))
		if err != nil {
			return nil, nil, fmt.Errorf("unwrap bucket key: %w", err)
		}
		fileKey, err = envelope.BucketFileKey(bucketKey, p.FileID)
		kms.Zero(bucketKey)
		if err != nil {
			return nil, nil, err
		}
	default:
		fileKey, _, err = v.keys.Decrypt(ctx, p.KeyID, p.WrappedKey, fileContext(v.cfg.VolumeID, p.FileID))
		if err != nil {
			return nil, nil, fmt.Errorf("unwrap data key: %w", err)
		}
	}
	defer kms.Zero(fileKey)
	keys, err := envelope.DeriveFileKeys(fileKey, p.FileID, p.Version)
	if err != nil {
		return nil, nil, err
	}
	if err := p.Verify(keys); err != nil {
		keys.Zero()
		return nil, nil, err
	}
	return keys, p, nil
}
