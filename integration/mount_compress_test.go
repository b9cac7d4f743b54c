package integration

// Compressed volumes (docs/FORMAT.md section 4a) through a real mount.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// mountTextFile is seeded text that compresses as prose and source do
// (3-5x under zstd), position-dependent so that a misplaced unit reads as
// wrong bytes.
func mountTextFile(seed uint64, n int) []byte {
	words := strings.Fields(`func return if else for range struct interface type var const package import
		the of and to in is that it for on with as was by this error nil context string int byte
		volume file block unit header key data read write open close sync mount kernel request`)
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	var b bytes.Buffer
	for line := 0; b.Len() < n; line++ {
		fmt.Fprintf(&b, "%6d\t", line)
		for w := 0; w < 4+rng.IntN(10); w++ {
			b.WriteString(words[rng.IntN(len(words))])
			b.WriteByte(' ')
		}
		b.WriteByte('\n')
	}
	return b.Bytes()[:n]
}

// mountStoredVersion is the format version byte of a backing file, 0 for
// an empty one.
func mountStoredVersion(t *testing.T, p string) byte {
	t.Helper()
	b := make([]byte, 5)
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(b, 0); err != nil {
		return 0
	}
	return b[4]
}

// mountWaitVersion waits for the backing file p to be stored as format
// version want: a compressed file is written out in the background once
// closed (volume/writeout.go).
func mountWaitVersion(t *testing.T, p string, want byte) {
	t.Helper()
	mountWaitFor(t, 20*time.Second, fmt.Sprintf("%s stored as version %d", filepath.Base(p), want), func() bool {
		return mountStoredVersion(t, p) == want
	})
}

// mountUnitTable reads a version 4 header's region size and unit lengths
// (section 4a), parsed here independently of kmsfs.
func mountUnitTable(t *testing.T, p string) (region int64, lengths []int64) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if string(b[:4]) != "KMFS" || b[4] != 4 {
		t.Fatalf("%s: not a version 4 file", p)
	}
	region = int64(binary.BigEndian.Uint16(b[6:]))
	fields := b[10 : 10+int(binary.BigEndian.Uint16(b[8:]))]
	for len(fields) >= 3 {
		typ, n := fields[0], int(binary.BigEndian.Uint16(fields[1:]))
		val := fields[3 : 3+n]
		fields = fields[3+n:]
		if typ != 0x47 {
			continue
		}
		for i := 13; i+4 <= len(val); i += 4 {
			lengths = append(lengths, int64(binary.BigEndian.Uint32(val[i:])))
		}
		return region, lengths
	}
	t.Fatalf("%s: no compression field", p)
	return 0, nil
}

