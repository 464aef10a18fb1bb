package storetest

import (
	"errors"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/store"
)

// Host load records come back per host, oldest first, from a time on; one
// for the same host and time replaces the first; pruning drops the old.
func testHostLoad(t *testing.T, s store.Store) {
	rec := func(host string, min int, load float64) store.HostLoad {
		return store.HostLoad{Host: host, At: at(time.Duration(min) * time.Minute), State: store.HostOnline, VCPUs: 8,
			AllocVCPUs: 2.5, MemoryMiB: 16384, AllocMemoryMiB: 4096, DiskMiB: 1 << 20, AllocDiskMiB: 10 << 10, VMs: 2,
			Load1: load, MemAvailableMiB: 9000, HeartbeatAge: 1.5}
	}
	update(t, s, func(tx store.Tx) error {
		return tx.AddHostLoad([]store.HostLoad{rec("a", 2, 1), rec("a", 1, 0.5), rec("b", 1, 9), rec("a", 3, 3)})
	})
	update(t, s, func(tx store.Tx) error { return tx.AddHostLoad([]store.HostLoad{rec("a", 3, 4)}) })
	var got []store.HostLoad
	view(t, s, func(tx store.ReadTx) error {
		var err error
		got, err = tx.HostLoad("a", at(2*time.Minute))
		return err
	})
	same(t, "load of a from minute 2", []store.HostLoad{rec("a", 2, 1), rec("a", 3, 4)}, got)
	update(t, s, func(tx store.Tx) error {
		n, err := tx.PruneHostLoad(at(2 * time.Minute))
		if n != 2 {
			t.Errorf("pruned %d, want 2", n)
		}
		if err := tx.AddHostLoad([]store.HostLoad{{Host: "c"}}); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("a record without a time: %v", err)
		}
		return err
	})
	view(t, s, func(tx store.ReadTx) error {
		all, err := tx.HostLoad("a", time.Time{})
		if len(all) != 2 {
			t.Errorf("after pruning: %d records of a", len(all))
		}
		if b, _ := tx.HostLoad("b", time.Time{}); len(b) != 0 {
			t.Errorf("b's old record kept: %+v", b)
		}
		return err
	})
}
