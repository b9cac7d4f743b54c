package integration

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// mountModelInode is the model of one file: its content, whichever names
// it has (hard links are not part of this model, renames are).
type mountModelInode struct {
	id   int
	data []byte
}

// mountModelHandle is an open descriptor and the inode it refers to: after
// a rename or an unlink, POSIX keeps it pointing at the same file.
type mountModelHandle struct {
	f      *os.File
	ino    *mountModelInode
	append bool
	name   string // the name it was opened by, for messages
}

// mountModel drives random operations on the mount and on an in-memory
// model in lockstep, checking every read against the model.
type mountModel struct {
	t       *testing.T
	v       *mountVolume
	rng     *rand.Rand
	seed    uint64
	names   map[string]*mountModelInode
	handles []*mountModelHandle
	nextID  int
	op      int
	recent  []string // the last operations, for the failure message
	counts  map[string]int
}

const (
	mountModelSlots   = 10      // file names m0..m9
	mountModelMaxSize = 1 << 20 // files stay below 1 MiB so full reads stay cheap
	mountModelHandles = 8
)

func (m *mountModel) logOp(format string, args ...any) {
	s := fmt.Sprintf("#%d ", m.op) + fmt.Sprintf(format, args...)
	m.recent = append(m.recent, s)
	if len(m.recent) > 25 {
		m.recent = m.recent[1:]
	}
}

func (m *mountModel) fail(format string, args ...any) {
	m.t.Helper()
	m.t.Fatalf("op %d (seed %d, replay with KMSFS_TEST_SEED=%d): %s\nlast operations:\n%s",
		m.op, m.seed, m.seed, fmt.Sprintf(format, args...), strings.Join(m.recent, "\n"))
}

func (m *mountModel) slot() string { return "m" + strconv.Itoa(m.rng.IntN(mountModelSlots)) }

// existing returns a random existing name, or "" if there is none.
func (m *mountModel) existing() string {
	if len(m.names) == 0 {
		return ""
	}
	k := m.rng.IntN(len(m.names))
	for name := range m.names {
		if k == 0 {
			return name
		}
		k--
	}
	return ""
}

// offset picks a file offset: anywhere up to a little past the end, often
// right around a block boundary.
func (m *mountModel) offset(size int) int64 {
	switch m.rng.IntN(4) {
	case 0: // around a block boundary
		b := m.rng.IntN(size/mountBlockSize+2) * mountBlockSize
		return int64(max(0, b-m.rng.IntN(64)))
	case 1:
		return int64(size) // at the end
	default:
		return int64(m.rng.IntN(size + 2*mountBlockSize + 1))
	}
}

func (m *mountModel) length() int {
	switch m.rng.IntN(6) {
	case 0:
		return 1 + m.rng.IntN(16)
	case 1:
		return mountBlockSize
	case 2:
		return 2*mountBlockSize + m.rng.IntN(3) - 1
	case 3:
		return 1 + m.rng.IntN(70000)
	default:
		return 1 + m.rng.IntN(9000)
	}
}

func (m *mountModel) handle() *mountModelHandle {
	if len(m.handles) == 0 {
		m.open()
	}
	if len(m.handles) == 0 {
		return nil
	}
	return m.handles[m.rng.IntN(len(m.handles))]
}

func (m *mountModel) open() {
	if len(m.handles) >= mountModelHandles {
		m.closeOne()
	}
	name := m.slot()
	ino := m.names[name]
	flags := os.O_RDWR
	appendMode := m.rng.IntN(8) == 0
	if appendMode {
		flags |= os.O_APPEND
	}
	if ino == nil {
		flags |= os.O_CREATE | os.O_EXCL
	} else if m.rng.IntN(10) == 0 {
		flags |= os.O_TRUNC
	}
	m.logOp("open %s flags %#x", name, flags)
	f, err := os.OpenFile(m.v.path(name), flags, 0o644)
	if err != nil {
		m.fail("open %s: %v", name, err)
	}
	if ino == nil {
		m.nextID++
		ino = &mountModelInode{id: m.nextID}
		m.names[name] = ino
	} else if flags&os.O_TRUNC != 0 {
		ino.data = ino.data[:0]
	}
	m.handles = append(m.handles, &mountModelHandle{f: f, ino: ino, append: appendMode, name: name})
	m.counts["open"]++
}

func (m *mountModel) closeOne() {
	if len(m.handles) == 0 {
		return
	}
	i := m.rng.IntN(len(m.handles))
	h := m.handles[i]
	m.logOp("close handle of %s (inode %d)", h.name, h.ino.id)
	if err := h.f.Close(); err != nil {
		m.fail("close %s: %v", h.name, err)
	}
	m.handles = append(m.handles[:i], m.handles[i+1:]...)
	m.counts["close"]++
}

