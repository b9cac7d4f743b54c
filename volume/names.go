package volume

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/backend"
	"github.com/kmsfs/kmsfs/envelope"
)

// DirIDName is the file in every directory but the root of a volume with
// encrypted names that holds the directory's ID (docs/FORMAT.md section
// 10). It never collides with a stored name: base64url has no '.'.
const DirIDName = ".kmsfs-dirid"

// nameBackend stores names and symlink targets encrypted: it is the backend
// the FUSE layer and the volume see, in front of the real one. Paths above
// it are plaintext; below it every component is encrypted under the ID of
// the directory it is in, so each path operation needs the IDs of the
// directories on its path: they are cached by plaintext path and dropped
// when a rename or rmdir moves or removes the directory.
type nameBackend struct {
	backend.Backend
	names *envelope.NameCipher
	log   *slog.Logger

	mu  sync.Mutex
	ids map[string]cachedDirID // plaintext directory path -> ID
	// idTTL bounds how long a cached ID is trusted (0: until this process
	// moves or removes the directory). On a shared volume another mount
	// may rename a directory and make a new one under the old name.
	idTTL time.Duration
}

type cachedDirID struct {
	id [envelope.DirIDLen]byte
	at time.Time
}

// sharedNamespace is implemented by backends that other processes change
// at the same time (backend/shared).
type sharedNamespace interface{ SharedNamespace() bool }

// sharedDirIDTTL matches the kernel's entry timeout: a directory renamed
// or replaced on another mount is seen here within it.
const sharedDirIDTTL = time.Second

// nameBackendIntents is nameBackend over a backend that keeps intents; they
// are keyed by file ID, not by name, so they pass through.
type nameBackendIntents struct {
	*nameBackend
	backend.Intents
}

func newNameBackend(be backend.Backend, names *envelope.NameCipher, log *slog.Logger) backend.Backend {
	nb := &nameBackend{Backend: be, names: names, log: log, ids: map[string]cachedDirID{}}
	if sh, ok := be.(sharedNamespace); ok && sh.SharedNamespace() {
		nb.idTTL = sharedDirIDTTL
	}
	if ints, ok := be.(backend.Intents); ok {
		return nameBackendIntents{nb, ints}
	}
	return nb
}

func nameErr(op, name string, err error) error {
	if errors.Is(err, envelope.ErrNameTooLong) {
		err = syscall.ENAMETOOLONG
	} else if errors.Is(err, envelope.ErrAuth) {
		// Keep the authentication failure visible beside its errno: the
		// FUSE boundary counts it as one (volume.Classify).
		err = fmt.Errorf("%w: %w", syscall.EIO, err)
	} else if _, ok := err.(syscall.Errno); !ok && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s /%s: %w", op, name, err)
	}
	return &os.PathError{Op: op, Path: "/" + name, Err: err}
}

// splitPath splits a plaintext path into its parent and last component.
func splitPath(p string) (dir, leaf string) {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i], p[i+1:]
	}
	return "", p
}

func joinPath(dir, leaf string) string {
	if dir == "" {
		return leaf
	}
	return dir + "/" + leaf
}

// storedPath is where a plaintext path is stored.
type storedPath struct {
	path string // the stored path
	dir  string // the stored path of its parent
	// side is set when the last component is a long name: the name of its
	// side file in dir, which holds long, the component's whole stored form.
	side, long string
}

// resolve returns the stored form of plaintext path p.
func (b *nameBackend) resolve(ctx context.Context, op, p string) (storedPath, error) {
	if p == "" {
		return storedPath{}, nil
	}
	dir, leaf := splitPath(p)
	encDir, err := b.enc(ctx, op, dir)
	if err != nil {
		return storedPath{}, err
	}
	id, err := b.dirID(ctx, op, dir, encDir)
	if err != nil {
		return storedPath{}, err
	}
	encLeaf, err := b.names.EncryptName(id, leaf)
	if err != nil {
		return storedPath{}, nameErr(op, p, err)
	}
	sp := storedPath{dir: encDir}
	if len(encLeaf) > envelope.MaxStoredName {
		short := envelope.LongName(encLeaf)
		sp.side, sp.long, encLeaf = short+envelope.LongNameSuffix, encLeaf, short
	}
	sp.path = joinPath(encDir, encLeaf)
	return sp, nil
}

// enc returns the stored path of plaintext path p.
func (b *nameBackend) enc(ctx context.Context, op, p string) (string, error) {
	sp, err := b.resolve(ctx, op, p)
	return sp.path, err
}

