package main

import (
	"fmt"
	"os/exec"
	"strings"
	"syscall"
)

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
