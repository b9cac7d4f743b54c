package shared

import (
	"bytes"
	"context"
	"syscall"
	"testing"
	"time"
)

// An attribute change after the writes starts the upload; the commit uses
// those objects when the data did not change since, and otherwise uploads
// afresh and deletes them, so the bucket ends up holding exactly the
// committed chunks either way.
func TestEarlyUpload(t *testing.T) {
	e, b := newEnv(t)
	ctx := context.Background()
	mt := time.Unix(1_500_000_000, 0)
	// "quiet" rewrites a byte as the volume seals a file's end at close:
	// without touching the mtime, but changing the data all the same.
	for _, name := range []string{"same", "changed", "quiet"} {
		rewrite := name != "same"
		f, err := b.Open(ctx, name, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL, 0o644, nil)
		if err != nil {
			t.Fatal(err)
		}
		data := bytes.Repeat([]byte(name), 400) // a few chunks
		write(t, f, data, 0)
		if err := b.Utimens(ctx, name, &mt, &mt); err != nil {
			t.Fatal(err)
		}
		of := f.(*handle).f
		of.mu.RLock()
		started := of.early != nil
		earlyKeys := map[string]bool{}
		if started {
			for _, c := range of.early.chunks {
				earlyKeys[c.Key] = true
			}
		}
		of.mu.RUnlock()
		if !started {
			t.Fatalf("%s: utimens of a file with staged data started no upload", name)
		}
		switch name {
		case "changed":
			data[0] = 'X'
			write(t, f, data[:1], 0)
		case "quiet":
			data[0] = 'Q'
			if _, err := f.(*handle).WriteAtQuiet(data[:1], 0); err != nil {
				t.Fatal(err)
			}
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if got := readAll(t, e.open(), name); !bytes.Equal(got, data) {
			t.Fatalf("%s: read back %d bytes, not what was written", name, len(got))
		}
		_, chunks, err := b.store.File(ctx, lookupIno(t, b, name))
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range chunks {
			if earlyKeys[c.Key] == rewrite {
				t.Fatalf("%s: committed chunk %s early-uploaded: %v", name, c.Key, earlyKeys[c.Key])
			}
		}
	}
	// Every object left is committed: the early objects of "changed" were
	// deleted (in the background, so wait for it).
	_, sameChunks, err := b.store.File(ctx, lookupIno(t, b, "same"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for _, c := range sameChunks {
		want["vol/"+c.Key] = true
	}
	for _, name := range []string{"changed", "quiet"} {
		_, chunks, err := b.store.File(ctx, lookupIno(t, b, name))
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range chunks {
			want["vol/"+c.Key] = true
		}
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		objs := e.objects()
		extra := 0
		for k := range objs {
			if !want[k] {
				extra++
			}
		}
		if extra == 0 && len(objs) == len(want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d objects in the bucket, %d committed, %d not", len(objs), len(want), extra)
		}
	}
}

func lookupIno(t *testing.T, b *Backend, name string) uint64 {
	t.Helper()
	a, err := b.store.Lookup(context.Background(), []string{name})
	if err != nil {
		t.Fatal(err)
	}
	return a.Ino
}
