package s3

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/backend"
)

// entry is what a lookup found in S3.
type entry struct {
	key      string // the object: the file's key, or a directory's marker
	attrs    attrs
	size     int64
	etag     string
	dir      bool
	implicit bool // a directory with no marker (only objects below it)
}

// lookup finds name: HEAD of the file key, then a one-key listing under
// "key/" for a directory (its marker sorts first), then HEAD of the marker
// for its attributes. A file costs one request, a missing name two, a
// directory three.
func (b *Backend) lookup(ctx context.Context, op, name string) (*entry, error) {
	if name == "" {
		return b.lookupRoot(ctx, op)
	}
	key, err := b.key(op, name)
	if err != nil {
		return nil, pathErr(op, name, syscall.ENOENT)
	}
	gen, cached := b.cachedEntry(name)
	if cached != nil {
		if cached.e == nil {
			return nil, pathErr(op, name, syscall.ENOENT)
		}
		e := *cached.e
		e.attrs = e.attrs.clone()
		return &e, nil
	}
	marker := key + "/"
	list := func() (*s3.ListObjectsV2Output, error) {
		return b.client.ListObjectsV2(ctx, &s3.ListObjectsV2Input{
			Bucket: aws.String(b.bucket), Prefix: aws.String(marker), MaxKeys: aws.Int32(1),
		})
	}
	// A name that is not a file needs a LIST to tell a directory from
	// nothing. When the last lookup in the same directory was a miss (cp -a
	// or tar filling a new directory), send that LIST beside the HEAD
	// rather than after it: one round trip per created file instead of two.
	parent := path.Dir(name)
	var listed chan listAnswer
	if b.missLikely(parent) {
		listed = make(chan listAnswer, 1)
		go func() {
			out, err := list()
			listed <- listAnswer{out, err}
		}()
	}
	h, err := b.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(b.bucket), Key: aws.String(key)})
	if err == nil {
		b.noteMiss(parent, false)
		return &entry{
			key:   key,
			attrs: b.decodeAttrs(h.Metadata, syscall.S_IFREG|0o644, aws.ToTime(h.LastModified)),
			size:  aws.ToInt64(h.ContentLength), etag: aws.ToString(h.ETag),
		}, nil
	}
	if !isNotFound(err) {
		return nil, b.fail(op, name, key, err)
	}
	var l *s3.ListObjectsV2Output
	if listed != nil {
		a := <-listed
		l, err = a.out, a.err
	} else {
		l, err = list()
	}
	if err != nil {
		return nil, b.fail(op, name, marker, err)
	}
	b.noteMiss(parent, len(l.Contents) == 0)
	if len(l.Contents) == 0 {
		b.remember(name, nil, gen)
		return nil, pathErr(op, name, syscall.ENOENT)
	}
	if aws.ToString(l.Contents[0].Key) != marker {
		e := &entry{
			key: marker, dir: true, implicit: true,
			attrs: b.decodeAttrs(nil, syscall.S_IFDIR|0o755, aws.ToTime(l.Contents[0].LastModified)),
		}
		b.remember(name, e, gen)
		return e, nil
	}
	h, err = b.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(b.bucket), Key: aws.String(marker)})
	if err != nil {
		return nil, b.fail(op, name, marker, err)
	}
	a := b.decodeAttrs(h.Metadata, syscall.S_IFDIR|0o755, aws.ToTime(h.LastModified))
	a.mode = syscall.S_IFDIR | a.mode&07777
	e := &entry{key: marker, dir: true, attrs: a, etag: aws.ToString(h.ETag)}
	b.remember(name, e, gen)
	return e, nil
}

type listAnswer struct {
	out *s3.ListObjectsV2Output
	err error
}

// missLikely says whether the last lookup of a name in directory dir found
// nothing.
func (b *Backend) missLikely(dir string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.missDirs[dir]
}

// noteMiss records whether a lookup in directory dir found nothing.
func (b *Backend) noteMiss(dir string, miss bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !miss {
		delete(b.missDirs, dir)
		return
	}
	if len(b.missDirs) >= maxLookups {
		clear(b.missDirs)
	}
	b.missDirs[dir] = true
}

