package server

import (
	"fmt"
	"strconv"

	"github.com/kmsfs/kmsfs/kms"
)

func (s *Server) enableKeyRotation(c *call, body []byte) (response, error) {
	var in enableKeyRotationInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	period := in.RotationPeriodInDays
	if period == 0 {
		period = kms.DefaultRotationPeriodDays
	}
	arn, err := s.resolveAndAuthorizeWith(c, in.KeyId, "", map[string][]string{
		"kms:rotationperiodindays": {strconv.Itoa(period)},
	})
	if err != nil {
		return response{}, err
	}
	return response{v: emptyOutput{}}, s.store.EnableKeyRotation(c.ctx, arn, in.RotationPeriodInDays)
}

func (s *Server) disableKeyRotation(c *call, body []byte) (response, error) {
	return s.keyOp(c, body, func(arn string) error { return s.store.DisableKeyRotation(c.ctx, arn) })
}

func (s *Server) getKeyRotationStatus(c *call, body []byte) (response, error) {
	var in keyIDInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	arn, err := s.resolveAndAuthorize(c, in.KeyId, "")
	if err != nil {
		return response{}, err
	}
	enabled, period, next, err := s.store.GetKeyRotationStatus(c.ctx, arn)
	if err != nil {
		return response{}, err
	}
	out := keyRotationStatusOutput{KeyRotationEnabled: enabled, KeyId: arn}
	if enabled {
		out.RotationPeriodInDays = period
		out.NextRotationDate = epoch(next)
	}
	return response{v: out}, nil
}

func (s *Server) rotateKeyOnDemand(c *call, body []byte) (response, error) {
	var in keyIDInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	arn, err := s.resolveAndAuthorize(c, in.KeyId, "")
	if err != nil {
		return response{}, err
	}
	if err := s.store.RotateKeyOnDemand(c.ctx, arn); err != nil {
		return response{}, err
	}
	return response{v: keyIDOutput{KeyId: arn}}, nil
}

func (s *Server) listKeyRotations(c *call, body []byte) (response, error) {
	var in listInput
	if err := decode(body, &in); err != nil {
		return response{}, err
	}
	arn, err := s.resolveAndAuthorize(c, in.KeyId, "")
	if err != nil {
		return response{}, err
	}
	rots, err := s.store.ListKeyRotations(c.ctx, arn)
	if err != nil {
		return response{}, err
	}
	pg, next, err := listPage(rots, func(r *kms.KeyRotation) string { return fmt.Sprintf("%010d", r.Version) }, in.Limit, in.Marker)
	if err != nil {
		return response{}, err
	}
	out := listKeyRotationsOutput{Rotations: make([]keyRotationJSON, 0, len(pg)), Truncated: next != "", NextMarker: next}
	for _, r := range pg {
		out.Rotations = append(out.Rotations, keyRotationJSON{KeyId: arn, RotationDate: epoch(r.Date), RotationType: r.Type})
	}
	return response{v: out}, nil
}
