package volume

// Compression (docs/FORMAT.md section 4a). A compressed file is written
// whole: on a volume with the compression feature, a file that starts empty
// is held in memory (its "stage") while it is written, up to stageMax
// bytes, and written out at fsync, at close(2) (FLUSH), when its times are
// set, and when its last writer closes: as the compressed layout (format
// version 4) when that is smaller, else as the block layout. A file that
// outgrows the stage is written out in the block layout and goes on as any
// file. A write into a compressed file loads it back into a stage (it is at
// most stageMax bytes), and the next write-out replaces it in one intent
// (section 8), so that a crash leaves the old content or the new.
//
// The compressed layout keeps the stored size the block layout would have:
// the units are packed after a compact header and the rest of the stored
// file is a hole. So the plaintext size still follows from the stored size
// (stat and listings read nothing and call no KMS), and only the packed
// bytes take space. That needs a backend whose files can end in zeros that
// are not stored (backend.SparseTail: a local file's hole, an S3 object
// shorter than its file, a shared volume's chunk list ending early);
// elsewhere files are written in the block layout.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kmsfs/kmsfs/backend"
	"github.com/kmsfs/kmsfs/envelope"
)

// stageMax is the largest file written compressed. A file is rewritten
// whole when it changes, and held in memory while it is written: 4 MiB
// covers nearly every file of a source tree or a documentation tree
// (what compresses best), while a changed file costs at most an 8 MiB
// intent and rewrite.
const stageMax = 4 << 20

// DefaultCompressLevel is zstd's own default level.
const DefaultCompressLevel = 3

// ParseCompress parses a volume's compression setting, "zstd" or
// "zstd:LEVEL" (1..22, zstd's levels), into its level.
func ParseCompress(s string) (int, error) {
	alg, level, hasLevel := strings.Cut(s, ":")
	if alg != "zstd" {
		return 0, fmt.Errorf("compression %q: the only algorithm is zstd (zstd or zstd:LEVEL)", s)
	}
	if !hasLevel {
		return DefaultCompressLevel, nil
	}
	n, err := strconv.Atoi(level)
	if err != nil || n < 1 || n > 22 {
		return 0, fmt.Errorf("compression %q: level must be 1..22", s)
	}
	return n, nil
}

// stage is a file held in memory while it is written (see above).
type stage struct {
	data []byte
	// dirty: data differs from what the backend holds.
	dirty bool
	// onDisk: the backend holds a version 4 file (the stage was loaded
	// from it, or written out as one); otherwise it holds nothing.
	onDisk bool
	// writer is the writable handle that changed data last; set while
	// dirty, so that a write-out has a descriptor to write through.
	writer *Handle
	// keepTimes: the file's times were set while it was dirty (cp -p and
	// rsync set them before close): the write-out puts them back.
	keepTimes bool
}

// unitIndex locates the units of a version 4 file.
type unitIndex struct {
	hdr    envelope.Header // as read, to write the file again
	starts []int64
}

// codecFor returns the volume's codec, made on first use: a volume
// without compression still reads compressed files.
func (v *Volume) codecFor() (*envelope.Codec, error) {
	v.codecOnce.Do(func() {
		level := v.compressLevel
		if level == 0 {
			level = DefaultCompressLevel
		}
		v.codec, v.codecErr = envelope.NewCodec(level)
	})
	return v.codec, v.codecErr
}

// compresses says whether new files on this handle's volume are staged:
// the volume compresses and the backing file can have a sparse tail.
func (h *Handle) compresses() bool {
	if h.v.compressLevel == 0 || !h.writable {
		return false
	}
	_, ok := h.f.(backend.SparseTail)
	return ok
}

// indexUnits checks a version 4 header against the stored size and records
// where its units are. The content and key locks are held.
func (h *Handle) indexUnits(hdr envelope.Header, cs int64) error {
	u := hdr.Units
	if want := h.v.layout.CipherSize(u.PlainSize, true); cs != want {
		return fmt.Errorf("%w: compressed file of %d bytes has stored size %d, want %d (cut or extended)", envelope.ErrCorrupt, u.PlainSize, cs, want)
	}
	starts, end := u.Offsets(hdr.RegionSize)
	if end > cs {
		return fmt.Errorf("%w: compressed units end at %d, past the stored size %d", envelope.ErrCorrupt, end, cs)
	}
	h.st.units = &unitIndex{hdr: hdr, starts: starts}
	return nil
}