// cachedLookup is a lookup answer: e nil for "no such name".
type cachedLookup struct {
	e  *entry
	at time.Time
}

// cachedEntry returns a fresh cached answer, and the invalidation count to
// pass to remember.
func (b *Backend) cachedEntry(name string) (uint64, *cachedLookup) {
	b.mu.Lock()
	defer b.mu.Unlock()
	c, ok := b.lookups[name]
	if !ok {
		return b.lookupGen, nil
	}
	if b.now().Sub(c.at) > lookupTTL {
		delete(b.lookups, name)
		return b.lookupGen, nil
	}
	return b.lookupGen, &c
}

func (b *Backend) remember(name string, e *entry, gen uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if gen != b.lookupGen {
		return // something changed meanwhile
	}
	if len(b.lookups) >= maxLookups {
		clear(b.lookups)
	}
	b.lookups[name] = cachedLookup{e: e, at: b.now()}
}

// invalidate forgets cached lookups a change may have made wrong: the name
// itself, or (all) everything, for changes to whole directory trees.
func (b *Backend) invalidate(name string, all bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lookupGen++
	if all {
		clear(b.lookups)
	} else {
		delete(b.lookups, name)
	}
}

func (b *Backend) lookupRoot(ctx context.Context, op string) (*entry, error) {
	k := b.rootKey()
	h, err := b.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(b.bucket), Key: aws.String(k)})
	if err != nil {
		if !isNotFound(err) {
			return nil, b.fail(op, "", k, err)
		}
		// No attributes stored yet: the root is as old as the mount.
		return &entry{key: k, dir: true, implicit: true, attrs: b.decodeAttrs(nil, syscall.S_IFDIR|0o755, b.started)}, nil
	}
	a := b.decodeAttrs(h.Metadata, syscall.S_IFDIR|0o755, aws.ToTime(h.LastModified))
	a.mode = syscall.S_IFDIR | a.mode&07777
	return &entry{key: k, dir: true, attrs: a, etag: aws.ToString(h.ETag)}, nil
}

func (b *Backend) Lstat(ctx context.Context, name string, st *syscall.Stat_t) error {
	ctx = opContext(ctx)
	if f := b.acquire(name); f != nil {
		f.stat(st)
		b.release(f)
		return nil
	}
	e, err := b.lookup(ctx, "lstat", name)
	if err != nil {
		return err
	}
	e.attrs.fill(name, e.size, st)
	return nil
}

