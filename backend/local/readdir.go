package local

import (
	"context"
	"encoding/binary"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/backend"
)

// ReadDir lists a directory from its getdents64 records. It does not go
// through os.File.ReadDir: that stats entries by the joined path
// parent + "/" + name, which fails with ENAMETOOLONG deep in the tree, and
// costs an lstat per entry where the record already has the inode number
// and, on every common file system, the type.
func (b *Backend) ReadDir(ctx context.Context, name string) ([]backend.DirEntry, error) {
	ents, _, err := b.ReadDirAccess(ctx, name, nil)
	return ents, err
}

// ReadDirAccess lists a directory and, if due says the listing is an
// access, records it (backend.AccessLister): through the listing's own
// getdents64 where the backing mount's rules move atime for it
// (atime.go), else by Access through the strictatime clone. A nil due
// records nothing.
func (b *Backend) ReadDirAccess(ctx context.Context, name string, due func(*syscall.Stat_t) bool) ([]backend.DirEntry, bool, error) {
	p, err := b.rel("readdir", name)
	if err != nil {
		return nil, false, err
	}
	// O_NOATIME: the volume's listings are not the application's.
	fd, setfl, err := b.openNoAtime(p, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, false, wrap("readdir", name, err)
	}
	defer syscall.Close(fd)
	var st syscall.Stat_t
	isDue := false
	if due != nil {
		if err := retry(func() error { return syscall.Fstat(fd, &st) }); err != nil {
			return nil, false, wrap("readdir", name, err)
		}
		isDue = due(&st)
	}
	var ents []backend.DirEntry
	list := func() error {
		ents, err = b.listDir(fd, name == "")
		return err
	}
	if isDue && backingRecords(fd, &st, true) {
		// iterate_dir calls file_accessed whatever it returns.
		if ok, err := readRecorded(fd, setfl, list); ok {
			if err != nil {
				return nil, false, wrap("readdir", name, err)
			}
			return ents, true, nil
		}
	}
	if err := list(); err != nil {
		return nil, false, wrap("readdir", name, err)
	}
	// The access goes through the clone; a failure leaves atime where it
	// was, as touch_atime's would (the listing itself succeeded).
	return ents, isDue && b.Access(ctx, name, st.Ino) == nil, nil
}

// listDir reads the directory open at fd to its end.
func (b *Backend) listDir(fd int, atRoot bool) ([]backend.DirEntry, error) {
	var out []backend.DirEntry
	buf := make([]byte, 32<<10)
	for {
		n, err := unix.Getdents(fd, buf)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n <= 0 {
			return out, nil
		}
		if out, err = b.appendDirents(out, fd, buf[:n], atRoot); err != nil {
			return nil, err
		}
	}
}

// Offsets in a struct linux_dirent64: d_ino u64, d_off s64, d_reclen u16,
// d_type u8, then the NUL-terminated name.
const (
	direntReclen = 16
	direntType   = 18
	direntName   = 19
)

// appendDirents decodes one getdents64 buffer. A DT_UNKNOWN type (file
// systems that do not store it) is looked up with fstatat on the directory.
func (b *Backend) appendDirents(out []backend.DirEntry, dirfd int, buf []byte, atRoot bool) ([]backend.DirEntry, error) {
	for len(buf) >= direntName {
		reclen := int(binary.NativeEndian.Uint16(buf[direntReclen:]))
		if reclen < direntName || reclen > len(buf) {
			return out, syscall.EIO
		}
		rec := buf[:reclen]
		buf = buf[reclen:]
		nameBytes := rec[direntName:]
		for i, c := range nameBytes {
			if c == 0 {
				nameBytes = nameBytes[:i]
				break
			}
		}
		ent := string(nameBytes)
		if ent == "." || ent == ".." || (atRoot && ent == MetaDir) {
			continue
		}
		de := backend.DirEntry{Name: ent, Ino: binary.NativeEndian.Uint64(rec)}
		// DT_* values are the S_IF* file type bits shifted right by 12.
		if typ := rec[direntType]; typ != unix.DT_UNKNOWN {
			de.Mode = uint32(typ) << 12
		} else {
			var st syscall.Stat_t
			err := fstatat(dirfd, ent, &st, unix.AT_SYMLINK_NOFOLLOW)
			if err == syscall.ENOENT {
				continue // removed since getdents read it
			}
			if err != nil {
				return out, err
			}
			de.Mode, de.Ino = st.Mode&syscall.S_IFMT, st.Ino
		}
		out = append(out, de)
	}
	return out, nil
}
