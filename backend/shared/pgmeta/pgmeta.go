// Package pgmeta is the PostgreSQL metadata store of shared volumes
// (meta.Store), on github.com/jackc/pgx/v5. One database (or one schema,
// chosen with search_path in the URL) holds one volume.
//
// Every method is one transaction at READ COMMITTED. A tree change locks
// the rows it depends on by updating them first (the parent directory's
// times and link count), so a create racing an rmdir of its directory, or
// two creates of one name, come out as one of the two serial orders;
// renames also take a volume-wide advisory lock, so that two renames on two
// machines cannot together move a directory below itself. Serialisation
// failures, deadlocks and unique violations of a racing create are retried.
package pgmeta

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/backend/shared/meta"
)

// connectTimeout bounds connecting to the database, so a wrong host fails
// a command in seconds rather than the TCP timeout.
const connectTimeout = 10 * time.Second

// defaultPoolSize is the connection pool size of a mount unless the URL
// sets pool_max_conns (see docs/BENCHMARKS.md for how it was chosen).
const defaultPoolSize = 16

// renameLock is the advisory lock key that serialises renames.
const renameLock = 0x6b6d7366 // "kmsf"

// Store is a meta.Store in PostgreSQL.
type Store struct {
	pool *pgxpool.Pool
}

var _ meta.Store = (*Store)(nil)

// Open connects to the database at url (a postgres:// URL or a libpq
// key=value string; the password may come from PGPASSWORD or ~/.pgpass,
// TLS from sslmode, as with libpq) and checks that it answers.
func Open(ctx context.Context, url string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("metadata URL: %s", oneLine(err))
	}
	if cfg.ConnConfig.ConnectTimeout == 0 || cfg.ConnConfig.ConnectTimeout > connectTimeout {
		cfg.ConnConfig.ConnectTimeout = connectTimeout
	}
	// pgxpool's default (4 or one per CPU) queues a mount's requests
	// behind background collection and readers on small machines; an
	// explicit pool_max_conns in the URL is kept.
	if !strings.Contains(url, "pool_max_conns") {
		cfg.MaxConns = max(cfg.MaxConns, defaultPoolSize)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("metadata database: %s", oneLine(err))
	}
	pctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	if err := pool.Ping(pctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("metadata database %s: %s", describe(cfg.ConnConfig), oneLine(err))
	}
	return &Store{pool: pool}, nil
}

func describe(c *pgx.ConnConfig) string {
	return fmt.Sprintf("%s:%d/%s", c.Host, c.Port, c.Database)
}

func oneLine(err error) string { return strings.Join(strings.Fields(err.Error()), " ") }

// Close closes every connection.
func (s *Store) Close() { s.pool.Close() }

// tx runs fn in a transaction, again if it failed in a way that a retry
// resolves (a serialisation failure, a deadlock, a racing insert).
func (s *Store) tx(ctx context.Context, fn func(pgx.Tx) error) error {
	for attempt := 0; ; attempt++ {
		err := pgx.BeginFunc(ctx, s.pool, fn)
		var pe *pgconn.PgError
		if err != nil && attempt < 20 && errors.As(err, &pe) && (pe.Code == "40001" || pe.Code == "40P01" || pe.Code == "23505") {
			time.Sleep(time.Duration(attempt+1) * 2 * time.Millisecond)
			continue
		}
		return err
	}
}

func names(path []string) [][]byte {
	out := make([][]byte, len(path))
	for i, p := range path {
		out[i] = []byte(p)
	}
	return out
}

const attrColsI = `i.ino, i.mode, i.uid, i.gid, i.rdev, i.size, i.nlink, i.generation, i.atime, i.mtime, i.ctime`

func scanAttr(row pgx.Row, extra ...any) (meta.Attr, error) {
	var a meta.Attr
	var ino, mode, uid, gid, rdev int64
	var nlink int32
	var at, mt, ct int64
	dst := append(extra, &ino, &mode, &uid, &gid, &rdev, &a.Size, &nlink, &a.Gen, &at, &mt, &ct)
	if err := row.Scan(dst...); err != nil {
		return a, err
	}
	a.Atime, a.Mtime, a.Ctime = time.Unix(0, at), time.Unix(0, mt), time.Unix(0, ct)
	a.Ino, a.Mode, a.Uid, a.Gid, a.Rdev, a.Nlink = uint64(ino), uint32(mode), uint32(uid), uint32(gid), uint64(rdev), uint32(nlink)
	return a, nil
}

