package volume

import (
	"context"

	"github.com/kmsfs/kmsfs/backend"
)

// RewrapCount returns how many files a Rewrap of the volume in be reaches
// (its final RewrapProgress.Files), so that a caller can show a total
// before starting. It lists the tree once, as Rewrap walks it, and opens
// no file.
func RewrapCount(ctx context.Context, be backend.Backend) (int, error) {
	cfg, err := ReadConfig(ctx, be)
	if err != nil {
		return 0, err
	}
	n := 0
	err = walkFiles(ctx, be, "", func(name string) error {
		// The same files Rewrap's walk leaves out (TestRewrapCount checks
		// that the two agree).
		if cfg.HasFeature(FeatureNameEncrypt) {
			if _, leaf := splitPath(name); leaf == DirIDName || isSideFile(leaf) {
				return nil
			}
		}
		n++
		return nil
	})
	return n, err
}
