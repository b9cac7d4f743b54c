package volume

import (
	"context"
	"crypto/rand"
	"math"
	"sync"
	"time"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/kms"
)

// keyPool hides KMS latency in per-object mode without sharing keys: it
// fetches data keys ahead of need, each generated under the context of a
// file ID chosen in advance and handed to exactly one new file.
//
// Its size follows demand: target = ceil(createRate * kmsLatency * 2), so
// that while one batch of keys is used up the next is already on its way,
// bounded by max. Both rates are EWMAs observed at run time; an idle pool
// drains to nothing as its keys age out (keyTTL), so idle mounts keep few
// plaintext keys in memory.
type keyPool struct {
	max    int
	keyTTL time.Duration

	mu       sync.Mutex
	v        *Volume
	keys     []pooledKey
	inflight int
	lastTake time.Time
	rate     float64 // creates per second (EWMA)
	latency  float64 // seconds per GenerateDataKey (EWMA)
	closed   bool
	hits     int // creates served from the pool without waiting for the KMS
	ctx      context.Context
	cancel   context.CancelFunc
}

type pooledKey struct {
	fileID  [envelope.IDLen]byte
	dk      kms.DataKey
	fetched time.Time
}

// DefaultPrefetchMax bounds the pool: at 10 ms KMS latency, 64 keys in
// flight sustain 3,200 creates per second.
const DefaultPrefetchMax = 64

func newKeyPool(v *Volume, max int) *keyPool {
	ctx, cancel := context.WithCancel(context.Background())
	return &keyPool{v: v, max: max, keyTTL: time.Minute, ctx: ctx, cancel: cancel}
}

func (p *keyPool) ready() int {
	if p == nil {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.keys)
}

// take returns a data key for a new file: from the pool if one is ready,
// else from the KMS now. Either way it tops the pool up for what comes next.
func (p *keyPool) take(ctx context.Context) ([envelope.IDLen]byte, kms.DataKey, error) {
	p.mu.Lock()
	now := time.Now()
	if !p.lastTake.IsZero() {
		if dt := now.Sub(p.lastTake).Seconds(); dt > 0 {
			p.rate = ewma(p.rate, 1/dt, 0.2)
		}
	}
	p.lastTake = now
	var got *pooledKey
	for len(p.keys) > 0 {
		k := p.keys[len(p.keys)-1]
		p.keys = p.keys[:len(p.keys)-1]
		if now.Sub(k.fetched) < p.keyTTL {
			got = &k
			break
		}
		k.dk.Zero()
	}
	if got != nil {
		p.hits++
	}
	p.refillLocked()
	p.mu.Unlock()
	if got != nil {
		return got.fileID, got.dk, nil
	}
	return p.fetch(ctx)
}

// fetch generates one data key under the context of a fresh file ID.
func (p *keyPool) fetch(ctx context.Context) ([envelope.IDLen]byte, kms.DataKey, error) {
	var fileID [envelope.IDLen]byte
	if _, err := rand.Read(fileID[:]); err != nil {
		return fileID, kms.DataKey{}, err
	}
	start := time.Now()
	dk, err := p.v.keys.GenerateDataKey(ctx, p.v.cfg.KeyID, envelope.KeySize, fileContext(p.v.cfg.VolumeID, fileID))
	if err == nil {
		p.mu.Lock()
		p.latency = ewma(p.latency, time.Since(start).Seconds(), 0.2)
		p.mu.Unlock()
	}
	return fileID, dk, err
}

func ewma(old, sample, alpha float64) float64 {
	if old == 0 {
		return sample
	}
	return old*(1-alpha) + sample*alpha
}

// refillLocked starts background fetches up to the target size. A failed
// background fetch is dropped: the next create asks the KMS itself and gets
// the error to report.
func (p *keyPool) refillLocked() {
	if p.closed || p.max <= 0 {
		return
	}
	target := int(math.Ceil(p.rate * p.latency * 2))
	target = min(max(target, 1), p.max)
	for len(p.keys)+p.inflight < target {
		p.inflight++
		go func() {
			fileID, dk, err := p.fetch(p.ctx)
			p.mu.Lock()
			defer p.mu.Unlock()
			p.inflight--
			if err != nil {
				return
			}
			if p.closed {
				dk.Zero()
				return
			}
			p.keys = append(p.keys, pooledKey{fileID: fileID, dk: dk, fetched: time.Now()})
		}()
	}
}

// close zeroes every pooled key and stops background fetches.
func (p *keyPool) close() {
	if p == nil {
		return
	}
	p.cancel()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for _, k := range p.keys {
		k.dk.Zero()
	}
	p.keys = nil
}
