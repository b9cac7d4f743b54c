package shared

import (
	"errors"
	"io"
	"math"
	"os"
	"slices"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/backend"
	"github.com/kmsfs/kmsfs/backend/shared/meta"
)

// Holes. A file's open handle is a backend.SparseFile: what the staging
// file holds as holes (never written, truncated up, punched) is never
// uploaded, and a chunk index with no row below the size reads as zeros
// (docs/FORMAT.md section 12). So the volume leaves holes in version 3
// files here as on a local disk: a 10 GiB file made by truncate stores its
// header and its last block. A chunk is stored from its first data to its
// last (the holes inside it are stored as zeros: data regions may include
// zeros); a chunk with none is dropped from the chunk list at the commit.

var _ backend.SparseFile = (*handle)(nil)

// storedPart is what of a dirty chunk its object stores.
type storedPart struct {
	chunk   meta.Chunk // Len: stream bytes from the chunk's start to its last data
	skip    int64      // the holes before its first data, left out (chunkSkip)
	trimmed bool       // its range goes on after Len, as zeros it does not store
}

// storedPartOf finds the data staged for chunk idx, whose stream range ends
// at dataEnd at most; ok is false when there is none (the chunk is a hole).
// mu is held.
func (f *openFile) storedPartOf(idx, cs, dataEnd int64) (sp storedPart, ok bool, err error) {
	lo, hi := idx*cs, min((idx+1)*cs, dataEnd)
	start, end, ok, err := f.stagedData(lo, hi)
	if err != nil || !ok {
		return sp, false, err
	}
	skip := start - lo
	sp = storedPart{chunk: meta.Chunk{Index: idx, Key: newChunkKey(skip), Len: end - lo}, skip: skip, trimmed: end < hi}
	return sp, true, nil
}

// header is the chunk object header of sp, written for generation gen.
func (sp storedPart) header(vid [16]byte, ino uint64, gen, cs int64) ChunkHeader {
	h := ChunkHeader{VolumeID: vid, Ino: ino, Gen: gen, Index: sp.chunk.Index, Offset: sp.chunk.Index*cs + sp.skip, Length: sp.chunk.Len - sp.skip}
	if sp.trimmed {
		h.Flags |= ChunkTrimmed
	}
	return h
}

// readStored reads sp's stream bytes from the chunk's start (the skipped
// holes as zeros) from the staging file. mu is held.
func (f *openFile) readStored(sp storedPart, cs int64) ([]byte, error) {
	data := make([]byte, sp.chunk.Len)
	if _, err := f.staging.ReadAt(data[sp.skip:], sp.chunk.Index*cs+sp.skip); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return data, nil
}

// stagedData is where the data in staged stream range [lo, hi) starts and
// ends, by lseek(2) SEEK_DATA and SEEK_HOLE on the staging file, which
// reads no zeros to find out; ok is false when the range is all holes. A
// filesystem without SEEK_DATA support answers that a file is data up to
// its end (lseek(2)): the zeros are then stored, which reads the same.
func (f *openFile) stagedData(lo, hi int64) (start, end int64, ok bool, err error) {
	start, found, err := f.seekStaging(lo, unix.SEEK_DATA)
	if err != nil || !found || start >= hi {
		return 0, 0, false, err
	}
	for at := start; ; {
		h, found, err := f.seekStaging(at, unix.SEEK_HOLE)
		if err != nil {
			return 0, 0, false, err
		}
		if !found || h >= hi {
			// No hole before hi (ENXIO only past the end, which at is not).
			return start, hi, true, nil
		}
		d, found, err := f.seekStaging(h, unix.SEEK_DATA)
		if err != nil {
			return 0, 0, false, err
		}
		if !found || d >= hi {
			return start, h, true, nil
		}
		at = d
	}
}

// seekStaging is lseek(2) on the staging file with whence SEEK_DATA or
// SEEK_HOLE; found is false for ENXIO (off at or past its end, or for
// SEEK_DATA in a hole there). Reads and writes use pread and pwrite, so
// the file offset it moves is not used.
func (f *openFile) seekStaging(off int64, whence int) (int64, bool, error) {
	if f.staging == nil {
		return 0, false, nil
	}
	pos, err := f.staging.Seek(off, whence)
	if errors.Is(err, syscall.ENXIO) {
		return 0, false, nil
	}
	return pos, err == nil, err
}

