package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/spf13/pflag"

	"github.com/kmsfs/kmsfs/internal/compose"
	"github.com/kmsfs/kmsfs/volume"
)

// rewrapCommand re-wraps every key of a volume under another KMS key, or
// under the current material of its own key, without touching data.
func rewrapCommand() *command {
	return &command{
		name: "rewrap", args: "BACKEND", minArgs: 1, maxArgs: 1,
		summary: "re-wrap every file key under another KMS key (ReEncrypt; data untouched)",
		about: `Re-wraps the key of every file with the KMS's ReEncrypt: only headers change,
and plaintext keys never leave the KMS. Interrupted, it resumes when run again.
Progress goes to stderr: a bar on a terminal, else a line per --progress-interval.`,
		setup: func(fs *pflag.FlagSet) runFunc {
			var c commonFlags
			c.register(fs)
			toKey := fs.String("to-key", "", "KMS `KEY` (ID, ARN or alias) to re-wrap under (default: the volume's key, re-wrapping under its current material after a rotation)")
			parallel := fs.Int("parallel", 8, "files in flight at once (`N`; hides KMS latency)")
			quiet := fs.BoolP("quiet", "q", false, "no progress")
			every := fs.Duration("progress-interval", time.Second, "time between progress updates and saved checkpoints (`DURATION`)")
			return func(ctx context.Context, inv *invocation) error {
				return rewrap(ctx, inv, &c, volume.RewrapOptions{ToKey: *toKey, Parallel: *parallel, ProgressEvery: *every}, *quiet)
			}
		},
	}
}

func rewrap(ctx context.Context, inv *invocation, c *commonFlags, opts volume.RewrapOptions, quiet bool) error {
	spec := inv.args[0]
	ko, err := c.kmsOptions(inv.stderr)
	if err != nil {
		return err
	}
	be, err := compose.OpenBackend(ctx, spec, c.backendOptions())
	if err != nil {
		return err
	}
	defer be.Close()
	cfg, err := volume.ReadConfig(ctx, be)
	if err != nil {
		return err
	}
	k, err := compose.OpenKMS(ctx, ko.ForVolume(cfg))
	if err != nil {
		return err
	}
	defer k.Close()
	record, closeAudit, err := c.openAudit("rewrap")
	if err != nil {
		return err
	}
	defer closeAudit()

	bar := newProgress(inv.stderr, "kmsfs rewrap: ", quiet)
	total := 0
	if !quiet {
		// One listing of the tree, so that progress has a total and an ETA.
		if total, err = volume.RewrapCount(ctx, be); err != nil {
			return err
		}
	}
	bar.begin("rewrap", total)
	opts.Progress = func(p volume.RewrapProgress) {
		if !p.Done {
			bar.update(p.Files, fmt.Sprintf("%d rewrapped, %d skipped, %d failed; %d ReEncrypt calls", p.Rewrapped, p.Skipped, p.Failed, p.ReEncrypts))
		}
	}
	opts.Logger = slog.New(slog.NewTextHandler(progressLog{bar, inv.stderr}, nil))
	prog, err := volume.Rewrap(ctx, be, compose.Chain{Audit: record}.Wrap(k), opts)
	bar.finish()
	if prog.KeyARN != "" { // it got as far as the KMS
		fmt.Fprintf(inv.stdout, "%s: %s under %s\n", spec, rewrapSummary(prog), prog.KeyARN)
	}
	return err
}

func rewrapSummary(p volume.RewrapProgress) string {
	return fmt.Sprintf("%d files: %d rewrapped, %d skipped, %d failed; %d ReEncrypt calls", p.Files, p.Rewrapped, p.Skipped, p.Failed, p.ReEncrypts)
}
