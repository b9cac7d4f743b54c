package shared

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/kmsfs/kmsfs/backend"
	"github.com/kmsfs/kmsfs/backend/s3"
	"github.com/kmsfs/kmsfs/envelope"
)

// Salvage is a read-only backend that rebuilds a shared volume's files from
// its bucket alone, for when the metadata database is lost: every chunk
// object says which inode, generation and stream range it holds and
// carries the file's header region (FORMAT.md section 12), so the files'
// contents come back, under the names "inode-N" in one flat directory (the
// names, the tree, attributes and xattrs were only in the database).
//
// For each inode it takes, per chunk index, the chunk of the newest
// generation whose header region is that of the inode's newest chunk (a
// file truncated to 0 and written again has a new header, and its old
// chunks are left out), and ends the file at a partial chunk of the newest
// generation (not one cut after its last data, ChunkTrimmed: the file goes
// on after it). A chunk index missing below the last chunk is a hole, read
// as zeros and reported in Notes: all-zero chunks are not stored, and a
// version 3 file authenticates its holes (a range that reads as zeros
// wrongly fails to decrypt at the next stored block), so a lost object
// shows as an error when the file is read. What it cannot know: a file
// truncated to a multiple of the chunk size, or deleted, less than the gc
// grace period before the database was lost comes back with its old tail,
// or at all, and a chunk that became a hole then comes back with its old
// data (and the file fails to decrypt); the chunks a killed writer
// uploaded but never committed may make a file look newer than it was. A
// file missing its first chunk is reported and left out.
type Salvage struct {
	s3b    *s3.Backend
	client *awss3.Client
	bucket string
	prefix string
	config []byte
	files  map[string]*salvaged
	// Skipped says, one line each, what could not be rebuilt.
	Skipped []string
	// Notes says, one line each, what was rebuilt with holes.
	Notes []string
}

type salvaged struct {
	ino    uint64
	gen    int64
	size   int64
	chunks []salvageChunk // in stream order; the bytes between are zeros
	holes  [][2]int64     // runs [first, last] of chunk indexes with no chunk
	mtime  time.Time
	region []byte // the header region the chunks carry
}

// compressedSize is the stream size of a compressed file (FORMAT.md
// section 4a) whose header region is region, else 0: its chunks end with
// its packed units, and the rest of the block layout's size is a sparse
// tail that no chunk holds (section 12). The header is not verified here
// (that needs the file's key): the volume checks it, and this size against
// it, when it reads the file.
func compressedSize(region []byte, headerSize, blockSize int) int64 {
	p, err := envelope.ParseHeader(region)
	if err != nil || p.Version != envelope.Version4 || p.Units == nil || blockSize <= 0 {
		return 0
	}
	return envelope.Layout{HeaderSize: int64(headerSize), BlockSize: int64(blockSize)}.CipherSize(p.Units.PlainSize, true)
}

type salvageChunk struct {
	key    string
	offset int64 // stream offset
	length int64
	skip   int64 // bytes before the data in the object
}

var _ backend.Backend = (*Salvage)(nil)

// OpenSalvage lists the chunk objects of the shared volume under s3b's
// prefix and works out its files. The volume config it serves is the
// volume's, without the features of the database (shared metadata, and
// encrypted names, which lived in the database only).
func OpenSalvage(ctx context.Context, s3b *s3.Backend) (*Salvage, error) {
	raw, err := s3b.ReadMeta(ctx, ConfigName)
	if err != nil {
		return nil, fmt.Errorf("read volume config: %w", err)
	}
	doc, volID, err := parseVolumeDoc(raw)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(doc.Features, Feature) {
		return nil, errors.New("not a shared volume: its files are objects in the bucket already")
	}
	var cfg map[string]any
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return nil, fmt.Errorf("volume config: %w", err)
	}
	var keep []string
	for _, f := range doc.Features {
		if f != Feature && f != "name-encryption" {
			keep = append(keep, f)
		}
	}
	cfg["features"] = keep
	delete(cfg, "meta")
	config, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	sv := &Salvage{s3b: s3b, client: s3b.Client(), bucket: s3b.Bucket(), prefix: s3b.Prefix(), config: config, files: map[string]*salvaged{}}
	if err := sv.scan(ctx, volID, doc.HeaderSize, doc.BlockSize); err != nil {
		return nil, err
	}
	return sv, nil
}

// seen is one chunk object as listed and its head read.
type seen struct {
	h      ChunkHeader
	region []byte
	key    string
	mtime  time.Time
}

