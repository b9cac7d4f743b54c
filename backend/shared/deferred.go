package shared

import (
	"maps"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/backend/shared/meta"
)

// Deferred attribute changes. The programs that write trees change a new
// file's attributes after its data and before its close (cp -a: the times
// and the mode through the open descriptor; tar and rsync the same). A new
// file's first commit publishes its content: until then every other mount
// reads it as the empty file it was created as. So while a file open for
// writing here has never been committed (generation 0) and has staged data,
// a chmod, chown, utimens or mode-equivalent ACL of it joins its commit
// statement at close or fsync instead of being a statement of its own: other
// mounts see the attributes with the content, this mount at once (the
// overlay), and they are lost with the content if the process dies before.
// A file with committed content takes the change at once, as it must: its
// content is readable elsewhere, and a chmod that restricts access has to
// reach the other mounts within the second promised.

// deferAttr records change s for the commit of the file open for writing
// here under name, if that file qualifies, and returns the attributes it
// then has.
func (b *Backend) deferAttr(name string, s meta.SetAttr) (meta.Attr, bool) {
	b.mu.Lock()
	f := b.writing[name]
	b.mu.Unlock()
	if f == nil {
		return meta.Attr{}, false
	}
	return f.deferAttr(s)
}

func (f *openFile) deferAttr(s meta.SetAttr) (meta.Attr, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.gen != 0 || len(f.dirty) == 0 {
		return meta.Attr{}, false
	}
	p := f.pend
	if p == nil {
		p = &meta.SetAttr{}
	}
	switch {
	case s.Mode != nil:
		f.attr.Mode = f.attr.Mode&^0o7777 | *s.Mode&0o7777
		m := f.attr.Mode & 0o7777
		p.Mode, p.Perm = &m, nil
	case s.Perm != nil:
		f.attr.Mode = f.attr.Mode&^0o777 | *s.Perm&0o777
		if p.Mode != nil {
			m := f.attr.Mode & 0o7777
			p.Mode = &m
		} else {
			m := *s.Perm & 0o777
			p.Perm = &m
		}
	}
	if s.Uid != nil {
		f.attr.Uid, p.Uid = *s.Uid, s.Uid
	}
	if s.Gid != nil {
		f.attr.Gid, p.Gid = *s.Gid, s.Gid
	}
	if s.Atime != nil {
		f.attr.Atime, p.Atime = *s.Atime, s.Atime
	}
	if s.Mtime != nil {
		f.attr.Mtime, p.Mtime = *s.Mtime, s.Mtime
		f.touched = false // an explicit utimens after the writes wins
	}
	f.attr.Ctime = time.Now()
	f.pend = p
	a := f.attr
	a.Size = f.size
	if f.touched {
		a.Mtime, a.Ctime = f.mtime, f.mtime
	}
	return a, true
}

// supersede drops from the changes waiting for the commit what change s,
// made in the store at once (by another name of the file: a hard link),
// set since, and lays the rest over the attributes the store returned for
// it. f.mu is held.
func (f *openFile) supersede(s meta.SetAttr) {
	p := f.pend
	switch {
	case s.Mode != nil:
		p.Mode, p.Perm = nil, nil
	case s.Perm != nil && p.Mode != nil:
		m := *p.Mode&^0o777 | *s.Perm&0o777
		p.Mode = &m
	case s.Perm != nil:
		p.Perm = nil
	}
	if s.Uid != nil {
		p.Uid = nil
	}
	if s.Gid != nil {
		p.Gid = nil
	}
	if s.Atime != nil {
		p.Atime = nil
	}
	if s.Mtime != nil {
		p.Mtime = nil
	}
	switch {
	case p.Mode != nil:
		f.attr.Mode = f.attr.Mode&^0o7777 | *p.Mode
	case p.Perm != nil:
		f.attr.Mode = f.attr.Mode&^0o777 | *p.Perm
	}
	if p.Uid != nil {
		f.attr.Uid = *p.Uid
	}
	if p.Gid != nil {
		f.attr.Gid = *p.Gid
	}
	if p.Atime != nil {
		f.attr.Atime = *p.Atime
	}
	if p.Mtime != nil {
		f.attr.Mtime = *p.Mtime
	}
}

// renameWriting moves the files open for writing here under from (or
// below it) to their new names; with RENAME_EXCHANGE those under to move
// to from as well.
func (b *Backend) renameWriting(from, to string, flags uint32) {
	b.mu.Lock()
	defer b.mu.Unlock()
	moved := map[string]*openFile{}
	move := func(src, dst string, keep bool) {
		for name, f := range b.writing {
			if rest, ok := strings.CutPrefix(name, src); ok && (rest == "" || rest[0] == '/') {
				delete(b.writing, name)
				if keep {
					moved[dst+rest] = f
				}
			}
		}
	}
	move(from, to, true)
	// What was at to is now from (an exchange) or no longer named (replaced).
	move(to, from, flags&unix.RENAME_EXCHANGE != 0)
	maps.Copy(b.writing, moved)
}

// named forgets that the file open for writing here is called name when
// the store says name is another inode now (another mount replaced it):
// the kernel looks a name up before it changes what it names, so a change
// by that name then reaches the store, not this file.
func (b *Backend) named(name string, ino uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if f := b.writing[name]; f != nil && f.ino != ino {
		delete(b.writing, name)
	}
}
