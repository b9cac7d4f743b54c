package shared

import (
	"context"
	"syscall"

	"github.com/kmsfs/kmsfs/backend/posixacl"
	"github.com/kmsfs/kmsfs/backend/shared/meta"
)

// setACL folds a mode-equivalent access ACL into the mode.
func (b *Backend) setACL(ctx context.Context, name, attr string, value []byte) error {
	perm, ok := posixacl.ModePerm(value)
	if attr != posixacl.XattrAccess || !ok {
		return b.fail("setxattr", name, syscall.ENOTSUP)
	}
	// One statement: the store keeps the set-ID and sticky bits itself.
	return b.setattr(ctx, "setxattr", name, meta.SetAttr{Perm: &perm})
}