// querier is a transaction or the pool.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// RecordAccess moves inode ino's atime to the database's clock, as every
// other time of the store, and leaves its ctime (meta.AccessRecorder).
func (s *Store) RecordAccess(ctx context.Context, ino uint64) (time.Time, error) {
	var at int64
	err := s.pool.QueryRow(ctx, `UPDATE kmsfs_inodes SET atime = `+nowNS+` WHERE ino = $1 RETURNING atime`, int64(ino)).Scan(&at)
	if errors.Is(err, pgx.ErrNoRows) {
		return time.Time{}, syscall.ENOENT
	}
	if err != nil {
		return time.Time{}, err
	}
	return time.Unix(0, at), nil
}

var _ meta.AccessRecorder = (*Store)(nil)

// resolve returns the attributes of the inode at path.
func resolve(ctx context.Context, q querier, path []string) (meta.Attr, error) {
	var depth int
	a, err := scanAttr(q.QueryRow(ctx, strings.Replace(resolveSQL, "w.depth, i.ino, i.mode", "w.depth, "+attrColsI, 1), names(path)), &depth)
	if errors.Is(err, pgx.ErrNoRows) {
		return a, syscall.ENOENT // no root: not a volume
	}
	if err != nil {
		return a, err
	}
	if depth < len(path) {
		if a.Mode&syscall.S_IFMT != syscall.S_IFDIR {
			return a, syscall.ENOTDIR
		}
		return a, syscall.ENOENT
	}
	return a, nil
}

func isDir(mode uint32) bool { return mode&syscall.S_IFMT == syscall.S_IFDIR }

// resolveDir returns the inode of the directory at path.
func resolveDir(ctx context.Context, q pgx.Tx, path []string) (uint64, error) {
	a, err := resolve(ctx, q, path)
	if err != nil {
		return 0, err
	}
	if !isDir(a.Mode) {
		return 0, syscall.ENOTDIR
	}
	return a.Ino, nil
}

// entry returns the inode and mode named name in directory parent.
func entry(ctx context.Context, q pgx.Tx, parent uint64, name string) (ino uint64, mode uint32, ok bool, err error) {
	var i, m int64
	err = q.QueryRow(ctx, `SELECT d.ino, i.mode FROM kmsfs_dentries d JOIN kmsfs_inodes i ON i.ino = d.ino
		WHERE d.parent = $1 AND d.name = $2`, int64(parent), []byte(name)).Scan(&i, &m)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, 0, false, nil
	}
	return uint64(i), uint32(m), err == nil, err
}

// touchDir locks directory ino's row for the rest of the transaction and
// sets its times, changing its link count by dlink; a directory that is
// gone is ENOENT.
func touchDir(ctx context.Context, q pgx.Tx, ino uint64, dlink int) error {
	tag, err := q.Exec(ctx, `UPDATE kmsfs_inodes SET mtime = `+nowNS+`, ctime = `+nowNS+`, nlink = nlink + $2 WHERE ino = $1`, int64(ino), dlink)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return syscall.ENOENT
	}
	return nil
}

func emptyDir(ctx context.Context, q pgx.Tx, ino uint64) error {
	var any bool
	if err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM kmsfs_dentries WHERE parent = $1)`, int64(ino)).Scan(&any); err != nil {
		return err
	}
	if any {
		return syscall.ENOTEMPTY
	}
	return nil
}

// dropLink removes one link of inode ino (whose entry is already deleted);
// an inode left without links is deleted and its chunks become garbage.
func dropLink(ctx context.Context, q pgx.Tx, ino uint64, dir bool) error {
	var nlink int32
	if dir {
		nlink = 0
	} else if err := q.QueryRow(ctx, `UPDATE kmsfs_inodes SET nlink = nlink - 1, ctime = `+nowNS+` WHERE ino = $1 RETURNING nlink`, int64(ino)).Scan(&nlink); err != nil {
		return err
	}
	if nlink > 0 {
		return nil
	}
	if _, err := q.Exec(ctx, `INSERT INTO kmsfs_garbage (key) SELECT key FROM kmsfs_chunks WHERE ino = $1 ON CONFLICT DO NOTHING`, int64(ino)); err != nil {
		return err
	}
	_, err := q.Exec(ctx, `DELETE FROM kmsfs_inodes WHERE ino = $1`, int64(ino))
	return err
}

// Volume reads the volume record.
func (s *Store) Volume(ctx context.Context) (meta.Volume, error) {
	var v meta.Volume
	var reg *string
	if err := s.pool.QueryRow(ctx, `SELECT to_regclass('kmsfs_volume')::text`).Scan(&reg); err != nil {
		return v, fmt.Errorf("metadata database: %s", oneLine(err))
	}
	if reg == nil {
		return v, meta.ErrNoVolume
	}
	var sv int32
	err := s.pool.QueryRow(ctx, `SELECT volume_id, schema_version FROM kmsfs_volume`).Scan(&v.ID, &sv)
	if errors.Is(err, pgx.ErrNoRows) {
		return v, meta.ErrNoVolume
	}
	if err != nil {
		return v, fmt.Errorf("metadata database: %s", oneLine(err))
	}
	v.SchemaVersion = int(sv)
	if v.SchemaVersion > meta.SchemaVersion {
		return v, nil // the caller refuses it; its columns may differ
	}
	if err := s.pool.QueryRow(ctx, `SELECT chunk_size FROM kmsfs_volume`).Scan(&v.ChunkSize); err != nil {
		return v, fmt.Errorf("metadata database: %s", oneLine(err))
	}
	return v, nil
}

// CreateVolume creates the tables and the root directory.
func (s *Store) CreateVolume(ctx context.Context, v meta.Volume, root meta.New) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var reg *string
		if err := tx.QueryRow(ctx, `SELECT to_regclass('kmsfs_volume')::text`).Scan(&reg); err != nil {
			return err
		}
		if reg != nil {
			return errors.New("the metadata database already holds a kmsfs volume")
		}
		if _, err := tx.Exec(ctx, schema); err != nil {
			return fmt.Errorf("create tables: %w", err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO kmsfs_volume (volume_id, schema_version, chunk_size) VALUES ($1, $2, $3)`,
			v.ID, meta.SchemaVersion, v.ChunkSize); err != nil {
			return err
		}
		var ino int64
		if err := tx.QueryRow(ctx, `INSERT INTO kmsfs_inodes (mode, uid, gid, nlink, atime, mtime, ctime)
			VALUES ($1, $2, $3, 2, `+nowNS+`, `+nowNS+`, `+nowNS+`) RETURNING ino`,
			int64(syscall.S_IFDIR|root.Mode&0o7777), int64(root.Uid), int64(root.Gid)).Scan(&ino); err != nil {
			return err
		}
		if ino != 1 {
			return fmt.Errorf("root directory got inode %d, not 1", ino)
		}
		return nil
	})
}

