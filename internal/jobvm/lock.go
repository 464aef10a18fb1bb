package jobvm

import (
	"context"
	"path/filepath"

	"github.com/tandem-ci/tandem/internal/fsutil"
)

// hostLock orders leak collection against VM preparation across processes:
// between attaching a VM to the network and writing its record, a VM exists
// only as a lease and a TAP, which a concurrent Collect would take for a
// leftover. Preparation holds the lock shared; Collect holds it exclusive.
func (h *Host) hostLock(ctx context.Context, exclusive bool) (unlock func(), err error) {
	if h.StateDir == "" {
		return func() {}, nil
	}
	return fsutil.Lock(ctx, filepath.Join(h.StateDir, "host.lock"), exclusive, nil)
}
