// Package pgtest starts a throwaway PostgreSQL 15 cluster for tests: initdb
// and pg_ctl run as the postgres user (PostgreSQL refuses root) in a
// temporary directory it owns, on a free port, with its unix socket there
// too; the cluster is stopped and removed when the test ends. Without
// PostgreSQL the test is skipped, or failed when CI=true.
package pgtest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// BinDir is where Debian installs PostgreSQL 15.
const BinDir = "/usr/lib/postgresql/15/bin"

// Cluster is a running PostgreSQL cluster.
type Cluster struct {
	Dir  string // data directory's parent, also the socket directory
	Port int
	t    testing.TB
	opts string // server options
}

func missing(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("PostgreSQL is required in CI: %s", why)
	}
	t.Skipf("PostgreSQL not available: %s", why)
}

// Start starts a cluster and registers its removal.
func Start(t testing.TB) *Cluster {
	t.Helper()
	if _, err := os.Stat(filepath.Join(BinDir, "initdb")); err != nil {
		missing(t, err.Error())
	}
	pg, err := user.Lookup("postgres")
	if err != nil {
		missing(t, "no postgres user: "+err.Error())
	}
	uid, _ := strconv.Atoi(pg.Uid)
	gid, _ := strconv.Atoi(pg.Gid)
	// Not under t.TempDir(): its parents are 0700 root, which the
	// postgres user cannot traverse.
	dir, err := os.MkdirTemp("", "kmsfs-pg-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, uid, gid); err != nil {
		os.RemoveAll(dir)
		missing(t, "cannot give the cluster directory to postgres: "+err.Error())
	}
	c := &Cluster{Dir: dir, t: t}
	t.Cleanup(func() {
		c.pgctl("stop", "-m", "immediate", "-w")
		os.RemoveAll(dir)
	})
	if out, err := c.asPostgres(filepath.Join(BinDir, "initdb"), "-D", c.data(), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.Port = l.Addr().(*net.TCPAddr).Port
	l.Close()
	c.opts = fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200", c.Port, dir)
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	return c
}

// Start starts the stopped cluster again, on the same port.
func (c *Cluster) Start() error {
	if out, err := c.pgctl("start", "-w", "-t", "60", "-l", filepath.Join(c.Dir, "log"), "-o", c.opts); err != nil {
		log, _ := os.ReadFile(filepath.Join(c.Dir, "log"))
		return fmt.Errorf("pg_ctl start: %v\n%s\n%s", err, out, log)
	}
	return nil
}

func (c *Cluster) data() string { return filepath.Join(c.Dir, "data") }

func (c *Cluster) asPostgres(bin string, args ...string) (string, error) {
	out, err := exec.Command("runuser", append([]string{"-u", "postgres", "--", bin}, args...)...).CombinedOutput()
	return string(out), err
}

func (c *Cluster) pgctl(args ...string) (string, error) {
	return c.asPostgres(filepath.Join(BinDir, "pg_ctl"), append([]string{"-D", c.data()}, args...)...)
}

// Stop stops the cluster (fast shutdown).
func (c *Cluster) Stop() error {
	out, err := c.pgctl("stop", "-m", "fast", "-w")
	if err != nil {
		return fmt.Errorf("pg_ctl stop: %v: %s", err, out)
	}
	return nil
}

// URL returns the URL of database db (the postgres superuser, over TCP).
func (c *Cluster) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.Port, db)
}

// CreateDB creates database db and returns its URL.
func (c *Cluster) CreateDB(db string) string {
	c.t.Helper()
	if out, err := c.asPostgres(filepath.Join(BinDir, "psql"), "-h", c.Dir, "-p", strconv.Itoa(c.Port), "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", "CREATE DATABASE "+db); err != nil {
		c.t.Fatalf("create database %s: %v\n%s", db, err, out)
	}
	return c.URL(db)
}

// Dump returns pg_dump's plain-text dump of database db, without the
// random \restrict key lines newer pg_dump releases add, so that two dumps
// of one content compare equal.
func (c *Cluster) Dump(db string) string {
	c.t.Helper()
	out, err := exec.Command(filepath.Join(BinDir, "pg_dump"), "-h", "127.0.0.1", "-p", strconv.Itoa(c.Port), "-U", "postgres", db).CombinedOutput()
	if err != nil {
		c.t.Fatalf("pg_dump %s: %v\n%s", db, err, out)
	}
	var keep []string
	for _, l := range strings.Split(string(out), "\n") {
		if !strings.HasPrefix(l, "\\restrict ") && !strings.HasPrefix(l, "\\unrestrict ") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// Psql runs one SQL command in database db and returns its unaligned output.
func (c *Cluster) Psql(db, sql string) string {
	c.t.Helper()
	out, err := c.asPostgres(filepath.Join(BinDir, "psql"), "-h", c.Dir, "-p", strconv.Itoa(c.Port), "-U", "postgres", "-d", db, "-At", "-v", "ON_ERROR_STOP=1", "-c", sql)
	if err != nil {
		c.t.Fatalf("psql %q: %v\n%s", sql, err, out)
	}
	return strings.TrimSpace(out)
}
