package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/kmsfs/kmsfs/metrics"
)

// statsCommand prints a running mount's counters (KMS calls, cache, I/O).
func statsCommand(ctx context.Context, args []string) error {
	fs := newFlagSet("stats", "kmsfs stats [--json] MOUNTPOINT")
	asJSON := fs.Bool("json", false, "print the raw JSON snapshot")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errors.New("want MOUNTPOINT")
	}
	mnt, err := filepath.Abs(fs.Arg(0))
	if err != nil {
		return err
	}
	snap, err := metrics.Fetch(ctx, mnt)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(snap)
	}
	fmt.Print(metrics.FormatText(snap))
	return nil
}
