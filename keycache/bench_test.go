package keycache

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/kmsfs/kmsfs/kms"
)

func benchCache(b *testing.B, lim Limits) (*Cache, *fakeKMS) {
	b.Helper()
	f := newFakeKMS()
	c, err := New(f, lim, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c, f
}

// BenchmarkHit is the cost of re-opening a file whose key is cached: hash
// the wrapped key and context, look up, copy the key out (and zero it, as
// callers do).
func BenchmarkHit(b *testing.B) {
	c, f := benchCache(b, Limits{})
	ctx := context.Background()
	ec := ecFor("bench")
	dk, err := f.GenerateDataKey(ctx, testARN, 32, ec)
	if err != nil {
		b.Fatal(err)
	}
	c.Put(dk, ec)

	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			p, _, err := c.Decrypt(ctx, testARN, dk.CiphertextBlob, ec)
			if err != nil {
				b.Fatal(err)
			}
			kms.Zero(p)
		}
	})
	// Many files open at once: goroutines read different cached keys.
	const files = 64
	keys := make([]kms.DataKey, files)
	ecs := make([]kms.EncryptionContext, files)
	for i := range keys {
		ecs[i] = ecFor(fmt.Sprint("file-", i))
		if keys[i], err = f.GenerateDataKey(ctx, testARN, 32, ecs[i]); err != nil {
			b.Fatal(err)
		}
		c.Put(keys[i], ecs[i])
	}
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				i = (i + 1) % files
				p, _, err := c.Decrypt(ctx, testARN, keys[i].CiphertextBlob, ecs[i])
				if err != nil {
					b.Error(err)
					return
				}
				kms.Zero(p)
			}
		})
	})
	if s := c.Stats(); s.Misses != 0 {
		b.Fatalf("benchmark missed %d times", s.Misses)
	}
}

// BenchmarkMissSingleflight is the cache's overhead on a miss that several
// goroutines hit at once (the KMS here answers instantly): one op is one key
// asked for by 8 goroutines. kms-calls/op shows how many KMS calls they made.
func BenchmarkMissSingleflight(b *testing.B) {
	const callers = 8
	c, f := benchCache(b, Limits{})
	ctx := context.Background()
	ec := ecFor("bench")
	blobs := make([][]byte, b.N)
	for i := range blobs {
		dk, err := f.GenerateDataKey(ctx, testARN, 32, ec)
		if err != nil {
			b.Fatal(err)
		}
		blobs[i] = dk.CiphertextBlob
	}
	b.ReportAllocs()
	b.ResetTimer()
	var wg sync.WaitGroup
	for i := 0; i < b.N; i++ {
		start := make(chan struct{})
		for range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				p, _, err := c.Decrypt(ctx, "", blobs[i], ec)
				if err != nil {
					b.Error(err)
					return
				}
				kms.Zero(p)
			}()
		}
		close(start)
		wg.Wait()
	}
	b.StopTimer()
	b.ReportMetric(float64(f.decrypts.Load())/float64(b.N), "kms-calls/op")
}