// Lookup is one statement, atomic without a transaction of its own (a
// lookup is the most frequent request).
func (s *Store) Lookup(ctx context.Context, path []string) (meta.Attr, error) {
	return resolve(ctx, s.pool, path)
}

func (s *Store) ReadDir(ctx context.Context, path []string) ([]meta.Entry, error) {
	var out []meta.Entry
	err := s.tx(ctx, func(tx pgx.Tx) error {
		out = out[:0]
		dir, err := resolveDir(ctx, tx, path)
		if err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT d.name, d.ino, i.mode FROM kmsfs_dentries d JOIN kmsfs_inodes i ON i.ino = d.ino
			WHERE d.parent = $1 ORDER BY d.name`, int64(dir))
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var name []byte
			var ino, mode int64
			if err := rows.Scan(&name, &ino, &mode); err != nil {
				return err
			}
			out = append(out, meta.Entry{Name: string(name), Ino: uint64(ino), Mode: uint32(mode) & syscall.S_IFMT})
		}
		return rows.Err()
	})
	return out, err
}

func (s *Store) Readlink(ctx context.Context, path []string) ([]byte, error) {
	var target []byte
	err := s.tx(ctx, func(tx pgx.Tx) error {
		a, err := resolve(ctx, tx, path)
		if err != nil {
			return err
		}
		if a.Mode&syscall.S_IFMT != syscall.S_IFLNK {
			return syscall.EINVAL
		}
		return tx.QueryRow(ctx, `SELECT target FROM kmsfs_inodes WHERE ino = $1`, int64(a.Ino)).Scan(&target)
	})
	return target, err
}

func (s *Store) Create(ctx context.Context, path []string, n meta.New, excl bool) (meta.Attr, error) {
	var out meta.Attr
	if len(path) == 0 {
		return out, syscall.EEXIST
	}
	name := path[len(path)-1]
	if a, ok, err := s.createFast(ctx, path, n); err != nil || ok {
		return a, err
	}
	err := s.tx(ctx, func(tx pgx.Tx) error {
		parent, err := resolveDir(ctx, tx, path[:len(path)-1])
		if err != nil {
			return err
		}
		if ino, mode, ok, err := entry(ctx, tx, parent, name); err != nil {
			return err
		} else if ok {
			if excl || n.Mode&syscall.S_IFMT != syscall.S_IFREG {
				return syscall.EEXIST
			}
			if isDir(mode) {
				return syscall.EISDIR
			}
			out, err = scanAttr(tx.QueryRow(ctx, `SELECT `+attrColsI+` FROM kmsfs_inodes i WHERE i.ino = $1`, int64(ino)))
			return err
		}
		dir := isDir(n.Mode)
		nlink, dlink := 1, 0
		if dir {
			nlink, dlink = 2, 1
		}
		if err := touchDir(ctx, tx, parent, dlink); err != nil {
			return err
		}
		var target any
		size := int64(0)
		if n.Mode&syscall.S_IFMT == syscall.S_IFLNK {
			target, size = n.Target, int64(len(n.Target))
		}
		out, err = scanAttr(tx.QueryRow(ctx, `INSERT INTO kmsfs_inodes AS i (mode, uid, gid, rdev, size, nlink, atime, mtime, ctime, target)
			VALUES ($1, $2, $3, $4, $5, $6, `+nowNS+`, `+nowNS+`, `+nowNS+`, $7) RETURNING `+attrColsI,
			int64(n.Mode), int64(n.Uid), int64(n.Gid), int64(n.Rdev), size, nlink, target))
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO kmsfs_dentries (parent, name, ino) VALUES ($1, $2, $3)`, int64(parent), []byte(name), int64(out.Ino))
		return err
	})
	return out, err
}

