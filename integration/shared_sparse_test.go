package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"golang.org/x/sys/unix"
)

// storedBytes is the size of every chunk object that inode ino's
// chunk rows point to, summed, and the indexes of those rows.
func (sv *sharedVolume) storedBytes(t *testing.T, ino uint64) (int64, map[int64]bool) {
	t.Helper()
	sizes := map[string]int64{}
	p := s3.NewListObjectsV2Paginator(sv.g.client, &s3.ListObjectsV2Input{Bucket: aws.String(s3Bucket), Prefix: aws.String(sv.prefix + "/chunks/")})
	for p.HasMorePages() {
		page, err := p.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range page.Contents {
			sizes[strings.TrimPrefix(aws.ToString(o.Key), sv.prefix+"/")] = aws.ToInt64(o.Size)
		}
	}
	var total int64
	idx := map[int64]bool{}
	rows := sv.pg.Psql(sv.db, "SELECT idx, key FROM kmsfs_chunks WHERE ino = "+strconv.FormatUint(ino, 10))
	for _, line := range strings.Split(rows, "\n") {
		if line == "" {
			continue
		}
		i, key, _ := strings.Cut(line, "|")
		n, err := strconv.ParseInt(i, 10, 64)
		size, ok := sizes[key]
		if err != nil || !ok {
			t.Fatalf("chunk row %q: no such object (%v)", line, err)
		}
		idx[n] = true
		total += size
	}
	return total, idx
}