// ReadDir lists a directory with ListObjectsV2 (delimiter "/", page by
// page): subdirectories come from common prefixes, files and symlinks from
// objects. A listing carries no metadata, so objects are reported with
// Mode 0 (DT_UNKNOWN: "stat it"), which is always true, rather than guessing
// S_IFREG and calling a symlink a file; Lstat (or READDIRPLUS) gives the
// type. Files created here and not uploaded yet are listed too.
func (b *Backend) ReadDir(ctx context.Context, name string) ([]backend.DirEntry, error) {
	ctx = opContext(ctx)
	if name != "" {
		if _, err := b.key("readdir", name); err != nil {
			return nil, pathErr("readdir", name, syscall.ENOENT)
		}
	}
	prefix := b.dirPrefix(name)
	in := &s3.ListObjectsV2Input{Bucket: aws.String(b.bucket), Prefix: aws.String(prefix), Delimiter: aws.String("/")}
	if prefix == "" {
		in.Prefix = nil
	}
	seen := make(map[string]bool)
	var out []backend.DirEntry
	add := func(n string, mode uint32) {
		if n == "" || seen[n] || (name == "" && n == MetaDir) {
			return
		}
		seen[n] = true
		out = append(out, backend.DirEntry{Name: n, Mode: mode, Ino: ino(path.Join(name, n))})
	}
	found := false
	p := s3.NewListObjectsV2Paginator(b.client, in)
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, b.fail("readdir", name, prefix, err)
		}
		for _, cp := range page.CommonPrefixes {
			found = true
			add(strings.TrimSuffix(strings.TrimPrefix(aws.ToString(cp.Prefix), prefix), "/"), syscall.S_IFDIR)
		}
		for _, o := range page.Contents {
			found = true
			add(strings.TrimPrefix(aws.ToString(o.Key), prefix), 0)
		}
	}
	b.mu.Lock()
	for n, f := range b.open {
		if !f.ready.Load() || f.detached.Load() {
			continue
		}
		if path.Dir(n) == name || (name == "" && !strings.Contains(n, "/")) {
			found = true
			add(path.Base(n), syscall.S_IFREG)
		}
	}
	b.mu.Unlock()
	if !found && name != "" {
		// Not even a marker: no such directory, or a file.
		e, err := b.lookup(ctx, "readdir", name)
		if err != nil {
			return nil, err
		}
		if !e.dir {
			return nil, pathErr("readdir", name, syscall.ENOTDIR)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (b *Backend) Mkdir(ctx context.Context, name string, mode uint32, owner *backend.Owner) error {
	ctx = opContext(ctx)
	b.invalidate(name, false)
	defer b.invalidate(name, false) // and misses cached meanwhile
	if name == "" {
		return pathErr("mkdir", name, syscall.EEXIST)
	}
	key, err := b.key("mkdir", name)
	if err != nil {
		return err
	}
	if b.isOpen(name) {
		return pathErr("mkdir", name, syscall.EEXIST)
	}
	// A file of that name (S3 allows "a" and "a/" side by side; POSIX not).
	if _, err := b.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(b.bucket), Key: aws.String(key)}); err == nil {
		return pathErr("mkdir", name, syscall.EEXIST)
	} else if !isNotFound(err) {
		return b.fail("mkdir", name, key, err)
	}
	a := b.newAttrs(syscall.S_IFDIR|mode&07777, b.owner(owner))
	_, err = b.putSmall(ctx, "mkdir", name, key+"/", nil, a.encode(), true)
	return err
}

func (b *Backend) isOpen(name string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	_, ok := b.open[name]
	return ok
}

// Mknod: an object store has no device nodes, FIFOs or sockets.
func (b *Backend) Mknod(context.Context, string, uint32, uint64, *backend.Owner) error {
	return pathErr("mknod", "", syscall.ENOTSUP)
}

// Link: S3 has no hard links (an object has exactly one key).
func (b *Backend) Link(_ context.Context, _, to string) error {
	return pathErr("link", to, syscall.ENOTSUP)
}

func (b *Backend) Rmdir(ctx context.Context, name string) error {
	ctx = opContext(ctx)
	defer b.invalidate(name, false)
	if name == "" {
		return pathErr("rmdir", name, syscall.EBUSY)
	}
	key, err := b.key("rmdir", name)
	if err != nil {
		return err
	}
	marker := key + "/"
	l, err := b.client.ListObjectsV2(ctx, &s3.ListObjectsV2Input{
		Bucket: aws.String(b.bucket), Prefix: aws.String(marker), MaxKeys: aws.Int32(2),
	})
	if err != nil {
		return b.fail("rmdir", name, marker, err)
	}
	if len(l.Contents) == 0 {
		if e, err := b.lookup(ctx, "rmdir", name); err == nil && !e.dir {
			return pathErr("rmdir", name, syscall.ENOTDIR)
		}
		return pathErr("rmdir", name, syscall.ENOENT)
	}
	for _, o := range l.Contents {
		if aws.ToString(o.Key) != marker {
			return pathErr("rmdir", name, syscall.ENOTEMPTY)
		}
	}
	if b.hasOpenUnder(name) {
		return pathErr("rmdir", name, syscall.ENOTEMPTY)
	}
	if _, err := b.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(b.bucket), Key: aws.String(marker)}); err != nil {
		return b.fail("rmdir", name, marker, err)
	}
	return nil
}

func (b *Backend) hasOpenUnder(dir string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for n := range b.open {
		if strings.HasPrefix(n, dir+"/") {
			return true
		}
	}
	return false
}