// createSQL creates entry $2 in the directory at path $1 in one statement
// (one round trip instead of seven): it returns no row when the parent is
// missing or not a directory or already holds the name, and the caller
// takes the transaction path, which tells those cases apart. It changes the
// same rows in the same order as that path, so the locking argument of the
// package comment holds: the parent's row is updated before the entry is
// inserted, and a racing create of the same name ends in a unique violation.
var createSQL = walkSQL + `, p AS (
	SELECT w.ino FROM walk w JOIN kmsfs_inodes i ON i.ino = w.ino
	WHERE w.depth = cardinality($1::bytea[]) AND (i.mode & ` + fmt.Sprint(syscall.S_IFMT) + `) = ` + fmt.Sprint(syscall.S_IFDIR) + `
	AND NOT EXISTS (SELECT 1 FROM kmsfs_dentries d WHERE d.parent = w.ino AND d.name = $2::bytea)
), t AS (
	UPDATE kmsfs_inodes SET mtime = ` + nowNS + `, ctime = ` + nowNS + `, nlink = nlink + $3::integer
	WHERE ino = (SELECT ino FROM p) RETURNING ino
), n AS (
	INSERT INTO kmsfs_inodes AS i (mode, uid, gid, rdev, size, nlink, atime, mtime, ctime, target)
	SELECT $4::bigint, $5::bigint, $6::bigint, $7::bigint, $8::bigint, $9::integer, ` + nowNS + `, ` + nowNS + `, ` + nowNS + `, $10::bytea FROM t RETURNING ` + attrColsI + `
), e AS (
	INSERT INTO kmsfs_dentries (parent, name, ino) SELECT t.ino, $2, n.ino FROM t, n
)
SELECT * FROM n`

// createFast is Create's one-statement path for a new name in an existing
// directory; ok is false when the caller must take the transaction path.
func (s *Store) createFast(ctx context.Context, path []string, n meta.New) (meta.Attr, bool, error) {
	nlink, dlink := 1, 0
	if isDir(n.Mode) {
		nlink, dlink = 2, 1
	}
	var target []byte
	size := int64(0)
	if n.Mode&syscall.S_IFMT == syscall.S_IFLNK {
		target, size = n.Target, int64(len(n.Target))
	}
	a, err := scanAttr(s.pool.QueryRow(ctx, createSQL, names(path[:len(path)-1]), []byte(path[len(path)-1]), dlink,
		int64(n.Mode), int64(n.Uid), int64(n.Gid), int64(n.Rdev), size, nlink, target))
	var pe *pgconn.PgError
	switch {
	case err == nil:
		return a, true, nil
	case errors.Is(err, pgx.ErrNoRows), errors.As(err, &pe) && (pe.Code == "40001" || pe.Code == "40P01" || pe.Code == "23505"):
		return a, false, nil
	default:
		return a, false, err
	}
}

func (s *Store) Remove(ctx context.Context, path []string, dir bool) error {
	if len(path) == 0 {
		return syscall.EBUSY
	}
	name := path[len(path)-1]
	return s.tx(ctx, func(tx pgx.Tx) error {
		parent, err := resolveDir(ctx, tx, path[:len(path)-1])
		if err != nil {
			return err
		}
		ino, mode, ok, err := entry(ctx, tx, parent, name)
		if err != nil {
			return err
		}
		if !ok {
			return syscall.ENOENT
		}
		isdir := isDir(mode)
		switch {
		case dir && !isdir:
			return syscall.ENOTDIR
		case !dir && isdir:
			return syscall.EISDIR
		}
		dlink := 0
		if isdir {
			dlink = -1
		}
		if err := touchDir(ctx, tx, parent, dlink); err != nil {
			return err
		}
		if isdir {
			if _, err := tx.Exec(ctx, `SELECT 1 FROM kmsfs_inodes WHERE ino = $1 FOR UPDATE`, int64(ino)); err != nil {
				return err
			}
			if err := emptyDir(ctx, tx, ino); err != nil {
				return err
			}
		}
		tag, err := tx.Exec(ctx, `DELETE FROM kmsfs_dentries WHERE parent = $1 AND name = $2 AND ino = $3`, int64(parent), []byte(name), int64(ino))
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return syscall.ENOENT
		}
		return dropLink(ctx, tx, ino, isdir)
	})
}

