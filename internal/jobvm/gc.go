package jobvm

import (
	"context"
	"errors"
	"fmt"

	"github.com/tandem-ci/tandem/internal/vm"
)

// Collect reclaims what dead owners left behind: every VM whose owner is gone
// (a `tandem run` killed with SIGKILL, say) is destroyed, and every TAP device
// and address lease without a live VM is removed. keep, if not nil, may claim
// further VMs as still wanted (an agent keeps the VMs of its assignments). It
// returns the ids of the VMs and network leftovers it reclaimed.
func (h *Host) Collect(ctx context.Context, keep func(vm.Info) bool) ([]string, error) {
	unlock, err := h.hostLock(ctx, true)
	if err != nil {
		return nil, err
	}
	defer unlock()
	// Recover hands back every VM with state here, leftovers included: the
	// ones wanted are left alone, the rest destroyed through their handles.
	insts, err := h.Driver.Recover(ctx)
	if err != nil {
		return nil, err
	}
	live := map[string]bool{}
	var reclaimed []string
	var errs []error
	for _, inst := range insts {
		info := inst.Info()
		if vm.OwnerAlive(info.Spec.Owner) && (keep == nil || keep(info)) {
			live[info.ID] = true
			continue
		}
		if err := inst.Destroy(ctx); err != nil {
			errs = append(errs, err)
			live[info.ID] = true // not gone: keep its network until it is
			continue
		}
		h.Log.Info("reclaimed leftover vm", "vm", info.ID, "owner", info.Spec.Owner, "state", info.State)
		reclaimed = append(reclaimed, info.ID)
	}
	if h.Net != nil {
		ids, err := h.Net.Reclaim(ctx, func(id string) bool { return live[id] })
		if err != nil {
			errs = append(errs, err)
		}
		for _, id := range ids {
			h.Log.Info("reclaimed leftover network", "vm", id)
			reclaimed = appendUnique(reclaimed, id)
		}
	}
	if len(errs) > 0 {
		return reclaimed, fmt.Errorf("collect leftovers: %w", errors.Join(errs...))
	}
	return reclaimed, nil
}

func appendUnique(s []string, v string) []string {
	for _, x := range s {
		if x == v {
			return s
		}
	}
	return append(s, v)
}
