package volume

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/backend"
	"github.com/kmsfs/kmsfs/backend/local"
)

// checkpointBackend is an empty local backend with its metadata folder.
func checkpointBackend(t *testing.T) backend.Backend {
	t.Helper()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, ".kmsfs"), 0o700); err != nil {
		t.Fatal(err)
	}
	be, err := local.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	return be
}

// A checkpoint is resumed only by an unfinished rewrap to the same key;
// it round-trips through the backend; a corrupt one is an error, not a
// silent fresh start.
func TestRewrapCheckpointLoadSave(t *testing.T) {
	ctx := context.Background()
	be := checkpointBackend(t)
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("X", 3600))

	cp, resumed, err := loadRewrapCheckpoint(ctx, be, "key-b", t0)
	if err != nil || resumed || cp.ToKey != "key-b" || !cp.Started.Equal(t0) || cp.Started.Location() != time.UTC || cp.DoneThrough != "" {
		t.Fatalf("no stored checkpoint: %+v, resumed %v, %v; want a fresh one for key-b started at %v (UTC)", cp, resumed, err, t0)
	}
	if stored, err := readRewrapCheckpoint(ctx, be); stored != nil || err != nil {
		t.Fatalf("read before any save: %+v, %v; want nil, nil", stored, err)
	}
	cp.KeyARN, cp.MetaDone, cp.DoneThrough = "arn:b", true, "a/one"
	if err := cp.save(ctx, be); err != nil {
		t.Fatal(err)
	}

	later := t0.Add(time.Hour)
	got, resumed, err := loadRewrapCheckpoint(ctx, be, "key-b", later)
	if err != nil || !resumed || got.KeyARN != "arn:b" || !got.MetaDone || got.DoneThrough != "a/one" || !got.Started.Equal(t0) {
		t.Fatalf("same key: %+v, resumed %v, %v; want the saved checkpoint", got, resumed, err)
	}
	if other, resumed, err := loadRewrapCheckpoint(ctx, be, "key-c", later); err != nil || resumed || other.DoneThrough != "" || other.ToKey != "key-c" {
		t.Fatalf("another key: %+v, resumed %v, %v; want a fresh start", other, resumed, err)
	}

	got.Finished = true
	if err := got.save(ctx, be); err != nil {
		t.Fatal(err)
	}
	if again, resumed, err := loadRewrapCheckpoint(ctx, be, "key-b", later); err != nil || resumed || again.DoneThrough != "" || !again.Started.Equal(later) {
		t.Fatalf("after a finished rewrap: %+v, resumed %v, %v; want a fresh start", again, resumed, err)
	}

	if err := be.WriteMeta(ctx, RewrapJobName, []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := loadRewrapCheckpoint(ctx, be, "key-b", later); err == nil || !strings.Contains(err.Error(), RewrapJobName) {
		t.Fatalf("corrupt checkpoint: %v; want an error naming %s", err, RewrapJobName)
	}
}

// advance moves DoneThrough over the longest prefix of the walk that is
// done, whatever order files finish in, and never past a failed file.
func TestRewrapCheckpointAdvance(t *testing.T) {
	names := []string{"a/one", "a/two", "b", "c/x", "c/y", "d"}
	type step struct {
		seq    int
		failed bool
		want   string // DoneThrough after the step
	}
	for _, tc := range []struct {
		name  string
		start string // DoneThrough from an earlier run
		steps []step
	}{
		{"in order", "", []step{{0, false, "a/one"}, {1, false, "a/two"}, {2, false, "b"}}},
		{"out of order", "", []step{{2, false, ""}, {1, false, ""}, {0, false, "b"}, {4, false, "b"}, {3, false, "c/y"}}},
		{"a failure stops it for good", "", []step{{0, false, "a/one"}, {2, false, "a/one"}, {1, true, "a/one"}, {3, false, "a/one"}, {4, false, "a/one"}}},
		{"a failure first", "", []step{{0, true, ""}, {1, false, ""}}},
		{"a resumed run keeps the earlier mark until it moves", "a/two", []step{{1, false, "a/two"}, {0, false, "a/two"}, {2, false, "b"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cp := &rewrapCheckpoint{DoneThrough: tc.start}
			for i, s := range tc.steps {
				cp.advance(s.seq, names[s.seq], s.failed)
				if cp.DoneThrough != s.want {
					t.Fatalf("step %d (file %d %s, failed %v): DoneThrough %q, want %q", i, s.seq, names[s.seq], s.failed, cp.DoneThrough, s.want)
				}
			}
		})
	}
}

// The stored record has the fields docs/FORMAT.md section 9 lists, under
// those names: a rewrap of another version must be able to resume it.
func TestRewrapCheckpointFields(t *testing.T) {
	ctx := context.Background()
	be := checkpointBackend(t)
	cp := &rewrapCheckpoint{ToKey: "alias/b", KeyARN: "arn:b", MetaDone: true, Refresh: true, DoneThrough: "a/b", Started: time.Unix(0, 0).UTC(), Finished: true}
	if err := cp.save(ctx, be); err != nil {
		t.Fatal(err)
	}
	data, err := be.ReadMeta(ctx, RewrapJobName)
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]any
	if err := json.Unmarshal(data, &fields); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"to_key": "alias/b", "key_arn": "arn:b", "meta_done": true, "refresh": true,
		"done_through": "a/b", "started": "1970-01-01T00:00:00Z", "finished": true,
	}
	if !reflect.DeepEqual(fields, want) {
		t.Fatalf("stored checkpoint %s; want the fields %v", data, want)
	}
}
