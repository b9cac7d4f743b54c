package compose

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/kmsfs/kmsfs/backend"
	"github.com/kmsfs/kmsfs/backend/s3"
	"github.com/kmsfs/kmsfs/backend/shared"
	"github.com/kmsfs/kmsfs/backend/shared/pgmeta"
	"github.com/kmsfs/kmsfs/volume"
)

// sharedGCEvery is how often a mount of a shared volume deletes the
// chunks recorded as garbage (older than shared.DefaultGCGrace).
const sharedGCEvery = 10 * time.Minute

// openS3Volume opens an s3://bucket/prefix volume: a shared one (its tree
// in the metadata database, o.Meta or the one its config names) or an
// object-per-file one.
func openS3Volume(ctx context.Context, spec string, o BackendOptions) (backend.Backend, error) {
	be, err := openS3(ctx, spec, o)
	if err != nil {
		return nil, err
	}
	s3b := be.(*s3.Backend)
	if o.Salvage {
		sv, err := shared.OpenSalvage(ctx, s3b)
		if err != nil {
			s3b.Close()
			return nil, fmt.Errorf("%s: %w", spec, err)
		}
		return sv, nil
	}
	metaURL := o.Meta
	if metaURL == "" {
		data, err := s3b.ReadMeta(ctx, volume.ConfigName)
		if err != nil {
			return s3b, nil // no volume yet, or not readable: the S3 backend says so
		}
		var cfg volume.Config
		if json.Unmarshal(data, &cfg) != nil || !cfg.HasFeature(volume.FeatureShared) {
			return s3b, nil
		}
		if cfg.Meta == "" {
			s3b.Close()
			return nil, fmt.Errorf("%s: shared volume without a metadata database URL in its config; give --meta", spec)
		}
		metaURL = cfg.Meta
	}
	store, err := pgmeta.Open(ctx, metaURL)
	if err != nil {
		s3b.Close()
		return nil, err
	}
	sc := shared.Config{Store: store, S3: s3b, URL: spec, StagingDir: o.StagingDir}
	if o.OwnsPrefix {
		sc.GCEvery = sharedGCEvery // a mount collects overwritten data
	}
	sb, err := shared.Open(ctx, sc)
	if err != nil {
		store.Close()
		s3b.Close()
		return nil, err
	}
	return closeAll{sb, func() { store.Close(); s3b.Close() }}, nil
}

// closeAll closes what a shared backend was opened over with it.
type closeAll struct {
	*shared.Backend
	also func()
}

func (c closeAll) Close() error {
	err := c.Backend.Close()
	c.also()
	return err
}
