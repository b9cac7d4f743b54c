package main

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/kmsfs/kmsfs/backend/shared"
	"github.com/kmsfs/kmsfs/volume"
)

// registerShared adds the flag of shared volumes.
func (c *commonFlags) registerShared(fs *pflag.FlagSet) {
	fs.StringVar(&c.meta, "meta", "", "metadata database of a shared volume (postgres://...; password from the URL, PGPASSWORD or ~/.pgpass); default: the one the volume config names")
}

// sharedMeta is the metadata URL a new volume's config records: without
// its password, which stays with the user (PGPASSWORD, ~/.pgpass).
func (c *commonFlags) sharedMeta() string {
	if c.meta == "" {
		return ""
	}
	if !strings.Contains(c.meta, "://") { // libpq key=value form
		var keep []string
		for _, f := range strings.Fields(c.meta) {
			if !strings.HasPrefix(f, "password=") {
				keep = append(keep, f)
			}
		}
		return strings.Join(keep, " ")
	}
	u, err := url.Parse(c.meta)
	if err != nil || u.User == nil {
		return c.meta
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.User(u.User.Username())
	}
	return u.String()
}

// gcCommand deletes the chunk objects of a shared volume that no file
// points to any more.
func gcCommand(ctx context.Context, args []string) error {
	var c commonFlags
	fs := newFlagSet("gc", "kmsfs gc [flags] s3://bucket/prefix   (a shared volume)")
	c.register(fs)
	grace := fs.Duration("grace", shared.DefaultGCGrace, "delete only chunks unreferenced (or uploaded) longer ago than this: readers that opened a file before it was overwritten, and uploads not yet committed, still need theirs")
	sweep := fs.Bool("sweep", false, "also list every chunk object in the bucket and delete those no file points to (left by a client killed mid-write)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return fmt.Errorf("want exactly one volume")
	}
	be, err := volume.OpenBackend(ctx, fs.Arg(0), c.backendOptions())
	if err != nil {
		return err
	}
	defer be.Close()
	g, ok := be.(interface {
		GC(context.Context, shared.GCOptions) (shared.GCResult, error)
	})
	if !ok {
		return fmt.Errorf("%s is not a shared volume", fs.Arg(0))
	}
	start := time.Now()
	r, err := g.GC(ctx, shared.GCOptions{Grace: *grace, Sweep: *sweep})
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stdout, "gc: deleted %d chunk objects, kept %d still referenced, listed %d (%s)\n", r.Deleted, r.Kept, r.Scanned, time.Since(start).Round(time.Millisecond))
	return nil
}