func (sv *Salvage) scan(ctx context.Context, volID [16]byte, regionSize, blockSize int) error {
	byIno := map[uint64][]seen{}
	p := awss3.NewListObjectsV2Paginator(sv.client, &awss3.ListObjectsV2Input{Bucket: aws.String(sv.bucket), Prefix: aws.String(sv.prefix + ChunkDir)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("list chunks: %w", err)
		}
		for _, o := range page.Contents {
			key := aws.ToString(o.Key)
			head, err := sv.read(ctx, key, 0, int64(chunkFixed+regionSize))
			if err != nil {
				return fmt.Errorf("read chunk %s: %w", key, err)
			}
			h, rs, err := parseChunkHead(head)
			if err == nil && (rs != regionSize || h.VolumeID != volID) {
				err = errors.New("of another volume")
			}
			if err == nil && aws.ToInt64(o.Size) != int64(chunkFixed+rs)+h.Length {
				err = fmt.Errorf("is %d bytes, its header says %d", aws.ToInt64(o.Size), int64(chunkFixed+rs)+h.Length)
			}
			if err != nil {
				sv.Skipped = append(sv.Skipped, fmt.Sprintf("chunk %s: %v", key, err))
				continue
			}
			byIno[h.Ino] = append(byIno[h.Ino], seen{h, head[chunkFixed:], key, aws.ToTime(o.LastModified)})
		}
	}
	for ino, cs := range byIno {
		f, why := rebuild(ino, cs, regionSize)
		if f != nil {
			f.size = max(f.size, compressedSize(f.region, regionSize, blockSize))
		}
		if f != nil && f.size < int64(regionSize) {
			// Every file with content starts with a whole header region;
			// shorter streams are the tree's own small files.
			f, why = nil, fmt.Sprintf("%d bytes, shorter than a file header: a directory ID or a long name's side file", f.size)
		}
		if f != nil {
			sv.files[fmt.Sprintf("inode-%d", ino)] = f
			for _, h := range f.holes {
				sv.Notes = append(sv.Notes, fmt.Sprintf("inode %d: no chunk %s of generation %d or earlier: read as zeros, a hole (version 3 files authenticate it)", ino, indexRun(h), f.gen))
			}
		} else {
			sv.Skipped = append(sv.Skipped, fmt.Sprintf("inode %d: %s", ino, why))
		}
	}
	sort.Strings(sv.Skipped)
	sort.Strings(sv.Notes)
	return nil
}

// indexRun names the chunk indexes [h[0], h[1]].
func indexRun(h [2]int64) string {
	if h[0] == h[1] {
		return strconv.FormatInt(h[0], 10)
	}
	return fmt.Sprintf("%d-%d", h[0], h[1])
}

// rebuild picks an inode's chunks as the type comment says.
func rebuild(ino uint64, cs []seen, regionSize int) (*salvaged, string) {
	newest := cs[0]
	for _, c := range cs[1:] {
		if c.h.Gen > newest.h.Gen {
			newest = c
		}
	}
	best := map[int64]seen{}
	for _, c := range cs {
		if !bytes.Equal(c.region, newest.region) {
			continue // an earlier content of the inode, under another header
		}
		if b, ok := best[c.h.Index]; !ok || c.h.Gen > b.h.Gen {
			best[c.h.Index] = c
		}
	}
	// The chunk's range starts before its data by the holes its object
	// leaves out (chunkSkip).
	rangeStart := func(c seen) int64 { return c.h.Offset - chunkSkip(c.key) }
	// The chunk size, from the lowest index above 0 (map order would
	// make a misplaced chunk's answer win at random).
	chunkSize := int64(0)
	for _, idx := range slices.Sorted(maps.Keys(best)) {
		if idx > 0 {
			chunkSize = rangeStart(best[idx]) / idx
			break
		}
	}
	// The index of a partial chunk of the newest generation: the end.
	end := int64(-1)
	for _, c := range best {
		partial := chunkSize > 0 && c.h.Offset+c.h.Length < rangeStart(c)+chunkSize && c.h.Flags&ChunkTrimmed == 0
		if c.h.Gen == newest.h.Gen && partial && (end < 0 || c.h.Index < end) {
			end = c.h.Index
		}
	}
	last := int64(-1)
	for idx := range best {
		if end < 0 || idx <= end {
			last = max(last, idx)
		}
	}
	if _, ok := best[0]; !ok {
		// Chunk 0 holds the header, which is never zeros: never a hole.
		return nil, fmt.Sprintf("chunk 0 of generation %d or earlier is missing", newest.h.Gen)
	}
	f := &salvaged{ino: ino, gen: newest.h.Gen, region: newest.region}
	for idx := int64(0); idx <= last; idx++ {
		c, ok := best[idx]
		if !ok {
			if n := len(f.holes); n > 0 && f.holes[n-1][1] == idx-1 {
				f.holes[n-1][1] = idx
			} else {
				f.holes = append(f.holes, [2]int64{idx, idx})
			}
			continue
		}
		if want := idx * chunkSize; rangeStart(c) != want || c.h.Offset < f.size {
			return nil, fmt.Sprintf("chunk %d starts at stream offset %d, not %d", idx, rangeStart(c), max(want, f.size))
		}
		f.chunks = append(f.chunks, salvageChunk{key: c.key, offset: c.h.Offset, length: c.h.Length, skip: int64(chunkFixed + regionSize)})
		f.size = c.h.Offset + c.h.Length
		if c.mtime.After(f.mtime) {
			f.mtime = c.mtime
		}
	}
	return f, ""
}

