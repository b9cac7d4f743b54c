package main

import (
	"context"
	"io"
	"log/slog"

	"github.com/kmsfs/kmsfs/internal/compose"
	"github.com/kmsfs/kmsfs/keycache"
	"github.com/kmsfs/kmsfs/volume"
)

// openedVolume is a volume with everything behind it, and the client-side
// audit log of this process's KMS calls.
type openedVolume struct {
	*compose.Opened
	closeAudit func()
}

// volumeRequest is what a command asks of openVolume beyond the flags.
type volumeRequest struct {
	readOnly bool
	limits   keycache.Limits
	log      *slog.Logger
	volume   volume.Options
	chain    compose.Chain // its Audit is set from --audit-log
	stderr   io.Writer
	command  string // names the process in audit entries
}

func openVolume(ctx context.Context, c *commonFlags, spec string, r volumeRequest) (*openedVolume, error) {
	ko, err := c.kmsOptions(r.stderr)
	if err != nil {
		return nil, err
	}
	record, closeAudit, err := c.openAudit(r.command)
	if err != nil {
		return nil, err
	}
	r.chain.Audit = record
	opened, err := compose.OpenVolume(ctx, spec, compose.VolumeOptions{
		Backend: c.backendOptions(), KMS: ko, ReadOnly: r.readOnly, Limits: r.limits,
		Logger: r.log, Volume: r.volume, Chain: r.chain,
	})
	if err != nil {
		closeAudit()
		return nil, err
	}
	return &openedVolume{Opened: opened, closeAudit: closeAudit}, nil
}

// Close zeroes every cached key and closes the KMS, backend and audit log.
func (o *openedVolume) Close() error {
	err := o.Opened.Close()
	o.closeAudit()
	return err
}
