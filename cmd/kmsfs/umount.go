package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/kmsfs/kmsfs/backend"
	kfs "github.com/kmsfs/kmsfs/fs"
	"github.com/kmsfs/kmsfs/internal/compose"
)

func umountCommand() *command {
	return &command{
		name: "umount", aliases: []string{"unmount"}, args: "MOUNTPOINT", minArgs: 1, maxArgs: 1,
		summary: "unmount",
		about: "Unmounts with fusermount3 when it is there (works for non-root mounts), else with umount(2). " +
			"For a local volume it then waits (up to --wait) until the mount process has finished: " +
			"files closed just before are stored when it returns.",
		setup: func(fs *pflag.FlagSet) runFunc {
			wait := fs.Duration("wait", 2*time.Minute, "how long to wait, as a `DURATION`, for the mount process to finish storing closed files")
			return func(ctx context.Context, inv *invocation) error {
				return unmountAndWait(ctx, inv.args[0], *wait)
			}
		},
	}
}

// unmountAndWait unmounts mnt and, for a read-write mount of a local
// volume, waits until its process has released the volume's lock: the
// kernel answers umount(2) at once, while the process may still be
// storing files closed just before (a compressing volume writes them out
// in the background once they are closed: volume/writeout.go).
func unmountAndWait(ctx context.Context, mnt string, wait time.Duration) error {
	fstype, source, readOnly, mounted := kfs.MountSource(mnt)
	// Its mount process goes on serving another mountpoint (a bind).
	shared := kfs.OtherMountsOf(mnt)
	if err := unmount(mnt); err != nil {
		return err
	}
	// A read-only mount holds no lock and stores nothing.
	if !mounted || readOnly || shared || fstype != "fuse.kmsfs" || compose.IsS3(source) || !filepath.IsAbs(source) {
		return nil
	}
	if _, err := os.Stat(filepath.Join(source, ".kmsfs", "volume.json")); err != nil {
		return nil
	}
	be, err := compose.OpenBackend(ctx, source, compose.BackendOptions{})
	if err != nil {
		return nil // not ours to judge: the unmount itself worked
	}
	defer be.Close()
	locker, ok := be.(backend.Locker)
	if !ok {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	release, err := locker.LockVolume(ctx)
	if err != nil {
		return fmt.Errorf("unmounted %s, but its mount process is still storing files after %v: %w", mnt, wait, err)
	}
	return release()
}

func unmount(mnt string) error {
	if path, err := exec.LookPath("fusermount3"); err == nil {
		out, err := exec.Command(path, "-u", mnt).CombinedOutput()
		if err == nil {
			return nil
		}
		if serr := syscall.Unmount(mnt, 0); serr == nil {
			return nil
		}
		return fmt.Errorf("unmount %s: %s", mnt, strings.TrimSpace(string(out)))
	}
	if err := syscall.Unmount(mnt, 0); err != nil {
		return fmt.Errorf("unmount %s: %w", mnt, err)
	}
	return nil
}
