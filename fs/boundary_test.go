package fs

import (
	"bytes"
	"context"
	"fmt"
	iofs "io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/kmsfs/kmsfs/backend/local"
	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/kms"
	"github.com/kmsfs/kmsfs/kms/keystore"
	"github.com/kmsfs/kmsfs/volume"
)

// testVolume is a fresh volume on a local directory with its own keystore.
func testVolume(t *testing.T) *volume.Volume {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	ks, err := keystore.Open(filepath.Join(dir, "ks"), keystore.Options{Warn: func(string) {}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ks.Close() })
	md, err := ks.CreateKey(ctx, kms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "v"), 0o700); err != nil {
		t.Fatal(err)
	}
	be, err := local.New(filepath.Join(dir, "v"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := volume.Init(ctx, be, ks, volume.InitOptions{KeyID: md.ARN}); err != nil {
		t.Fatal(err)
	}
	vol, err := volume.Open(ctx, be, volume.Options{Keys: ks, PrefetchMax: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vol.Close() })
	return vol
}

// TestFail: every errno goes through tree.fail, which maps it, and logs
// with the path and counts what an operator must see: tampering,
// corruption, a KMS refusal or outage; the everyday answers pass silently.
func TestFail(t *testing.T) {
	vol := testVolume(t)
	var logBuf bytes.Buffer
	root := NewRoot(vol, slog.New(slog.NewTextHandler(&logBuf, nil)))
	for _, c := range []struct {
		name        string
		op          op
		path        string
		err         error
		want        syscall.Errno
		logged      bool
		auth        bool
		errorsAfter uint64
	}{
		{"success", opUnlink, "a", nil, 0, false, false, 0},
		{"missing", opLookup, "d/missing", &iofs.PathError{Op: "lstat", Path: "/d/missing", Err: syscall.ENOENT}, syscall.ENOENT, false, false, 0},
		{"no xattr", opGetxattr, "d/f", syscall.ENODATA, syscall.ENODATA, false, false, 0},
		{"not supported", opLink, "d/l", syscall.ENOTSUP, syscall.ENOTSUP, false, false, 0},
		{"tampered name", opReaddir, "d/names", fmt.Errorf("side file of x: %w", envelope.ErrAuth), syscall.EIO, true, true, 1},
		{"tampered block", opRead, "d/f", fmt.Errorf("block 2: %w", envelope.ErrBlockAuth), syscall.EIO, true, true, 2},
		{"kms refusal on create", opCreate, "d/new", fmt.Errorf("generate data key: %w", kms.Errorf(kms.CodeAccessDenied, "denied")), syscall.EACCES, true, false, 3},
		{"kms unreachable", opOpen, "d/g", fmt.Errorf("unwrap data key: %w", kms.Errorf(kms.CodeUnavailable, "connection refused")), syscall.EIO, true, false, 4},
		{"backend EACCES", opMkdir, "ro/x", &iofs.PathError{Op: "mkdir", Path: "/ro/x", Err: syscall.EACCES}, syscall.EACCES, false, false, 4},
		{"backend EIO", opStatfs, "", &iofs.PathError{Op: "statfs", Path: "/", Err: syscall.EIO}, syscall.EIO, true, false, 5},
	} {
		logBuf.Reset()
		before := vol.Stats()
		if got := root.t.fail(c.op, c.path, c.err); got != c.want {
			t.Errorf("%s: errno %v, want %v", c.name, got, c.want)
		}
		line := logBuf.String()
		if c.logged {
			if want := fmt.Sprintf("path=/%s ", c.path); !strings.Contains(line, want) || !strings.Contains(line, c.op.String()+" failed") {
				t.Errorf("%s: log %q lacks %q and %q", c.name, line, want, c.op.String()+" failed")
			}
		} else if line != "" {
			t.Errorf("%s: logged %q", c.name, line)
		}
		after := vol.Stats()
		if after.Errors != c.errorsAfter {
			t.Errorf("%s: %d errors counted, want %d", c.name, after.Errors, c.errorsAfter)
		}
		if gotAuth := after.AuthFailures - before.AuthFailures; gotAuth != map[bool]uint64{true: 1}[c.auth] {
			t.Errorf("%s: %d authentication failures counted", c.name, gotAuth)
		}
	}
}

// countingObserver counts the requests reported per operation.
type countingObserver struct {
	ops   map[string]*atomic.Int64
	total atomic.Int64
}

func (o *countingObserver) RequestRecorder(op string) func(time.Duration) {
	n := &atomic.Int64{}
	o.ops[op] = n
	return func(d time.Duration) {
		if d >= 0 {
			n.Add(1)
			o.total.Add(1)
		}
	}
}

// TestTimed: a mount resolves one recorder per operation from the volume's
// request observer when it starts, every request reports to its own
// operation's recorder, and timing one costs no allocation.
func TestTimed(t *testing.T) {
	vol := testVolume(t)
	obs := &countingObserver{ops: map[string]*atomic.Int64{}}
	vol.ObserveRequests(obs)
	root := NewRoot(vol, slog.New(slog.DiscardHandler))
	if len(obs.ops) != int(numOps) {
		t.Fatalf("%d recorders resolved, want one per operation (%d)", len(obs.ops), numOps)
	}
	for o := range numOps {
		if obs.ops[o.String()] == nil || o.String() == "unknown" {
			t.Fatalf("operation %d has no recorder of its own (%q)", o, o.String())
		}
	}
	var out fuse.StatfsOut
	if errno := root.Statfs(context.Background(), &out); errno != 0 {
		t.Fatal(errno)
	}
	if got := obs.ops["statfs"].Load(); got != 1 || obs.total.Load() != 1 {
		t.Fatalf("statfs recorded %d times, %d requests in all; want 1 and 1", got, obs.total.Load())
	}
	if allocs := testing.AllocsPerRun(1000, func() { root.t.timed(opRead, time.Now()) }); allocs != 0 {
		t.Fatalf("timing a request allocates %.1f times", allocs)
	}
	if got := obs.ops["read"].Load(); got < 1000 {
		t.Fatalf("read recorded %d times", got)
	}
	// Without an observer nothing is recorded and nothing breaks.
	vol2 := testVolume(t)
	if errno := NewRoot(vol2, nil).Statfs(context.Background(), &out); errno != 0 {
		t.Fatal(errno)
	}
}