// read reads n bytes at off of an object.
func (sv *Salvage) read(ctx context.Context, key string, off, n int64) ([]byte, error) {
	out, err := sv.client.GetObject(ctx, &awss3.GetObjectInput{
		Bucket: aws.String(sv.bucket), Key: aws.String(key),
		Range: aws.String(fmt.Sprintf("bytes=%d-%d", off, off+n-1)),
	})
	if err != nil {
		return nil, err
	}
	defer out.Body.Close()
	return io.ReadAll(out.Body)
}

// Files lists the rebuilt files' names.
func (sv *Salvage) Files() []string {
	var names []string
	for n := range sv.files {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool {
		a, _ := strconv.ParseUint(strings.TrimPrefix(names[i], "inode-"), 10, 64)
		b, _ := strconv.ParseUint(strings.TrimPrefix(names[j], "inode-"), 10, 64)
		return a < b
	})
	return names
}

func (sv *Salvage) Caps() backend.Caps { return backend.Caps{} }

func (sv *Salvage) Lstat(_ context.Context, name string, st *syscall.Stat_t) error {
	if name == "" {
		*st = syscall.Stat_t{Mode: syscall.S_IFDIR | 0o500, Nlink: 2, Ino: 1}
		return nil
	}
	f := sv.files[name]
	if f == nil {
		return &os.PathError{Op: "stat", Path: "/" + name, Err: syscall.ENOENT}
	}
	f.stat(st)
	return nil
}

func (f *salvaged) stat(st *syscall.Stat_t) {
	*st = syscall.Stat_t{Mode: syscall.S_IFREG | 0o400, Nlink: 1, Ino: f.ino, Size: f.size, Blksize: 4096, Blocks: (f.size + 511) / 512,
		Mtim: syscall.NsecToTimespec(f.mtime.UnixNano()), Ctim: syscall.NsecToTimespec(f.mtime.UnixNano())}
}

func (sv *Salvage) ReadDir(_ context.Context, name string) ([]backend.DirEntry, error) {
	if name != "" {
		return nil, &os.PathError{Op: "readdir", Path: "/" + name, Err: syscall.ENOENT}
	}
	var out []backend.DirEntry
	for _, n := range sv.Files() {
		out = append(out, backend.DirEntry{Name: n, Mode: syscall.S_IFREG, Ino: sv.files[n].ino})
	}
	return out, nil
}

func (sv *Salvage) Open(ctx context.Context, name string, flags int, _ uint32, _ *backend.Owner) (backend.File, error) {
	if flags&(syscall.O_ACCMODE|syscall.O_CREAT|syscall.O_TRUNC) != syscall.O_RDONLY {
		return nil, roErr("open", name)
	}
	f := sv.files[name]
	if f == nil {
		return nil, &os.PathError{Op: "open", Path: "/" + name, Err: syscall.ENOENT}
	}
	return &salvageFile{sv: sv, f: f, ctx: context.WithoutCancel(ctx)}, nil
}

func (sv *Salvage) ReadMeta(ctx context.Context, name string) ([]byte, error) {
	if name == ConfigName {
		return sv.config, nil
	}
	return sv.s3b.ReadMeta(ctx, name)
}

func (sv *Salvage) Statfs(_ context.Context, st *syscall.Statfs_t) error {
	*st = syscall.Statfs_t{Bsize: 4096, Frsize: 4096, Namelen: 255}
	return nil
}

func (sv *Salvage) Readlink(_ context.Context, name string) (string, error) {
	return "", &os.PathError{Op: "readlink", Path: "/" + name, Err: syscall.EINVAL}
}

func (sv *Salvage) Getxattr(_ context.Context, name, _ string) ([]byte, error) {
	return nil, &os.PathError{Op: "getxattr", Path: "/" + name, Err: syscall.ENODATA}
}

func (sv *Salvage) Listxattr(context.Context, string) ([]string, error) { return nil, nil }

func roErr(op, name string) error { return &os.PathError{Op: op, Path: "/" + name, Err: syscall.EROFS} }

