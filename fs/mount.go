package fs

import (
	"log/slog"
	"time"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/kmsfs/kmsfs/volume"
)

// MountOptions are the user-facing mount options.
type MountOptions struct {
	AllowOther   bool
	ReadOnly     bool
	Debug        bool
	AttrTimeout  time.Duration
	EntryTimeout time.Duration
	// NegativeTimeout caches "no such file" answers.
	NegativeTimeout time.Duration
	// MaxWrite is the largest WRITE/READ request (bytes); 1 MiB lets the
	// kernel batch sequential I/O (Linux >= 4.20 honours max_pages up to 256).
	MaxWrite int
	FsName   string
}

// DefaultMountOptions: one second of attribute and entry caching, the
// go-fuse default and what gocryptfs uses: the backing store changes only
// through this mount.
func DefaultMountOptions() MountOptions {
	return MountOptions{AttrTimeout: time.Second, EntryTimeout: time.Second, MaxWrite: 1 << 20, FsName: "kmsfs"}
}

// Mount mounts vol at mountpoint and returns the running server; call
// Wait on it, and Unmount to stop.
func Mount(vol *volume.Volume, mountpoint string, opt MountOptions, log *slog.Logger) (*fuse.Server, error) {
	root := NewRoot(vol, log)
	attr, entry, neg := opt.AttrTimeout, opt.EntryTimeout, opt.NegativeTimeout
	mopts := fuse.MountOptions{
		AllowOther: opt.AllowOther,
		Debug:      opt.Debug,
		FsName:     opt.FsName,
		Name:       "kmsfs",
		MaxWrite:   opt.MaxWrite,
		// Let the kernel check permissions from the attributes we report:
		// the daemon often runs as root and the backend would allow anything.
		Options:     []string{"default_permissions"},
		DirectMount: true,
		// Readahead as large as a write, so sequential reads reach us in
		// big requests (one pread, many blocks).
		MaxReadAhead: opt.MaxWrite,
	}
	if opt.ReadOnly {
		mopts.Options = append(mopts.Options, "ro")
	}
	return fusefs.Mount(mountpoint, root, &fusefs.Options{
		MountOptions:    mopts,
		AttrTimeout:     &attr,
		EntryTimeout:    &entry,
		NegativeTimeout: &neg,
		NullPermissions: true,
	})
}
