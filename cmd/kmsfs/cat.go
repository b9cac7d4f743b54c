package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"syscall"

	"github.com/kmsfs/kmsfs/keycache"
	"github.com/kmsfs/kmsfs/volume"
)

// catCommand decrypts one file of a volume to stdout without mounting.
func catCommand(ctx context.Context, args []string) error {
	var c commonFlags
	fs := newFlagSet("cat", "kmsfs cat [flags] BACKEND PATH")
	c.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		fs.Usage()
		return errors.New("want BACKEND and PATH")
	}
	spec, name := fs.Arg(0), strings.Trim(fs.Arg(1), "/")
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	opened, err := openVolume(ctx, &c, spec, true, keycache.DefaultLimits(), log, volume.Options{}, kmsChain{})
	if err != nil {
		return err
	}
	defer opened.Close()
	h, err := opened.vol.OpenFile(ctx, name, syscall.O_RDONLY, 0, nil)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	defer h.Close()
	buf := make([]byte, 1<<20)
	for off := int64(0); ; {
		n, err := h.ReadAt(ctx, buf, off)
		if n > 0 {
			if _, werr := os.Stdout.Write(buf[:n]); werr != nil {
				return werr
			}
			off += int64(n)
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
}

// umountCommand unmounts with fusermount3 when it is there (works for
// non-root mounts), else with umount(2).
func umountCommand(ctx context.Context, args []string) error {
	if len(args) != 1 {
		return errors.New("usage: kmsfs umount MOUNTPOINT")
	}
	return unmount(args[0])
}
