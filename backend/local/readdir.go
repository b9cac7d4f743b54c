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
func (b *Backend) ReadDir(_ context.Context, name string) ([]backend.DirEntry, error) {
	p, err := b.rel("readdir", name)
	if err != nil {
		return nil, err
	}
	// O_NOATIME: a listing is recorded, if the mount's policy says so,
	// by Access (atime.go).
	fd, err := b.openNoAtime(p, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, wrap("readdir", name, err)
	}
	defer syscall.Close(fd)
	var out []backend.DirEntry
	buf := make([]byte, 32<<10)
	for {
		n, err := unix.Getdents(fd, buf)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, wrap("readdir", name, err)
		}
		if n <= 0 {
			return out, nil
		}
		out, err = b.appendDirents(out, fd, buf[:n], name == "")
		if err != nil {
			return nil, wrap("readdir", name, err)
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
