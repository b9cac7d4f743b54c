package s3

import (
	"encoding/base64"
	"encoding/hex"
	"hash/fnv"
	"maps"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// User metadata keys (sent as x-amz-meta-<key>; S3 lower-cases them).
const (
	metaMode  = "kmsfs-mode"  // octal, with the S_IFMT type bits
	metaUID   = "kmsfs-uid"   // decimal
	metaGID   = "kmsfs-gid"   // decimal
	metaAtime = "kmsfs-atime" // Unix nanoseconds
	metaMtime = "kmsfs-mtime"
	metaCtime = "kmsfs-ctime"
	// metaFileSize is the file's size (decimal) when its object holds fewer
	// bytes: the rest reads as zeros (a sparse tail, backend.SparseTail).
	// Absent when the object holds the whole file.
	metaFileSize = "kmsfs-size"
	// metaXattr prefixes one extended attribute: the name hex-encoded
	// (metadata keys are case-insensitive ASCII), the value base64.
	metaXattr = "kmsfs-x-"
	// maxUserMeta is AWS's limit on user metadata: 2 KB, keys plus values.
	maxUserMeta = 2048
)

// attrs are the POSIX attributes of a file, directory or symlink.
type attrs struct {
	mode                uint32 // with type bits
	uid, gid            uint32
	atime, mtime, ctime time.Time
	xattrs              map[string][]byte
	// sparseSize is a file's size when its object is shorter (metaFileSize),
	// else 0.
	sparseSize int64
}

// fileSize is the size of a file whose object holds objLen bytes.
func (a *attrs) fileSize(objLen int64) int64 {
	return max(objLen, a.sparseSize)
}

func (b *Backend) newAttrs(mode uint32, owner *ownerIDs) attrs {
	now := time.Now()
	a := attrs{mode: mode, uid: b.uid, gid: b.gid, atime: now, mtime: now, ctime: now}
	if owner != nil {
		a.uid, a.gid = owner.uid, owner.gid
	}
	return a
}

// ownerIDs is backend.Owner after the "are we root" decision.
type ownerIDs struct{ uid, gid uint32 }

// encode renders attrs as object user metadata.
func (a *attrs) encode() map[string]string {
	m := map[string]string{
		metaMode:  strconv.FormatUint(uint64(a.mode), 8),
		metaUID:   strconv.FormatUint(uint64(a.uid), 10),
		metaGID:   strconv.FormatUint(uint64(a.gid), 10),
		metaAtime: strconv.FormatInt(a.atime.UnixNano(), 10),
		metaMtime: strconv.FormatInt(a.mtime.UnixNano(), 10),
		metaCtime: strconv.FormatInt(a.ctime.UnixNano(), 10),
	}
	if a.sparseSize > 0 {
		m[metaFileSize] = strconv.FormatInt(a.sparseSize, 10)
	}
	for name, v := range a.xattrs {
		m[metaXattr+hex.EncodeToString([]byte(name))] = base64.RawStdEncoding.EncodeToString(v)
	}
	return m
}

// metaSize is what AWS counts against the 2 KB user metadata limit.
func metaSize(m map[string]string) int {
	n := 0
	for k, v := range m {
		n += len("x-amz-meta-") + len(k) + len(v)
	}
	return n
}

// decodeAttrs reads attrs from object metadata, with defaults for objects
// that another tool wrote: defType|defPerm, the mount's owner, and the
// object's last-modified time.
func (b *Backend) decodeAttrs(m map[string]string, defMode uint32, lastModified time.Time) attrs {
	if lastModified.IsZero() {
		lastModified = time.Unix(0, 0)
	}
	a := attrs{mode: defMode, uid: b.uid, gid: b.gid, atime: lastModified, mtime: lastModified, ctime: lastModified}
	get := func(k string) (string, bool) {
		if v, ok := m[k]; ok {
			return v, true
		}
		// Some servers keep the case the client sent; S3 lower-cases.
		for mk, v := range m {
			if strings.EqualFold(mk, k) {
				return v, true
			}
		}
		return "", false
	}
	if v, ok := get(metaMode); ok {
		if n, err := strconv.ParseUint(v, 8, 32); err == nil && n&syscall.S_IFMT != 0 {
			a.mode = uint32(n)
		}
	}
	if v, ok := get(metaUID); ok {
		if n, err := strconv.ParseUint(v, 10, 32); err == nil {
			a.uid = uint32(n)
		}
	}
	if v, ok := get(metaGID); ok {
		if n, err := strconv.ParseUint(v, 10, 32); err == nil {
			a.gid = uint32(n)
		}
	}
	if v, ok := get(metaFileSize); ok {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n > 0 {
			a.sparseSize = n
		}
	}
	for k, t := range map[string]*time.Time{metaAtime: &a.atime, metaMtime: &a.mtime, metaCtime: &a.ctime} {
		if v, ok := get(k); ok {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				*t = time.Unix(0, n)
			}
		}
	}
	for k, v := range m {
		lk := strings.ToLower(k)
		if !strings.HasPrefix(lk, metaXattr) {
			continue
		}
		name, err1 := hex.DecodeString(lk[len(metaXattr):])
		val, err2 := base64.RawStdEncoding.DecodeString(v)
		if err1 != nil || err2 != nil {
			continue
		}
		if a.xattrs == nil {
			a.xattrs = make(map[string][]byte)
		}
		a.xattrs[string(name)] = val
	}
	return a
}

func (a attrs) clone() attrs {
	a.xattrs = maps.Clone(a.xattrs)
	return a
}

// ino is a stable inode number for a path: FNV-64a, never 0 or 1 (FUSE's
// "unknown" and root).
func ino(name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	v := h.Sum64()
	if v < 2 {
		v += 2
	}
	return v
}

// fill writes attrs and size into a stat buffer.
func (a *attrs) fill(name string, size int64, st *syscall.Stat_t) {
	*st = syscall.Stat_t{
		Ino:     ino(name),
		Mode:    a.mode,
		Nlink:   1,
		Uid:     a.uid,
		Gid:     a.gid,
		Size:    size,
		Blksize: 4096,
		Blocks:  (size + 511) / 512,
		Atim:    syscall.NsecToTimespec(a.atime.UnixNano()),
		Mtim:    syscall.NsecToTimespec(a.mtime.UnixNano()),
		Ctim:    syscall.NsecToTimespec(a.ctime.UnixNano()),
	}
	if a.mode&syscall.S_IFMT == syscall.S_IFDIR {
		st.Nlink = 2
	}
}
