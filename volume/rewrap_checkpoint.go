package volume

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/kmsfs/kmsfs/backend"
)

// RewrapJobName is the metadata object that records a rewrap in progress,
// so that an interrupted one resumes where it stopped.
const RewrapJobName = "rewrap.json"

// rewrapCheckpoint is the record kept in RewrapJobName while a rewrap runs.
// It holds no secret.
type rewrapCheckpoint struct {
	// ToKey is what the user asked for ("" = the volume's key), so that a
	// resumed run with other arguments starts over instead of skipping.
	ToKey  string `json:"to_key"`
	KeyARN string `json:"key_arn,omitempty"`
	// MetaDone: the volume config already names KeyARN and holds the
	// metadata key re-wrapped under it.
	MetaDone bool `json:"meta_done"`
	// Refresh: the destination is the key the volume already used, so every
	// file is re-wrapped (under its current material), none skipped by ARN.
	Refresh bool `json:"refresh"`
	// DoneThrough: every regular file at or before this path, in the walk
	// order (depth first, names sorted bytewise), is rewrapped and synced.
	DoneThrough string    `json:"done_through,omitempty"`
	Started     time.Time `json:"started"`
	Finished    bool      `json:"finished"`

	// The files of this run, numbered in walk order, finish in any order;
	// DoneThrough moves over the longest numbered prefix that is done.
	pending map[int]rewrapOutcome // finished files beyond next
	next    int                   // the number of the first file not yet covered
	blocked bool                  // a file failed: DoneThrough stays before it for good
}

// rewrapOutcome is how one numbered file of a run ended.
type rewrapOutcome struct {
	name   string
	failed bool
}

// readRewrapCheckpoint reads the stored checkpoint; nil if there is none.
func readRewrapCheckpoint(ctx context.Context, be backend.Backend) (*rewrapCheckpoint, error) {
	data, err := be.ReadMeta(ctx, RewrapJobName)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read rewrap job: %w", err)
	}
	var cp rewrapCheckpoint
	if err := json.Unmarshal(data, &cp); err != nil {
		return nil, fmt.Errorf("rewrap job %s: %w", RewrapJobName, err)
	}
	return &cp, nil
}

// loadRewrapCheckpoint returns the checkpoint a rewrap to toKey continues
// from: the stored one if it is an unfinished rewrap to the same toKey
// (resumed is then true), else a fresh one started at now.
func loadRewrapCheckpoint(ctx context.Context, be backend.Backend, toKey string, now time.Time) (cp *rewrapCheckpoint, resumed bool, err error) {
	stored, err := readRewrapCheckpoint(ctx, be)
	if err != nil {
		return nil, false, err
	}
	if stored != nil && !stored.Finished && stored.ToKey == toKey {
		return stored, true, nil
	}
	return &rewrapCheckpoint{ToKey: toKey, Started: now.UTC()}, false, nil
}

// save writes the checkpoint (atomically: WriteMeta).
func (cp *rewrapCheckpoint) save(ctx context.Context, be backend.Backend) error {
	data, err := json.MarshalIndent(cp, "", "  ")
	if err != nil {
		return err
	}
	return be.WriteMeta(ctx, RewrapJobName, append(data, '\n'))
}

// advance records that file number seq of this run (name, in walk order
// from 0) is done, or failed, and moves DoneThrough over every file now
// done without a gap or a failure before it. A failed file stops it for
// the rest of the run, so that the next run retries that file.
func (cp *rewrapCheckpoint) advance(seq int, name string, failed bool) {
	if cp.blocked {
		return
	}
	if cp.pending == nil {
		cp.pending = map[int]rewrapOutcome{}
	}
	cp.pending[seq] = rewrapOutcome{name: name, failed: failed}
	for !cp.blocked {
		o, ok := cp.pending[cp.next]
		if !ok {
			return
		}
		delete(cp.pending, cp.next)
		if o.failed {
			cp.blocked = true
			return
		}
		cp.DoneThrough = o.name
		cp.next++
	}
}