// Unlink deletes the object. Handles still open on the file keep working on
// a staged copy (POSIX: an unlinked open file lives until closed), which is
// downloaded first if need be; they no longer upload.
func (b *Backend) Unlink(ctx context.Context, name string) error {
	ctx = opContext(ctx)
	defer b.invalidate(name, false)
	key, err := b.key("unlink", name)
	if err != nil {
		return err
	}
	if name == "" {
		return pathErr("unlink", name, syscall.EISDIR)
	}
	if f := b.acquire(name); f != nil {
		defer b.release(f)
		f.mu.Lock()
		defer f.mu.Unlock()
		if err := f.stage(f.size); err != nil {
			return err
		}
		if f.remote {
			if _, err := b.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(b.bucket), Key: aws.String(key)}); err != nil {
				return b.fail("unlink", name, key, err)
			}
		}
		b.detach(f)
		return nil
	}
	e, err := b.lookup(ctx, "unlink", name)
	if err != nil {
		return err
	}
	if e.dir {
		return pathErr("unlink", name, syscall.EISDIR)
	}
	if _, err := b.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(b.bucket), Key: aws.String(key)}); err != nil {
		return b.fail("unlink", name, key, err)
	}
	return nil
}

// detach takes an open state out of the tree: its handles go on, but it no
// longer uploads nor answers for its path.
func (b *Backend) detach(f *openFile) {
	f.detached.Store(true)
	b.mu.Lock()
	if b.open[f.name] == f {
		delete(b.open, f.name)
	}
	b.mu.Unlock()
}

func (b *Backend) Symlink(ctx context.Context, target, name string, owner *backend.Owner) error {
	ctx = opContext(ctx)
	b.invalidate(name, false)
	defer b.invalidate(name, false) // and misses cached meanwhile
	key, err := b.key("symlink", name)
	if err != nil {
		return err
	}
	if name == "" || b.isOpen(name) {
		return pathErr("symlink", name, syscall.EEXIST)
	}
	a := b.newAttrs(syscall.S_IFLNK|0o777, b.owner(owner))
	_, err = b.putSmall(ctx, "symlink", name, key, strings.NewReader(target), a.encode(), true)
	return err
}

func (b *Backend) Readlink(ctx context.Context, name string) (string, error) {
	ctx = opContext(ctx)
	key, err := b.key("readlink", name)
	if err != nil {
		return "", pathErr("readlink", name, syscall.ENOENT)
	}
	if name == "" || b.isOpen(name) {
		return "", pathErr("readlink", name, syscall.EINVAL)
	}
	out, err := b.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(b.bucket), Key: aws.String(key)})
	if err != nil {
		if isNotFound(err) {
			if e, lerr := b.lookup(ctx, "readlink", name); lerr == nil && e.dir {
				return "", pathErr("readlink", name, syscall.EINVAL)
			}
		}
		return "", b.fail("readlink", name, key, err)
	}
	defer out.Body.Close()
	a := b.decodeAttrs(out.Metadata, syscall.S_IFREG, time.Time{})
	if a.mode&syscall.S_IFMT != syscall.S_IFLNK {
		return "", pathErr("readlink", name, syscall.EINVAL)
	}
	data, err := io.ReadAll(io.LimitReader(out.Body, unix.PathMax+1))
	if err != nil {
		return "", b.fail("readlink", name, key, err)
	}
	return string(data), nil
}

// setAttrs changes attributes. On a file being written the change joins
// the pending upload; otherwise it is a CopyObject of the object onto itself
// with MetadataDirective REPLACE (S3's only way to change metadata), pinned
// to the version looked at and retried if that changed meanwhile.
func (b *Backend) setAttrs(ctx context.Context, op, name string, change func(*attrs) error) error {
	ctx = opContext(ctx)
	defer b.invalidate(name, false)
	if f := b.acquire(name); f != nil {
		defer b.release(f)
		f.mu.Lock()
		defer f.mu.Unlock()
		a := f.attrs.clone()
		if err := change(&a); err != nil {
			return err
		}
		a.ctime = time.Now()
		meta := a.encode()
		if metaSize(meta) > maxUserMeta {
			return pathErr(op, name, syscall.ENOSPC)
		}
		if f.dirty || !f.remote {
			f.attrs = a
			f.dirty = true
			f.gen++
			return nil
		}
		etag, err := b.copyObject(ctx, op, name, b.prefix+f.name, b.prefix+f.name, f.remoteSize, meta, f.etag, false)
		if err != nil {
			return err
		}
		f.attrs, f.etag = a, etag
		return nil
	}
	for attempt := 0; ; attempt++ {
		e, err := b.lookup(ctx, op, name)
		if err != nil {
			return err
		}
		a := e.attrs.clone()
		if err := change(&a); err != nil {
			return err
		}
		a.ctime = time.Now()
		meta := a.encode()
		if metaSize(meta) > maxUserMeta {
			return pathErr(op, name, syscall.ENOSPC)
		}
		if e.implicit {
			// A directory without a marker (or the root): create one.
			_, err = b.putSmall(ctx, op, name, e.key, nil, meta, false)
		} else {
			_, err = b.copyObject(ctx, op, name, e.key, e.key, e.size, meta, e.etag, false)
		}
		if errors.Is(err, syscall.ESTALE) && attempt < 3 {
			continue
		}
		return err
	}
}