// within reports whether directory dir is anc or below it.
func within(ctx context.Context, q pgx.Tx, dir, anc uint64) (bool, error) {
	var found bool
	err := q.QueryRow(ctx, `WITH RECURSIVE up(ino) AS (
		SELECT $1::bigint
		UNION
		SELECT d.parent FROM kmsfs_dentries d JOIN up ON d.ino = up.ino WHERE up.ino <> 1
	) SELECT EXISTS (SELECT 1 FROM up WHERE ino = $2)`, int64(dir), int64(anc)).Scan(&found)
	return found, err
}

func (s *Store) Rename(ctx context.Context, from, to []string, flags uint32) error {
	if len(from) == 0 || len(to) == 0 {
		return syscall.EBUSY
	}
	if flags&^(unix.RENAME_NOREPLACE|unix.RENAME_EXCHANGE) != 0 || flags == unix.RENAME_NOREPLACE|unix.RENAME_EXCHANGE {
		return syscall.EINVAL
	}
	fn, tn := from[len(from)-1], to[len(to)-1]
	return s.tx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(renameLock)); err != nil {
			return err
		}
		fp, err := resolveDir(ctx, tx, from[:len(from)-1])
		if err != nil {
			return err
		}
		tp, err := resolveDir(ctx, tx, to[:len(to)-1])
		if err != nil {
			return err
		}
		src, smode, ok, err := entry(ctx, tx, fp, fn)
		if err != nil {
			return err
		}
		if !ok {
			return syscall.ENOENT
		}
		dst, dmode, dok, err := entry(ctx, tx, tp, tn)
		if err != nil {
			return err
		}
		if dok && dst == src {
			return nil // two names of one inode: nothing to do (rename(2))
		}
		if dok && flags&unix.RENAME_NOREPLACE != 0 {
			return syscall.EEXIST
		}
		sdir, ddir := isDir(smode), dok && isDir(dmode)
		if sdir && fp != tp {
			if in, err := within(ctx, tx, tp, src); err != nil {
				return err
			} else if in {
				return syscall.EINVAL
			}
		}
		if flags&unix.RENAME_EXCHANGE != 0 {
			if !dok {
				return syscall.ENOENT
			}
			if ddir && fp != tp {
				if in, err := within(ctx, tx, fp, dst); err != nil {
					return err
				} else if in {
					return syscall.EINVAL
				}
			}
			d := b2i(ddir) - b2i(sdir)
			if fp == tp {
				d = 0
			}
			if err := touchDir(ctx, tx, fp, d); err != nil {
				return err
			}
			if fp != tp {
				if err := touchDir(ctx, tx, tp, -d); err != nil {
					return err
				}
			}
			if _, err := tx.Exec(ctx, `UPDATE kmsfs_dentries SET ino = CASE WHEN ino = $5 THEN $6 ELSE $5 END
				WHERE (parent = $1 AND name = $2) OR (parent = $3 AND name = $4)`,
				int64(fp), []byte(fn), int64(tp), []byte(tn), int64(src), int64(dst)); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `UPDATE kmsfs_inodes SET ctime = `+nowNS+` WHERE ino = $1 OR ino = $2`, int64(src), int64(dst))
			return err
		}
		if dok {
			switch {
			case ddir && !sdir:
				return syscall.EISDIR
			case !ddir && sdir:
				return syscall.ENOTDIR
			}
		}
		dfrom, dto := 0, 0
		if sdir && fp != tp {
			dfrom, dto = -1, 1
		}
		if ddir {
			dto--
		}
		if err := touchDir(ctx, tx, fp, dfrom); err != nil {
			return err
		}
		if fp != tp || dto != 0 {
			if err := touchDir(ctx, tx, tp, dto); err != nil {
				return err
			}
		}
		if dok {
			if ddir {
				if _, err := tx.Exec(ctx, `SELECT 1 FROM kmsfs_inodes WHERE ino = $1 FOR UPDATE`, int64(dst)); err != nil {
					return err
				}
				if err := emptyDir(ctx, tx, dst); err != nil {
					return err
				}
			}
			if _, err := tx.Exec(ctx, `DELETE FROM kmsfs_dentries WHERE parent = $1 AND name = $2`, int64(tp), []byte(tn)); err != nil {
				return err
			}
			if err := dropLink(ctx, tx, dst, ddir); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, `UPDATE kmsfs_dentries SET parent = $3, name = $4 WHERE parent = $1 AND name = $2`,
			int64(fp), []byte(fn), int64(tp), []byte(tn)); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE kmsfs_inodes SET ctime = `+nowNS+` WHERE ino = $1`, int64(src))
		return err
	})
}

func ns(t *time.Time) *int64 {
	if t == nil {
		return nil
	}
	v := t.UnixNano()
	return &v
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (s *Store) Link(ctx context.Context, from, to []string) (meta.Attr, error) {
	var out meta.Attr
	if len(to) == 0 {
		return out, syscall.EEXIST
	}
	tn := to[len(to)-1]
	err := s.tx(ctx, func(tx pgx.Tx) error {
		a, err := resolve(ctx, tx, from)
		if err != nil {
			return err
		}
		if isDir(a.Mode) {
			return syscall.EPERM
		}
		tp, err := resolveDir(ctx, tx, to[:len(to)-1])
		if err != nil {
			return err
		}
		if _, _, ok, err := entry(ctx, tx, tp, tn); err != nil {
			return err
		} else if ok {
			return syscall.EEXIST
		}
		if err := touchDir(ctx, tx, tp, 0); err != nil {
			return err
		}
		out, err = scanAttr(tx.QueryRow(ctx, `UPDATE kmsfs_inodes i SET nlink = nlink + 1, ctime = `+nowNS+` WHERE ino = $1 RETURNING `+attrColsI, int64(a.Ino)))
		if errors.Is(err, pgx.ErrNoRows) {
			return syscall.ENOENT
		}
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO kmsfs_dentries (parent, name, ino) VALUES ($1, $2, $3)`, int64(tp), []byte(tn), int64(a.Ino))
		return err
	})
	return out, err
}

