package jobvm

import (
	"sync"

	"github.com/tandem-ci/tandem/internal/vm"
)

// Standby is a VM booted before its job is known (a warm pool's), which
// yields the host's CPUs to the VMs running jobs until a job claims it.
// Without it, a pool VM booting (a claimed VM's replacement boots at
// once, on the same host) contends on equal terms with the claimed VM
// beside it, whose runner is starting.
//
// Run starts such a VM at vm.CPUWeightIdle; Claim raises it to
// vm.CPUWeightNormal. A job may claim a VM at any point of its life,
// still booting included: Claim raises the VM there is now, and Run
// raises any VM it makes after (a boot tried again). Run claims the VM
// itself before it sends the job, so a job never runs at the idle weight.
// The zero Standby is ready to use; a nil one does nothing.
type Standby struct {
	mu      sync.Mutex
	claimed bool
	inst    vm.Instance // the VM now; nil before it is made and between boots
}

// Claim raises the VM to the normal weight, before its job's config is
// handed to it, so that its runner's start waits on no pool VM. An error
// is the driver's, and costs the job nothing but its precedence; callers
// log it.
func (s *Standby) Claim() error {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.claimed {
		return nil
	}
	s.claimed = true
	if s.inst == nil {
		return nil
	}
	return s.inst.SetCPUWeight(vm.CPUWeightNormal)
}

// attach makes inst (nil: none) the VM Claim raises; one made after the
// claim, its weight still the idle one it was created with, is raised now.
func (s *Standby) attach(inst vm.Instance) error {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inst = inst
	if inst == nil || !s.claimed {
		return nil
	}
	return inst.SetCPUWeight(vm.CPUWeightNormal)
}
