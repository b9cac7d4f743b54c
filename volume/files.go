package volume

import (
	"sync"
	"sync/atomic"

	"github.com/kmsfs/kmsfs/envelope"
)

// fileState is shared by every open handle of one backend file (hard links
// and repeated opens included): one content lock, one set of keys.
type fileState struct {
	ino  uint64
	refs int
	// writers counts the handles open for writing; guarded by Volume.mu.
	writers int

	// content serialises writers against readers and each other: a write
	// is a read-modify-write of whole blocks.
	content sync.RWMutex

	keyMu sync.Mutex
	keys  *envelope.FileKeys // nil until the header is read or created

	// behindTo is the stored offset up to which writeback of a sequential
	// write has been started (see writeBehind); guarded by content.
	behindTo int64

	// gaps are runs of blocks inside the file never written (see gaps.go);
	// guarded by content.
	gaps []gapRange
	// gapWriter is the handle that last left a gap: writable, and open
	// while any gap is (a writable handle fills them all when it closes),
	// so a reader on a read-only handle can fill gaps through it.
	gapWriter *Handle

	// openTail: the stored last block of a version 2 file is sealed as
	// followed by more blocks, because an extension of the file is under
	// way; finishTail seals it as the last one (tail.go). Guarded by
	// content.
	openTail bool
	// allocating: an extension under way is fallocate(2) mode 0, which
	// writes encrypted zeros instead of leaving holes. Guarded by content.
	allocating bool
	// tailSynced: the backend was synced while the tail was open (an
	// fsync through a read-only handle, which cannot seal it), so the open
	// last block may hold fsynced bytes. Guarded by content.
	tailSynced bool

	// stage holds the whole file while it is written, on a compressing
	// volume (compress.go); guarded by content. stageLen is its length
	// plus one (0: no stage), readable without the lock, for stat.
	stage    *stage
	stageLen atomic.Int64
	// units locates the units of a compressed (version 4) file; guarded
	// by content. unitCache is the unit decompressed last (unitCached),
	// guarded by unitMu: readers share the content lock.
	units      *unitIndex
	unitMu     sync.Mutex
	unitCache  []byte
	unitCached int
}

func (v *Volume) acquire(ino uint64) *fileState {
	v.mu.Lock()
	defer v.mu.Unlock()
	st := v.files[ino]
	if st == nil {
		st = &fileState{ino: ino}
		v.files[ino] = st
	}
	st.refs++
	return st
}

// SerializeTimes runs fn, a change of the times of inode ino made by path
// (utimens), under the content lock of the file if it is open here. The
// sealing of a file's end at its release (tail.go) rewrites its last
// block quietly: it reads the mtime, writes, and puts the mtime back; a
// utimens falling in between (rsync and cp -p set times right after
// close(2), and the kernel sends RELEASE in the background) would be
// undone.
func (v *Volume) SerializeTimes(ino uint64, fn func() error) error {
	v.mu.Lock()
	st := v.files[ino]
	v.mu.Unlock()
	if st == nil {
		return fn()
	}
	st.content.Lock()
	defer st.content.Unlock()
	// A file held in memory is written out later (compress.go): it
	// keeps the times set now.
	if st.stage != nil && st.stage.dirty {
		st.stage.keepTimes = true
	}
	return fn()
}

func (v *Volume) release(st *fileState) {
	v.mu.Lock()
	defer v.mu.Unlock()
	st.refs--
	if st.refs == 0 {
		delete(v.files, st.ino)
		st.keyMu.Lock()
		if st.keys != nil {
			st.keys.Zero()
			st.keys = nil
		}
		st.keyMu.Unlock()
	}
}

// holesKeys says whether the file's keys are loaded and for a file that may
// have holes (version 3).
func (st *fileState) holesKeys() bool {
	st.keyMu.Lock()
	defer st.keyMu.Unlock()
	return st.keys != nil && st.keys.HasHoles()
}