// readUnits reads plaintext at off from a version 4 file of size bytes,
// decompressing only the units the range touches. The content lock is held
// (shared).
func (h *Handle) readUnits(keys *envelope.FileKeys, p []byte, off, size int64) (int, error) {
	idx := h.st.units
	u := idx.hdr.Units
	n := min(int64(len(p)), size-off)
	unitSize := int64(u.UnitSize)
	for done := int64(0); done < n; {
		i := int((off + done) / unitSize)
		plain, err := h.unitPlain(keys, idx, i)
		if err != nil {
			return 0, err
		}
		at := off + done - int64(i)*unitSize
		done += int64(copy(p[done:n], plain[at:]))
	}
	h.v.stats.bytesRead.Add(uint64(n))
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// unitPlain returns unit i's plaintext, from the one-unit cache when the
// last read decompressed it (the kernel reads 128 KiB at a time, or 4 KiB
// without read-ahead: one unit serves many reads).
func (h *Handle) unitPlain(keys *envelope.FileKeys, idx *unitIndex, i int) ([]byte, error) {
	h.st.unitMu.Lock()
	defer h.st.unitMu.Unlock()
	if h.st.unitCached == i && h.st.unitCache != nil {
		return h.st.unitCache, nil
	}
	u := idx.hdr.Units
	sealed := make([]byte, u.Lengths[i])
	if _, err := h.f.ReadAt(sealed, idx.starts[i]); err != nil && !(errors.Is(err, io.EOF)) {
		return nil, err
	}
	codec, err := h.v.codecFor()
	if err != nil {
		return nil, err
	}
	// A new buffer each time: a reader that got the previous one may still
	// be copying from it.
	plain, err := keys.OpenUnit(make([]byte, 0, u.PlainLen(i)), sealed, uint64(i), u.PlainLen(i), codec)
	if err != nil {
		h.st.unitCache = nil
		return nil, err
	}
	h.st.unitCache, h.st.unitCached = plain, i
	return plain, nil
}

// stageSize is the size of a staged file, for stat; ok is false when the
// file is not staged.
func (st *fileState) stagedSize() (int64, bool) {
	n := st.stageLen.Load()
	return n - 1, n > 0
}

func (st *fileState) setStage(s *stage) {
	st.stage = s
	if s == nil {
		st.stageLen.Store(0)
		return
	}
	st.stageLen.Store(int64(len(s.data)) + 1)
}

// StagedSize is the plaintext size of the open file with backend inode ino
// while it is held in memory (compress.go): its stored file does not have
// it yet. ok is false for every other file.
func (v *Volume) StagedSize(ino uint64) (int64, bool) {
	v.mu.Lock()
	st := v.files[ino]
	v.mu.Unlock()
	if st == nil {
		return 0, false
	}
	return st.stagedSize()
}

// startStage makes the file staged, if it should be: a new empty file on a
// compressing volume, or a compressed file about to change (loaded back
// whole). The content lock is held.
func (h *Handle) startStage(ctx context.Context) error {
	st := h.st
	if st.stage != nil || !h.writable {
		return nil
	}
	keys, err := h.fileKeys(ctx, false)
	if err != nil {
		return err
	}
	switch {
	case keys == nil:
		if h.compresses() {
			st.setStage(&stage{})
		}
	case keys.Version() == envelope.Version4:
		u := st.units.hdr.Units
		data := make([]byte, u.PlainSize)
		if _, err := h.readUnits(keys, data, 0, u.PlainSize); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		st.setStage(&stage{data: data, onDisk: true})
	}
	return nil
}

// stageWrite writes p at off into the stage, if the file is staged and
// stays within stageMax; otherwise the stage is written out in the block
// layout first and the caller writes as usual. The content lock is held.
func (h *Handle) stageWrite(ctx context.Context, p []byte, off int64) (staged, spilled bool, err error) {
	if err := h.startStage(ctx); err != nil {
		return false, false, err
	}
	s := h.st.stage
	if s == nil {
		return false, false, nil
	}
	end := off + int64(len(p))
	if end > stageMax {
		return false, true, h.writeOut(ctx, true)
	}
	if end > int64(len(s.data)) {
		s.data = growZero(s.data, end)
	}
	copy(s.data[off:], p)
	s.dirty, s.writer = true, h
	h.st.setStage(s)
	h.v.stats.bytesWritten.Add(uint64(len(p)))
	return true, false, nil
}

// stageTruncate truncates a staged file, or a compressed one (loading it),
// within stageMax; otherwise it reports false and the caller truncates as
// usual. The content lock is held.
func (h *Handle) stageTruncate(ctx context.Context, newSize int64) (bool, error) {
	st := h.st
	if st.stage == nil && newSize == 0 {
		return false, nil
	}
	if err := h.startStage(ctx); err != nil {
		return false, err
	}
	s := st.stage
	if s == nil {
		return false, nil
	}
	if newSize > stageMax {
		return false, h.writeOut(ctx, true)
	}
	if newSize == 0 && s.onDisk {
		// As for any file, a truncation to 0 drops the header: the next
		// content gets a new data key.
		if err := h.f.Truncate(0); err != nil {
			return true, err
		}
		h.dropKeys()
		st.setStage(&stage{})
		return true, nil
	}
	if newSize > int64(len(s.data)) {
		s.data = growZero(s.data, newSize)
	} else {
		clear(s.data[newSize:])
		s.data = s.data[:newSize]
	}
	s.dirty, s.writer = true, h
	st.setStage(s)
	// truncate(2) updates mtime and ctime when it returns (POSIX; pjdfstest
	// truncate/00.t checks ctime), not when the stage is written out.
	return true, h.touchStored()
}

// touchStored sets the stored file's modification time (and with it the
// change time) to now, keeping its access time.
func (h *Handle) touchStored() error {
	ts, ok := h.f.(backend.TimeSetter)
	if !ok {
		return nil
	}
	var st syscall.Stat_t
	if err := h.f.Stat(&st); err != nil {
		return err
	}
	return ts.SetTimes(time.Unix(st.Atim.Unix()), time.Now())
}

// unstage writes a staged or compressed file out in the block layout, for
// the operations only that layout serves (fallocate, hole punching). The
// content lock is held.
func (h *Handle) unstage(ctx context.Context) error {
	if h.st.stage == nil {
		keys, err := h.fileKeys(ctx, false)
		if err != nil || keys == nil || keys.Version() != envelope.Version4 {
			return err
		}
		if err := h.startStage(ctx); err != nil {
			return err
		}
		if h.st.stage == nil {
			return fmt.Errorf("%s: a compressed file changed through a read-only handle", h.name)
		}
	}
	return h.writeOut(ctx, true)
}

// dropKeys forgets the file's keys and unit index (its header is gone).
// The content lock is held.
func (h *Handle) dropKeys() {
	st := h.st
	st.keyMu.Lock()
	if st.keys != nil {
		st.keys.Zero()
		st.keys = nil
	}
	st.keyMu.Unlock()
	st.units = nil
	st.unitMu.Lock()
	st.unitCache, st.unitCached = nil, 0
	st.unitMu.Unlock()
}

// writeOut writes a dirty stage to the backend: compressed when that is
// smaller, unless blocks asks for the block layout (which also ends the
// stage). The content lock is held.
func (h *Handle) writeOut(ctx context.Context, blocks bool) error {
	st := h.st
	s := st.stage
	if s == nil {
		return nil
	}
	if !s.dirty {
		if blocks {
			if s.onDisk {
				return h.rewrite(ctx, s, true)
			}
			st.setStage(nil)
		}
		return nil
	}
	if len(s.data) == 0 {
		// Only a stage that was never on disk can be empty and dirty
		// (a truncation to 0 of a stored one is made at once).
		s.dirty, s.writer = false, nil
		if blocks {
			st.setStage(nil)
		}
		return nil
	}
	return h.rewrite(ctx, s, blocks)
}

// rewrite stores the stage's data as the whole file. The content lock is
// held.
func (h *Handle) rewrite(ctx context.Context, s *stage, blocks bool) error {
	st := h.st
	w := s.writer
	if w == nil {
		w = h
	}
	var hdr envelope.Header
	var keys *envelope.FileKeys
	if s.onDisk {
		hdr = st.units.hdr
		k, err := st.keys.AsVersion(envelope.Version4)
		if err != nil {
			return err
		}
		keys = k
	} else {
		var err error
		if hdr, keys, err = h.v.makeHeader(ctx, envelope.Version4); err != nil {
			return err
		}
	}
	size := int64(len(s.data))
	cs := h.v.layout.CipherSize(size, true)
	var image []byte
	var err error
	if !blocks {
		image, err = h.v.encodeUnits(keys, &hdr, s.data)
		if err != nil {
			keys.Zero()
			return err
		}
	}
	if image == nil || int64(len(image)) >= cs {
		// Not smaller compressed (or not to be): the block layout, under
		// the same key and file ID.
		k3, err := keys.AsVersion(envelope.CurrentVersion)
		keys.Zero()
		if err != nil {
			return err
		}
		keys = k3
		image, err = h.v.encodeBlocks(keys, hdr, s.data)
		if err != nil {
			keys.Zero()
			return err
		}
		blocks = true
	}
	// Times set while the file was held in memory are what the
	// application wants, not the time of this write-out.
	var times *syscall.Stat_t
	if s.keepTimes {
		times = new(syscall.Stat_t)
		if err := w.f.Stat(times); err != nil {
			keys.Zero()
			return err
		}
	}
	var ranges []intentRange
	ranges = append(ranges, intentRange{off: 0, data: image})
	if int64(len(image)) < cs {
		ranges = append(ranges, intentRange{off: int64(len(image)), holeLen: cs - int64(len(image))})
	}
	_, intents := h.v.be.(backend.Intents)
	if s.onDisk && intents {
		// The stored file is replaced in place: one intent, so that a
		// crash leaves the old file or the new one.
		in := &intent{fileID: keys.FileID(), truncateTo: cs, more: ranges}
		done, err := announce(ctx, h.v.be, in)
		if err == nil {
			if err = in.apply(w.f); err == nil {
				err = done()
			}
		}
		if err != nil {
			keys.Zero()
			return fmt.Errorf("rewrite compressed file: %w", err)
		}
	} else {
		// The stored file is empty: nothing to lose if this is torn (the
		// stage was never fsynced, and a torn file reads as EIO). Or its
		// backend replaces a file whole when it stores it (S3 and shared
		// volumes upload at close and fsync), which no crash tears.
		_, setsTimes := w.f.(backend.TimeSetter)
		if err := storeImage(w.f, image, cs, s.keepTimes && !setsTimes); err != nil {
			keys.Zero()
			return err
		}
	}
	if times != nil {
		if ts, ok := w.f.(backend.TimeSetter); ok {
			if err := ts.SetTimes(time.Unix(times.Atim.Unix()), time.Unix(times.Mtim.Unix())); err != nil {
				keys.Zero()
				return fmt.Errorf("restore the file's times: %w", err)
			}
		}
		s.keepTimes = false
	}
	// Before the stage goes: a stat that finds the file unstaged then
	// sees the count moved (WriteOuts).
	h.v.writeOuts.Add(1)
	h.dropKeys()
	st.keyMu.Lock()
	st.keys = keys
	st.keyMu.Unlock()
	st.openTail = false
	if blocks {
		st.setStage(nil)
		return nil
	}
	if err := h.indexUnits(hdr, cs); err != nil {
		return err
	}
	s.dirty, s.onDisk, s.writer = false, true, nil
	return nil
}

// storeImage makes image the stored file, extended to cs with a sparse
// tail (replacing what the file held). quiet keeps the modification time
// of the file where the backend cannot set times (the times were set while
// the file was held in memory; a shared volume has them stored already).
func storeImage(f backend.File, image []byte, cs int64, quiet bool) error {
	var err error
	if qw, ok := f.(backend.QuietWriter); ok && quiet {
		_, err = qw.WriteAtQuiet(image, 0)
	} else {
		_, err = f.WriteAt(image, 0)
	}
	if err != nil {
		return err
	}
	if st, ok := f.(backend.SparseTail); ok {
		return st.SetSparseTail(min(int64(len(image)), cs), cs)
	}
	return f.Truncate(cs)
}

// encodeUnits is the whole version 4 file holding data: a compact header
// and the sealed units. nil means the header would not fit the volume's
// header region (a volume with a small header_size), so the file is
// stored in the block layout.
func (v *Volume) encodeUnits(keys *envelope.FileKeys, hdr *envelope.Header, data []byte) ([]byte, error) {
	codec, err := v.codecFor()
	if err != nil {
		return nil, err
	}
	u := &envelope.Units{Algorithm: envelope.CompressZstd, UnitSize: envelope.DefaultUnitSize, PlainSize: int64(len(data))}
	n := envelope.UnitCount(u.PlainSize, u.UnitSize)
	u.Lengths = make([]uint32, n)
	body := make([]byte, 0, len(data)/2+n*envelope.UnitOverhead)
	for i := range n {
		start := len(body)
		if body, err = keys.SealUnit(body, data[i*u.UnitSize:min((i+1)*u.UnitSize, len(data))], uint64(i), codec); err != nil {
			return nil, err
		}
		u.Lengths[i] = uint32(len(body) - start)
	}
	hdr.Version, hdr.Units = envelope.Version4, u
	region, err := hdr.MarshalCompact(keys.MACKey(), int(v.layout.HeaderSize))
	if err != nil {
		return nil, nil
	}
	return append(region, body...), nil
}

// encodeBlocks is the whole block-layout file holding data.
func (v *Volume) encodeBlocks(keys *envelope.FileKeys, hdr envelope.Header, data []byte) ([]byte, error) {
	hdr.Version, hdr.Units, hdr.RegionSize = keys.Version(), nil, int(v.layout.HeaderSize)
	region, err := hdr.Marshal(keys.MACKey())
	if err != nil {
		return nil, err
	}
	return keys.SealBlocks(region, data, 0, int(v.layout.BlockSize), true, envelope.NoPrev)
}

// growZero extends b with zeros to n bytes.
func growZero(b []byte, n int64) []byte {
	if n <= int64(cap(b)) {
		old := len(b)
		b = b[:n]
		clear(b[old:])
		return b
	}
	nb := make([]byte, n, max(n, min(2*int64(cap(b)), stageMax)))
	copy(nb, b)
	return nb
}