// candidates are the chunk indexes from idx on that are staged or have a
// row, in order: every other chunk is a hole.
func (f *openFile) candidates(idx int64) []int64 {
	var out []int64
	for i := range f.staged {
		if i >= idx {
			out = append(out, i)
		}
	}
	for i := range f.chunks {
		if i >= idx && !f.staged[i] {
			out = append(out, i)
		}
	}
	slices.Sort(out)
	return out
}

// committedEnd is where the data of committed chunk c ends in the stream:
// at its length, or at a sparse tail made since. mu is held.
func (f *openFile) committedEnd(c meta.Chunk, cs int64) int64 {
	end := c.Index*cs + c.Len
	if f.sparseFrom >= 0 {
		end = min(end, f.sparseFrom)
	}
	return end
}

// seekData is the first stream offset at or after off that may hold data:
// in a staged chunk, where the staging file has data; in a committed one,
// from the start of its object's data to its end. io.EOF: none before the
// size.
func (f *openFile) seekData(off int64) (int64, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if off < 0 {
		return 0, syscall.EINVAL
	}
	if off >= f.size {
		return 0, io.EOF
	}
	cs, _, _ := f.b.chunkGeometry()
	// The staging file's next data from some offset at or before the
	// chunk being looked at: staged chunks before it have none, so one
	// lseek answers for a run of them.
	from, next := int64(-1), int64(math.MaxInt64)
	for _, idx := range f.candidates(off / cs) {
		lo, hi := max(off, idx*cs), min((idx+1)*cs, f.size)
		if lo >= hi {
			break
		}
		if f.staged[idx] {
			if from < 0 || from > lo || next < lo {
				d, found, err := f.seekStaging(lo, unix.SEEK_DATA)
				if err != nil {
					return 0, err
				}
				from, next = lo, int64(math.MaxInt64)
				if found {
					next = d
				}
			}
			if next < hi {
				return next, nil
			}
			continue
		}
		c := f.chunks[idx]
		if d := max(lo, idx*cs+chunkSkip(c.Key)); d < f.committedEnd(c, cs) {
			return d, nil
		}
	}
	return 0, io.EOF
}

// seekHole is the first stream offset at or after off in a hole: a chunk
// with no row and not staged, a committed chunk before or after its
// object's data, a staged one where the staging file has a hole (or
// ends); the size counts as one.
// io.EOF: off is at or past the size.
func (f *openFile) seekHole(off int64) (int64, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if off < 0 {
		return 0, syscall.EINVAL
	}
	if off >= f.size {
		return 0, io.EOF
	}
	cs, _, _ := f.b.chunkGeometry()
	from, next := int64(-1), int64(-1) // as in seekData, for SEEK_HOLE
	for idx := off / cs; idx*cs < f.size; idx++ {
		lo, hi := max(off, idx*cs), min((idx+1)*cs, f.size)
		if f.staged[idx] {
			if from < 0 || from > lo || next < lo {
				h, found, err := f.seekStaging(lo, unix.SEEK_HOLE)
				if err != nil {
					return 0, err
				}
				from, next = lo, lo // ENXIO: lo is past the staging file's end
				if found {
					next = h
				}
			}
			if next < hi {
				return next, nil
			}
			continue
		}
		c, ok := f.chunks[idx]
		if !ok || lo < idx*cs+chunkSkip(c.Key) {
			return lo, nil
		}
		if end := f.committedEnd(c, cs); end < hi {
			return max(lo, end), nil
		}
	}
	return f.size, nil
}

