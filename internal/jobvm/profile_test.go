package jobvm_test

import (
	"context"
	"sync"
	"testing"

	"github.com/tandem-ci/tandem/internal/profile"
)

// A job that spins two cores and puts 1 GiB in memory shows both in its
// profile, with no step of its own: peaks within 10%.
func TestProfileShowsWhatTheJobUsed(t *testing.T) {
	h := newHost(t)
	r := req()
	r.VCPUs, r.MemoryMiB = 2, 2048
	// Two spinning shells for 13 s; meanwhile, after 3 s in which the
	// memory the guest uses before the job writes anything is sampled,
	// 1 GiB written to tmpfs, which stays in memory until the VM ends.
	// (dd writes about 100 MiB/s under TCG: with no pause, the first
	// heartbeat arrives with a tenth of it already written.)
	r.Argv = []string{"sh", "-c", `spin() { while :; do :; done; }
spin & a=$!; spin & b=$!
sleep 3
dd if=/dev/zero of=/dev/shm/fill bs=1M count=1024 2>/dev/null
sleep 10; kill $a $b; sleep 2`}
	var mu sync.Mutex
	var samples []profile.Sample
	r.OnSample = func(s profile.Sample) {
		mu.Lock()
		samples = append(samples, s)
		mu.Unlock()
	}
	res, err := h.Run(context.Background(), r)
	if err != nil || res.ExitCode != 0 || res.Failure != "" {
		t.Fatalf("run: %+v, %v", res, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(samples) < 10 {
		t.Fatalf("%d samples for a job of 15 s", len(samples))
	}
	p := profile.Build(samples, r.VCPUs, int64(r.MemoryMiB)<<20, 0)
	s := p.Summary
	// The guest's memory in use before the job wrote anything: the least
	// it used, since what dd writes stays.
	base := int64(-1)
	for _, smp := range samples {
		if smp.GuestOK && (base < 0 || smp.MemUsed() < base) {
			base = smp.MemUsed()
		}
	}
	t.Logf("summary %+v; memory in use at the start %d MiB", s, base>>20)
	if s.CPUPeak < 1.8 || s.CPUPeak > 2.2*1.05 {
		t.Errorf("CPU peak %.2f vCPUs, want 2 ± 10%%", s.CPUPeak)
	}
	if grown := s.MemPeak - base; grown < 1<<30*9/10 || grown > 1<<30*11/10 {
		t.Errorf("memory grew by %d MiB at its peak, want 1024 ± 10%%", grown>>20)
	}
	if !s.Guest || s.ProcsPeak < 3 || s.RSSPeak < 1<<30 || s.CPUHighSeconds < 2 {
		t.Errorf("summary %+v", s)
	}
}
