package s3

// Rename of files and directories by server-side copy and delete.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

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
			size, etag = f.remoteLen, f.etag
		} else {
			e, err := b.lookup(ctx, "rename", from)
			if err != nil {
				return err
			}
			size, etag = e.objLen, e.etag
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