// TestMountCompressedStorage: on a compressing volume a text tree takes a
// fraction of its size in the backing store, incompressible data no more
// than in the block layout (within 0.5%), a file past 4 MiB is stored in
// the block layout, and all of it reads back, before and after a remount
// and through `kmsfs cat`.
func TestMountCompressedStorage(t *testing.T) {
	v := mountNewVolume(t, "--compress", "zstd")
	src := filepath.Join(t.TempDir(), "src")
	if err := os.MkdirAll(filepath.Join(src, "text"), 0o755); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(mountSeed(t), 3))
	var textBytes int64
	for i := 0; i < 200; i++ {
		data := mountTextFile(uint64(i), 200+rng.IntN(60000))
		textBytes += int64(len(data))
		if err := os.WriteFile(filepath.Join(src, "text", fmt.Sprintf("f%03d.txt", i)), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	random := make([]byte, 3<<20)
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	big := mountTextFile(99, 6<<20)
	if err := os.WriteFile(filepath.Join(src, "random"), random, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "big.txt"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	v.mount()
	mountExec(t, "cp", "-a", src+"/.", v.path(""))
	check := func(stage string) {
		t.Helper()
		if out, err := mountExecOut("diff", "-r", src, v.mnt); err != nil {
			t.Fatalf("%s: diff -r: %v\n%s", stage, err, mountTail(out, 20))
		}
	}
	check("after copy")
	// The unmount waits for the files closed but not yet written out.
	v.remount()

	textUse := mountBackingUse(t, v.backing("text"))
	srcUse := mountBackingUse(t, filepath.Join(src, "text"))
	t.Logf("text: %d bytes in %d files; backing use %d, source use %d (%.2f)", textBytes, 200, textUse, srcUse, float64(textUse)/float64(srcUse))
	if textUse > srcUse*6/10 {
		t.Errorf("compressed text takes %d bytes of backing store, more than 60%% of the source's %d", textUse, srcUse)
	}
	if ver := mountStoredVersion(t, v.backing("text/f007.txt")); ver != 4 {
		t.Errorf("text file stored as version %d, want 4 (compressed)", ver)
	}
	// Incompressible: units kept as is, no bigger than the block layout.
	randUse := mountBackingUse(t, v.backing("random"))
	if limit := mountCipherSize(int64(len(random))) * 1005 / 1000; randUse > limit {
		t.Errorf("random data takes %d bytes of backing store, more than 100.5%% of its block layout (%d)", randUse, limit)
	}
	if ver := mountStoredVersion(t, v.backing("big.txt")); ver != 3 {
		t.Errorf("a 6 MiB file stored as version %d, want 3 (past the 4 MiB stage)", ver)
	}
	// stat needs no header: the backing size is the block layout's.
	var st syscall.Stat_t
	if err := syscall.Stat(v.backing("text/f007.txt"), &st); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(v.path("text/f007.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Size != mountCipherSize(fi.Size()) {
		t.Errorf("backing size %d, want %d for %d plaintext bytes", st.Size, mountCipherSize(fi.Size()), fi.Size())
	}

	// Random reads touch single units.
	for _, name := range []string{"text/f007.txt", "random", "big.txt"} {
		want, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 100; i++ {
			off := rng.Int64N(int64(len(want)))
			n := 1 + rng.IntN(200000)
			got, err := mountReadAt(v.path(name), off, n)
			if err != nil {
				t.Fatalf("%s: pread %d at %d: %v", name, n, off, err)
			}
			if end := min(off+int64(n), int64(len(want))); !bytes.Equal(got, want[off:end]) {
				t.Fatalf("%s: pread %d at %d differs from the source", name, n, off)
			}
		}
	}
	check("after remount")
	v.unmount()
	out, err := v.command("cat", v.vault, "text/f007.txt").Output()
	if want, _ := os.ReadFile(filepath.Join(src, "text/f007.txt")); err != nil || !bytes.Equal(out, want) {
		t.Errorf("kmsfs cat of a compressed file: %d bytes, %v; want the source's %d", len(out), err, len(want))
	}
	mountRequireNoPlaintext(t, v.vault, "volume file block unit")
}

// TestMountCompressedRewrite: a compressed file changed in place (a write
// in the middle, an append, a truncation, fallocate, a hole punched) reads
// as the same changes made to a plain file, before and after a remount.
func TestMountCompressedRewrite(t *testing.T) {
	v := mountNewVolume(t, "--compress", "zstd")
	v.mount()
	want := mountTextFile(5, 300000)
	p := v.path("f.txt")
	if err := os.WriteFile(p, want, 0o644); err != nil {
		t.Fatal(err)
	}
	mountWaitVersion(t, v.backing("f.txt"), 4)
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	patch := []byte("PATCHED IN THE MIDDLE")
	if _, err := f.WriteAt(patch, 123456); err != nil {
		t.Fatal(err)
	}
	copy(want[123456:], patch)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	tail := mountTextFile(6, 5000)
	if _, err := f.WriteAt(tail, int64(len(want))); err != nil {
		t.Fatal(err)
	}
	want = append(want, tail...)
	if err := f.Truncate(250000); err != nil {
		t.Fatal(err)
	}
	want = want[:250000]
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	check := func(stage string) {
		t.Helper()
		got, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: %d bytes, %v; want %d (first difference at %d)", stage, len(got), err, len(want), mountFirstDiff(got, want))
		}
	}
	check("after rewrite")
	mountWaitVersion(t, v.backing("f.txt"), 4)
	// fallocate and hole punching convert the file to the block layout.
	mountExec(t, "fallocate", "-p", "-o", "8192", "-l", "16384", p)
	clear(want[8192 : 8192+16384])
	check("after punching a hole")
	if ver := mountStoredVersion(t, v.backing("f.txt")); ver != 3 {
		t.Errorf("file with a punched hole stored as version %d, want 3", ver)
	}
	v.remount()
	check("after remount")
}

// TestMountCompressedTamper: a compressed file whose stored bytes were
// changed behind kmsfs's back reads as EIO, logged with its path: a unit's
// byte flipped (reads of other units still work), the stored file cut at a
// unit boundary or at a block boundary, a block appended, the header's
// plaintext size changed.
func TestMountCompressedTamper(t *testing.T) {
	v := mountNewVolume(t, "--compress", "zstd")
	v.mount()
	content := mountTextFile(11, 330000) // 6 units
	cases := []string{"flip", "cut-unit", "cut-block", "append", "size"}
	for _, name := range cases {
		if err := os.WriteFile(v.path(name), content, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	v.unmount()
	for _, name := range cases {
		p := v.backing(name)
		region, lengths := mountUnitTable(t, p)
		if len(lengths) != 6 {
			t.Fatalf("%s: %d units, want 6", name, len(lengths))
		}
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		switch name {
		case "flip":
			at := region + lengths[0] + lengths[1] + 40 // inside unit 2
			mountFlipByte(t, p, at)
		case "cut-unit":
			mountTruncate(t, p, region+lengths[0]+lengths[1])
		case "cut-block":
			mountTruncate(t, p, st.Size-mountCipherBlockSize)
		case "append":
			mountTruncate(t, p, st.Size+mountCipherBlockSize)
		case "size":
			// P is the 8 bytes after the field's type, length,
			// algorithm and unit size.
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			i := bytes.Index(b[:region], []byte{0x47})
			mountFlipByte(t, p, int64(i)+3+1+4+7)
		}
	}
	v.mount()
	for _, name := range cases {
		_, err := os.ReadFile(v.path(name))
		if mountErrno(err) != syscall.EIO {
			t.Errorf("%s: read gave %v, want EIO", name, err)
		}
	}
	// Only the touched units are decrypted: unit 0 of the flipped file
	// still reads.
	if got, err := mountReadAt(v.path("flip"), 0, 4096); err != nil || !bytes.Equal(got, content[:4096]) {
		t.Errorf("flip: unit 0 read %v; want its bytes", err)
	}
	log := v.log()
	for _, name := range cases {
		if !strings.Contains(log, "/"+name) {
			t.Errorf("the log does not name /%s:\n%s", name, mountTail(log, 20))
		}
	}
}

func mountFlipByte(t *testing.T, p string, at int64) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, at); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x20
	if _, err := f.WriteAt(b, at); err != nil {
		t.Fatal(err)
	}
}

func mountTruncate(t *testing.T, p string, size int64) {
	t.Helper()
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
}

// mountFioCompressed: buffered random reads and writes verified by fio,
// with data that compresses by half, on a file that stays in the 4 MiB
// stage and one that outgrows it.
const mountFioCompressed = `
[global]
directory=%DIR%
verify=crc32c
do_verify=1
verify_fatal=1
randrepeat=1
buffer_compress_percentage=50
refill_buffers=1
ioengine=psync
bsrange=512-64k

[staged]
size=3m
rw=randrw

[outgrown]
size=12m
rw=randwrite
verify_backlog=64
`

// TestMountCompressedFio runs fio --verify on a compressing volume and
// reads its files back after a remount.
func TestMountCompressedFio(t *testing.T) {
	mountRequireTool(t, "fio")
	v := mountNewVolume(t, "--compress", "zstd")
	v.mount()
	dir := v.path("fio")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	mountRunFio(t, mountFioCompressed, dir)
	before := map[string][]byte{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		before[e.Name()] = b
	}
	v.remount()
	for name, want := range before {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s after remount: %d bytes, %v; want %d", name, len(got), err, len(want))
		}
	}
}
