package fs

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/backend"
)

func TestRelatimeNeedsUpdate(t *testing.T) {
	now := time.Date(2026, 3, 4, 12, 0, 0, 500, time.UTC)
	at := func(d time.Duration) time.Time { return now.Add(d) }
	for _, c := range []struct {
		name                string
		atime, mtime, ctime time.Time
		want                bool
	}{
		{"read since the last change", at(-time.Hour), at(-2 * time.Hour), at(-2 * time.Hour), false},
		{"changed since the last read (mtime)", at(-time.Hour), at(-time.Minute), at(-2 * time.Hour), true},
		{"changed since the last read (ctime)", at(-time.Hour), at(-2 * time.Hour), at(-time.Minute), true},
		{"mtime equal to atime", at(-time.Hour), at(-time.Hour), at(-2 * time.Hour), true},
		{"ctime equal to atime", at(-time.Hour), at(-2 * time.Hour), at(-time.Hour), true},
		{"atime one nanosecond later", at(-time.Hour), at(-time.Hour - 1), at(-time.Hour - 1), false},
		{"atime a day old", at(-24 * time.Hour), at(-48 * time.Hour), at(-48 * time.Hour), true},
		{"atime a second under a day old", at(-24*time.Hour + time.Second), at(-48 * time.Hour), at(-48 * time.Hour), false},
		// Whole seconds, as the kernel counts them: 23:59:59.6 ago, in
		// the same second of yesterday, is a day.
		{"atime a day old in whole seconds", at(-24*time.Hour + 400*time.Millisecond), at(-48 * time.Hour), at(-48 * time.Hour), true},
		{"atime in the future", at(time.Hour), at(-time.Hour), at(-time.Hour), false},
	} {
		if got := backend.RelatimeNeedsUpdate(c.atime, c.mtime, c.ctime, now); got != c.want {
			t.Errorf("%s: relatimeNeedsUpdate = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestAtimePolicyNeedsUpdate(t *testing.T) {
	now := time.Date(2026, 3, 4, 12, 0, 0, 0, time.UTC)
	fresh := [3]time.Time{now.Add(-time.Minute), now.Add(-time.Hour), now.Add(-time.Hour)} // read since changed
	stale := [3]time.Time{now.Add(-time.Hour), now.Add(-time.Minute), now.Add(-time.Minute)}
	for _, c := range []struct {
		name   string
		p      atimePolicy
		dir    bool
		times  [3]time.Time
		update bool
	}{
		{"relatime, fresh", atimePolicy{mode: atimeRelative}, false, fresh, false},
		{"relatime, stale", atimePolicy{mode: atimeRelative}, false, stale, true},
		{"relatime, stale dir", atimePolicy{mode: atimeRelative}, true, stale, true},
		{"strictatime, fresh", atimePolicy{mode: atimeStrict}, false, fresh, true},
		{"strictatime, fresh dir", atimePolicy{mode: atimeStrict}, true, fresh, true},
		{"noatime, stale", atimePolicy{mode: atimeNever}, false, stale, false},
		{"noatime, stale dir", atimePolicy{mode: atimeNever}, true, stale, false},
		{"nodiratime, dir", atimePolicy{mode: atimeStrict, noDirs: true}, true, stale, false},
		{"nodiratime, file", atimePolicy{mode: atimeStrict, noDirs: true}, false, fresh, true},
		{"read-only, strictatime", atimePolicy{mode: atimeStrict, readOnly: true}, false, stale, false},
		{"strictatime, atime is now", atimePolicy{mode: atimeStrict}, false, [3]time.Time{now, now, now}, false},
	} {
		if got := c.p.needsUpdate(c.dir, c.times[0], c.times[1], c.times[2], now); got != c.update {
			t.Errorf("%s: needsUpdate = %v, want %v", c.name, got, c.update)
		}
	}
}

func TestAtimePolicyOfFlags(t *testing.T) {
	for _, c := range []struct {
		opts []string
		want atimePolicy
	}{
		{nil, atimePolicy{mode: atimeRelative}},
		{[]string{"noatime"}, atimePolicy{mode: atimeNever}},
		{[]string{"strictatime"}, atimePolicy{mode: atimeStrict}},
		{[]string{"noatime", "strictatime"}, atimePolicy{mode: atimeStrict}},
		{[]string{"strictatime", "relatime"}, atimePolicy{mode: atimeRelative}},
		{[]string{"nodiratime"}, atimePolicy{mode: atimeRelative, noDirs: true}},
		{[]string{"strictatime", "nodiratime", "diratime"}, atimePolicy{mode: atimeStrict}},
		{[]string{"ro", "strictatime"}, atimePolicy{mode: atimeStrict, readOnly: true}},
		{[]string{"ro", "rw"}, atimePolicy{mode: atimeRelative}},
	} {
		var f VFSFlags
		for _, o := range c.opts {
			f.Parse(o)
		}
		if got := atimePolicyOfFlags(f.MountFlags()); got != c.want {
			t.Errorf("%v: %+v, want %+v", c.opts, got, c.want)
		}
	}
}

func TestAtimePolicyOfMountinfo(t *testing.T) {
	const info = `22 27 0:21 / /proc rw,relatime - proc proc rw
49 27 0:44 / /mnt/with\040space rw,nosuid,nodev,noatime,nodiratime - fuse.kmsfs /vault rw,user_id=0,group_id=0
50 27 0:45 / /mnt/b rw,nosuid,nodev,relatime shared:7 - fuse.kmsfs /vault2 rw,user_id=0,group_id=0
51 50 0:46 / /mnt/b rw,nosuid,nodev - fuse.kmsfs /vault3 ro,user_id=0,group_id=0
52 27 0:45 / /mnt/b2 ro,nosuid,nodev,relatime - fuse.kmsfs /vault2 rw,user_id=0,group_id=0
`
	for _, c := range []struct {
		mountpoint, dev string
		ok              bool
		want            atimePolicy
	}{
		{"/mnt/with space", "0:44", true, atimePolicy{mode: atimeNever, noDirs: true}},
		// Another mount stacked on the same mount point.
		{"/mnt/b", "0:45", true, atimePolicy{mode: atimeRelative}},
		// strictatime shows neither noatime nor relatime; a read-only
		// superblock makes the mount read-only.
		{"/mnt/b", "0:46", true, atimePolicy{mode: atimeStrict, readOnly: true}},
		{"/mnt/b2", "0:45", true, atimePolicy{mode: atimeRelative, readOnly: true}},
		{"/mnt/b", "0:99", false, atimePolicy{}},
		{"/mnt/c", "0:45", false, atimePolicy{}},
	} {
		mnt, super, ok := mountinfoOptions(info, c.mountpoint, c.dev)
		if ok != c.ok {
			t.Errorf("%s %s: found %v, want %v", c.mountpoint, c.dev, ok, c.ok)
			continue
		}
		if !ok {
			continue
		}
		if got := atimePolicyOfMountinfo(mnt, super); got != c.want {
			t.Errorf("%s %s: %+v (from %v, %v), want %+v", c.mountpoint, c.dev, got, mnt, super, c.want)
		}
	}
}

// TestAtimeWatchFixed: a watch that follows no mount keeps its policy, and
// a nil one (a tree not made by Mount) is relatime.
func TestAtimeWatchFixed(t *testing.T) {
	var nilWatch *atimeWatch
	if got := nilWatch.current(); got != (atimePolicy{}) || nilWatch.recheck() != got {
		t.Errorf("nil watch: %+v", got)
	}
	w := newAtimeWatch(atimePolicy{mode: atimeNever})
	if got := w.recheck(); got.mode != atimeNever {
		t.Errorf("fixed watch: %+v", got)
	}
	w.stop()
}

// TestAtimeWatchFollowsMissingMount: following a mount point that is not
// mounted starts, keeps the policy it had, and stops.
func TestAtimeWatchFollowsMissingMount(t *testing.T) {
	w := newAtimeWatch(atimePolicy{mode: atimeStrict, noDirs: true})
	if err := w.follow("/nonexistent/mount/point", "0:0", false, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatal(err)
	}
	if got := w.recheck(); got != (atimePolicy{mode: atimeStrict, noDirs: true}) {
		t.Errorf("policy of an unlisted mount: %+v", got)
	}
	w.stop()
	if w.checkFd != -1 || w.watchFd != -1 || w.stopFd != -1 {
		t.Errorf("descriptors left open: %d %d %d", w.checkFd, w.watchFd, w.stopFd)
	}
}