func (b *Backend) Chmod(ctx context.Context, name string, mode uint32) error {
	return b.setAttrs(ctx, "chmod", name, func(a *attrs) error {
		a.mode = a.mode&syscall.S_IFMT | mode&07777
		return nil
	})
}

func (b *Backend) Lchown(ctx context.Context, name string, uid, gid int) error {
	return b.setAttrs(ctx, "chown", name, func(a *attrs) error {
		if uid >= 0 {
			a.uid = uint32(uid)
		}
		if gid >= 0 {
			a.gid = uint32(gid)
		}
		return nil
	})
}

func (b *Backend) Utimens(ctx context.Context, name string, atime, mtime *time.Time) error {
	if atime == nil && mtime == nil {
		return nil
	}
	return b.setAttrs(ctx, "utimens", name, func(a *attrs) error {
		if atime != nil {
			a.atime = *atime
		}
		if mtime != nil {
			a.mtime = *mtime
		}
		return nil
	})
}

// attrsOf reads the attributes of a path, open or not.
func (b *Backend) attrsOf(ctx context.Context, op, name string) (attrs, error) {
	ctx = opContext(ctx)
	if f := b.acquire(name); f != nil {
		defer b.release(f)
		f.mu.RLock()
		defer f.mu.RUnlock()
		return f.attrs.clone(), nil
	}
	e, err := b.lookup(ctx, op, name)
	if err != nil {
		return attrs{}, err
	}
	return e.attrs, nil
}

// Extended attributes live in the object's user metadata (one entry each),
// so they cost one metadata rewrite per change and share S3's 2 KB budget
// for user metadata: a set that would exceed it fails with ENOSPC.

func (b *Backend) Getxattr(ctx context.Context, name, attr string) ([]byte, error) {
	a, err := b.attrsOf(ctx, "getxattr", name)
	if err != nil {
		return nil, err
	}
	if isACL(attr) {
		// Only mode-equivalent ACLs are accepted, and those are the mode.
		return nil, pathErr("getxattr", name, syscall.ENODATA)
	}
	v, ok := a.xattrs[attr]
	if !ok {
		return nil, pathErr("getxattr", name, syscall.ENODATA)
	}
	return v, nil
}

func (b *Backend) Listxattr(ctx context.Context, name string) ([]string, error) {
	a, err := b.attrsOf(ctx, "listxattr", name)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(a.xattrs))
	for n := range a.xattrs {
		names = append(names, n)
	}
	slices.Sort(names)
	return names, nil
}

func (b *Backend) Setxattr(ctx context.Context, name, attr string, value []byte, flags int) error {
	if attr == "" {
		return pathErr("setxattr", name, syscall.EINVAL)
	}
	if isACL(attr) {
		// Without FUSE_POSIX_ACL the kernel hands ACLs to the filesystem
		// as xattrs; a disk filesystem would fold a mode-equivalent one into
		// the mode (cp -a sets permissions that way). Extended ACLs cannot
		// be enforced here, so they are refused and callers fall back to
		// chmod.
		perm, ok := aclPerm(value)
		if attr != xattrACLAccess || !ok {
			return pathErr("setxattr", name, syscall.ENOTSUP)
		}
		return b.setAttrs(ctx, "setxattr", name, func(a *attrs) error {
			a.mode = a.mode&^0o777 | perm
			return nil
		})
	}
	return b.setAttrs(ctx, "setxattr", name, func(a *attrs) error {
		_, exists := a.xattrs[attr]
		if flags&unix.XATTR_CREATE != 0 && exists {
			return pathErr("setxattr", name, syscall.EEXIST)
		}
		if flags&unix.XATTR_REPLACE != 0 && !exists {
			return pathErr("setxattr", name, syscall.ENODATA)
		}
		if a.xattrs == nil {
			a.xattrs = make(map[string][]byte)
		}
		a.xattrs[attr] = slices.Clone(value)
		return nil
	})
}