func (m *mountModel) write() {
	h := m.handle()
	size := len(h.ino.data)
	off, n := m.offset(size), m.length()
	if h.append {
		off = int64(size)
	}
	if off+int64(n) > mountModelMaxSize {
		m.truncate(h, m.rng.IntN(mountModelMaxSize/2))
		return
	}
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(m.rng.Uint32())
	}
	m.logOp("write %s (inode %d) off %d len %d append %v", h.name, h.ino.id, off, n, h.append)
	var got int
	var err error
	if h.append {
		got, err = h.f.Write(data) // O_APPEND: the kernel writes at the end
	} else {
		got, err = h.f.WriteAt(data, off)
	}
	if err != nil || got != n {
		m.fail("write %s off %d len %d: %d, %v", h.name, off, n, got, err)
	}
	if end := int(off) + n; end > len(h.ino.data) {
		h.ino.data = append(h.ino.data, make([]byte, end-len(h.ino.data))...)
	}
	copy(h.ino.data[off:], data)
	m.counts["write"]++
}

func (m *mountModel) read() {
	h := m.handle()
	size := len(h.ino.data)
	off, n := m.offset(size), m.length()
	m.logOp("read %s (inode %d) off %d len %d (size %d)", h.name, h.ino.id, off, n, size)
	buf := make([]byte, n)
	got, err := h.f.ReadAt(buf, off)
	want := 0
	if int(off) < size {
		want = min(n, size-int(off))
	}
	if got != want || (err != nil && !(errors.Is(err, io.EOF) && want < n)) {
		m.fail("read %s off %d len %d: got %d bytes, %v; want %d bytes (size %d)", h.name, off, n, got, err, want, size)
	}
	if got > 0 && !bytes.Equal(buf[:got], h.ino.data[off:int(off)+got]) {
		m.fail("read %s off %d len %d: content differs from the model at byte %d", h.name, off, n, int(off)+mountFirstDiff(buf[:got], h.ino.data[off:int(off)+got]))
	}
	m.counts["read"]++
}

func (m *mountModel) truncate(h *mountModelHandle, size int) {
	if h == nil {
		h = m.handle()
	}
	m.logOp("truncate %s (inode %d) %d -> %d", h.name, h.ino.id, len(h.ino.data), size)
	if err := h.f.Truncate(int64(size)); err != nil {
		m.fail("ftruncate %s to %d: %v", h.name, size, err)
	}
	if size <= len(h.ino.data) {
		h.ino.data = h.ino.data[:size]
	} else {
		h.ino.data = append(h.ino.data, make([]byte, size-len(h.ino.data))...)
	}
	m.counts["truncate"]++
}

func (m *mountModel) truncatePath() {
	name := m.existing()
	if name == "" {
		return
	}
	ino := m.names[name]
	size := int(m.offset(len(ino.data)))
	if m.rng.IntN(3) == 0 {
		size = m.rng.IntN(len(ino.data) + 1)
	}
	m.logOp("truncate(2) %s (inode %d) %d -> %d", name, ino.id, len(ino.data), size)
	if err := os.Truncate(m.v.path(name), int64(size)); err != nil {
		m.fail("truncate %s to %d: %v", name, size, err)
	}
	if size <= len(ino.data) {
		ino.data = ino.data[:size]
	} else {
		ino.data = append(ino.data, make([]byte, size-len(ino.data))...)
	}
	m.counts["truncate"]++
}

func (m *mountModel) rename() {
	from := m.existing()
	if from == "" {
		return
	}
	to := m.slot()
	m.logOp("rename %s -> %s (replacing: %v)", from, to, m.names[to] != nil && to != from)
	if err := os.Rename(m.v.path(from), m.v.path(to)); err != nil {
		m.fail("rename %s %s: %v", from, to, err)
	}
	if from != to {
		m.names[to] = m.names[from]
		delete(m.names, from)
	}
	m.counts["rename"]++
}

func (m *mountModel) unlink() {
	name := m.existing()
	if name == "" {
		return
	}
	m.logOp("unlink %s", name)
	if err := os.Remove(m.v.path(name)); err != nil {
		m.fail("unlink %s: %v", name, err)
	}
	delete(m.names, name)
	m.counts["unlink"]++
}

func (m *mountModel) stat() {
	name := m.existing()
	if name == "" {
		return
	}
	m.logOp("stat %s", name)
	fi, err := os.Stat(m.v.path(name))
	if err != nil || fi.Size() != int64(len(m.names[name].data)) {
		m.fail("stat %s: %v, %v; want size %d", name, fi, err, len(m.names[name].data))
	}
	m.counts["stat"]++
}

