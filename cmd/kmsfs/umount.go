package main

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"syscall"

	"github.com/spf13/pflag"
)

func umountCommand() *command {
	return &command{
		name: "umount", aliases: []string{"unmount"}, args: "MOUNTPOINT", minArgs: 1, maxArgs: 1,
		summary: "unmount",
		about:   "Unmounts with fusermount3 when it is there (works for non-root mounts), else with umount(2).",
		setup: func(fs *pflag.FlagSet) runFunc {
			return func(ctx context.Context, inv *invocation) error { return unmount(inv.args[0]) }
		},
	}
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