func (b *Backend) Removexattr(ctx context.Context, name, attr string) error {
	if isACL(attr) {
		return pathErr("removexattr", name, syscall.ENODATA)
	}
	return b.setAttrs(ctx, "removexattr", name, func(a *attrs) error {
		if _, ok := a.xattrs[attr]; !ok {
			return pathErr("removexattr", name, syscall.ENODATA)
		}
		delete(a.xattrs, attr)
		return nil
	})
}

// Rename moves a file with a server-side CopyObject (UploadPartCopy above 5
// GiB) and a DeleteObject; a directory by copying and then deleting every
// object under it, which costs O(objects) requests and is not atomic: a
// failure part way leaves the source whole and removes the copies made.
// RENAME_NOREPLACE is honoured (with a conditional copy for files);
// RENAME_EXCHANGE is ENOTSUP.
func (b *Backend) Rename(ctx context.Context, from, to string, flags uint32) error {
	ctx = opContext(ctx)
	if flags&unix.RENAME_EXCHANGE != 0 {
		return pathErr("rename", from, syscall.ENOTSUP)
	}
	if flags&^uint32(unix.RENAME_NOREPLACE) != 0 {
		return pathErr("rename", from, syscall.EINVAL)
	}
	noReplace := flags&unix.RENAME_NOREPLACE != 0
	if from == "" || to == "" {
		return pathErr("rename", from, syscall.EBUSY)
	}
	if _, err := b.key("rename", from); err != nil {
		return err
	}
	if _, err := b.key("rename", to); err != nil {
		return err
	}
	if from == to {
		return nil
	}
	if strings.HasPrefix(to, from+"/") {
		return pathErr("rename", from, syscall.EINVAL)
	}
	src, err := b.entryOf(ctx, from)
	if err != nil {
		return err
	}
	dst, err := b.entryOf(ctx, to)
	if err != nil && !errors.Is(err, syscall.ENOENT) {
		return err
	}
	if dst != nil {
		switch {
		case noReplace:
			return pathErr("rename", to, syscall.EEXIST)
		case src.dir && !dst.dir:
			return pathErr("rename", to, syscall.ENOTDIR)
		case !src.dir && dst.dir:
			return pathErr("rename", to, syscall.EISDIR)
		case dst.dir:
			if empty, err := b.dirEmpty(ctx, to); err != nil {
				return err
			} else if !empty {
				return pathErr("rename", to, syscall.ENOTEMPTY)
			}
		}
	}
	b.invalidate(from, src.dir)
	b.invalidate(to, src.dir)
	defer b.invalidate(to, src.dir) // and misses cached meanwhile
	if src.dir {
		return b.renameDir(ctx, from, to, src)
	}
	return b.renameFile(ctx, from, to, noReplace)
}

// entryOf is lookup that also knows files open here and not uploaded yet.
func (b *Backend) entryOf(ctx context.Context, name string) (*entry, error) {
	if f := b.acquire(name); f != nil {
		defer b.release(f)
		f.mu.RLock()
		defer f.mu.RUnlock()
		return &entry{key: b.prefix + f.name, attrs: f.attrs.clone(), size: f.size, etag: f.etag}, nil
	}
	return b.lookup(ctx, "rename", name)
}

