package kms

import "context"

// speculativeKey marks a context whose KMS calls are made ahead of need.
type speculativeKey struct{}

// WithSpeculative marks the KMS calls made with ctx as speculative: made
// ahead of a request that may never come (a data key unwrapped before its
// file is opened), so that audit records and counters can tell them apart
// from the calls a reader waited for.
func WithSpeculative(ctx context.Context) context.Context {
	return context.WithValue(ctx, speculativeKey{}, true)
}

// IsSpeculative reports whether ctx was marked by WithSpeculative.
func IsSpeculative(ctx context.Context) bool {
	s, _ := ctx.Value(speculativeKey{}).(bool)
	return s
}
