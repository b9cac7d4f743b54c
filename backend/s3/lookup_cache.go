package s3

// The short-lived memory of lookups that spares the kernel's repeated
// lookups of one name their S3 requests.

import (
	"time"
)

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
