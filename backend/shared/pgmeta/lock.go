package pgmeta

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/kmsfs/kmsfs/backend/shared/meta"
)

// volumeLock is the advisory lock key of the volume lock (one database
// holds one volume, and advisory locks are per database).
const volumeLock = 0x6b6d7376 // "kmsv"

// lockPoll is how often a busy volume lock is tried again.
const lockPoll = 100 * time.Millisecond

// LockVolume holds a session-level advisory lock
// (https://www.postgresql.org/docs/15/explicit-locking.html#ADVISORY-LOCKS)
// on a connection of its own, outside the pool: mounts hold it shared, a
// rewrap exclusively. PostgreSQL drops a session's locks when its
// connection ends, so a killed process never leaves the volume locked.
func (s *Store) LockVolume(ctx context.Context, exclusive bool) (meta.Lock, error) {
	conn, err := pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig.Copy())
	if err != nil {
		return nil, fmt.Errorf("volume lock: %s", oneLine(err))
	}
	try := "SELECT pg_try_advisory_lock_shared($1)"
	if exclusive {
		try = "SELECT pg_try_advisory_lock($1)"
	}
	for {
		var ok bool
		if err := conn.QueryRow(ctx, try, volumeLock).Scan(&ok); err != nil {
			conn.Close(context.Background())
			if ctx.Err() != nil {
				return nil, meta.ErrLockBusy
			}
			return nil, fmt.Errorf("volume lock: %s", oneLine(err))
		}
		if ok {
			break
		}
		select {
		case <-ctx.Done():
			conn.Close(context.Background())
			return nil, meta.ErrLockBusy
		case <-time.After(lockPoll):
		}
	}
	l := &pgLock{conn: conn, lost: make(chan struct{})}
	wctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	l.done.Add(1)
	go l.watch(wctx)
	return l, nil
}

type pgLock struct {
	conn     *pgx.Conn
	lost     chan struct{}
	cancel   context.CancelFunc
	done     sync.WaitGroup
	released sync.Once
}

// watch waits on the connection until it breaks: WaitForNotification
// reads the socket, so it returns at once when the server goes away or the
// connection is cut, and the lock with it.
func (l *pgLock) watch(ctx context.Context) {
	defer l.done.Done()
	for {
		err := l.conn.PgConn().WaitForNotification(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			close(l.lost)
			return
		}
	}
}

func (l *pgLock) Lost() <-chan struct{} { return l.lost }

// Release ends the session, which drops the lock.
func (l *pgLock) Release() error {
	var err error
	l.released.Do(func() {
		l.cancel()
		l.done.Wait()
		err = l.conn.Close(context.Background())
	})
	return err
}