// setAttrArgs are sa's statement arguments: the mode bits to set and the
// mask of those it replaces (nil: the mode stays), the owner and group.
func setAttrArgs(sa meta.SetAttr) (mode, uid, gid *int64, mask int64) {
	mask = 0o7777
	switch {
	case sa.Mode != nil:
		m := int64(*sa.Mode & 0o7777)
		mode = &m
	case sa.Perm != nil:
		m := int64(*sa.Perm & 0o777)
		mode, mask = &m, 0o777
	}
	if sa.Uid != nil {
		u := int64(*sa.Uid)
		uid = &u
	}
	if sa.Gid != nil {
		g := int64(*sa.Gid)
		gid = &g
	}
	return mode, uid, gid, mask
}

func (s *Store) SetAttr(ctx context.Context, path []string, sa meta.SetAttr) (meta.Attr, error) {
	mode, uid, gid, mask := setAttrArgs(sa)
	// One statement when the path resolves; else the transaction below
	// finds out why not (ENOENT, ENOTDIR).
	out, err := scanAttr(s.pool.QueryRow(ctx, setAttrSQL, names(path), mode, uid, gid, ns(sa.Atime), ns(sa.Mtime), mask))
	if !errors.Is(err, pgx.ErrNoRows) {
		return out, err
	}
	err = s.tx(ctx, func(tx pgx.Tx) error {
		a, err := resolve(ctx, tx, path)
		if err != nil {
			return err
		}
		out, err = scanAttr(tx.QueryRow(ctx, `UPDATE kmsfs_inodes i SET
			mode = CASE WHEN $2::bigint IS NULL THEN mode ELSE (mode & ~$7::bigint) | $2::bigint END,
			uid = COALESCE($3::bigint, uid), gid = COALESCE($4::bigint, gid),
			atime = COALESCE($5::bigint, atime), mtime = COALESCE($6::bigint, mtime), ctime = `+nowNS+`
			WHERE ino = $1 RETURNING `+attrColsI, int64(a.Ino), mode, uid, gid, ns(sa.Atime), ns(sa.Mtime), mask))
		if errors.Is(err, pgx.ErrNoRows) {
			return syscall.ENOENT
		}
		return err
	})
	return out, err
}

// setAttrSQL is SetAttr in one statement: the walk of resolveSQL, then the
// update of the inode it reached when it reached the whole path.
var setAttrSQL = walkSQL + `UPDATE kmsfs_inodes i SET
	mode = CASE WHEN $2::bigint IS NULL THEN mode ELSE (mode & ~$7::bigint) | $2::bigint END,
	uid = COALESCE($3::bigint, uid), gid = COALESCE($4::bigint, gid),
	atime = COALESCE($5::bigint, atime), mtime = COALESCE($6::bigint, mtime), ctime = ` + nowNS + `
	WHERE i.ino = (SELECT ino FROM walk WHERE depth = cardinality($1::bytea[])) RETURNING ` + attrColsI

