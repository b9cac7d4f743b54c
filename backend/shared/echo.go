package shared

import (
	"sync"
	"time"

	"github.com/kmsfs/kmsfs/backend/shared/meta"
)

// echoTTL bounds how long the attributes a change of this process returned
// answer the stat that follows it. The kernel asks for a node's attributes
// right after most changes it sends (go-fuse answers SETATTR with a
// GETATTR, a mode-equivalent ACL is followed by a stat to drop S_ISGID,
// MKDIR and SYMLINK reply with the new entry), and the store already
// returned them with the change: one statement instead of two per change.
// A change another mount commits in between is seen at most echoTTL later
// than the kernel's attribute timeout would show it, which the mount keeps
// below the one second promised across mounts (SharedAttrTimeout).
const echoTTL = 50 * time.Millisecond

// SharedAttrTimeout is the longest entry and attribute timeout a mount of
// a shared volume may give the kernel: with the echo of a change added, a
// change committed on another mount is seen here within one second.
const SharedAttrTimeout = time.Second - echoTTL

// echoes holds, by stored path, the attributes the latest change of that
// path made here returned. An entry answers one stat within echoTTL; any
// other change of the tree drops every entry, as it may change what they
// say (link counts, a renamed parent, a committed size).
type echoes struct {
	mu    sync.Mutex
	m     map[string]echo
	epoch uint64 // counts drops
}

type echo struct {
	a  meta.Attr
	at time.Time
}

// put records a for path, as just returned by the store for a change that
// began at epoch (drop's result). A change of this process that began
// meanwhile may have made a stale, so then nothing is recorded.
func (e *echoes) put(path string, a meta.Attr, epoch uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if epoch != e.epoch {
		return
	}
	if e.m == nil {
		e.m = map[string]echo{}
	}
	e.m[path] = echo{a, time.Now()}
}

// take returns and forgets path's entry if it is fresh.
func (e *echoes) take(path string) (meta.Attr, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	x, ok := e.m[path]
	if !ok {
		return meta.Attr{}, false
	}
	delete(e.m, path)
	return x.a, time.Since(x.at) < echoTTL
}

// drop forgets every entry, before a change of the tree; its result names
// the change for put.
func (e *echoes) drop() uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	clear(e.m)
	e.epoch++
	return e.epoch
}
