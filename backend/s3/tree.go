package s3

// The namespace: stat, listing, directories, unlink, symlinks, and the
// node types an object store cannot hold.

import (
	"context"
	"io"
	"path"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/backend"
)

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

// isOpenFile reports whether name is open here as a regular file. An open
// still under way does not count: it may yet find a symlink and fail, as
// the volume's key read-ahead does when it opens a directory's entries
// (a listing calls symlinks files), and a readlink meanwhile must not see
// the symlink as a file.
func (b *Backend) isOpenFile(name string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	f, ok := b.open[name]
	return ok && f.ready.Load()
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
	if name == "" || b.isOpenFile(name) {
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
