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

// An early upload leaves out the chunks with no data staged, as the commit
// does, and the commit uses it: the bucket holds the one chunk with data.
func TestEarlyUploadSkipsHoles(t *testing.T) {
	e, b := newEnvChunks(t, holeChunk)
	ctx := context.Background()
	mt := time.Unix(1_500_000_000, 0)
	f, err := b.Open(ctx, "f", syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL, 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	write(t, f, []byte("data"), 0)
	if err := f.Truncate(3 * holeChunk); err != nil { // chunks 1 and 2: holes
		t.Fatal(err)
	}
	if err := b.Utimens(ctx, "f", &mt, &mt); err != nil {
		t.Fatal(err)
	}
	of := f.(*handle).f
	of.mu.RLock()
	var early map[int64]bool
	if of.early != nil {
		early = map[int64]bool{}
		for idx := range of.early.chunks {
			early[idx] = true
		}
	}
	of.mu.RUnlock()
	if len(early) != 1 || !early[0] {
		t.Fatalf("early upload of chunks %v, want chunk 0 only", early)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if objs := e.objects(); len(objs) != 1 {
		t.Errorf("%d objects, want the one chunk with data", len(objs))
	}
	want := make([]byte, 3*holeChunk)
	copy(want, "data")
	if got := readAll(t, e.open(), "f"); !bytes.Equal(got, want) {
		t.Fatal("another process reads other bytes than the data and zeros")
	}
}
