package main

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/kmsfs/kmsfs/backend/shared"
	"github.com/kmsfs/kmsfs/internal/compose"
)

// registerShared adds the flag of shared volumes.
func (c *commonFlags) registerShared(fs *pflag.FlagSet) {
	fs.StringVar(&c.meta, "meta", "", "metadata database `URL` of a shared volume (postgres://...; password from the URL, PGPASSWORD or ~/.pgpass); default: the one the volume config names")
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

// gcCommand is `kmsfs gc`: it deletes the chunk objects of a shared
// volume that no file points to any more.
func gcCommand() *command {
	return &command{
		name: "gc", args: "s3://BUCKET/PREFIX", minArgs: 1, maxArgs: 1,
		summary: "delete the unreferenced chunks of a shared volume",
		about: `Deletes the chunk objects no file of the shared volume points to any more:
those recorded as replaced or removed (a read-write mount also does this every
10 minutes), and with --sweep every chunk object in the bucket that no file
references (left by a client killed mid-write). A chunk a committed file points
to is never deleted.`,
		setup: func(fs *pflag.FlagSet) runFunc {
			var c commonFlags
			c.register(fs)
			grace := fs.Duration("grace", shared.DefaultGCGrace, "delete only chunks unreferenced (or uploaded) longer ago than `DURATION`: readers that opened a file before it was overwritten, and uploads not yet committed, still need theirs")
			sweep := fs.Bool("sweep", false, "also list every chunk object in the bucket and delete those no file points to")
			return func(ctx context.Context, inv *invocation) error {
				return collectGarbage(ctx, inv, &c, inv.args[0], shared.GCOptions{Grace: *grace, Sweep: *sweep})
			}
		},
	}
}

func collectGarbage(ctx context.Context, inv *invocation, c *commonFlags, spec string, o shared.GCOptions) error {
	be, err := compose.OpenBackend(ctx, spec, c.backendOptions())
	if err != nil {
		return err
	}
	defer be.Close()
	g, ok := be.(interface {
		GC(context.Context, shared.GCOptions) (shared.GCResult, error)
	})
	if !ok {
		return fmt.Errorf("%s is not a shared volume", spec)
	}
	start := time.Now()
	r, err := g.GC(ctx, o)
	if err != nil {
		return err
	}
	fmt.Fprintf(inv.stdout, "gc: deleted %d chunk objects, kept %d still referenced, listed %d (%s)\n", r.Deleted, r.Kept, r.Scanned, time.Since(start).Round(time.Millisecond))
	return nil
}
