package shared

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/kmsfs/kmsfs/backend"
	"github.com/kmsfs/kmsfs/backend/shared/meta"
)

// A shared volume's lock lives in the metadata store: every read-write
// mount holds it shared, `kmsfs rewrap` exclusively. A rewrap then never
// runs beside a mount, which would go on wrapping new files' keys under
// the key the rewrap moves the volume away from.
//
// The store drops a holder's lock when the connection holding it breaks
// (the database restarted, the network failed). The holder then stops
// changing the volume (a rewrap may have started meanwhile) and takes the
// lock again as soon as it can; a change waits up to relockWait for that,
// then fails with EIO.

// relockWait is how long a change waits for a lost lock to be taken again.
const relockWait = 5 * time.Second

// relockEvery is how often a lost lock is tried again.
const relockEvery = 200 * time.Millisecond

// volumeLock is the lock this process holds, and whether it holds it now.
type volumeLock struct {
	mu sync.Mutex
	// fenced is nil while the lock is held (or none is taken), else a
	// channel closed when it is held again.
	fenced chan struct{}
}

// LockVolume takes the volume lock exclusively (a rewrap).
func (b *Backend) LockVolume(ctx context.Context) (func() error, error) {
	return b.holdLock(ctx, true)
}

// LockVolumeShared takes the volume lock shared (a read-write mount).
func (b *Backend) LockVolumeShared(ctx context.Context) (func() error, error) {
	return b.holdLock(ctx, false)
}

var _ backend.SharedLocker = (*Backend)(nil)

func (b *Backend) holdLock(ctx context.Context, exclusive bool) (func() error, error) {
	l, err := b.store.LockVolume(ctx, exclusive)
	if errors.Is(err, meta.ErrLockBusy) {
		if exclusive {
			return nil, fmt.Errorf("%s: %w: a read-write mount holds it; unmount it everywhere first", b.url, backend.ErrVolumeBusy)
		}
		return nil, fmt.Errorf("%s: %w: a rewrap holds it", b.url, backend.ErrVolumeBusy)
	}
	if err != nil {
		return nil, err
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	var mu sync.Mutex // guards l against the keeper replacing it
	go func() {
		defer close(done)
		for {
			mu.Lock()
			lost := l.Lost()
			mu.Unlock()
			select {
			case <-stop:
				return
			case <-lost:
			}
			b.fence()
			b.log.Warn("shared volume: lost the volume lock (the metadata database connection broke); changes wait until it is held again")
			for {
				select {
				case <-stop:
					return
				case <-time.After(relockEvery):
				}
				tctx, cancel := context.WithTimeout(b.ctx, time.Second)
				nl, err := b.store.LockVolume(tctx, exclusive)
				cancel()
				if err == nil {
					mu.Lock()
					l.Release()
					l = nl
					mu.Unlock()
					b.unfence()
					b.log.Info("shared volume: holds the volume lock again")
					break
				}
			}
		}
	}()
	return func() error {
		close(stop)
		<-done
		mu.Lock()
		defer mu.Unlock()
		return l.Release()
	}, nil
}

func (b *Backend) fence() {
	b.lock.mu.Lock()
	defer b.lock.mu.Unlock()
	if b.lock.fenced == nil {
		b.lock.fenced = make(chan struct{})
	}
}

func (b *Backend) unfence() {
	b.lock.mu.Lock()
	defer b.lock.mu.Unlock()
	if b.lock.fenced != nil {
		close(b.lock.fenced)
		b.lock.fenced = nil
	}
}

// guard lets a change of the volume through while this process holds the
// volume lock it took, waiting for a lost one to be taken again.
func (b *Backend) guard(op, name string) error {
	b.lock.mu.Lock()
	ch := b.lock.fenced
	b.lock.mu.Unlock()
	if ch == nil {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-time.After(relockWait):
		b.log.Error("shared volume: change refused: the volume lock is not held", "op", op, "path", "/"+name)
		return &os.PathError{Op: op, Path: "/" + name, Err: syscall.EIO}
	}
}