// readAll checks one name's whole content (a fresh open, read to EOF).
func (m *mountModel) readAll(name string) {
	m.logOp("read whole %s", name)
	got, err := os.ReadFile(m.v.path(name))
	want := m.names[name].data
	if err != nil || !bytes.Equal(got, want) {
		m.fail("read whole %s: %d bytes, %v; want %d bytes, first difference at %d", name, len(got), err, len(want), mountFirstDiff(got, want))
	}
	m.counts["readall"]++
}

func (m *mountModel) checkAll(stage string) {
	m.t.Helper()
	m.logOp("check all (%s)", stage)
	entries, err := os.ReadDir(m.v.mnt)
	if err != nil {
		m.fail("readdir: %v", err)
	}
	var listed []string
	for _, e := range entries {
		listed = append(listed, e.Name())
		if m.names[e.Name()] == nil {
			m.fail("%s: %s exists on the mount, not in the model", stage, e.Name())
		}
	}
	if len(listed) != len(m.names) {
		m.fail("%s: mount lists %v, model has %d names", stage, listed, len(m.names))
	}
	for name := range m.names {
		m.readAll(name)
	}
}

// TestMountModel runs a seeded sequence of random operations (writes at
// random offsets and lengths, block-straddling ones included, truncates up
// and down, reads, renames over existing files, unlinks of open files,
// opens with O_TRUNC and O_APPEND, fsyncs) on about ten files, checks every
// read against an in-memory model, and checks everything again after a
// remount. $KMSFS_MODEL_OPS sets the number of operations (default
// 100000); $KMSFS_TEST_SEED replays a run.
func TestMountModel(t *testing.T) { mountModelRun(t, 100000) }

// TestMountModelCompressed is TestMountModel on a volume that compresses:
// files up to 4 MiB are held in memory while written and rewritten whole
// when they change (docs/FORMAT.md section 4a), a path of its own for
// every operation of the model.
func TestMountModelCompressed(t *testing.T) { mountModelRun(t, 30000, "--compress", "zstd:1") }

func mountModelRun(t *testing.T, ops int, initArgs ...string) {
	if s := os.Getenv("KMSFS_MODEL_OPS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			t.Fatalf("KMSFS_MODEL_OPS=%q: want a count", s)
		}
		ops = n
	} else if testing.Short() {
		ops = min(ops, 10000)
	}
	v := mountNewVolume(t, initArgs...)
	v.mount()
	seed := mountSeed(t)
	m := &mountModel{t: t, v: v, rng: rand.New(rand.NewPCG(seed, seed>>1|1)), seed: seed,
		names: map[string]*mountModelInode{}, counts: map[string]int{}}
	t.Cleanup(func() { // before the unmount, which open files would make busy
		for _, h := range m.handles {
			h.f.Close()
		}
	})
	start := time.Now()
	for m.op = 0; m.op < ops; m.op++ {
		switch r := m.rng.IntN(100); {
		case r < 35:
			m.write()
		case r < 60:
			m.read()
		case r < 66:
			h := m.handle()
			m.truncate(h, int(m.offset(len(h.ino.data))))
		case r < 69:
			m.truncatePath()
		case r < 76:
			m.open()
		case r < 81:
			m.closeOne()
		case r < 85:
			m.rename()
		case r < 87:
			m.unlink()
		case r < 92:
			m.stat()
		case r < 94:
			if name := m.existing(); name != "" {
				m.readAll(name)
			}
		case r < 95:
			h := m.handle()
			m.logOp("fsync %s", h.name)
			if err := h.f.Sync(); err != nil {
				m.fail("fsync %s: %v", h.name, err)
			}
		default:
			if m.rng.IntN(50) == 0 {
				m.checkAll("periodic")
			} else {
				m.stat()
			}
		}
	}
	for len(m.handles) > 0 {
		m.closeOne()
	}
	m.checkAll("end")
	t.Logf("%d operations in %v: %v", ops, time.Since(start).Round(time.Millisecond), m.counts)
	v.remount()
	m.checkAll("after remount")
	// Backing sizes agree with the model's plaintext sizes.
	for name, ino := range m.names {
		var st syscall.Stat_t
		if err := syscall.Stat(v.backing(name), &st); err != nil {
			t.Fatal(err)
		}
		if want := mountCipherSize(int64(len(ino.data))); st.Size != want {
			t.Errorf("backing %s: %d bytes, want %d for %d plaintext bytes", name, st.Size, want, len(ino.data))
		}
	}
}

// mountCipherSize is the backing size of a file of plain bytes.
func mountCipherSize(plain int64) int64 {
	if plain == 0 {
		return 0
	}
	full, rest := plain/mountBlockSize, plain%mountBlockSize
	n := mountHeaderSize + full*mountCipherBlockSize
	if rest > 0 {
		n += rest + mountCipherBlockSize - mountBlockSize
	}
	return n
}
