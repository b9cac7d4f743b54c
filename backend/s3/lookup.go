package s3

// Finding a name in the bucket: a file is an object, a directory a marker
// object or a common prefix.

import (
	"context"
	"path"
	"syscall"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// entry is what a lookup found in S3.
type entry struct {
	key      string // the object: the file's key, or a directory's marker
	attrs    attrs
	size     int64 // the file's size
	objLen   int64 // the bytes its object holds (less with a sparse tail)
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
		e := &entry{
			key:    key,
			attrs:  b.decodeAttrs(h.Metadata, syscall.S_IFREG|0o644, aws.ToTime(h.LastModified)),
			objLen: aws.ToInt64(h.ContentLength), etag: aws.ToString(h.ETag),
		}
		e.size = e.attrs.fileSize(e.objLen)
		return e, nil
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
