package s3

import (
	"io"
	"syscall"
	"testing"
)

// BenchmarkSequentialRead reads a 64 MiB object through File in 128 KiB
// steps (what the volume asks for under FUSE readahead), cold each time.
func BenchmarkSequentialRead(b *testing.B) {
	cfg := testConfig(b)
	be := newTestBackend(b, cfg)
	const size = 64 << 20
	f, err := be.Open(bg, "big", syscall.O_RDWR|syscall.O_CREAT, 0o644, nil)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := f.WriteAt(randBytes(1, size), 0); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 128<<10)
	b.SetBytes(size)
	b.ResetTimer()
	for range b.N {
		r, err := be.Open(bg, "big", syscall.O_RDONLY, 0, nil)
		if err != nil {
			b.Fatal(err)
		}
		for off := int64(0); ; off += int64(len(buf)) {
			_, err := r.ReadAt(buf, off)
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
		}
		r.Close()
	}
}

// BenchmarkSequentialWrite writes and uploads a 64 MiB file (8 MiB parts).
func BenchmarkSequentialWrite(b *testing.B) {
	be := newTestBackend(b, testConfig(b))
	data := randBytes(2, 64<<20)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for range b.N {
		f, err := be.Open(bg, "big", syscall.O_RDWR|syscall.O_CREAT|syscall.O_TRUNC, 0o644, nil)
		if err != nil {
			b.Fatal(err)
		}
		for off := 0; off < len(data); off += 128 << 10 {
			if _, err := f.WriteAt(data[off:off+128<<10], int64(off)); err != nil {
				b.Fatal(err)
			}
		}
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
	}
}