func (s *Store) GetXattr(ctx context.Context, path []string, name string) ([]byte, error) {
	var v []byte
	err := s.tx(ctx, func(tx pgx.Tx) error {
		a, err := resolve(ctx, tx, path)
		if err != nil {
			return err
		}
		err = tx.QueryRow(ctx, `SELECT value FROM kmsfs_xattrs WHERE ino = $1 AND name = $2`, int64(a.Ino), name).Scan(&v)
		if errors.Is(err, pgx.ErrNoRows) {
			return syscall.ENODATA
		}
		return err
	})
	return v, err
}

func (s *Store) SetXattr(ctx context.Context, path []string, name string, value []byte, flags int) error {
	if value == nil {
		value = []byte{}
	}
	return s.tx(ctx, func(tx pgx.Tx) error {
		a, err := resolve(ctx, tx, path)
		if err != nil {
			return err
		}
		var tag pgconn.CommandTag
		switch flags {
		case unix.XATTR_CREATE:
			tag, err = tx.Exec(ctx, `INSERT INTO kmsfs_xattrs (ino, name, value) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`, int64(a.Ino), name, value)
			if err == nil && tag.RowsAffected() == 0 {
				err = syscall.EEXIST
			}
		case unix.XATTR_REPLACE:
			tag, err = tx.Exec(ctx, `UPDATE kmsfs_xattrs SET value = $3 WHERE ino = $1 AND name = $2`, int64(a.Ino), name, value)
			if err == nil && tag.RowsAffected() == 0 {
				err = syscall.ENODATA
			}
		case 0:
			_, err = tx.Exec(ctx, `INSERT INTO kmsfs_xattrs (ino, name, value) VALUES ($1, $2, $3)
				ON CONFLICT (ino, name) DO UPDATE SET value = EXCLUDED.value`, int64(a.Ino), name, value)
		default:
			err = syscall.EINVAL
		}
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE kmsfs_inodes SET ctime = `+nowNS+` WHERE ino = $1`, int64(a.Ino))
		return err
	})
}

func (s *Store) ListXattr(ctx context.Context, path []string) ([]string, error) {
	var out []string
	err := s.tx(ctx, func(tx pgx.Tx) error {
		a, err := resolve(ctx, tx, path)
		if err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT name FROM kmsfs_xattrs WHERE ino = $1 ORDER BY name`, int64(a.Ino))
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	return out, err
}

func (s *Store) RemoveXattr(ctx context.Context, path []string, name string) error {
	return s.tx(ctx, func(tx pgx.Tx) error {
		a, err := resolve(ctx, tx, path)
		if err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `DELETE FROM kmsfs_xattrs WHERE ino = $1 AND name = $2`, int64(a.Ino), name)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return syscall.ENODATA
		}
		_, err = tx.Exec(ctx, `UPDATE kmsfs_inodes SET ctime = `+nowNS+` WHERE ino = $1`, int64(a.Ino))
		return err
	})
}

// File reads attributes and chunk list in one statement, so from one
// snapshot, and in one round trip.
func (s *Store) File(ctx context.Context, ino uint64) (meta.Attr, []meta.Chunk, error) {
	var idx, lens []int64
	var keys []string
	a, err := scanAttr(s.pool.QueryRow(ctx, `SELECT c.idx, c.keys, c.lens, `+attrColsI+` FROM kmsfs_inodes i,
		LATERAL (SELECT COALESCE(array_agg(idx ORDER BY idx), '{}') AS idx, COALESCE(array_agg(key ORDER BY idx), '{}') AS keys,
			COALESCE(array_agg(len ORDER BY idx), '{}') AS lens FROM kmsfs_chunks WHERE ino = i.ino) c
		WHERE i.ino = $1`, int64(ino)), &idx, &keys, &lens)
	if errors.Is(err, pgx.ErrNoRows) {
		return a, nil, syscall.ENOENT
	}
	if err != nil {
		return a, nil, err
	}
	chunks := make([]meta.Chunk, len(idx))
	for k := range idx {
		chunks[k] = meta.Chunk{Index: idx[k], Key: keys[k], Len: lens[k]}
	}
	return a, chunks, nil
}