func (b *Backend) dirEmpty(ctx context.Context, name string) (bool, error) {
	marker := b.dirPrefix(name)
	l, err := b.client.ListObjectsV2(ctx, &s3.ListObjectsV2Input{
		Bucket: aws.String(b.bucket), Prefix: aws.String(marker), MaxKeys: aws.Int32(2),
	})
	if err != nil {
		return false, b.fail("rename", name, marker, err)
	}
	for _, o := range l.Contents {
		if aws.ToString(o.Key) != marker {
			return false, nil
		}
	}
	return !b.hasOpenUnder(name), nil
}

func (b *Backend) renameFile(ctx context.Context, from, to string, noReplace bool) error {
	fromKey, toKey := b.prefix+from, b.prefix+to
	// A file open at the destination is being replaced: give its handles a
	// staged copy to go on with before the object under them changes.
	if old := b.acquire(to); old != nil {
		old.mu.Lock()
		err := old.stage(old.size)
		old.mu.Unlock()
		b.release(old)
		if err != nil {
			return err
		}
	}
	f := b.acquire(from)
	if f != nil {
		defer b.release(f)
		f.mu.Lock()
		defer f.mu.Unlock()
	}
	if f == nil || f.remote {
		var size int64
		var etag string
		if f != nil {
			size, etag = f.remoteSize, f.etag
		} else {
			e, err := b.lookup(ctx, "rename", from)
			if err != nil {
				return err
			}
			size, etag = e.size, e.etag
		}
		newETag, err := b.copyObject(ctx, "rename", from, fromKey, toKey, size, nil, etag, noReplace)
		if err != nil {
			return err
		}
		if _, err := b.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(b.bucket), Key: aws.String(fromKey)}); err != nil {
			return b.fail("rename", from, fromKey, err)
		}
		if f != nil {
			f.etag = newETag
		}
	} else if !noReplace {
		// Not uploaded yet: it will be uploaded under its new name, over
		// whatever is there (rename replaces); the object it replaces goes
		// now, as rename(2) makes the old one vanish.
		f.exclusive = false
		if _, err := b.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(b.bucket), Key: aws.String(toKey)}); err != nil {
			return b.fail("rename", to, toKey, err)
		}
	}
	b.mu.Lock()
	if old := b.open[to]; old != nil && old != f {
		old.detached.Store(true)
		delete(b.open, to)
	}
	if f != nil {
		delete(b.open, from)
		f.name = to
		b.open[to] = f
	}
	b.mu.Unlock()
	return nil
}

// renameDir copies every object under from/ to to/, then deletes the
// sources. Files open under from/ follow to their new names.
func (b *Backend) renameDir(ctx context.Context, from, to string, src *entry) error {
	fromPrefix, toPrefix := b.dirPrefix(from), b.dirPrefix(to)
	var objs []types.Object
	if err := b.listAll(ctx, fromPrefix, func(o types.Object) error {
		objs = append(objs, o)
		return nil
	}); err != nil {
		return b.fail("rename", from, fromPrefix, err)
	}
	// Hold the open files below from/ still: no upload may land under the
	// old name once its object has been copied.
	b.mu.Lock()
	var opened []*openFile
	for n, f := range b.open {
		if strings.HasPrefix(n, from+"/") {
			f.refs++
			opened = append(opened, f)
		}
	}
	b.mu.Unlock()
	sort.Slice(opened, func(i, j int) bool { return opened[i].name < opened[j].name })
	for _, f := range opened {
		f.mu.Lock()
	}
	defer func() {
		for _, f := range opened {
			f.mu.Unlock()
			b.release(f)
		}
	}()

	var mu sync.Mutex
	var copied []string
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(2 * b.concurrency)
	for _, o := range objs {
		srcKey := aws.ToString(o.Key)
		dstKey := toPrefix + strings.TrimPrefix(srcKey, fromPrefix)
		g.Go(func() error {
			if err := b.copyEntry(gctx, from, srcKey, dstKey, aws.ToInt64(o.Size)); err != nil {
				return err
			}
			mu.Lock()
			copied = append(copied, dstKey)
			mu.Unlock()
			return nil
		})
	}
	if src.implicit {
		// Give the new directory a marker so it survives being emptied.
		g.Go(func() error {
			_, err := b.putSmall(gctx, "rename", to, toPrefix, nil, src.attrs.encode(), false)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		// Undo: the source is untouched, remove the partial copy.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
		defer cancel()
		if derr := b.deleteKeys(cctx, copied); derr != nil {
			b.log.Warn("s3: removing a partial directory copy failed", "prefix", toPrefix, "err", derr)
		}
		return err
	}
	keys := make([]string, len(objs))
	for i, o := range objs {
		keys[i] = aws.ToString(o.Key)
	}
	if err := b.deleteKeys(ctx, keys); err != nil {
		return b.fail("rename", from, fromPrefix, err)
	}
	b.mu.Lock()
	for _, f := range opened {
		if b.open[f.name] == f {
			delete(b.open, f.name)
		}
	}
	for _, f := range opened {
		f.name = to + strings.TrimPrefix(f.name, from)
		b.open[f.name] = f
	}
	b.mu.Unlock()
	return nil
}

// copyEntry copies one object of a directory tree. A directory marker is
// re-created rather than copied: some servers (versitygw's posix backend)
// refuse CopyObject of a directory object to a new key.
func (b *Backend) copyEntry(ctx context.Context, name, srcKey, dstKey string, size int64) error {
	if !strings.HasSuffix(srcKey, "/") {
		_, err := b.copyObject(ctx, "rename", name, srcKey, dstKey, size, nil, "", false)
		return err
	}
	h, err := b.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(b.bucket), Key: aws.String(srcKey)})
	if err != nil {
		return b.fail("rename", name, srcKey, err)
	}
	_, err = b.putSmall(ctx, "rename", name, dstKey, nil, h.Metadata, false)
	return err
}

