package shared

import (
	"context"
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/backend"
)

// TestAccess: a recorded access moves atime and not ctime, for this
// process (a stat, an open file's stat) and another one, at every call;
// an inode that is gone is ENOENT.
func TestAccess(t *testing.T) {
	e, a := newEnv(t)
	b := e.open() // a second process
	ctx := context.Background()
	f, err := a.Open(ctx, "f", syscall.O_RDWR|syscall.O_CREAT|syscall.O_EXCL, 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	write(t, f, []byte("some data"), 0)
	if err := f.(backend.Flusher).Flush(); err != nil {
		t.Fatal(err)
	}
	if err := a.Mkdir(ctx, "d", 0o755, nil); err != nil {
		t.Fatal(err)
	}
	past := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, name := range []string{"f", "d"} {
		if err := a.Utimens(ctx, name, &past, nil); err != nil {
			t.Fatal(err)
		}
		var before syscall.Stat_t
		if err := a.Lstat(ctx, name, &before); err != nil {
			t.Fatal(err)
		}
		prev := time.Unix(before.Atim.Unix())
		for i := range 2 {
			// The store's clock, in nanoseconds: wait until it is past the
			// previous atime.
			for time.Now().Before(prev.Add(time.Millisecond)) {
				time.Sleep(time.Millisecond)
			}
			if err := a.Access(ctx, name, before.Ino); err != nil {
				t.Fatalf("access %s: %v", name, err)
			}
			for who, be := range map[string]*Backend{"this process": a, "another process": b} {
				var st syscall.Stat_t
				if err := be.Lstat(ctx, name, &st); err != nil {
					t.Fatal(err)
				}
				if at := time.Unix(st.Atim.Unix()); !at.After(prev) || st.Ctim != before.Ctim {
					t.Errorf("%s after access #%d, seen by %s: atime %v ctime %v; want atime after %v, ctime %v",
						name, i+1, who, at, time.Unix(st.Ctim.Unix()), prev, time.Unix(before.Ctim.Unix()))
				}
			}
			var st syscall.Stat_t
			if err := a.Lstat(ctx, name, &st); err != nil {
				t.Fatal(err)
			}
			prev = time.Unix(st.Atim.Unix())
		}
	}
	// The open file answers with the new atime too.
	var fst, lst syscall.Stat_t
	if err := f.Stat(&fst); err != nil {
		t.Fatal(err)
	}
	if err := a.Lstat(ctx, "f", &lst); err != nil {
		t.Fatal(err)
	}
	if fst.Atim != lst.Atim {
		t.Errorf("open file's atime %v, the store's %v", fst.Atim, lst.Atim)
	}
	f.Close()
	if err := a.Unlink(ctx, "f"); err != nil {
		t.Fatal(err)
	}
	if err := a.Access(ctx, "f", fst.Ino); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("access of a removed file: %v, want ENOENT", err)
	}
}
