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
			stored, err := keys.SealBlocks(region, plain, 0, blockSize, true)
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
