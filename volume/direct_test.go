package volume

import (
	"bytes"
	"context"
	"syscall"
	"testing"

	"github.com/kmsfs/kmsfs/envelope"
)

// An O_DIRECT open reaches the volume as a flag of FUSE OPEN. Sealed blocks
// sit at unaligned offsets of the backing file, so the flag must not reach
// the backing open: writes of 512 bytes, 4 KiB and 20 KiB at offsets
// inside blocks (read-modify-write) succeed and read back.
func TestDirectOpenWritesAnySize(t *testing.T) {
	ctx := context.Background()
	tv := newTestVolume(t, envelope.ModePerObject)
	h := tv.open(t, "f", syscall.O_RDWR|syscall.O_CREAT|syscall.O_DIRECT)
	defer h.Close()
	var want []byte
	put := func(off int64, n int, salt byte) {
		t.Helper()
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(i*7) ^ salt
		}
		if _, err := h.WriteAt(ctx, b, off); err != nil {
			t.Fatalf("O_DIRECT write of %d bytes at %d: %v", n, off, err)
		}
		if end := int(off) + n; end > len(want) {
			want = append(want, make([]byte, end-len(want))...)
		}
		copy(want[off:], b)
	}
	put(0, 4096, 1)
	put(4096, 20<<10, 2)
	put(512, 512, 3)
	put(3*4096+1536, 512, 4)
	put(1<<20, 1<<20, 5)
	got := readAll(t, h)
	if !bytes.Equal(got, want) {
		t.Fatalf("read back %d bytes, want %d (equal prefix: %v)", len(got), len(want), bytes.HasPrefix(want, got))
	}
}
