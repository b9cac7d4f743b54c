package volume

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/kmsfs/kmsfs/backend/local"
	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/kms"
	"github.com/kmsfs/kmsfs/kms/keystore"
)

// The cost of sealing the end of a file (tail.go) on the write paths it
// touches, for docs/BENCHMARKS.md: a sequential write of a new file in the
// kernel's 1 MiB requests, closed at the end; append sessions (open with
// O_APPEND, write, close) of whole 4 KiB blocks, which reseal the old last
// block and seal the new one each time; and append sessions of a few
// hundred bytes, which rewrite a partial last block with or without the
// check. Run on a local backend in a temporary directory.

// benchVolume is a bucket-key volume on a local backend (bucket-key: the
// KMS is out of the figures).
func benchVolume(b *testing.B) *Volume {
	ctx := context.Background()
	dir := b.TempDir()
	ks, err := keystore.Open(filepath.Join(dir, "ks"), keystore.Options{Warn: func(string) {}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ks.Close() })
	md, err := ks.CreateKey(ctx, kms.CreateKeyInput{})
	if err != nil {
		b.Fatal(err)
	}
	vault := filepath.Join(dir, "vault")
	os.Mkdir(vault, 0o700)
	be, err := local.New(vault)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := Init(ctx, be, ks, InitOptions{Mode: envelope.ModeBucketKey, KeyID: md.ARN}); err != nil {
		b.Fatal(err)
	}
	v, err := Open(ctx, be, Options{Keys: ks, PrefetchMax: -1})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { v.Close() })
	return v
}

func benchOpen(b *testing.B, v *Volume, name string, flags int) *Handle {
	h, err := v.OpenFile(context.Background(), name, flags, 0o644, nil)
	if err != nil {
		b.Fatal(err)
	}
	return h
}

func benchWrite(b *testing.B, h *Handle, p []byte, off int64) {
	if _, err := h.WriteAt(context.Background(), p, off); err != nil {
		b.Fatal(err)
	}
}

func BenchmarkSeqWrite(b *testing.B) {
	v := benchVolume(b)
	const size, req = 64 << 20, 1 << 20
	p := make([]byte, req)
	b.SetBytes(size)
	for b.Loop() {
		h := benchOpen(b, v, "seq", syscall.O_WRONLY|syscall.O_CREAT|syscall.O_TRUNC)
		for off := int64(0); off < size; off += req {
			benchWrite(b, h, p, off)
		}
		if err := h.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

func benchAppend(b *testing.B, writes, n int) {
	v := benchVolume(b)
	p := make([]byte, n)
	b.SetBytes(int64(writes * n))
	i := 0
	for b.Loop() {
		flags := syscall.O_WRONLY | syscall.O_CREAT | syscall.O_APPEND
		if i%1024 == 0 {
			flags |= syscall.O_TRUNC // keep the file from growing without bound
		}
		i++
		h := benchOpen(b, v, "log", flags)
		for range writes {
			benchWrite(b, h, p, 0)
		}
		if err := h.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendBlocks(b *testing.B) { benchAppend(b, 16, 4096) }
func BenchmarkAppendSmall(b *testing.B)  { benchAppend(b, 1, 300) }

// BenchmarkSeqRead reads a 64 MiB file front to back in 1 MiB requests (a
// version 3 file reads the block before each run with it) and, in
// BenchmarkRandRead4K, in 4 KiB reads at scattered block offsets.
func BenchmarkSeqRead(b *testing.B) {
	v := benchVolume(b)
	const size, req = 64 << 20, 1 << 20
	h := benchOpen(b, v, "seq", syscall.O_RDWR|syscall.O_CREAT|syscall.O_TRUNC)
	defer h.Close()
	p := make([]byte, req)
	for off := int64(0); off < size; off += req {
		benchWrite(b, h, p, off)
	}
	b.SetBytes(size)
	for b.Loop() {
		for off := int64(0); off < size; off += req {
			if _, err := h.ReadAt(context.Background(), p, off); err != nil {
				b.Fatal(err)
			}
		}
	}
}

func BenchmarkRandRead4K(b *testing.B) {
	v := benchVolume(b)
	const size, req = 64 << 20, 4096
	h := benchOpen(b, v, "rand", syscall.O_RDWR|syscall.O_CREAT|syscall.O_TRUNC)
	defer h.Close()
	p := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(p)) {
		benchWrite(b, h, p, off)
	}
	b.SetBytes(req)
	i := int64(0)
	for b.Loop() {
		off := (i * 7919 % (size / req)) * req
		i++
		if _, err := h.ReadAt(context.Background(), p[:req], off); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSmallFile is the volume's share of `cp -a` of one source file
// (30 KB of text, written in one request, then closed), in the block
// layout and compressed (docs/BENCHMARKS.md, compression).
func BenchmarkSmallFile(b *testing.B) {
	text := compressibleText(9, 30000)
	for _, compress := range []string{"", "zstd:1", "zstd:3"} {
		name := "blocks"
		if compress != "" {
			name = compress
		}
		b.Run(name, func(b *testing.B) {
			tv := newTestVolumeInit(b, InitOptions{Mode: envelope.ModeBucketKey, Compress: compress}, Options{PrefetchMax: -1})
			b.SetBytes(int64(len(text)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				h := benchOpen(b, tv.Volume, fmt.Sprintf("f%d", i), syscall.O_RDWR|syscall.O_CREAT|syscall.O_EXCL)
				benchWrite(b, h, text, 0)
				if err := h.Flush(context.Background()); err != nil {
					b.Fatal(err)
				}
				if err := h.Close(); err != nil {
					b.Fatal(err)
				}
				// The write-out runs in the background: count it.
				tv.outq.wait()
			}
		})
	}
}
