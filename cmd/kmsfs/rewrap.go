package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/kmsfs/kmsfs/volume"
)

// rewrapCommand re-wraps every key of a volume under another KMS key, or
// under the current material of its own key, without touching data.
func rewrapCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c commonFlags
	fs := newFlagSet("rewrap", "kmsfs rewrap [flags] BACKEND")
	c.register(fs)
	toKey := fs.String("to-key", "", "KMS key (ID, ARN or alias) to re-wrap under (default: the volume's key, re-wrapping under its current material after a rotation)")
	parallel := fs.Int("parallel", 8, "files in flight at once (hides KMS latency)")
	quiet := fs.Bool("quiet", false, "no progress lines")
	every := fs.Duration("progress-interval", time.Second, "time between progress lines (and saved checkpoints)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errors.New("want BACKEND")
	}
	spec := fs.Arg(0)
	be, err := volume.OpenBackend(ctx, spec, c.backendOptions())
	if err != nil {
		return err
	}
	defer be.Close()
	cfg, err := volume.ReadConfig(ctx, be)
	if err != nil {
		return err
	}
	ko, err := c.kmsOptions(cfg)
	if err != nil {
		return err
	}
	k, err := volume.OpenKMS(ctx, ko)
	if err != nil {
		return err
	}
	defer k.Close()
	progress := func(p volume.RewrapProgress) {
		if !*quiet && !p.Done {
			fmt.Fprintf(stderr, "kmsfs rewrap: %s\n", rewrapSummary(p))
		}
	}
	record, closeAudit, err := c.openAudit("rewrap")
	if err != nil {
		return err
	}
	defer closeAudit()
	prog, err := volume.Rewrap(ctx, be, kmsChain{audit: record}.wrap(k), volume.RewrapOptions{
		ToKey: *toKey, Parallel: *parallel, Progress: progress, ProgressEvery: *every,
		Logger: slog.New(slog.NewTextHandler(stderr, nil)),
	})
	if prog.KeyARN != "" { // it got as far as the KMS
		fmt.Fprintf(stdout, "%s: %s under %s\n", spec, rewrapSummary(prog), prog.KeyARN)
	}
	return err
}

func rewrapSummary(p volume.RewrapProgress) string {
	return fmt.Sprintf("%d files: %d rewrapped, %d skipped, %d failed; %d ReEncrypt calls", p.Files, p.Rewrapped, p.Skipped, p.Failed, p.ReEncrypts)
}