// create resolves p for an operation that makes a new entry there: a long
// name's side file is written first, so that the entry is never listed
// without it. (Should the operation fail, an unused side file is hidden by
// listings and removed by the rmdir of its directory.)
func (b *nameBackend) create(ctx context.Context, op, p string) (storedPath, error) {
	sp, err := b.resolve(ctx, op, p)
	if err != nil || sp.side == "" {
		return sp, err
	}
	err = b.writeNew(ctx, joinPath(sp.dir, sp.side), []byte(sp.long), nil)
	if errors.Is(err, fs.ErrExist) {
		return sp, nil // the side file of this very name: same content
	}
	return sp, err
}

// writeNew creates the small file p (O_EXCL: an existing one is fs.ErrExist)
// and writes data to it durably.
func (b *nameBackend) writeNew(ctx context.Context, p string, data []byte, owner *backend.Owner) error {
	f, err := b.Backend.Open(ctx, p, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL, 0o444, owner)
	if err != nil {
		return err
	}
	_, err = f.WriteAt(data, 0)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// removed drops a long name's side file once its entry is gone.
func (b *nameBackend) removed(ctx context.Context, sp storedPath) {
	if sp.side == "" {
		return
	}
	if err := b.Backend.Unlink(ctx, joinPath(sp.dir, sp.side)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		b.log.Warn("could not remove a long name's side file", "stored", joinPath(sp.dir, sp.side), "err", err)
	}
}

// longStored reads the whole stored form of the long name short in the
// stored directory dir from its side file.
func (b *nameBackend) longStored(ctx context.Context, dir, short string) (string, error) {
	f, err := b.Backend.Open(ctx, joinPath(dir, short+envelope.LongNameSuffix), syscall.O_RDONLY, 0, nil)
	if err != nil {
		return "", err
	}
	defer f.Close()
	buf := make([]byte, 4*envelope.MaxPlainName)
	n, err := f.ReadAt(buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	long := string(buf[:n])
	if envelope.LongName(long) != short {
		return "", fmt.Errorf("side file of %s: %w", short, envelope.ErrAuth)
	}
	return long, nil
}

func isSideFile(name string) bool {
	return strings.HasPrefix(name, envelope.LongNamePrefix) && strings.HasSuffix(name, envelope.LongNameSuffix)
}

// dirID returns the ID of the directory at plaintext path dir (stored at
// encDir), reading its ID file on first use.
func (b *nameBackend) dirID(ctx context.Context, op, dir, encDir string) ([envelope.DirIDLen]byte, error) {
	if dir == "" {
		return b.names.RootDirID(), nil
	}
	b.mu.Lock()
	c, ok := b.ids[dir]
	b.mu.Unlock()
	if ok && (b.idTTL == 0 || time.Since(c.at) < b.idTTL) {
		return c.id, nil
	}
	id, err := b.readDirID(ctx, encDir)
	if errors.Is(err, fs.ErrNotExist) {
		id, err = b.recoverDirID(ctx, op, dir, encDir)
	}
	if err != nil {
		return id, err
	}
	b.mu.Lock()
	b.ids[dir] = cachedDirID{id, time.Now()}
	b.mu.Unlock()
	return id, nil
}

func (b *nameBackend) readDirID(ctx context.Context, encDir string) ([envelope.DirIDLen]byte, error) {
	var id [envelope.DirIDLen]byte
	f, err := b.Backend.Open(ctx, joinPath(encDir, DirIDName), syscall.O_RDONLY, 0, nil)
	if err != nil {
		return id, err
	}
	defer f.Close()
	n, err := f.ReadAt(id[:], 0)
	if n == len(id) {
		return id, nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = fmt.Errorf("directory ID file of %s is %d bytes: %w", encDir, n, envelope.ErrCorrupt)
	}
	return id, err
}

// recoverDirID handles a directory without an ID file: what a crash between
// creating a directory and its ID file leaves. An empty one gets its ID now;
// one with entries cannot have lost it that way, and its names stay unread.
func (b *nameBackend) recoverDirID(ctx context.Context, op, dir, encDir string) ([envelope.DirIDLen]byte, error) {
	var id [envelope.DirIDLen]byte
	ents, err := b.Backend.ReadDir(ctx, encDir)
	if err != nil {
		return id, err
	}
	if len(ents) > 0 {
		b.log.Error("directory has no ID file; its names cannot be decrypted", "path", "/"+dir)
		return id, nameErr(op, dir, syscall.EIO)
	}
	b.log.Warn("giving an empty directory the ID a crash left it without", "path", "/"+dir)
	return b.writeDirID(ctx, encDir, nil)
}

// writeDirID creates encDir's ID file with a new random ID. If the file
// appeared meanwhile (another caller recovering the same directory), its ID
// is the one.
func (b *nameBackend) writeDirID(ctx context.Context, encDir string, owner *backend.Owner) ([envelope.DirIDLen]byte, error) {
	var id [envelope.DirIDLen]byte
	if _, err := rand.Read(id[:]); err != nil {
		return id, err
	}
	err := b.writeNew(ctx, joinPath(encDir, DirIDName), id[:], owner)
	if errors.Is(err, fs.ErrExist) {
		return b.readDirID(ctx, encDir)
	}
	return id, err
}

// putDirID writes back the ID file of a directory whose removal or
// replacement failed after its ID file was removed.
func (b *nameBackend) putDirID(ctx context.Context, encDir string, id [envelope.DirIDLen]byte) {
	if err := b.writeNew(ctx, joinPath(encDir, DirIDName), id[:], nil); err != nil {
		b.log.Error("could not restore a directory's ID file", "stored", encDir, "err", err)
	}
}

// forget drops the cached IDs of dir and every directory below it.
func (b *nameBackend) forget(dir string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for p := range b.ids {
		if p == dir || strings.HasPrefix(p, dir+"/") {
			delete(b.ids, p)
		}
	}
}

func (b *nameBackend) Lstat(ctx context.Context, name string, st *syscall.Stat_t) error {
	e, err := b.enc(ctx, "stat", name)
	if err != nil {
		return err
	}
	if err := b.Backend.Lstat(ctx, e, st); err != nil {
		return err
	}
	if st.Mode&syscall.S_IFMT == syscall.S_IFLNK {
		// A symlink's size is its target's length: the plaintext one.
		st.Size = envelope.TargetLen(st.Size)
	}
	return nil
}

func (b *nameBackend) ReadDir(ctx context.Context, name string) ([]backend.DirEntry, error) {
	ents, _, err := b.ReadDirAccess(ctx, name, nil)
	return ents, err
}

// ReadDirAccess lists the directory under its stored name and passes the
// access decision on (backend.AccessLister).
func (b *nameBackend) ReadDirAccess(ctx context.Context, name string, due func(*syscall.Stat_t) bool) ([]backend.DirEntry, bool, error) {
	e, err := b.enc(ctx, "readdir", name)
	if err != nil {
		return nil, false, err
	}
	ents, accessed, err := backend.ListAccess(ctx, b.Backend, e, due)
	if err != nil {
		return nil, false, err
	}
	ents, err = b.plainEntries(ctx, name, e, ents)
	return ents, accessed, err
}

// plainEntries turns the listing of the directory name (stored as e) into
// plaintext names, leaving out the volume's side files.
func (b *nameBackend) plainEntries(ctx context.Context, name, e string, ents []backend.DirEntry) ([]backend.DirEntry, error) {
	id, err := b.dirID(ctx, "readdir", name, e)
	if err != nil {
		return nil, err
	}
	out := ents[:0]
	for _, ent := range ents {
		if ent.Name == DirIDName || isSideFile(ent.Name) {
			continue
		}
		stored := ent.Name
		if strings.HasPrefix(stored, envelope.LongNamePrefix) {
			if stored, err = b.longStored(ctx, e, ent.Name); err != nil {
				b.log.Warn("skipping a long name whose side file is missing or wrong", "dir", "/"+name, "stored", ent.Name, "err", err)
				continue
			}
		}
		plain, err := b.names.DecryptName(id, stored)
		if err != nil {
			// Not a name this volume stored there (moved in from another
			// directory, or written to the backend by hand): hidden.
			b.log.Warn("skipping a stored name that does not decrypt in its directory", "dir", "/"+name, "stored", ent.Name)
			continue
		}
		ent.Name = plain
		out = append(out, ent)
	}
	return out, nil
}

func (b *nameBackend) Mkdir(ctx context.Context, name string, mode uint32, owner *backend.Owner) error {
	sp, err := b.create(ctx, "mkdir", name)
	if err != nil {
		return err
	}
	e := sp.path
	// Writable by its owner until the ID file is in (mkdir -m 0555 works).
	if err := b.Backend.Mkdir(ctx, e, mode|0o200, owner); err != nil {
		return err
	}
	id, err := b.writeDirID(ctx, e, owner)
	if err == nil && mode&0o200 == 0 {
		err = b.Backend.Chmod(ctx, e, mode)
	}
	if err != nil {
		b.Backend.Unlink(ctx, joinPath(e, DirIDName))
		b.Backend.Rmdir(ctx, e)
		return nameErr("mkdir", name, err)
	}
	b.forget(name)
	b.mu.Lock()
	b.ids[name] = cachedDirID{id, time.Now()}
	b.mu.Unlock()
	return nil
}

// Rmdir removes the ID file and then the directory, after checking that it
// holds nothing else: an ID file removed from a directory that then turned
// out not to be empty would make its names unreadable.
func (b *nameBackend) Rmdir(ctx context.Context, name string) error {
	sp, err := b.resolve(ctx, "rmdir", name)
	if err != nil {
		return err
	}
	e := sp.path
	ents, err := b.Backend.ReadDir(ctx, e)
	if err != nil {
		return err
	}
	present := map[string]bool{}
	for _, ent := range ents {
		present[ent.Name] = true
	}
	var orphans []string
	for _, ent := range ents {
		switch {
		case ent.Name == DirIDName:
		case isSideFile(ent.Name) && !present[strings.TrimSuffix(ent.Name, envelope.LongNameSuffix)]:
			orphans = append(orphans, ent.Name) // left by a create that failed
		default:
			return &os.PathError{Op: "rmdir", Path: "/" + name, Err: syscall.ENOTEMPTY}
		}
	}
	for _, o := range orphans {
		if err := b.Backend.Unlink(ctx, joinPath(e, o)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	id, idErr := b.readDirID(ctx, e)
	if err := b.Backend.Unlink(ctx, joinPath(e, DirIDName)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := b.Backend.Rmdir(ctx, e); err != nil {
		if idErr == nil {
			b.putDirID(ctx, e, id) // as it was, so the directory stays readable
		}
		return err
	}
	b.forget(name)
	b.removed(ctx, sp)
	return nil
}

func (b *nameBackend) Rename(ctx context.Context, from, to string, flags uint32) error {
	spf, err := b.resolve(ctx, "rename", from)
	if err != nil {
		return err
	}
	spt, err := b.create(ctx, "rename", to)
	if err != nil {
		return err
	}
	ef, et := spf.path, spt.path
	// rename(2) may replace an empty directory; stored, an "empty"
	// directory still holds its ID file, which has to go first (and comes
	// back if the rename fails).
	restore := func() {}
	var st syscall.Stat_t
	if flags&(unix.RENAME_EXCHANGE|unix.RENAME_NOREPLACE) == 0 && b.Backend.Lstat(ctx, et, &st) == nil && st.Mode&syscall.S_IFMT == syscall.S_IFDIR {
		if ents, err := b.Backend.ReadDir(ctx, et); err == nil && len(ents) == 1 && ents[0].Name == DirIDName {
			if id, err := b.readDirID(ctx, et); err == nil {
				if err := b.Backend.Unlink(ctx, joinPath(et, DirIDName)); err != nil {
					return err
				}
				restore = func() { b.putDirID(ctx, et, id) }
			}
		}
	}
	if err := b.Backend.Rename(ctx, ef, et, flags); err != nil {
		restore()
		return err
	}
	// A directory keeps its ID file, and so its entries' stored names,
	// wherever it moves; only the cache by path is stale.
	b.forget(from)
	b.forget(to)
	if flags&unix.RENAME_EXCHANGE == 0 && ef != et {
		b.removed(ctx, spf)
	}
	return nil
}

func (b *nameBackend) Symlink(ctx context.Context, target, name string, owner *backend.Owner) error {
	sp, err := b.create(ctx, "symlink", name)
	if err != nil {
		return err
	}
	e := sp.path
	stored, err := b.names.EncryptTarget(target)
	if err != nil {
		return nameErr("symlink", name, err)
	}
	return b.Backend.Symlink(ctx, stored, e, owner)
}

func (b *nameBackend) Readlink(ctx context.Context, name string) (string, error) {
	e, err := b.enc(ctx, "readlink", name)
	if err != nil {
		return "", err
	}
	return b.readlinkStored(ctx, name, e)
}

func (b *nameBackend) readlinkStored(ctx context.Context, name, e string) (string, error) {
	stored, err := b.Backend.Readlink(ctx, e)
	if err != nil {
		return "", err
	}
	target, err := b.names.DecryptTarget(stored)
	if err != nil {
		b.log.Error("symlink target does not decrypt", "path", "/"+name, "err", err)
		return "", nameErr("readlink", name, err)
	}
	return target, nil
}

func (b *nameBackend) Link(ctx context.Context, from, to string) error {
	ef, err := b.enc(ctx, "link", from)
	if err != nil {
		return err
	}
	spt, err := b.create(ctx, "link", to)
	if err != nil {
		return err
	}
	return b.Backend.Link(ctx, ef, spt.path)
}

// Statfs reports the longest plaintext name that can be stored.
func (b *nameBackend) Statfs(ctx context.Context, st *syscall.Statfs_t) error {
	if err := b.Backend.Statfs(ctx, st); err != nil {
		return err
	}
	st.Namelen = min(st.Namelen, envelope.MaxPlainName)
	return nil
}

// The rest only translate the path.

func (b *nameBackend) Mknod(ctx context.Context, name string, mode uint32, dev uint64, owner *backend.Owner) error {
	sp, err := b.create(ctx, "mknod", name)
	if err != nil {
		return err
	}
	return b.Backend.Mknod(ctx, sp.path, mode, dev, owner)
}

func (b *nameBackend) Unlink(ctx context.Context, name string) error {
	sp, err := b.resolve(ctx, "unlink", name)
	if err != nil {
		return err
	}
	if err := b.Backend.Unlink(ctx, sp.path); err != nil {
		return err
	}
	b.removed(ctx, sp)
	return nil
}

func (b *nameBackend) Chmod(ctx context.Context, name string, mode uint32) error {
	e, err := b.enc(ctx, "chmod", name)
	if err != nil {
		return err
	}
	return b.Backend.Chmod(ctx, e, mode)
}

func (b *nameBackend) Lchown(ctx context.Context, name string, uid, gid int) error {
	e, err := b.enc(ctx, "chown", name)
	if err != nil {
		return err
	}
	return b.Backend.Lchown(ctx, e, uid, gid)
}

func (b *nameBackend) Utimens(ctx context.Context, name string, atime, mtime *time.Time) error {
	e, err := b.enc(ctx, "utimens", name)
	if err != nil {
		return err
	}
	return b.Backend.Utimens(ctx, e, atime, mtime)
}

// Access passes a recorded read on to the backend under the stored name
// (backend.Accesser); ENOTSUP if the backend records none.
func (b *nameBackend) Access(ctx context.Context, name string, ino uint64) error {
	acc, ok := b.Backend.(backend.Accesser)
	if !ok {
		return &os.PathError{Op: "access", Path: name, Err: syscall.ENOTSUP}
	}
	e, err := b.enc(ctx, "access", name)
	if err != nil {
		return err
	}
	return acc.Access(ctx, e, ino)
}

func (b *nameBackend) Getxattr(ctx context.Context, name, attr string) ([]byte, error) {
	e, err := b.enc(ctx, "getxattr", name)
	if err != nil {
		return nil, err
	}
	return b.Backend.Getxattr(ctx, e, attr)
}

func (b *nameBackend) Setxattr(ctx context.Context, name, attr string, value []byte, flags int) error {
	e, err := b.enc(ctx, "setxattr", name)
	if err != nil {
		return err
	}
	return b.Backend.Setxattr(ctx, e, attr, value, flags)
}

func (b *nameBackend) Listxattr(ctx context.Context, name string) ([]string, error) {
	e, err := b.enc(ctx, "listxattr", name)
	if err != nil {
		return nil, err
	}
	return b.Backend.Listxattr(ctx, e)
}

func (b *nameBackend) Removexattr(ctx context.Context, name, attr string) error {
	e, err := b.enc(ctx, "removexattr", name)
	if err != nil {
		return err
	}
	return b.Backend.Removexattr(ctx, e, attr)
}

func (b *nameBackend) Open(ctx context.Context, name string, flags int, mode uint32, owner *backend.Owner) (backend.File, error) {
	var sp storedPath
	var err error
	if flags&syscall.O_CREAT != 0 {
		sp, err = b.create(ctx, "open", name)
	} else {
		sp, err = b.resolve(ctx, "open", name)
	}
	if err != nil {
		return nil, err
	}
	return b.Backend.Open(ctx, sp.path, flags, mode, owner)
}
