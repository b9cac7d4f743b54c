package volume

import (
	"context"
	"fmt"

	"github.com/kmsfs/kmsfs/backend"
)

func openS3(ctx context.Context, spec string, o BackendOptions) (backend.Backend, error) {
	return nil, fmt.Errorf("backend %s: %w", spec, errNoS3)
}
