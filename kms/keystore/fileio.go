package keystore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const (
	stateName = "keystore.json"
	lockName  = "keystore.lock"
	// tmpInfix marks temporary files: NAME.tmp-RANDOM. They are written,
	// fsynced and renamed over NAME; one left behind by a crash is never read
	// and is removed by the next Open.
	tmpInfix = ".tmp-"
)

// writeFileAtomic replaces dir/name with data so that a crash at any point
// leaves either the old or the new file, never a partial one: write a temp
// file in the same directory (mode 0600), fsync it, rename it over name, fsync
// the directory so the rename itself is durable. It returns the new file,
// still open (read/write), so the caller can hold on to its inode.
func writeFileAtomic(dir, name string, data []byte) (*os.File, error) {
	f, err := os.CreateTemp(dir, name+tmpInfix+"*") // CreateTemp uses mode 0600
	if err != nil {
		return nil, err
	}
	tmp := f.Name()
	fail := func(err error) (*os.File, error) {
		f.Close()
		os.Remove(tmp)
		return nil, err
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Chmod(0o600); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return fail(err)
	}
	if err := syncDir(dir); err != nil {
		// The rename happened; the file is valid but its durability is not
		// guaranteed. Report it: the caller treats the write as failed.
		f.Close()
		return nil, err
	}
	return f, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

// removeStaleTemps deletes temp files left by a crashed writer. Call it only
// while holding the keystore lock: writers create temps only under the lock.
func removeStaleTemps(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		n := e.Name()
		if strings.HasPrefix(n, stateName+tmpInfix) || strings.HasPrefix(n, rootKeyName+tmpInfix) {
			if err := os.Remove(filepath.Join(dir, n)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
	}
	return nil
}

// fileLock is an exclusive advisory lock (flock) on the keystore's lock file.
// flock locks belong to the open file description, so two Keystore values in
// one process exclude each other just as two processes do.
type fileLock struct {
	f *os.File
}

func openLock(dir string) (*fileLock, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	return &fileLock{f: f}, nil
}

// lock takes the lock, polling so that ctx can cancel the wait.
func (l *fileLock) lock(ctx context.Context) error {
	wait := time.Millisecond
	for {
		err := unix.Flock(int(l.f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("lock %s: %w", l.f.Name(), err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("lock %s: %w", l.f.Name(), ctx.Err())
		case <-t.C:
		}
		if wait < 20*time.Millisecond {
			wait *= 2
		}
	}
}

func (l *fileLock) unlock() {
	unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
}

func (l *fileLock) close() error { return l.f.Close() }

// fileID identifies the inode a path names. The keystore keeps its state file
// open, so the inode cannot be freed and reused while held: a different
// fileID at the path means another writer renamed a new state file in.
type fileID struct {
	dev, ino uint64
}

func statID(path string) (fileID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fileID{}, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	return fileID{dev: uint64(st.Dev), ino: st.Ino}, nil
}

func fstatID(f *os.File) (fileID, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fileID{}, &os.PathError{Op: "fstat", Path: f.Name(), Err: err}
	}
	return fileID{dev: uint64(st.Dev), ino: st.Ino}, nil
}
