package integration

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestMountWritebackCache covers what the kernel's writeback cache
// (--writeback-cache) changes: pages written but not yet sent to kmsfs must be visible
// to stat, lseek and readers; shared writable mmap goes through the same
// path; a large file written in 1 MiB pieces (which writeback sends out of
// order) reads back intact after a remount; and the same holds without it.
func TestMountWritebackCache(t *testing.T) {
	for _, mode := range []struct {
		name  string
		flags []string
	}{{"writeback", []string{"--writeback-cache"}}, {"writethrough", nil}} {
		t.Run(mode.name, func(t *testing.T) {
			v := mountNewVolume(t)
			v.mount(mode.flags...)

			// Size and SEEK_DATA before anything is written back.
			p := v.path("fresh")
			f, err := os.Create(p)
			if err != nil {
				t.Fatal(err)
			}
			data := mountPattern(300_000, 3)
			if _, err := f.Write(data); err != nil {
				t.Fatal(err)
			}
			if st, err := os.Stat(p); err != nil || st.Size() != int64(len(data)) {
				t.Fatalf("stat before fsync: size %v, err %v; want %d", st.Size(), err, len(data))
			}
			if off, err := unix.Seek(int(f.Fd()), 200_000, unix.SEEK_DATA); err != nil || off != 200_000 {
				t.Fatalf("SEEK_DATA at 200000 before fsync: %d, %v", off, err)
			}
			if off, err := unix.Seek(int(f.Fd()), 0, unix.SEEK_HOLE); err != nil || off != int64(len(data)) {
				t.Fatalf("SEEK_HOLE before fsync: %d, %v; want the end", off, err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}

			// Shared writable mmap over an existing file.
			mp := v.path("mapped")
			mountWriteFile(t, mp, make([]byte, 64<<10))
			mf, err := os.OpenFile(mp, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			m, err := unix.Mmap(int(mf.Fd()), 0, 64<<10, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
			if err != nil {
				t.Fatal(err)
			}
			want := mountPattern(64<<10, 9)
			copy(m, want)
			if err := unix.Msync(m, unix.MS_SYNC); err != nil {
				t.Fatal(err)
			}
			unix.Munmap(m)
			mf.Close()

			// A 24 MiB file in 1 MiB writes, then fsync.
			big := v.path("big")
			bf, err := os.Create(big)
			if err != nil {
				t.Fatal(err)
			}
			var bigWant []byte
			for i := 0; i < 24; i++ {
				chunk := mountPattern(1<<20, byte(i))
				if _, err := bf.Write(chunk); err != nil {
					t.Fatal(err)
				}
				bigWant = append(bigWant, chunk...)
			}
			if err := bf.Sync(); err != nil {
				t.Fatal(err)
			}
			bf.Close()

			// Files written, closed and removed before their cached mtime
			// went back: syncfs of the mount must still succeed (the kernel
			// then sends SETATTR for inodes that have no name any more).
			if err := os.MkdirAll(v.path("gone"), 0o755); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 5; i++ {
				mountWriteFile(t, v.path("gone/f"+string(rune('a'+i))), []byte("x"))
			}
			if err := os.RemoveAll(v.path("gone")); err != nil {
				t.Fatal(err)
			}
			if out, err := mountExecOut("sync", "-f", v.mnt); err != nil {
				t.Fatalf("sync -f after rm -rf: %v: %s", err, out)
			}

			v.remount(mode.flags...)
			mountExpectContent(t, p, data)
			mountExpectContent(t, mp, want)
			mountExpectContent(t, big, bigWant)
			// The big file was written once: no gap was filled with zeros
			// and rewritten, so its intent journal stayed empty.
			if entries, err := os.ReadDir(v.backing(".kmsfs/intents")); len(entries) != 0 || (err != nil && !errors.Is(err, fs.ErrNotExist)) {
				t.Fatalf("intents left behind: %d (%v)", len(entries), err)
			}
			if bytes.Contains([]byte(v.log()), []byte("level=ERROR")) {
				t.Fatalf("errors in the mount log:\n%s", mountTail(v.log(), 20))
			}
		})
	}
}

// TestMountFileCapabilities: kmsfs answers the kernel's per-write
// security.capability question itself for files it created, so a
// capability set afterwards (setcap) must still be stored, read back, and
// dropped by the kernel when the file is written.
func TestMountFileCapabilities(t *testing.T) {
	mountRequireRoot(t, "set security.capability")
	v := mountNewVolume(t)
	v.mount("--writeback-cache")
	p := v.path("tool")
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("#!/bin/sh\n")); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	if _, err := unix.Getxattr(p, "security.capability", buf); err != unix.ENODATA {
		t.Fatalf("new file: getxattr security.capability = %v, want ENODATA", err)
	}
	// struct vfs_cap_data, revision 2, effective, CAP_NET_BIND_SERVICE (10)
	// permitted: what `setcap cap_net_bind_service+ep` writes.
	capv := []byte{0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	if err := unix.Setxattr(p, "security.capability", capv, 0); err != nil {
		t.Fatalf("setxattr security.capability: %v", err)
	}
	n, err := unix.Getxattr(p, "security.capability", buf)
	if err != nil || !bytes.Equal(buf[:n], capv) {
		t.Fatalf("getxattr after set: %x, %v; want %x", buf[:max(n, 0)], err, capv)
	}
	// A write by the owner drops the capability (file_remove_privs).
	f, err = os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("exit 0\n")); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Getxattr(p, "security.capability", buf); err != unix.ENODATA {
		t.Fatalf("after a write: getxattr security.capability = %v, want ENODATA (dropped)", err)
	}
}
