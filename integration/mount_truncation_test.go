package integration

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// TestS3MountTruncationDetected is the end-of-file part of the tamper tests
// on the S3 backend: objects cut at a block boundary (the short last block
// removed; a whole block removed from a file of whole blocks), and an object
// given back a block of its own that a truncation removed, read as EIO with
// a log line naming the file, while an untouched file reads.
func TestS3MountTruncationDetected(t *testing.T) {
	g := s3StartGateway(t)
	v := s3NewVolume(t, g, "vol")
	v.mount(g.flags()...)
	files := map[string][]byte{
		"cut-short":   mountPattern(3*mountBlockSize+500, 1),
		"cut-aligned": mountPattern(4*mountBlockSize, 2),
		"intact":      mountPattern(3*mountBlockSize+500, 3),
	}
	for name, data := range files {
		mountWriteFile(t, v.path(name), data)
	}
	mountWriteFile(t, v.path("append-block"), mountPattern(4*mountBlockSize, 4))
	v.unmount()
	stale := g.get(t, "vol/append-block")[mountBlockOffset(3):mountBlockOffset(4)]
	v.mount(g.flags()...)
	if err := os.Truncate(v.path("append-block"), 3*mountBlockSize); err != nil {
		t.Fatal(err)
	}
	v.unmount()

	// Rewrite an object with new bytes and its own metadata (mode, times).
	put := func(key string, edit func([]byte) []byte) {
		t.Helper()
		out, err := g.client.GetObject(context.Background(), &s3.GetObjectInput{Bucket: aws.String(s3Bucket), Key: aws.String(key)})
		if err != nil {
			t.Fatal(err)
		}
		meta := out.Metadata
		out.Body.Close()
		body := edit(g.get(t, key))
		if _, err := g.client.PutObject(context.Background(), &s3.PutObjectInput{
			Bucket: aws.String(s3Bucket), Key: aws.String(key), Body: bytes.NewReader(body), Metadata: meta,
		}); err != nil {
			t.Fatal(err)
		}
	}
	put("vol/cut-short", func(b []byte) []byte { return b[:mountBlockOffset(3)] })
	put("vol/cut-aligned", func(b []byte) []byte { return b[:mountBlockOffset(3)] })
	put("vol/append-block", func(b []byte) []byte { return append(b, stale...) })
	tampered := []string{"cut-short", "cut-aligned", "append-block"}

	v.mount(g.flags()...)
	for _, name := range tampered {
		got, err := os.ReadFile(v.path(name))
		if mountErrno(err) != syscall.EIO {
			t.Errorf("%s: read %d bytes, err %v; want EIO", name, len(got), err)
		}
	}
	if got, err := os.ReadFile(v.path("intact")); err != nil || !bytes.Equal(got, files["intact"]) {
		t.Errorf("untouched file: %d bytes, %v", len(got), err)
	}
	log := v.log()
	for _, name := range tampered {
		if !strings.Contains(log, "path=/"+name+" ") && !strings.Contains(log, "path="+name+" ") {
			t.Errorf("log has no line naming /%s", name)
		}
	}
	if t.Failed() {
		t.Logf("log:\n%s", mountTail(log, 40))
	}
}

// TestMountCrashWhileAppending kills kmsfs while files that end on a block
// boundary and were fsynced are appended to, in whole blocks, one open,
// append and close after another: each append reseals the old last block
// under an intent that puts it back if the appended blocks never land. After
// a remount every fsynced byte reads back (the end of a file may read as EIO
// only past them, where unsynced appends were cut off).
func TestMountCrashWhileAppending(t *testing.T) {
	v := mountNewVolume(t)
	seed := mountSeed(t)
	rng := rand.New(rand.NewPCG(seed, 21))
	for round := 0; round < 4; round++ {
		proc := v.mountForeground()
		synced := map[string][]byte{}
		var writes atomic.Int64
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for i := 0; i < 2; i++ {
			name := v.path(fmt.Sprintf("log-%d-%d", round, i))
			data := mountPattern((8+i)*mountBlockSize, byte(round*2+i))
			f, err := os.Create(name)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Write(data); err != nil {
				t.Fatal(err)
			}
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			f.Close()
			synced[name] = data
			wg.Add(1)
			go func() {
				defer wg.Done()
				block := mountPattern(mountBlockSize, 0xAA)
				for {
					select {
					case <-stop:
						return
					default:
					}
					f, err := os.OpenFile(name, os.O_WRONLY|os.O_APPEND, 0)
					if err != nil {
						return
					}
					_, err = f.Write(block)
					f.Close()
					if err != nil {
						return
					}
					writes.Add(1)
				}
			}()
		}
		mountWaitFor(t, 30*time.Second, "the first appends", func() bool { return writes.Load() >= 2 })
		time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond) // part of the test: the seeded crash point
		proc.kill(t)
		close(stop)
		wg.Wait()
		v.dropDeadMount()
		v.mount()
		for name, want := range synced {
			f, err := os.Open(name)
			if err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(want))
			n, err := f.ReadAt(got, 0)
			f.Close()
			if err != nil || !bytes.Equal(got[:n], want) {
				t.Errorf("round %d: %s: the fsynced %d bytes read as %d bytes, %v (after %d appends)", round, name, len(want), n, err, writes.Load())
			}
		}
		// umount(2) can answer EBUSY for a moment after a remount that
		// followed a kill, with no process holding the mount (fuser shows
		// only the kernel's own reference): wait for it to go through.
		mountWaitFor(t, 10*time.Second, "the mount to unmount", func() bool {
			_, err := v.tryRun("umount", v.mnt)
			return err == nil
		})
		mountWaitUnmounted(v.mnt, 10*time.Second)
	}
	if t.Failed() {
		t.Logf("log:\n%s", mountTail(v.log(), 20))
	}
}
