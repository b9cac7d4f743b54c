package integration

import (
	"bytes"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// TestMountFallocateZeroRange runs fallocate(1) on a mount: --zero-range
// zeroes a range inside the file, grows it past the end, and with
// --keep-size leaves the size alone; every result reads back after a
// remount. --punch-hole is refused (stored files keep no holes), with a
// clear error instead of a file that reads other data.
func TestMountFallocateZeroRange(t *testing.T) {
	bin := mountRequireTool(t, "fallocate")
	v := mountNewVolume(t)
	v.mount()
	p := v.path("f")
	want := mountPattern(3*mountBlockSize+100, 7)
	mountWriteFile(t, p, want)
	zero := func(off, n int, extra ...string) {
		t.Helper()
		args := append([]string{"--zero-range", "--offset", strconv.Itoa(off), "--length", strconv.Itoa(n)}, extra...)
		if out, err := exec.Command(bin, append(args, p)...).CombinedOutput(); err != nil {
			t.Fatalf("fallocate %s: %v %s", strings.Join(args, " "), err, out)
		}
		if len(extra) == 0 && off+n > len(want) {
			want = append(want, make([]byte, off+n-len(want))...)
		}
		clear(want[min(off, len(want)):min(off+n, len(want))])
		mountExpectContent(t, p, want)
	}
	zero(100, 5000)
	zero(len(want)-10, 5000, "--keep-size")
	zero(len(want)+100, 3*mountBlockSize)
	zero(0, mountBlockSize)

	out, err := exec.Command(bin, "--punch-hole", "--offset", "0", "--length", "4096", p).CombinedOutput()
	// util-linux words EOPNOTSUPP for a mode with KEEP_SIZE (which punching
	// implies) as "keep size mode is unsupported".
	if err == nil || !strings.Contains(string(out), "unsupported") && !strings.Contains(string(out), "not supported") {
		t.Errorf("fallocate --punch-hole: %v %s; want it refused as not supported", err, out)
	}
	v.unmount()
	v.mount()
	if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, want) {
		t.Errorf("after a remount: %d bytes, %v; want %d", len(got), err, len(want))
	}
}