// TestSharedSparse10GiB is TestMountSparse10GiB on a shared volume: a
// 10 GiB file made by truncate(1), and one made by dd(1) writing its last
// block, take under 1 MiB of chunk objects (the chunks of their holes are
// not stored) and read zeros in their holes on a second mount and after a
// remount, where SEEK_DATA and SEEK_HOLE report the holes. fallocate
// --punch-hole over a range holding a whole chunk drops that chunk.
func TestSharedSparse10GiB(t *testing.T) {
	const size = 10 << 30
	const mib = 1 << 20
	mountRequireTool(t, "truncate")
	mountRequireTool(t, "dd")
	fallocate := mountRequireTool(t, "fallocate")
	sv := sharedNew(t, "vol")
	a := sv.mount(t)
	mountExec(t, "truncate", "-s", "10G", a.path("by-truncate"))
	tail := mountPattern(4096, 9)
	mountWriteFile(t, a.path("tail"), tail)
	mountExec(t, "dd", "if="+a.path("tail"), "of="+a.path("by-write"), "bs=4096", "seek="+strconv.Itoa(size/4096-1), "conv=notrunc,fsync", "status=none")
	// 12 MiB of data, then plaintext [2 MiB, 10 MiB) punched: stored
	// chunk 1 (stream bytes [4 MiB, 8 MiB)) lies wholly inside.
	punched := mountPattern(12*mib, 4)
	mountWriteFile(t, a.path("punched"), punched)
	ino := func(name string) uint64 {
		t.Helper()
		st, err := os.Stat(a.path(name))
		if err != nil {
			t.Fatal(err)
		}
		return st.Sys().(*syscall.Stat_t).Ino
	}
	_, before := sv.storedBytes(t, ino("punched"))
	if !before[1] {
		t.Fatalf("the data file has chunks %v, want 0, 1 and 2", before)
	}
	chunk1 := sv.pg.Psql(sv.db, fmt.Sprintf("SELECT key FROM kmsfs_chunks WHERE ino = %d AND idx = 1", ino("punched")))
	if out, err := mountExecOut(fallocate, "--punch-hole", "--offset", strconv.Itoa(2*mib), "--length", strconv.Itoa(8*mib), a.path("punched")); err != nil {
		t.Fatalf("fallocate --punch-hole: %v %s", err, out)
	}
	clear(punched[2*mib : 10*mib])
	if _, after := sv.storedBytes(t, ino("punched")); after[1] || !after[0] || !after[2] {
		t.Errorf("after the punch the data file has chunks %v, want 0 and 2", after)
	}
	if n := sv.pg.Psql(sv.db, fmt.Sprintf("SELECT count(*) FROM kmsfs_garbage WHERE key = '%s'", chunk1)); n != "1" {
		t.Errorf("the dropped chunk %s is not recorded as garbage (%s rows)", chunk1, n)
	}
	for _, name := range []string{"by-truncate", "by-write"} {
		stored, idx := sv.storedBytes(t, ino(name))
		if stored >= mib || len(idx) > 2 {
			t.Errorf("%s: %d chunk objects of %d bytes in all for a %d-byte sparse file, want < 1 MiB", name, len(idx), stored, int64(size))
		}
		t.Logf("%s: %d chunk objects, %d bytes", name, len(idx), stored)
	}

	seek := func(p string, off int64, whence int) (int64, error) {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		return unix.Seek(int(f.Fd()), off, whence)
	}
	check := func(what string, v *mountVolume) {
		t.Helper()
		for name, last := range map[string][]byte{"by-truncate": make([]byte, 4096), "by-write": tail} {
			p := v.path(name)
			if st, err := os.Stat(p); err != nil || st.Size() != size {
				t.Fatalf("%s: %s: %v, %v; want %d bytes", what, name, err, st, size)
			}
			// Block 1017 is the first whose stored bytes span two chunks
			// ((4 MiB - 1024) / 4124 = 1016.8).
			for _, off := range []int64{0, 4095, mib, 1017*4096 - 100, 4 * mib, 3<<30 + 12345, size - 4096 - 8192 - 1} {
				got, err := mountReadAt(p, off, 8192)
				if err != nil || !bytes.Equal(got, make([]byte, 8192)) {
					t.Fatalf("%s: %s at %d: %d bytes, %v; want zeros", what, name, off, len(got), err)
				}
			}
			if got, err := mountReadAt(p, size-4096, 4096); err != nil || !bytes.Equal(got, last) {
				t.Fatalf("%s: %s: last block: %v", what, name, err)
			}
			mountCmpZero(t, p, 5<<30, 64*mib)
			for _, c := range [][3]int64{
				{0, unix.SEEK_HOLE, 0}, {0, unix.SEEK_DATA, size - 4096}, {5 << 30, unix.SEEK_DATA, size - 4096},
				{size - 4096, unix.SEEK_HOLE, size},
			} {
				if got, err := seek(p, c[0], int(c[1])); err != nil || got != c[2] {
					t.Errorf("%s: %s: lseek(%d, %d) = %d, %v; want %d", what, name, c[0], c[1], got, err, c[2])
				}
			}
			if _, err := seek(p, size, unix.SEEK_DATA); !errors.Is(err, syscall.ENXIO) {
				t.Errorf("%s: %s: SEEK_DATA at the end: %v, want ENXIO", what, name, err)
			}
		}
		p := v.path("punched")
		if got, err := mountReadAt(p, 0, len(punched)); err != nil || !bytes.Equal(got, punched) {
			t.Fatalf("%s: punched: %v, first difference at %d", what, err, mountFirstDiff(got, punched))
		}
		for _, c := range [][3]int64{
			{0, unix.SEEK_DATA, 0}, {0, unix.SEEK_HOLE, 2 * mib}, {2 * mib, unix.SEEK_DATA, 10 * mib},
			{10 * mib, unix.SEEK_HOLE, 12 * mib},
		} {
			if got, err := seek(p, c[0], int(c[1])); err != nil || got != c[2] {
				t.Errorf("%s: punched: lseek(%d, %d) = %d, %v; want %d", what, c[0], c[1], got, err, c[2])
			}
		}
	}
	check("the writing mount", a)
	b := sv.mount(t)
	check("a second mount", b)
	a.remount(sv.g.flags()...)
	check("after a remount", a)
}
