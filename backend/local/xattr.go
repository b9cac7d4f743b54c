package local

import (
	"context"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// xattrTarget is how an entry is named to the *xattr calls, which have no
// form relative to a directory descriptor (getxattrat and friends arrived
// in Linux 6.13) and do not work on O_PATH descriptors. The parent
// directory is opened O_PATH relative to the root and the entry is named
// as /proc/self/fd/<parent>/<leaf>: a string of a few dozen bytes plus the
// leaf (at most NAME_MAX), however deep the entry is, and resolved through
// the descriptor, not through the backing root's path.
type xattrTarget struct {
	path   string
	follow bool   // path is the root's descriptor link itself, which must be followed
	dir    atName // the parent directory, closed by close
}

func (b *Backend) openXattrTarget(op, name string) (xattrTarget, error) {
	a, err := b.at(op, name)
	if err != nil {
		return xattrTarget{}, err
	}
	if a.leaf == "." {
		// The magic link /proc/self/fd/N resolves to the directory the
		// descriptor names; the l* calls would act on the link itself.
		return xattrTarget{path: procFd(a.dirfd), follow: true, dir: a}, nil
	}
	return xattrTarget{path: procFd(a.dirfd) + "/" + a.leaf, dir: a}, nil
}

func (t xattrTarget) close() { t.dir.done() }

func procFd(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

func (t xattrTarget) get(attr string, dest []byte) (int, error) {
	if t.follow {
		return unix.Getxattr(t.path, attr, dest)
	}
	return unix.Lgetxattr(t.path, attr, dest)
}

func (t xattrTarget) set(attr string, value []byte, flags int) error {
	if t.follow {
		return unix.Setxattr(t.path, attr, value, flags)
	}
	return unix.Lsetxattr(t.path, attr, value, flags)
}

func (t xattrTarget) list(dest []byte) (int, error) {
	if t.follow {
		return unix.Listxattr(t.path, dest)
	}
	return unix.Llistxattr(t.path, dest)
}

func (t xattrTarget) remove(attr string) error {
	if t.follow {
		return unix.Removexattr(t.path, attr)
	}
	return unix.Lremovexattr(t.path, attr)
}

func (b *Backend) Getxattr(_ context.Context, name, attr string) ([]byte, error) {
	t, err := b.openXattrTarget("getxattr", name)
	if err != nil {
		return nil, err
	}
	defer t.close()
	buf := make([]byte, 256)
	for {
		n, err := t.get(attr, buf)
		if err == unix.ERANGE {
			// Grown since we asked: ask for the size, then try again.
			sz, err2 := t.get(attr, nil)
			if err2 != nil {
				return nil, wrap("getxattr", name, err2)
			}
			buf = make([]byte, sz)
			continue
		}
		if err != nil {
			return nil, wrap("getxattr", name, err)
		}
		return buf[:n], nil
	}
}

func (b *Backend) Setxattr(_ context.Context, name, attr string, value []byte, flags int) error {
	t, err := b.openXattrTarget("setxattr", name)
	if err != nil {
		return err
	}
	defer t.close()
	return wrap("setxattr", name, t.set(attr, value, flags))
}

func (b *Backend) Listxattr(_ context.Context, name string) ([]string, error) {
	t, err := b.openXattrTarget("listxattr", name)
	if err != nil {
		return nil, err
	}
	defer t.close()
	var buf []byte
	for {
		sz, err := t.list(nil)
		if err != nil {
			return nil, wrap("listxattr", name, err)
		}
		buf = make([]byte, sz)
		n, err := t.list(buf)
		if err == unix.ERANGE {
			continue // an attribute was added between the two calls
		}
		if err != nil {
			return nil, wrap("listxattr", name, err)
		}
		buf = buf[:n]
		break
	}
	var out []string
	for s := range strings.SplitSeq(string(buf), "\x00") {
		if s != "" {
			out = append(out, s)
		}
	}
	return out, nil
}

func (b *Backend) Removexattr(_ context.Context, name, attr string) error {
	t, err := b.openXattrTarget("removexattr", name)
	if err != nil {
		return err
	}
	defer t.close()
	return wrap("removexattr", name, t.remove(attr))
}
