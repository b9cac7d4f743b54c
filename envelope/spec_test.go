package envelope_test

import (
	"bytes"
	"crypto/rand"
	"testing"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/envelope/internal/specdecode"
)

// What envelope writes with random nonces and IDs, which fixed vectors
// cannot pin down, must read back by docs/FORMAT.md alone (specdecode):
// whole files in both modes, with a bucket key, and symlink targets.
func TestWrittenFilesDecodeBySpec(t *testing.T) {
	for _, mode := range []envelope.Mode{envelope.ModePerObject, envelope.ModeBucketKey} {
		t.Run(mode.String(), func(t *testing.T) {
			secret := make([]byte, envelope.KeySize) // the data key, or the bucket key
			rand.Read(secret)
			var fileID, volumeID, bucketKeyID [envelope.IDLen]byte
			rand.Read(fileID[:])
			rand.Read(volumeID[:])
			rand.Read(bucketKeyID[:])
			fileKey := secret
			if mode == envelope.ModeBucketKey {
				var err error
				if fileKey, err = envelope.BucketFileKey(secret, fileID); err != nil {
					t.Fatal(err)
				}
			}
			keys, err := envelope.DeriveFileKeys(fileKey, fileID, envelope.CurrentVersion)
			if err != nil {
				t.Fatal(err)
			}
			const headerSize, blockSize = 512, 1024
			h := envelope.Header{
				RegionSize: headerSize, Mode: mode, Suite: envelope.SuiteAES256GCM, BlockSize: blockSize,
				FileID: fileID, VolumeID: volumeID, KeyID: "arn:aws:kms:local:000000000000:key/k", WrappedKey: []byte("wrapped"),
			}
			if mode == envelope.ModeBucketKey {
				h.BucketKeyID = bucketKeyID
			}
			region, err := h.Marshal(keys.MACKey())
			if err != nil {
				t.Fatal(err)
			}
			plain := make([]byte, 3*blockSize+77)
			rand.Read(plain)
			stored, err := keys.SealBlocks(region, plain, 0, blockSize, true, envelope.NoPrev)
			if err != nil {
				t.Fatal(err)
			}
			got, err := specdecode.DecryptFile(stored, headerSize, blockSize, func(p *specdecode.Header) ([]byte, error) {
				if p.Mode == 2 {
					if !bytes.Equal(p.BucketKeyID, bucketKeyID[:]) {
						t.Errorf("bucket key ID %x, want %x", p.BucketKeyID, bucketKeyID)
					}
					return specdecode.BucketFileKey(secret, p.FileID), nil
				}
				return secret, nil
			})
			if err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("decoded by FORMAT.md: %d bytes, %v; want the %d written", len(got), err, len(plain))
			}
			// Cut at a block boundary: the new last block was not sealed as
			// the last one, which FORMAT.md's reader must refuse.
			cut := stored[:headerSize+3*(blockSize+envelope.BlockOverhead)]
			if got, err := specdecode.DecryptFile(cut, headerSize, blockSize, func(p *specdecode.Header) ([]byte, error) {
				if p.Mode == 2 {
					return specdecode.BucketFileKey(secret, p.FileID), nil
				}
				return secret, nil
			}); err == nil {
				t.Fatalf("a file cut at a block boundary decoded by FORMAT.md as %d bytes", len(got))
			}
		})
	}

	metaKey := make([]byte, envelope.KeySize)
	rand.Read(metaKey)
	var volumeID [envelope.IDLen]byte
	rand.Read(volumeID[:])
	c, err := envelope.NewNameCipher(metaKey, volumeID)
	if err != nil {
		t.Fatal(err)
	}
	nk := specdecode.DeriveNameKeys(metaKey, volumeID[:])
	target := "../some/where else/ünïcode"
	stored, err := c.EncryptTarget(target)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := nk.DecryptTarget(stored); err != nil || got != target {
		t.Fatalf("symlink target decoded by FORMAT.md: %q, %v", got, err)
	}
	root := c.RootDirID()
	if !bytes.Equal(nk.RootDirID(), root[:]) {
		t.Fatalf("root directory ID %x, FORMAT.md gives %x", root, nk.RootDirID())
	}
}