// deleteKeys deletes objects with DeleteObjects, 1000 a request, deepest
// first (reverse key order) so that servers that map keys onto a real
// directory tree remove children before their directory's marker.
func (b *Backend) deleteKeys(ctx context.Context, keys []string) error {
	keys = slices.Clone(keys)
	sort.Sort(sort.Reverse(sort.StringSlice(keys)))
	for len(keys) > 0 {
		n := min(len(keys), 1000)
		ids := make([]types.ObjectIdentifier, n)
		for i, k := range keys[:n] {
			ids[i] = types.ObjectIdentifier{Key: aws.String(k)}
		}
		out, err := b.client.DeleteObjects(ctx, &s3.DeleteObjectsInput{
			Bucket: aws.String(b.bucket),
			Delete: &types.Delete{Objects: ids, Quiet: aws.Bool(true)},
		})
		if err != nil {
			return err
		}
		for _, e := range out.Errors {
			if aws.ToString(e.Code) != "NoSuchKey" {
				return fmt.Errorf("delete %s: %s: %s", aws.ToString(e.Key), aws.ToString(e.Code), aws.ToString(e.Message))
			}
		}
		keys = keys[n:]
	}
	return nil
}

// POSIX ACL xattrs (linux/posix_acl_xattr.h): a little-endian version 2
// header, then {tag u16, perm u16, id u32} entries.
const (
	xattrACLAccess  = "system.posix_acl_access"
	xattrACLDefault = "system.posix_acl_default"
	aclVersion      = 2
	aclUserObj      = 0x01
	aclGroupObj     = 0x04
	aclOther        = 0x20
)

func isACL(attr string) bool { return attr == xattrACLAccess || attr == xattrACLDefault }

// aclPerm returns the permission bits of an ACL that has only the owner,
// group and other entries (one the mode expresses exactly).
func aclPerm(v []byte) (uint32, bool) {
	if len(v) < 4 || (len(v)-4)%8 != 0 || binary.LittleEndian.Uint32(v) != aclVersion {
		return 0, false
	}
	var perm uint32
	seen := 0
	for e := v[4:]; len(e) > 0; e = e[8:] {
		tag, p := binary.LittleEndian.Uint16(e), uint32(binary.LittleEndian.Uint16(e[2:])&7)
		switch tag {
		case aclUserObj:
			perm |= p << 6
		case aclGroupObj:
			perm |= p << 3
		case aclOther:
			perm |= p
		default:
			return 0, false
		}
		seen |= int(tag)
	}
	return perm, seen == aclUserObj|aclGroupObj|aclOther
}
