package compose

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/kmsfs/kmsfs/backend"
	"github.com/kmsfs/kmsfs/backend/shared"
	"github.com/kmsfs/kmsfs/keycache"
	"github.com/kmsfs/kmsfs/kms"
	"github.com/kmsfs/kmsfs/kms/kmsmw"
	"github.com/kmsfs/kmsfs/metrics"
	"github.com/kmsfs/kmsfs/volume"
)

// Chain says how calls reach the KMS: an optional simulation of a regional
// KMS (latency, quota), retried with backoff, observed for metrics.
type Chain struct {
	Simulate kmsmw.SimulateOptions
	Metrics  *metrics.Set // nil: no observation
	// Audit receives every call that reaches the KMS (retries included;
	// key cache hits are not KMS calls); nil: none.
	Audit func(kmsmw.AuditRecord) error
}

// Wrap puts the chain in front of base.
func (k Chain) Wrap(base kms.Crypto) kms.Crypto {
	c := base
	if k.Audit != nil {
		c = kmsmw.Audit(c, k.Audit)
	}
	if k.Simulate.Latency > 0 || k.Simulate.RPS > 0 {
		c = kmsmw.Simulate(c, k.Simulate)
	}
	var onRetry func(string, error)
	if k.Metrics != nil {
		c = kmsmw.Observe(c, k.Metrics.ObserveKMS)
		onRetry = k.Metrics.CountRetry
	}
	// The remote client retries inside the SDK too; this outer loop is what
	// keeps a quota (ThrottlingException) from ever failing a file operation.
	return kmsmw.Retry(c, kmsmw.RetryOptions{OnRetry: onRetry})
}

// ForVolume resolves the KMS of a volume: what o names wins, then the
// volume's config (the KMS and region it was created on).
func (o KMSOptions) ForVolume(cfg *volume.Config) KMSOptions {
	if o.URL == "" && cfg != nil {
		o.URL = cfg.KMS
	}
	if o.Region == "" && cfg != nil {
		o.Region = cfg.KMSRegion
	}
	if o.Replicas == nil && cfg != nil {
		o.Replicas = cfg.KMSReplicas
	}
	return o
}

// VolumeOptions say how to open a volume and everything behind it.
type VolumeOptions struct {
	Backend  BackendOptions
	KMS      KMSOptions // URL and Region default to the volume config's
	ReadOnly bool
	Limits   keycache.Limits
	Logger   *slog.Logger
	Volume   volume.Options // Keys, Logger and ReadOnly are set here
	Chain    Chain
}

// Opened is a volume with the KMS, key cache and backend behind it.
type Opened struct {
	Vol     *volume.Volume
	Cache   *keycache.Cache
	KMS     KMS
	Backend backend.Backend
}

// MaxCacheTimeout is the longest entry and attribute timeout a mount of
// the volume may give the kernel (0: no bound). A shared volume's other
// mounts change its tree, and their changes must show within the second
// promised (backend/shared.SharedAttrTimeout).
func (o *Opened) MaxCacheTimeout() time.Duration {
	if sh, ok := o.Backend.(interface{ SharedNamespace() bool }); ok && sh.SharedNamespace() {
		return shared.SharedAttrTimeout
	}
	return 0
}

// OpenVolume opens the backend spec names, reads the volume config, opens
// its KMS behind the key cache and the chain, and opens the volume.
func OpenVolume(ctx context.Context, spec string, o VolumeOptions) (*Opened, error) {
	be, err := OpenBackend(ctx, spec, o.Backend)
	if err != nil {
		return nil, err
	}
	cfg, err := volume.ReadConfig(ctx, be)
	if err != nil {
		return nil, errors.Join(err, be.Close())
	}
	ko := o.KMS.ForVolume(cfg)
	if ko.Warn == nil && o.Logger != nil {
		ko.Warn = func(msg string) { o.Logger.Warn(msg) }
	}
	k, err := OpenKMS(ctx, ko)
	if err != nil {
		return nil, errors.Join(err, be.Close())
	}
	cache, err := keycache.New(o.Chain.Wrap(k), o.Limits, time.Now)
	if err != nil {
		return nil, errors.Join(err, k.Close(), be.Close())
	}
	vo := o.Volume
	vo.Keys, vo.Logger, vo.ReadOnly = cache, o.Logger, o.ReadOnly
	vol, err := volume.Open(ctx, be, vo)
	if err != nil {
		cache.Close()
		return nil, errors.Join(err, k.Close(), be.Close())
	}
	if o.Chain.Metrics != nil {
		o.Chain.Metrics.Attach(cache, vol)
		if f, ok := k.(*failoverKMS); ok {
			o.Chain.Metrics.AttachFailover(f.FailoverState)
		}
	}
	return &Opened{Vol: vol, Cache: cache, KMS: k, Backend: be}, nil
}

// Close zeroes every cached key and closes the KMS and backend.
func (o *Opened) Close() error {
	o.Vol.Close()
	o.Cache.Close()
	return errors.Join(o.KMS.Close(), o.Backend.Close())
}
