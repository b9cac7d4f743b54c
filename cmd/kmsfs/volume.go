package main

import (
	"context"
	"log/slog"
	"os"
	"time"

	"github.com/kmsfs/kmsfs/backend"
	"github.com/kmsfs/kmsfs/keycache"
	"github.com/kmsfs/kmsfs/kms"
	"github.com/kmsfs/kmsfs/kms/kmsmw"
	"github.com/kmsfs/kmsfs/metrics"
	"github.com/kmsfs/kmsfs/volume"
)

// openedVolume is a volume with the KMS, key cache and backend behind it.
type openedVolume struct {
	vol   *volume.Volume
	cache *keycache.Cache
	kms   volume.KMS
	be    backend.Backend
	audit func() // closes the client-side audit log
}

// kmsChain says how calls reach the KMS: an optional simulation of a
// regional KMS (latency, quota), retried with backoff, observed for metrics.
type kmsChain struct {
	simulate kmsmw.SimulateOptions
	metrics  *metrics.Set // nil: no observation
	// audit receives every call that reaches the KMS (retries included;
	// key cache hits are not KMS calls); nil: none.
	audit func(kmsmw.AuditRecord) error
}

func (k kmsChain) wrap(base kms.Crypto) kms.Crypto {
	c := base
	if k.audit != nil {
		c = kmsmw.Audit(c, k.audit)
	}
	if k.simulate.Latency > 0 || k.simulate.RPS > 0 {
		c = kmsmw.Simulate(c, k.simulate)
	}
	var onRetry func(string, error)
	if k.metrics != nil {
		c = kmsmw.Observe(c, k.metrics.ObserveKMS)
		onRetry = k.metrics.CountRetry
	}
	// The remote client retries inside the SDK too; this outer loop is what
	// keeps a quota (ThrottlingException) from ever failing a file operation.
	return kmsmw.Retry(c, kmsmw.RetryOptions{OnRetry: onRetry})
}

func openVolume(ctx context.Context, c *commonFlags, spec string, readOnly bool, lim keycache.Limits, log *slog.Logger, vo volume.Options, chain kmsChain) (*openedVolume, error) {
	be, err := volume.OpenBackend(ctx, spec, c.backendOptions())
	if err != nil {
		return nil, err
	}
	cfg, err := volume.ReadConfig(ctx, be)
	if err != nil {
		be.Close()
		return nil, err
	}
	ko, err := c.kmsOptions(cfg)
	if err != nil {
		be.Close()
		return nil, err
	}
	k, err := volume.OpenKMS(ctx, ko)
	if err != nil {
		be.Close()
		return nil, err
	}
	record, closeAudit, err := c.openAudit(command(readOnly))
	if err != nil {
		k.Close()
		be.Close()
		return nil, err
	}
	chain.audit = record
	cache, err := keycache.New(chain.wrap(k), lim, time.Now)
	if err != nil {
		closeAudit()
		k.Close()
		be.Close()
		return nil, err
	}
	vo.Keys, vo.Logger, vo.ReadOnly = cache, log, readOnly
	vol, err := volume.Open(ctx, be, vo)
	if err != nil {
		cache.Close()
		closeAudit()
		k.Close()
		be.Close()
		return nil, err
	}
	if chain.metrics != nil {
		chain.metrics.Attach(cache, vol)
	}
	return &openedVolume{vol: vol, cache: cache, kms: k, be: be, audit: closeAudit}, nil
}

// Close zeroes every cached key and closes the KMS and backend.
func (o *openedVolume) Close() error {
	o.vol.Close()
	o.cache.Close()
	o.audit()
	o.kms.Close()
	return o.be.Close()
}

// command names the process in audit entries.
func command(readOnly bool) string {
	if len(os.Args) > 1 {
		return os.Args[1]
	}
	if readOnly {
		return "read"
	}
	return "mount"
}
