// Package volume ties a kmsfs volume together: its config, its key source
// (KMS through the key cache), its backend, and the open files that
// translate plaintext reads and writes into envelope blocks. It knows nothing
// of FUSE; fs/ calls it.
package volume

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"time"

	"github.com/kmsfs/kmsfs/backend"
	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/kms"
)

// ConfigName is the metadata object holding the volume config.
const ConfigName = "volume.json"

// ConfigFormat is the version of the config document.
const ConfigFormat = 1

// Features this kmsfs understands. A volume naming a feature not in this
// list is refused, so an older kmsfs never misreads a newer volume.
const (
	FeatureBucketKey    = "bucket-key"
	FeatureXattrEncrypt = "xattr-encryption"
	// FeatureNameEncrypt: names and symlink targets are stored encrypted
	// (docs/FORMAT.md section 10).
	FeatureNameEncrypt = "name-encryption"
	// FeatureShared: the tree is in a metadata database, data in chunk
	// objects (docs/FORMAT.md, "Shared volumes"); Config.Meta names it.
	FeatureShared = "shared-metadata"
	// FeatureCompression: files are compressed before they are encrypted
	// (docs/FORMAT.md section 4a), at the level in Config.Compress.
	FeatureCompression = "compression"
)

var knownFeatures = []string{FeatureBucketKey, FeatureXattrEncrypt, FeatureNameEncrypt, FeatureShared, FeatureCompression}

// HasFeature reports whether the volume uses feature f.
func (c *Config) HasFeature(f string) bool { return slices.Contains(c.Features, f) }

// Config is the volume config, stored as JSON in the backend's metadata
// area. It holds no secret: the metadata key is wrapped by the KMS.
type Config struct {
	Format     int    `json:"format"`
	VolumeID   string `json:"volume_id"` // 32 hex digits
	Mode       string `json:"mode"`      // "per-object" or "bucket-key"
	KeyID      string `json:"kms_key_id"`
	KMS        string `json:"kms"` // "embedded" or the remote KMS endpoint URL
	KMSRegion  string `json:"kms_region,omitempty"`
	BlockSize  int    `json:"block_size"`
	HeaderSize int    `json:"header_size"`
	// WrappedMetaKey is a KMS data key under context {volume, purpose:
	// metadata}, used for xattr values (and file names, later).
	WrappedMetaKey []byte    `json:"wrapped_meta_key"`
	Features       []string  `json:"features"`
	Created        time.Time `json:"created"`
	// Meta is the metadata database of a shared volume (no password).
	Meta string `json:"meta,omitempty"`

	// KMSReplicas are other regions' KMSs with replicas of a
	// multi-Region key, "REGION=URL", that a mount unwraps with while
	// the KMS is unreachable; absent: none.
	KMSReplicas []string `json:"kms_replicas,omitempty"`

	// Compress is "zstd" or "zstd:LEVEL" with FeatureCompression.
	Compress string `json:"compress,omitempty"`
}

// ID returns the binary volume ID.
func (c *Config) ID() ([envelope.IDLen]byte, error) {
	var id [envelope.IDLen]byte
	b, err := hex.DecodeString(c.VolumeID)
	if err != nil || len(b) != envelope.IDLen {
		return id, fmt.Errorf("volume config: bad volume_id %q", c.VolumeID)
	}
	copy(id[:], b)
	return id, nil
}

func (c *Config) mode() (envelope.Mode, error) {
	switch c.Mode {
	case "per-object", "":
		return envelope.ModePerObject, nil
	case "bucket-key":
		return envelope.ModeBucketKey, nil
	}
	return 0, fmt.Errorf("volume config: unknown mode %q (want per-object or bucket-key)", c.Mode)
}

func (c *Config) validate() error {
	if c.Format != ConfigFormat {
		return fmt.Errorf("volume config format %d is not supported by this kmsfs (reads %d)", c.Format, ConfigFormat)
	}
	for _, f := range c.Features {
		if !slices.Contains(knownFeatures, f) {
			return fmt.Errorf("volume uses feature %q that this kmsfs does not support; upgrade kmsfs", f)
		}
	}
	if _, err := c.ID(); err != nil {
		return err
	}
	if _, err := c.mode(); err != nil {
		return err
	}
	if c.KeyID == "" {
		return errors.New("volume config: no kms_key_id")
	}
	if c.HasFeature(FeatureCompression) {
		if _, err := ParseCompress(c.Compress); err != nil {
			return fmt.Errorf("volume config: %w", err)
		}
	} else if c.Compress != "" {
		return fmt.Errorf("volume config: compress %q without the %s feature", c.Compress, FeatureCompression)
	}
	if c.HeaderSize < envelope.MinHeaderSize || c.HeaderSize > envelope.MaxHeaderSize {
		return fmt.Errorf("volume config: header_size %d outside %d..%d", c.HeaderSize, envelope.MinHeaderSize, envelope.MaxHeaderSize)
	}
	if c.BlockSize < envelope.MinBlockSize || c.BlockSize > envelope.MaxBlockSize || c.BlockSize&(c.BlockSize-1) != 0 {
		return fmt.Errorf("volume config: block_size %d is not a power of two in %d..%d", c.BlockSize, envelope.MinBlockSize, envelope.MaxBlockSize)
	}
	return nil
}