// punchHole makes stream bytes [off, off+n) (within the size, which stays)
// zeros: the chunks it covers whole are staged without fetching them, the
// others fetched, and the range is punched out of the staging file, so a
// commit drops the chunks left with no data and stores the others without
// the punched range at their edges. Like fallocate(2) on a local file, it
// changes the modification time.
func (f *openFile) punchHole(off, n int64) error {
	if off < 0 || n <= 0 {
		return syscall.EINVAL // fallocate(2)
	}
	if n > math.MaxInt64-off {
		return syscall.EFBIG // fallocate(2): offset+len past the largest file size
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	end := min(off+n, f.size)
	if off >= end {
		return nil // past the end: with KEEP_SIZE, nothing to free
	}
	if err := f.openStaging(); err != nil {
		return err
	}
	cs, _, _ := f.b.chunkGeometry()
	var whole []int64
	for idx := off / cs; idx*cs < end; idx++ {
		if f.staged[idx] {
			continue
		}
		if off <= idx*cs && end >= min((idx+1)*cs, f.size) {
			whole = append(whole, idx)
			continue
		}
		if err := f.stage(idx); err != nil {
			return err
		}
	}
	if err := f.punchStaging(off, end-off); err != nil {
		return err
	}
	for _, idx := range whole {
		f.staged[idx] = true
	}
	for idx := off / cs; idx*cs < end; idx++ {
		f.dirty[idx] = true
	}
	f.wver++ // no early upload of the old data is current
	f.changed()
	return nil
}

// punchStaging punches [off, off+n) out of the staging file with
// fallocate(2) FALLOC_FL_PUNCH_HOLE, which Linux accepts only together
// with FALLOC_FL_KEEP_SIZE; the range then reads as zeros. The errno comes
// back as it is (EOPNOTSUPP where the staging filesystem cannot punch: the
// volume then writes zeros instead).
func (f *openFile) punchStaging(off, n int64) error {
	rc, err := f.staging.SyscallConn()
	if err != nil {
		return err
	}
	var perr error
	err = rc.Control(func(fd uintptr) {
		for {
			perr = unix.Fallocate(int(fd), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
			if perr != unix.EINTR {
				return
			}
		}
	})
	if err != nil {
		return err
	}
	if perr != nil {
		return &os.PathError{Op: "fallocate", Path: f.staging.Name(), Err: perr}
	}
	return nil
}

// SeekData is lseek(2) SEEK_DATA in the stored stream (backend.SparseFile):
// io.EOF when there is no data at or after off.
func (h *handle) SeekData(off int64) (int64, error) {
	return h.seek(off, h.f.seekData)
}

// SeekHole is lseek(2) SEEK_HOLE in the stored stream (backend.SparseFile):
// the end of the file counts as a hole; io.EOF at or past it.
func (h *handle) SeekHole(off int64) (int64, error) {
	return h.seek(off, h.f.seekHole)
}

func (h *handle) seek(off int64, find func(int64) (int64, error)) (int64, error) {
	if h.closed.Load() {
		return 0, os.ErrClosed
	}
	pos, err := find(off)
	if errors.Is(err, io.EOF) {
		return 0, io.EOF
	}
	return pos, h.err("lseek", err)
}

// PunchHole makes [off, off+n) of the stored stream zeros, keeping the
// size (backend.SparseFile); the chunks left with no data are dropped at
// the next commit.
func (h *handle) PunchHole(off, n int64) error {
	if h.closed.Load() {
		return os.ErrClosed
	}
	return h.err("fallocate", h.f.punchHole(off, n))
}

// leavesOut says whether sp's object leaves out stream bytes of its range
// (a skipped start or a trimmed end), which only readers of schema version
// 2 place right (meta.SchemaVersion).
func (sp storedPart) leavesOut() bool { return sp.skip > 0 || sp.trimmed }

// raiseSchema raises a version 1 store to meta.SchemaVersion before the
// first chunk that leaves out stream bytes is committed to it, so that an
// older kmsfs refuses the volume rather than misplace that chunk's bytes
// (a version 3 file would read as EIO there, a version 2 one would not
// have such chunks). Mounts of an older kmsfs that are already running
// are not stopped by it.
func (b *Backend) raiseSchema() error {
	if b.schemaRaised.Load() {
		return nil
	}
	if err := b.store.RaiseSchema(b.ctx, meta.SchemaVersion); err != nil {
		return err
	}
	b.schemaRaised.Store(true)
	return nil
}
