package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/kmsfs/kmsfs/keycache"
)

// catCommand decrypts one file of a volume to stdout without mounting.
func catCommand() *command {
	return &command{
		name: "cat", args: "BACKEND PATH", minArgs: 2, maxArgs: 2,
		summary: "decrypt one file to stdout, without mounting",
		about:   "PATH is the file's path inside the volume (its plaintext name).",
		setup: func(fs *pflag.FlagSet) runFunc {
			var c commonFlags
			c.register(fs)
			return func(ctx context.Context, inv *invocation) error {
				return catFile(ctx, inv, &c, inv.args[0], strings.Trim(inv.args[1], "/"))
			}
		},
	}
}

func catFile(ctx context.Context, inv *invocation, c *commonFlags, spec, name string) error {
	opened, err := openVolume(ctx, c, spec, volumeRequest{
		readOnly: true, limits: keycache.DefaultLimits(), log: slog.New(slog.NewTextHandler(inv.stderr, nil)),
		stderr: inv.stderr, command: "cat",
	})
	if err != nil {
		return err
	}
	defer opened.Close()
	if _, err := decryptTo(ctx, opened, name, inv.stdout); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// decryptTo writes the plaintext of the volume's file name to w and
// returns how many bytes it wrote.
func decryptTo(ctx context.Context, opened *openedVolume, name string, w io.Writer) (int64, error) {
	h, err := opened.Vol.OpenFile(ctx, name, syscall.O_RDONLY, 0, nil)
	if err != nil {
		return 0, err
	}
	defer h.Close()
	buf := make([]byte, 1<<20)
	for off := int64(0); ; {
		n, err := h.ReadAt(ctx, buf, off)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return off, werr
			}
			off += int64(n)
		}
		if errors.Is(err, io.EOF) {
			return off, nil
		}
		if err != nil {
			return off, err
		}
	}
}
