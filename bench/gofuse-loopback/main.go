// Command gofuse-loopback mounts go-fuse's loopback node tree
// (fs.NewLoopbackRoot) over a directory, set up the way kmsfs sets up its
// own mount: 1 MiB requests, no splice, FUSE passthrough off, 1 s attribute
// and entry timeouts. It is bench/compare.sh's yardstick for what a Go FUSE
// daemon costs on a machine with no encryption at all: every request goes
// through the daemon, as every kmsfs request must (kmsfs cannot let the
// kernel read or write the backing file itself, the bytes there are
// ciphertext). go-fuse's own example enables passthrough when it runs as
// root, and its reads and writes then never reach the daemon.
//
//	gofuse-loopback MOUNTPOINT BACKING_DIR     (stays attached; unmount to stop)
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	kmsfs "github.com/kmsfs/kmsfs/fs"
)

func main() {
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: gofuse-loopback MOUNTPOINT BACKING_DIR")
	}
	flag.Parse()
	if flag.NArg() != 2 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(flag.Arg(0), flag.Arg(1)); err != nil {
		fmt.Fprintln(os.Stderr, "gofuse-loopback:", err)
		os.Exit(1)
	}
}

func run(mountpoint, backing string) error {
	root, err := fs.NewLoopbackRoot(backing)
	if err != nil {
		return fmt.Errorf("loopback root %s: %w", backing, err)
	}
	timeout := time.Second
	srv, err := fs.Mount(mountpoint, root, &fs.Options{
		AttrTimeout:     &timeout,
		EntryTimeout:    &timeout,
		NullPermissions: true,
		MountOptions: fuse.MountOptions{
			FsName:        backing,
			Name:          "gofuse-loopback",
			DirectMount:   true,
			MaxWrite:      1 << 20,
			MaxReadAhead:  1 << 20,
			DisableSplice: true,
			// As many /dev/fuse readers as a kmsfs mount has.
			MaxReaders:           kmsfs.FuseReaders(runtime.GOMAXPROCS(0)),
			DisabledCapabilities: fuse.CAP_PASSTHROUGH,
		},
	})
	if err != nil {
		return fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		srv.Unmount()
	}()
	srv.Wait()
	return nil
}
