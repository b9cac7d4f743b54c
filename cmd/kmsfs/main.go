// Command kmsfs mounts and manages kmsfs encrypted volumes and their KMS.
//
// main stays a thin floor: the table of commands (commands.go) parses
// flags and hands over to internal/compose, which builds the backend and
// KMS, and to the packages that hold the logic (volume, fs, kms/...).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	os.Exit(kmsfsMain())
}

// kmsfsMain is the whole program: the tests run it as "kmsfs".
func kmsfsMain() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return run(ctx, os.Args[1:], os.Stdout, os.Stderr)
}
