package server

import (
	"sync"
	"time"
)

// lookupCache remembers for a short time what a key name (ID, ARN, alias)
// resolves to and a key's parsed policy. Without it a cryptographic request
// makes three keystore calls (resolve, policy, operation), each of which
// stats the keystore's state file to notice other writers; with it, one.
//
// Key state is never cached: the keystore checks it on the operation itself,
// so a disabled key is refused at once. Changes made through this server
// (aliases, policies) clear the cache at once; changes made by another
// process directly on the keystore take effect within the TTL — AWS KMS is
// itself eventually consistent for policy and alias changes.
type lookupCache struct {
	ttl time.Duration

	mu       sync.Mutex
	arns     map[string]cached[string]
	policies map[string]cached[*Policy] // by key ARN
}

type cached[T any] struct {
	v       T
	expires time.Time
}

const maxCacheEntries = 8192

func newLookupCache(ttl time.Duration) *lookupCache {
	return &lookupCache{ttl: ttl, arns: make(map[string]cached[string]), policies: make(map[string]cached[*Policy])}
}

func (c *lookupCache) arn(keyID string, now time.Time) (string, bool) {
	if c.ttl <= 0 {
		return "", false
	}
	c.mu.Lock()
	e, ok := c.arns[keyID]
	c.mu.Unlock()
	return e.v, ok && now.Before(e.expires)
}

func (c *lookupCache) putARN(keyID, arn string, now time.Time) {
	if c.ttl <= 0 {
		return
	}
	c.mu.Lock()
	if len(c.arns) >= maxCacheEntries {
		clear(c.arns)
	}
	c.arns[keyID] = cached[string]{arn, now.Add(c.ttl)}
	c.mu.Unlock()
}

func (c *lookupCache) policy(arn string, now time.Time) (*Policy, bool) {
	if c.ttl <= 0 {
		return nil, false
	}
	c.mu.Lock()
	e, ok := c.policies[arn]
	c.mu.Unlock()
	return e.v, ok && now.Before(e.expires)
}

func (c *lookupCache) putPolicy(arn string, p *Policy, now time.Time) {
	if c.ttl <= 0 {
		return
	}
	c.mu.Lock()
	if len(c.policies) >= maxCacheEntries {
		clear(c.policies)
	}
	c.policies[arn] = cached[*Policy]{p, now.Add(c.ttl)}
	c.mu.Unlock()
}

// clear drops everything, after a change made through this server.
func (c *lookupCache) clear() {
	c.mu.Lock()
	clear(c.arns)
	clear(c.policies)
	c.mu.Unlock()
}