func (sv *Salvage) Mkdir(_ context.Context, name string, _ uint32, _ *backend.Owner) error {
	return roErr("mkdir", name)
}
func (sv *Salvage) Mknod(_ context.Context, name string, _ uint32, _ uint64, _ *backend.Owner) error {
	return roErr("mknod", name)
}
func (sv *Salvage) Rmdir(_ context.Context, name string) error  { return roErr("rmdir", name) }
func (sv *Salvage) Unlink(_ context.Context, name string) error { return roErr("unlink", name) }
func (sv *Salvage) Rename(_ context.Context, from, _ string, _ uint32) error {
	return roErr("rename", from)
}
func (sv *Salvage) Symlink(_ context.Context, _, name string, _ *backend.Owner) error {
	return roErr("symlink", name)
}
func (sv *Salvage) Link(_ context.Context, _, to string) error { return roErr("link", to) }
func (sv *Salvage) Chmod(_ context.Context, name string, _ uint32) error {
	return roErr("chmod", name)
}
func (sv *Salvage) Lchown(_ context.Context, name string, _, _ int) error {
	return roErr("chown", name)
}
func (sv *Salvage) Utimens(_ context.Context, name string, _, _ *time.Time) error {
	return roErr("utimens", name)
}
func (sv *Salvage) Setxattr(_ context.Context, name, _ string, _ []byte, _ int) error {
	return roErr("setxattr", name)
}
func (sv *Salvage) Removexattr(_ context.Context, name, _ string) error {
	return roErr("removexattr", name)
}
func (sv *Salvage) WriteMeta(_ context.Context, name string, _ []byte) error {
	return roErr("write", ".kmsfs/"+name)
}
func (sv *Salvage) Close() error { return sv.s3b.Close() }

// salvageFile reads a rebuilt file's stream from its chunk objects.
type salvageFile struct {
	sv  *Salvage
	f   *salvaged
	ctx context.Context
}

func (h *salvageFile) ReadAt(p []byte, off int64) (int, error) {
	done := 0
	for done < len(p) && off < h.f.size {
		i := sort.Search(len(h.f.chunks), func(i int) bool { return h.f.chunks[i].offset+h.f.chunks[i].length > off })
		next := h.f.size // where the zeros at off end
		if i < len(h.f.chunks) {
			next = h.f.chunks[i].offset
		}
		if off < next {
			// A hole, or a sparse tail: zeros.
			n := min(int64(len(p)-done), next-off)
			clear(p[done : done+int(n)])
			done += int(n)
			off += n
			continue
		}
		c := h.f.chunks[i]
		n := min(int64(len(p)-done), c.offset+c.length-off)
		data, err := h.sv.read(h.ctx, c.key, c.skip+off-c.offset, n)
		if err != nil {
			return done, fmt.Errorf("read chunk %s: %w", c.key, err)
		}
		if int64(len(data)) != n {
			return done, fmt.Errorf("read chunk %s: %d bytes, want %d", c.key, len(data), n)
		}
		copy(p[done:], data)
		done += int(n)
		off += n
	}
	if done < len(p) {
		return done, io.EOF
	}
	return done, nil
}

var _ backend.SparseFile = (*salvageFile)(nil)

// SeekData is lseek(2) SEEK_DATA over the rebuilt stream
// (backend.SparseFile): its chunks are data, the bytes between them holes;
// io.EOF when no chunk lies at or after off. With it the volume finds the
// stored block after a hole, and the one before, without reading the hole
// block by block.
func (h *salvageFile) SeekData(off int64) (int64, error) {
	if off < 0 {
		return 0, syscall.EINVAL
	}
	cs := h.f.chunks
	i := sort.Search(len(cs), func(i int) bool { return cs[i].offset+cs[i].length > off })
	if off >= h.f.size || i == len(cs) {
		return 0, io.EOF
	}
	return max(off, cs[i].offset), nil
}

// SeekHole is lseek(2) SEEK_HOLE over the rebuilt stream
// (backend.SparseFile): the end of the file counts as a hole.
func (h *salvageFile) SeekHole(off int64) (int64, error) {
	if off < 0 {
		return 0, syscall.EINVAL
	}
	if off >= h.f.size {
		return 0, io.EOF
	}
	cs := h.f.chunks
	pos := off
	for i := sort.Search(len(cs), func(i int) bool { return cs[i].offset+cs[i].length > off }); i < len(cs) && cs[i].offset <= pos; i++ {
		pos = cs[i].offset + cs[i].length
	}
	return min(pos, h.f.size), nil
}

// PunchHole is refused: the rebuilt files are read-only.
func (h *salvageFile) PunchHole(int64, int64) error { return syscall.EROFS }

func (h *salvageFile) WriteAt([]byte, int64) (int, error) { return 0, syscall.EROFS }
func (h *salvageFile) Truncate(int64) error               { return syscall.EROFS }
func (h *salvageFile) Sync() error                        { return nil }
func (h *salvageFile) Stat(st *syscall.Stat_t) error      { h.f.stat(st); return nil }
func (h *salvageFile) Close() error                       { return nil }
