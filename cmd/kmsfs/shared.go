package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/kmsfs/kmsfs/backend/shared"
	"github.com/kmsfs/kmsfs/internal/compose"
	"github.com/kmsfs/kmsfs/keycache"
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

// salvageCommand is `kmsfs salvage`: the files of a shared volume whose
// metadata database is lost, rebuilt from the bucket and the KMS alone.
func salvageCommand() *command {
	return &command{
		name: "salvage", args: "s3://BUCKET/PREFIX DIR", minArgs: 2, maxArgs: 2,
		summary: "rebuild a shared volume's files from its bucket alone (metadata database lost)",
		about: `For a shared volume whose metadata database is lost: every chunk object
carries its inode number, generation, stream range and the file's wrapped data
key, so each file's content is rebuilt from the bucket, decrypted with the KMS,
and written to DIR/inode-N (the names, directories, attributes and xattrs were
in the database only). Nothing in the bucket is changed. Chunks that cannot be
used, inodes missing their first chunk, and holes (chunks not stored, read as
zeros) are listed on stderr. A file deleted, or cut to a multiple of the chunk
size, within the gc grace period before the database was lost may come back,
or with its old tail; run it before any gc.`,
		setup: func(fs *pflag.FlagSet) runFunc {
			var c commonFlags
			c.register(fs)
			return func(ctx context.Context, inv *invocation) error {
				c.salvage = true
				return salvageFiles(ctx, inv, &c, inv.args[0], inv.args[1])
			}
		},
	}
}

func salvageFiles(ctx context.Context, inv *invocation, c *commonFlags, spec, dir string) error {
	if !compose.IsS3(spec) {
		return fmt.Errorf("%s: a shared volume is an s3://BUCKET/PREFIX", spec)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	opened, err := openVolume(ctx, c, spec, volumeRequest{
		readOnly: true, limits: keycache.DefaultLimits(), log: slog.New(slog.NewTextHandler(inv.stderr, nil)),
		stderr: inv.stderr, command: "salvage",
	})
	if err != nil {
		return err
	}
	defer opened.Close()
	sv := opened.Backend.(*shared.Salvage)
	for _, s := range sv.Skipped {
		fmt.Fprintf(inv.stderr, "salvage: skipped %s\n", s)
	}
	for _, s := range sv.Notes {
		fmt.Fprintf(inv.stderr, "salvage: note: %s\n", s)
	}
	var files, failed int
	var bytes int64
	for _, name := range sv.Files() {
		n, err := salvageOne(ctx, opened, name, filepath.Join(dir, name))
		if err != nil {
			fmt.Fprintf(inv.stderr, "salvage: %s: %v\n", name, err)
			failed++
			continue
		}
		files++
		bytes += n
	}
	fmt.Fprintf(inv.stdout, "salvage: %d files (%d bytes) written to %s; %d failed, %d chunks or inodes skipped\n", files, bytes, dir, failed, len(sv.Skipped))
	if failed > 0 {
		return fmt.Errorf("%d files could not be rebuilt", failed)
	}
	return nil
}

// salvageOne decrypts one rebuilt file into path (written under a
// temporary name and renamed, so a file that fails leaves nothing).
func salvageOne(ctx context.Context, opened *openedVolume, name, path string) (int64, error) {
	out, err := os.OpenFile(path+".part", os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, err
	}
	defer os.Remove(path + ".part")
	n, err := decryptTo(ctx, opened, name, out)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return n, err
	}
	return n, os.Rename(path+".part", path)
}