func (s *Store) CommitChunks(ctx context.Context, c meta.Commit) (int64, error) {
	var gen int64
	idx := make([]int64, len(c.Set))
	keys := make([]string, len(c.Set))
	lens := make([]int64, len(c.Set))
	set := make(map[int64]bool, len(c.Set))
	for i, ch := range c.Set {
		idx[i], keys[i], lens[i] = ch.Index, ch.Key, ch.Len
		set[ch.Index] = true
	}
	drop := make([]int64, 0, len(c.Drop))
	for _, i := range c.Drop {
		if set[i] {
			return 0, fmt.Errorf("commit of inode %d: chunk %d is both set and dropped", c.Ino, i)
		}
		drop = append(drop, i)
	}
	// One statement, so one round trip and no transaction to begin and
	// commit: the generation-guarded update is the statement's first
	// data-modifying CTE and the others act only if it matched, so a stale
	// writer changes nothing. All CTEs read one snapshot, so the garbage
	// insert records the keys that were there before; the replaced chunks
	// are upserted in place, and only chunks past the new end or dropped
	// (never set, checked above) deleted, so no two CTEs touch one row
	// (whose order PostgreSQL leaves open:
	// https://www.postgresql.org/docs/15/queries-with.html#QUERIES-WITH-MODIFYING).
	// Under READ COMMITTED a racing committer's row lock makes the update
	// wait and then re-check the generation against the committed row.
	var sa meta.SetAttr
	if c.Attrs != nil {
		sa = *c.Attrs
	}
	mode, uid, gid, mask := setAttrArgs(sa)
	err := s.pool.QueryRow(ctx, `WITH u AS (
			UPDATE kmsfs_inodes SET generation = generation + 1, size = $3,
				mode = CASE WHEN $9::bigint IS NULL THEN mode ELSE (mode & ~$10::bigint) | $9::bigint END,
				uid = COALESCE($11::bigint, uid), gid = COALESCE($12::bigint, gid), atime = COALESCE($13::bigint, atime),
				mtime = CASE WHEN $4 THEN `+nowNS+` ELSE COALESCE($14::bigint, mtime) END,
				ctime = CASE WHEN $4 OR $15 THEN `+nowNS+` ELSE ctime END
			WHERE ino = $1 AND generation = $2 RETURNING generation),
		g AS (INSERT INTO kmsfs_garbage (key) SELECT key FROM kmsfs_chunks
			WHERE ino = $1 AND (idx >= $5 OR idx = ANY($6) OR idx = ANY($16::bigint[])) AND EXISTS (SELECT 1 FROM u) ON CONFLICT DO NOTHING),
		d AS (DELETE FROM kmsfs_chunks WHERE ino = $1 AND (idx >= $5 OR idx = ANY($16::bigint[])) AND EXISTS (SELECT 1 FROM u)),
		i AS (INSERT INTO kmsfs_chunks (ino, idx, key, len)
			SELECT $1, * FROM unnest($6::bigint[], $7::text[], $8::bigint[]) WHERE EXISTS (SELECT 1 FROM u)
			ON CONFLICT (ino, idx) DO UPDATE SET key = EXCLUDED.key, len = EXCLUDED.len)
		SELECT generation FROM u`, int64(c.Ino), c.BaseGen, c.Size, c.Touch, c.Keep, idx, keys, lens,
		mode, mask, uid, gid, ns(sa.Atime), ns(sa.Mtime), c.Attrs != nil, drop).Scan(&gen)
	if !errors.Is(err, pgx.ErrNoRows) {
		return gen, err
	}
	var cur int64
	if err := s.pool.QueryRow(ctx, `SELECT generation FROM kmsfs_inodes WHERE ino = $1`, int64(c.Ino)).Scan(&cur); errors.Is(err, pgx.ErrNoRows) {
		return 0, syscall.ENOENT
	} else if err != nil {
		return 0, err
	}
	return 0, meta.ErrConflict
}

func (s *Store) RaiseSchema(ctx context.Context, v int) error {
	if _, err := s.pool.Exec(ctx, `UPDATE kmsfs_volume SET schema_version = $1 WHERE schema_version < $1`, int32(v)); err != nil {
		return fmt.Errorf("metadata database: raise schema version to %d: %s", v, oneLine(err))
	}
	return nil
}

func (s *Store) Garbage(ctx context.Context, before time.Time, limit int) ([]meta.Garbage, error) {
	rows, err := s.pool.Query(ctx, `SELECT key, since FROM kmsfs_garbage WHERE since < $1 ORDER BY since LIMIT $2`, before, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (meta.Garbage, error) {
		var g meta.Garbage
		err := r.Scan(&g.Key, &g.Since)
		return g, err
	})
}

func (s *Store) ForgetGarbage(ctx context.Context, keys []string) error {
	_, err := s.pool.Exec(ctx, `DELETE FROM kmsfs_garbage WHERE key = ANY($1)`, keys)
	return err
}

func (s *Store) Referenced(ctx context.Context, keys []string) (map[string]bool, error) {
	rows, err := s.pool.Query(ctx, `SELECT key FROM kmsfs_chunks WHERE key = ANY($1)`, keys)
	if err != nil {
		return nil, err
	}
	found, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	out := make(map[string]bool, len(found))
	for _, k := range found {
		out[k] = true
	}
	return out, nil
}