// TestHolesDecodeBySpec: a version 3 file with holes, as envelope seals it
// (each stored block naming the stored block before it), reads by
// docs/FORMAT.md alone as its plaintext with zeros in the holes; a stored
// block zeroed into a hole fails, whichever block it is and however many
// stored blocks after it are zeroed too.
func TestHolesDecodeBySpec(t *testing.T) {
	fileKey := make([]byte, envelope.KeySize)
	rand.Read(fileKey)
	var fileID, volumeID [envelope.IDLen]byte
	rand.Read(fileID[:])
	rand.Read(volumeID[:])
	keys, err := envelope.DeriveFileKeys(fileKey, fileID, envelope.Version3)
	if err != nil {
		t.Fatal(err)
	}
	const headerSize, blockSize = 512, 1024
	const sealedSize = blockSize + envelope.BlockOverhead
	h := envelope.Header{
		RegionSize: headerSize, Mode: envelope.ModePerObject, Suite: envelope.SuiteAES256GCM, BlockSize: blockSize,
		FileID: fileID, VolumeID: volumeID, KeyID: "arn:aws:kms:local:000000000000:key/k", WrappedKey: []byte("wrapped"),
	}
	region, err := h.Marshal(keys.MACKey())
	if err != nil {
		t.Fatal(err)
	}
	// Blocks 1, 2 and 5 to 7 are holes; 0, 3, 4, 8 and the short last block
	// 9 are stored.
	const nBlocks, lastLen = 10, 100
	holes := map[uint64]bool{1: true, 2: true, 5: true, 6: true, 7: true}
	plain := make([]byte, (nBlocks-1)*blockSize+lastLen)
	stored := bytes.Clone(region)
	prev := envelope.NoPrev
	for i := uint64(0); i < nBlocks; i++ {
		if holes[i] {
			stored = append(stored, make([]byte, sealedSize)...)
			continue
		}
		p := plain[i*blockSize : min((i+1)*blockSize, uint64(len(plain)))]
		rand.Read(p)
		if stored, err = keys.SealBlock(stored, p, i, i == nBlocks-1, prev); err != nil {
			t.Fatal(err)
		}
		prev = i
	}
	key := func(*specdecode.Header) ([]byte, error) { return fileKey, nil }
	got, err := specdecode.DecryptFile(stored, headerSize, blockSize, key)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("decoded by FORMAT.md: %d bytes, %v; want the %d written", len(got), err, len(plain))
	}
	for first := uint64(0); first < nBlocks; first++ {
		if holes[first] {
			continue
		}
		for last := first; last < nBlocks; last++ {
			bad := bytes.Clone(stored)
			for i := first; i <= last; i++ {
				clear(bad[headerSize+i*sealedSize : min(headerSize+(i+1)*sealedSize, uint64(len(bad)))])
			}
			if _, err := specdecode.DecryptFile(bad, headerSize, blockSize, key); err == nil {
				t.Errorf("blocks %d..%d zeroed: decoded by FORMAT.md without an error", first, last)
			}
		}
	}
}

// TestWrittenUnitsDecodeBySpec: a version 4 file as envelope writes it,
// with random keys, IDs and nonces (a compact header, units of compressible
// and incompressible bytes and a short last one, zeros up to the version 3
// size), reads by docs/FORMAT.md alone, in both modes; cut or extended, or
// with two units swapped, it does not.
func TestWrittenUnitsDecodeBySpec(t *testing.T) {
	codec, err := envelope.NewCodec(3)
	if err != nil {
		t.Fatal(err)
	}
	defer codec.Close()
	const headerSize, blockSize, unitSize = 1024, 4096, envelope.DefaultUnitSize
	l := envelope.Layout{HeaderSize: headerSize, BlockSize: blockSize}
	plain := make([]byte, 3*unitSize+1234)
	rand.Read(plain[unitSize : 2*unitSize]) // unit 1 stored as is; the others compress
	copy(plain[2*unitSize:], bytes.Repeat([]byte("compressible "), unitSize/8))
	for _, mode := range []envelope.Mode{envelope.ModePerObject, envelope.ModeBucketKey} {
		t.Run(mode.String(), func(t *testing.T) {
			secret := make([]byte, envelope.KeySize)
			rand.Read(secret)
			var fileID, volumeID, bucketKeyID [envelope.IDLen]byte
			rand.Read(fileID[:])
			rand.Read(volumeID[:])
			rand.Read(bucketKeyID[:])
			fileKey := secret
			if mode == envelope.ModeBucketKey {
				if fileKey, err = envelope.BucketFileKey(secret, fileID); err != nil {
					t.Fatal(err)
				}
			}
			keys, err := envelope.DeriveFileKeys(fileKey, fileID, envelope.Version4)
			if err != nil {
				t.Fatal(err)
			}
			u := &envelope.Units{Algorithm: envelope.CompressZstd, UnitSize: unitSize, PlainSize: int64(len(plain))}
			var body []byte
			var sealed [][]byte
			for i := range envelope.UnitCount(u.PlainSize, unitSize) {
				start := len(body)
				if body, err = keys.SealUnit(body, plain[i*unitSize:min((i+1)*unitSize, len(plain))], uint64(i), codec); err != nil {
					t.Fatal(err)
				}
				u.Lengths = append(u.Lengths, uint32(len(body)-start))
				sealed = append(sealed, body[start:])
			}
			h := envelope.Header{
				Version: envelope.Version4, Mode: mode, Suite: envelope.SuiteAES256GCM, BlockSize: blockSize,
				FileID: fileID, VolumeID: volumeID, KeyID: "arn:aws:kms:local:000000000000:key/k", WrappedKey: []byte("wrapped"), Units: u,
			}
			if mode == envelope.ModeBucketKey {
				h.BucketKeyID = bucketKeyID
			}
			region, err := h.MarshalCompact(keys.MACKey(), headerSize)
			if err != nil {
				t.Fatal(err)
			}
			cs := l.CipherSize(u.PlainSize, true)
			stored := append(append(bytes.Clone(region), body...), make([]byte, cs-int64(len(region)+len(body)))...)
			key := func(p *specdecode.Header) ([]byte, error) {
				if p.Mode == 2 {
					return specdecode.BucketFileKey(secret, p.FileID), nil
				}
				return secret, nil
			}
			got, err := specdecode.DecryptFile(stored, headerSize, blockSize, key)
			if err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("decoded by FORMAT.md: %d bytes, %v; want the %d written", len(got), err, len(plain))
			}
			swapped := append(append(append(bytes.Clone(region), sealed[1]...), sealed[0]...), stored[len(region)+len(sealed[0])+len(sealed[1]):]...)
			for name, bad := range map[string][]byte{
				"cut":      stored[:len(stored)-1],
				"extended": append(bytes.Clone(stored), make([]byte, blockSize+envelope.BlockOverhead)...),
				"swapped":  swapped,
			} {
				if _, err := specdecode.DecryptFile(bad, headerSize, blockSize, key); err == nil {
					t.Errorf("%s: decoded by FORMAT.md", name)
				}
			}
		})
	}
}