// InitOptions are the choices made once, at `kmsfs init`.
type InitOptions struct {
	KeyID      string // KMS key (ID, ARN or alias); resolved to an ARN
	KMS        string // "embedded" or URL, recorded for `kmsfs mount`
	KMSRegion  string
	Mode       envelope.Mode
	BlockSize  int // 0: envelope.DefaultBlockSize
	HeaderSize int // 0: envelope.DefaultHeaderSize
	// EncryptNames stores names and symlink targets encrypted.
	EncryptNames bool
	// Meta, if set, makes a shared volume with this metadata database;
	// its names are always encrypted.
	Meta string

	// KMSReplicas: Config.KMSReplicas.
	KMSReplicas []string
	// Compress: "" (off), "zstd" or "zstd:LEVEL" (Config.Compress).
	Compress string
}

// Init creates a new volume on an empty backend: a random volume ID and a
// wrapped metadata key. It refuses a backend that already has a volume.
func Init(ctx context.Context, be backend.Backend, crypto kms.Crypto, opt InitOptions) (*Config, error) {
	if _, err := be.ReadMeta(ctx, ConfigName); err == nil {
		return nil, errors.New("a kmsfs volume already exists here")
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read volume config: %w", err)
	}
	cfg := &Config{
		Format: ConfigFormat, KMS: opt.KMS, KMSRegion: opt.KMSRegion, KMSReplicas: opt.KMSReplicas,
		BlockSize: opt.BlockSize, HeaderSize: opt.HeaderSize,
		Features: []string{FeatureXattrEncrypt}, Created: time.Now().UTC(),
	}
	if cfg.KMS == "" {
		cfg.KMS = "embedded"
	}
	if cfg.BlockSize == 0 {
		cfg.BlockSize = envelope.DefaultBlockSize
	}
	if cfg.HeaderSize == 0 {
		cfg.HeaderSize = envelope.DefaultHeaderSize
	}
	switch opt.Mode {
	case envelope.ModePerObject, 0:
		cfg.Mode = "per-object"
	case envelope.ModeBucketKey:
		cfg.Mode = "bucket-key"
		cfg.Features = append(cfg.Features, FeatureBucketKey)
	}
	if opt.Compress != "" {
		if _, err := ParseCompress(opt.Compress); err != nil {
			return nil, err
		}
		cfg.Compress = opt.Compress
		cfg.Features = append(cfg.Features, FeatureCompression)
	}
	if opt.Meta != "" {
		cfg.Meta, opt.EncryptNames = opt.Meta, true
		cfg.Features = append(cfg.Features, FeatureShared)
	}
	if opt.EncryptNames {
		// Entries already there would be hidden: their names do not decrypt.
		if ents, err := be.ReadDir(ctx, ""); err != nil {
			return nil, fmt.Errorf("list the backend: %w", err)
		} else if len(ents) > 0 {
			return nil, fmt.Errorf("the backend is not empty (%q, ...); a volume with encrypted names starts empty", ents[0].Name)
		}
		cfg.Features = append(cfg.Features, FeatureNameEncrypt)
	}
	var id [envelope.IDLen]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, err
	}
	cfg.VolumeID = hex.EncodeToString(id[:])
	// GenerateDataKeyWithoutPlaintext: init needs only the wrapped metadata
	// key, and it resolves the key's ARN and proves the key usable.
	wrapped, keyARN, err := crypto.GenerateDataKeyWithoutPlaintext(ctx, opt.KeyID, envelope.KeySize, metaContext(cfg.VolumeID))
	if err != nil {
		return nil, fmt.Errorf("KMS key %s: %w", opt.KeyID, err)
	}
	cfg.KeyID = keyARN
	cfg.WrappedMetaKey = wrapped
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := be.WriteMeta(ctx, ConfigName, append(data, '\n')); err != nil {
		return nil, fmt.Errorf("write volume config: %w", err)
	}
	return cfg, nil
}

// ReadConfig loads and validates the volume config of a backend.
func ReadConfig(ctx context.Context, be backend.Backend) (*Config, error) {
	data, err := be.ReadMeta(ctx, ConfigName)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errors.New("no kmsfs volume here (run kmsfs init first)")
	}
	if err != nil {
		return nil, fmt.Errorf("read volume config: %w", err)
	}
	var cfg Config
	if err := json.Unmarshal(data, &cfg); err != nil {
		return nil, fmt.Errorf("volume config: %w", err)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// Encryption contexts. They bind the volume and the file ID, never the path:
// paths change on rename and S3 renames are copies.
const (
	ctxVolume  = "kmsfs:volume"
	ctxFile    = "kmsfs:file"
	ctxPurpose = "kmsfs:purpose"
)

func fileContext(volumeID string, fileID [envelope.IDLen]byte) kms.EncryptionContext {
	return kms.EncryptionContext{ctxVolume: volumeID, ctxFile: hex.EncodeToString(fileID[:])}
}

// bucketContext is the bucket-key context: the volume only, as S3 Bucket
// Keys use the bucket ARN rather than the object's.
func bucketContext(volumeID string) kms.EncryptionContext {
	return kms.EncryptionContext{ctxVolume: volumeID}
}

func metaContext(volumeID string) kms.EncryptionContext {
	return kms.EncryptionContext{ctxVolume: volumeID, ctxPurpose: "metadata"}
}
