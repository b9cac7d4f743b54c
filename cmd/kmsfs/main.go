// Command kmsfs mounts and manages kmsfs encrypted volumes and their KMS.
//
// main stays a thin floor: it parses flags and hands over to the packages
// that hold the logic (volume, fs, kms/...).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

const usage = `kmsfs: an envelope-encrypting FUSE filesystem

Usage:
  kmsfs init [flags] BACKEND              create a volume (and a KMS key on the embedded KMS)
  kmsfs mount [flags] BACKEND MOUNTPOINT  mount a volume (returns once mounted)
  kmsfs umount MOUNTPOINT                 unmount
  kmsfs cat [flags] BACKEND PATH          decrypt one file to stdout, without mounting
  kmsfs rewrap [flags] BACKEND            re-wrap every file key under another KMS key (ReEncrypt; data untouched)
  kmsfs gc [flags] BACKEND                delete the unreferenced chunks of a shared volume
  kmsfs stats [--json] MOUNTPOINT         KMS calls, key cache and I/O counters of a mount
  kmsfs bench [flags]                     compare per-object and bucket-key modes (files/s, KMS calls)
  kmsfs kms SUBCOMMAND ...                KMS server and key administration (kmsfs kms help)

Run 'kmsfs COMMAND --help' for a command's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "init":
		err = initCommand(ctx, args)
	case "mount":
		err = mountCommand(ctx, args)
	case "umount", "unmount":
		err = umountCommand(ctx, args)
	case "cat":
		err = catCommand(ctx, args)
	case "rewrap":
		err = rewrapCommand(ctx, args, os.Stdout, os.Stderr)
	case "gc":
		err = gcCommand(ctx, args)
	case "stats":
		err = statsCommand(ctx, args)
	case "bench":
		err = benchCommand(ctx, args)
	case "kms":
		err = kmsCommand(ctx, args, os.Stdout, os.Stderr)
	case "help", "-h", "--help":
		fmt.Print(usage)
		return
	default:
		// mount(8) with type fuse.kmsfs runs, through fuse3's mount.fuse3,
		// "kmsfs SOURCE MOUNTPOINT -o OPTIONS": a path where a command goes.
		if strings.Contains(cmd, "/") && len(args) >= 1 {
			err = mountCommand(ctx, os.Args[1:])
			break
		}
		fmt.Fprintf(os.Stderr, "kmsfs: unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "kmsfs %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}
