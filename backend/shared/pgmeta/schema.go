package pgmeta

// schema is the layout of schema version 1 (docs/FORMAT.md, "Shared
// volumes"). Names, symlink targets and xattr values are bytea holding what
// the volume handed the backend: ciphertext on a shared volume.
const schema = `
CREATE TABLE kmsfs_volume (
	one            boolean PRIMARY KEY DEFAULT true CHECK (one),
	volume_id      text NOT NULL,
	schema_version integer NOT NULL,
	chunk_size     bigint NOT NULL,
	created        timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE kmsfs_inodes (
	ino        bigserial PRIMARY KEY,
	mode       bigint NOT NULL,
	uid        bigint NOT NULL,
	gid        bigint NOT NULL,
	rdev       bigint NOT NULL DEFAULT 0,
	size       bigint NOT NULL DEFAULT 0,
	nlink      integer NOT NULL,
	generation bigint NOT NULL DEFAULT 0,
	atime      bigint NOT NULL, -- nanoseconds since 1970
	mtime      bigint NOT NULL,
	ctime      bigint NOT NULL,
	target     bytea
);
CREATE TABLE kmsfs_dentries (
	parent bigint NOT NULL REFERENCES kmsfs_inodes (ino),
	name   bytea NOT NULL,
	ino    bigint NOT NULL REFERENCES kmsfs_inodes (ino),
	PRIMARY KEY (parent, name)
);
CREATE INDEX kmsfs_dentries_ino ON kmsfs_dentries (ino);
CREATE TABLE kmsfs_xattrs (
	ino   bigint NOT NULL REFERENCES kmsfs_inodes (ino) ON DELETE CASCADE,
	name  text NOT NULL,
	value bytea NOT NULL,
	PRIMARY KEY (ino, name)
);
CREATE TABLE kmsfs_chunks (
	ino bigint NOT NULL REFERENCES kmsfs_inodes (ino) ON DELETE CASCADE,
	idx bigint NOT NULL,
	key text NOT NULL UNIQUE,
	len bigint NOT NULL,
	PRIMARY KEY (ino, idx)
);
CREATE TABLE kmsfs_garbage (
	key   text PRIMARY KEY,
	since timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX kmsfs_garbage_since ON kmsfs_garbage (since);
`

// resolveSQL walks a path from the root (inode 1) one entry per level and
// returns the deepest inode reached, its depth and mode: the caller
// compares the depth with the path's length.
const resolveSQL = walkSQL + `
SELECT w.depth, i.ino, i.mode FROM walk w JOIN kmsfs_inodes i ON i.ino = w.ino
ORDER BY w.depth DESC LIMIT 1`

// walkSQL is the recursive walk of resolveSQL, for the statements that
// resolve a path and act on what they reached in one round trip.
const walkSQL = `
WITH RECURSIVE walk(depth, ino) AS (
	SELECT 0, 1::bigint
	UNION ALL
	SELECT w.depth + 1, d.ino FROM walk w
	JOIN kmsfs_dentries d ON d.parent = w.ino AND d.name = ($1::bytea[])[w.depth + 1]
	WHERE w.depth < cardinality($1::bytea[])
)`

// nowNS is the transaction's time in nanoseconds since 1970: times the
// database sets come from one clock, not from each machine's.
const nowNS = `(extract(epoch FROM now()) * 1000000000)::bigint`
