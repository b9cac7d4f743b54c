package s3

// POSIX attributes (mode, owner, times), kept in each object's user metadata.

import (
	"context"
	"errors"
	"syscall"
	"time"
)

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
		a, meta, err := changedAttrs(op, name, f.attrs, change)
		if err != nil {
			return err
		}
		if f.dirty || !f.remote {
			f.attrs = a
			f.dirty = true
			f.gen++
			return nil
		}
		etag, err := b.copyObject(ctx, op, name, b.prefix+f.name, b.prefix+f.name, f.remoteLen, meta, f.etag, false)
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
		_, meta, err := changedAttrs(op, name, e.attrs, change)
		if err != nil {
			return err
		}
		if e.implicit {
			// A directory without a marker (or the root): create one.
			_, err = b.putSmall(ctx, op, name, e.key, nil, meta, false)
		} else {
			_, err = b.copyObject(ctx, op, name, e.key, e.key, e.objLen, meta, e.etag, false)
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

// changedAttrs applies change to a copy of old, stamps the ctime and encodes
// the result as object metadata, which S3 bounds in size (ENOSPC beyond).
func changedAttrs(op, name string, old attrs, change func(*attrs) error) (attrs, map[string]string, error) {
	a := old.clone()
	if err := change(&a); err != nil {
		return attrs{}, nil, err
	}
	a.ctime = time.Now()
	meta := a.encode()
	if metaSize(meta) > maxUserMeta {
		return attrs{}, nil, pathErr(op, name, syscall.ENOSPC)
	}
	return a, meta, nil
}
