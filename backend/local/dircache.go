package local

import (
	"path"
	"strings"
	"sync"
	"syscall"
)

// Most operations act on an entry relative to its parent directory, which
// resolve.go opens with openat2 for each call: copying a tree costs an
// openat2 and a close per operation on a file, several per file (lookup,
// create, setattr, xattrs). dirCache keeps the O_PATH descriptors of
// recently used backing directories, keyed by their path relative to the
// root, so that the operations on the files of one directory resolve it
// once.
//
// A cached descriptor was opened by openDirBeneath: it names a directory
// that was reached below the root without crossing a symlink, and stays
// that directory whatever happens to its name. What can go wrong is that it
// is no longer the directory at that path: renamed away (itself or an
// ancestor), or removed. Every rename and rmdir of the backend drops the
// descriptors at and below the names it changed before it returns, so an
// operation that starts after it resolves the path afresh. An operation
// that runs concurrently with the rename may act in the directory under
// its old name, which is also what happens without the cache (the parent
// opened, then renamed, then the *at call). Changes made to the backing
// directory by anything but this backend while mounted are not seen until
// the descriptor leaves the cache; the mount's own kernel caches do not
// see them either.
//
// A descriptor is closed only when it has left the cache and no operation
// holds it: a number closed under a user could be reused by the next open
// and name another file.
type dirCache struct {
	max  int
	open func(p string) (int, error) // opens directory p O_PATH, beneath the root

	mu      sync.Mutex
	entries map[string]*dirEntry
	head    dirEntry // sentinel of the LRU ring: head.next is the most recent
	pending map[*dirMiss]struct{}
	closed  bool
}

// dirEntry is one cached directory descriptor.
type dirEntry struct {
	path       string
	fd         int
	refs       int  // operations holding fd
	cached     bool // in entries (and the ring)
	prev, next *dirEntry
}

// dirMiss is a lookup that found nothing and is opening the directory
// outside the lock. An invalidation of its path in the meantime marks it
// stale: the descriptor it gets may name the directory from before the
// rename and is used once, not cached.
type dirMiss struct {
	path  string
	stale bool
}

// defaultDirCacheSize bounds the descriptors held (each counts against
// RLIMIT_NOFILE, whose soft limit the os package raises to the hard one at
// start-up since Go 1.19): enough for the working set of directories of a
// tree copy or a build.
const defaultDirCacheSize = 256

func newDirCache(max int, open func(string) (int, error)) *dirCache {
	c := &dirCache{max: max, open: open, entries: make(map[string]*dirEntry), pending: make(map[*dirMiss]struct{})}
	c.head.next, c.head.prev = &c.head, &c.head
	return c
}

// cacheable reports whether p is a path the cache may hold: one
// invalidation by name can find. Paths from go-fuse are clean; anything
// else ("a//b", "a/./b") bypasses the cache rather than hide from a rename
// of "a/b".
func cacheable(p string) bool {
	return p != "" && p != "." && path.Clean(p) == p
}

// get returns a held entry for directory p (relative to the root), opened
// on a miss. Release it with put.
func (c *dirCache) get(p string) (*dirEntry, error) {
	if c.max <= 0 || !cacheable(p) {
		fd, err := c.open(p)
		if err != nil {
			return nil, err
		}
		return &dirEntry{path: p, fd: fd, refs: 1}, nil
	}
	c.mu.Lock()
	if e := c.entries[p]; e != nil {
		e.refs++
		c.unlink(e)
		c.pushFront(e)
		c.mu.Unlock()
		return e, nil
	}
	m := &dirMiss{path: p}
	c.pending[m] = struct{}{}
	c.mu.Unlock()

	fd, err := c.open(p)

	c.mu.Lock()
	delete(c.pending, m)
	if err != nil {
		c.mu.Unlock()
		return nil, err
	}
	if m.stale || c.closed {
		c.mu.Unlock()
		return &dirEntry{path: p, fd: fd, refs: 1}, nil
	}
	if e := c.entries[p]; e != nil {
		// Another miss of the same path got there first; both resolved it
		// after any invalidation (neither is stale), so they agree.
		e.refs++
		c.mu.Unlock()
		syscall.Close(fd)
		return e, nil
	}
	e := &dirEntry{path: p, fd: fd, refs: 1, cached: true}
	c.entries[p] = e
	c.pushFront(e)
	var drop []int
	for len(c.entries) > c.max {
		if fd, ok := c.remove(c.head.prev); ok {
			drop = append(drop, fd)
		}
	}
	c.mu.Unlock()
	closeAll(drop)
	return e, nil
}

// peek returns a held entry for p if one is cached, else nil; it opens
// nothing. Release it with put.
func (c *dirCache) peek(p string) *dirEntry {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[p]
	if e != nil {
		e.refs++
		c.unlink(e)
		c.pushFront(e)
	}
	return e
}

// put releases an entry from get or peek.
func (c *dirCache) put(e *dirEntry) {
	c.mu.Lock()
	e.refs--
	last := e.refs == 0 && !e.cached
	c.mu.Unlock()
	if last {
		syscall.Close(e.fd)
	}
}

// invalidate drops the entries for p and every path below it, and marks
// misses of those paths in flight stale. Call it after every operation
// that may have renamed or removed a directory at p, before that operation
// returns.
func (c *dirCache) invalidate(p string) {
	if p == "" || p == "." {
		return
	}
	c.mu.Lock()
	var drop []int
	for q, e := range c.entries {
		if below(q, p) {
			if fd, ok := c.remove(e); ok {
				drop = append(drop, fd)
			}
		}
	}
	for m := range c.pending {
		if below(m.path, p) {
			m.stale = true
		}
	}
	c.mu.Unlock()
	closeAll(drop)
}

// close drops every entry; those still held are closed by their last put.
func (c *dirCache) close() {
	c.mu.Lock()
	c.closed = true
	var drop []int
	for _, e := range c.entries {
		if fd, ok := c.remove(e); ok {
			drop = append(drop, fd)
		}
	}
	c.mu.Unlock()
	closeAll(drop)
}

// len is the number of cached entries (for tests).
func (c *dirCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// remove takes e out of the cache (c.mu held) and returns its descriptor
// if nobody holds it, for the caller to close once unlocked.
func (c *dirCache) remove(e *dirEntry) (int, bool) {
	delete(c.entries, e.path)
	c.unlink(e)
	e.cached = false
	return e.fd, e.refs == 0
}

func (c *dirCache) unlink(e *dirEntry) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
}

func (c *dirCache) pushFront(e *dirEntry) {
	e.prev, e.next = &c.head, c.head.next
	c.head.next.prev = e
	c.head.next = e
}

// below reports whether q is p or a path under it.
func below(q, p string) bool {
	return strings.HasPrefix(q, p) && (len(q) == len(p) || q[len(p)] == '/')
}

func closeAll(fds []int) {
	for _, fd := range fds {
		syscall.Close(fd)
	}
}
