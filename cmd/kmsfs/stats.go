package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/pflag"

	"github.com/kmsfs/kmsfs/metrics"
)

// statsCommand prints a running mount's counters (KMS calls, cache, I/O).
func statsCommand() *command {
	return &command{
		name: "stats", args: "MOUNTPOINT", minArgs: 1, maxArgs: 1,
		summary: "KMS calls, key cache and I/O counters of a mount",
		setup: func(fs *pflag.FlagSet) runFunc {
			asJSON := fs.Bool("json", false, "print the raw JSON snapshot")
			return func(ctx context.Context, inv *invocation) error {
				mnt, err := filepath.Abs(inv.args[0])
				if err != nil {
					return err
				}
				snap, err := metrics.Fetch(ctx, os.Getenv(envRuntimeDir), mnt)
				if err != nil {
					return err
				}
				if *asJSON {
					enc := json.NewEncoder(inv.stdout)
					enc.SetIndent("", "  ")
					return enc.Encode(snap)
				}
				_, err = fmt.Fprint(inv.stdout, metrics.FormatText(snap))
				return err
			}
		},
	}
}
