package integration

import (
	"bytes"
	"os"
	"strings"
	"syscall"
	"testing"
)

// mountBlockOffset is where sealed block i starts in a backing file.
func mountBlockOffset(i int) int64 {
	return mountHeaderSize + int64(i)*mountCipherBlockSize
}

// mountPatchBacking overwrites bytes of a backing file in place.
func mountPatchBacking(t *testing.T, p string, off int64, data []byte) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
}

// mountReadBacking reads n bytes of a backing file at off.
func mountReadBacking(t *testing.T, p string, off int64, n int) []byte {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestMountTamper edits backing files of an unmounted volume the ways an
// attacker with access to the storage could, then remounts: each edited
// file must read as EIO with a log line naming it, and every other file
// must still read correctly.
func TestMountTamper(t *testing.T) {
	for _, mode := range []string{"per-object", "bucket-key"} {
		t.Run(mode, func(t *testing.T) { mountTamper(t, mode) })
	}
}

func mountTamper(t *testing.T, mode string) {
	v := mountNewVolume(t, "--mode", mode)
	v.mount()
	const size = 3*mountBlockSize + 500 // three full blocks and a short one
	files := map[string][]byte{}
	for i, name := range []string{
		"flip-block", "flip-tag", "flip-nonce", "flip-header", "swap-blocks", "swap-last",
		"donor", "victim", "cross-a", "cross-b", "cut-tag", "cut-odd", "cut-header", "zero-header",
		"cut-block", "cut-blocks", "intact1", "dir/intact2",
	} {
		if strings.HasPrefix(name, "dir/") {
			if err := os.MkdirAll(v.path("dir"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		files[name] = mountPattern(size, byte(i*17))
		mountWriteFile(t, v.path(name), files[name])
	}
	files["empty"] = nil
	mountWriteFile(t, v.path("empty"), nil)
	files["small"] = []byte("small file")
	mountWriteFile(t, v.path("small"), files["small"])
	if err := os.Link(v.path("intact1"), v.path("intact1-link")); err != nil {
		t.Fatal(err)
	}
	files["intact1-link"] = files["intact1"]
	// A file four whole blocks long, whose block 3 comes back after the
	// file was truncated to three: a genuine block of the same file and key.
	mountWriteFile(t, v.path("append-block"), mountPattern(4*mountBlockSize, 99))
	v.unmount()
	stale := mountReadBacking(t, v.backing("append-block"), mountBlockOffset(3), mountCipherBlockSize)
	v.mount()
	if err := os.Truncate(v.path("append-block"), 3*mountBlockSize); err != nil {
		t.Fatal(err)
	}
	v.unmount()

	flip := func(name string, off int64) {
		b := mountReadBacking(t, v.backing(name), off, 1)
		mountPatchBacking(t, v.backing(name), off, []byte{b[0] ^ 0x01})
	}
	// One bit inside block 1's ciphertext, its tag, its nonce; and one in
	// the header's file ID field (offset 13: after the 10-byte prefix and
	// the field's type and length).
	flip("flip-block", mountBlockOffset(1)+12+500)
	flip("flip-tag", mountBlockOffset(2)+mountCipherBlockSize-3)
	flip("flip-nonce", mountBlockOffset(0)+5)
	flip("flip-header", 13+4)
	// Blocks 0 and 1 swapped; and the short last block moved into place 1.
	b0 := mountReadBacking(t, v.backing("swap-blocks"), mountBlockOffset(0), mountCipherBlockSize)
	b1 := mountReadBacking(t, v.backing("swap-blocks"), mountBlockOffset(1), mountCipherBlockSize)
	mountPatchBacking(t, v.backing("swap-blocks"), mountBlockOffset(0), b1)
	mountPatchBacking(t, v.backing("swap-blocks"), mountBlockOffset(1), b0)
	last := mountReadBacking(t, v.backing("swap-last"), mountBlockOffset(3), 500+28)
	mountPatchBacking(t, v.backing("swap-last"), mountBlockOffset(1), last)
	// One file's header region onto another.
	mountPatchBacking(t, v.backing("victim"), 0, mountReadBacking(t, v.backing("donor"), 0, mountHeaderSize))
	// Block 2 of one file into the same position of another.
	mountPatchBacking(t, v.backing("cross-b"), mountBlockOffset(2), mountReadBacking(t, v.backing("cross-a"), mountBlockOffset(2), mountCipherBlockSize))
	// Cut the last block short: a size blocks can make (the tag is
	// missing its end) and one they cannot (shorter than nonce + tag).
	if err := os.Truncate(v.backing("cut-tag"), mountBlockOffset(3)+200); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(v.backing("cut-odd"), mountBlockOffset(3)+10); err != nil {
		t.Fatal(err)
	}
	// Shorter than the header region; and a header region of zeros.
	if err := os.Truncate(v.backing("cut-header"), 500); err != nil {
		t.Fatal(err)
	}
	mountPatchBacking(t, v.backing("zero-header"), 0, make([]byte, mountHeaderSize))
	// Cut at a block boundary: the short last block removed, and all but
	// block 0; and the stale block appended.
	if err := os.Truncate(v.backing("cut-block"), mountBlockOffset(3)); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(v.backing("cut-blocks"), mountBlockOffset(1)); err != nil {
		t.Fatal(err)
	}
	mountPatchBacking(t, v.backing("append-block"), mountBlockOffset(3), stale)
	tampered := []string{"flip-block", "flip-tag", "flip-nonce", "flip-header", "swap-blocks", "swap-last", "victim", "cross-b", "cut-tag", "cut-odd", "cut-header", "zero-header",
		"cut-block", "cut-blocks", "append-block"}

	v.mount()
	for _, name := range tampered {
		got, err := os.ReadFile(v.path(name))
		if mountErrno(err) != syscall.EIO {
			t.Errorf("%s: read %d bytes, err %v; want EIO", name, len(got), err)
		}
		delete(files, name)
	}
	// The rest of the mount is unaffected: listing, and every other file.
	entries, err := os.ReadDir(v.mnt)
	if err != nil {
		t.Fatalf("ls after tampering: %v", err)
	}
	if len(entries) < len(tampered)+5 {
		t.Errorf("ls lists %d entries", len(entries))
	}
	for name, want := range files {
		got, err := os.ReadFile(v.path(name))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("untouched %s: %d bytes, %v; want its %d bytes", name, len(got), err, len(want))
		}
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
