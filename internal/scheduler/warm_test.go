package scheduler

import (
	"testing"

	"github.com/tandem-ci/tandem/internal/arch"
)

// warmJob is mkJob keyed for warm VMs of key.
func warmJob(id int64, repo string, key string) Job {
	j := mkJob(id, repo, 2, 4)
	j.Warm = key
	return j
}

func TestWarmVMTakenOnAFullHost(t *testing.T) {
	full := mkHost("h1", arch.AMD64, 4, 8)
	full.UsedVCPUs, full.UsedMemoryMiB = 4, 8*1024 // its two warm VMs fill it
	in := Input{
		Hosts: []Host{full},
		Queue: []Job{warmJob(1, "acme/app", "k"), warmJob(2, "acme/app", "k"), warmJob(3, "acme/app", "k")},
		Warm: []Warm{
			{ID: "booting", HostID: "h1", Key: "k", Arch: arch.AMD64},
			{ID: "ready", HostID: "h1", Key: "k", Arch: arch.AMD64, Ready: true},
		},
	}
	p := Schedule(in)
	checkPlan(t, in, p)
	on := placedOn(p)
	if on[1].Warm != "ready" || on[2].Warm != "booting" {
		t.Fatalf("placements %+v: want job 1 on the ready VM, job 2 on the booting one", p.Placements)
	}
	if on[1].HostID != "h1" || on[1].Arch != arch.AMD64 || on[1].Emulated {
		t.Errorf("job 1 placed as %+v", on[1])
	}
	if _, ok := reasons(p.Waiting)[3]; !ok {
		t.Errorf("job 3: want it waiting (no warm VM left, no room), plan %+v", p)
	}
}

func TestWarmVMGoesByFairShare(t *testing.T) {
	// acme runs three VMs and queued first; initech runs none. The one
	// warm VM goes to initech's job; acme's is placed cold.
	in := Input{
		Hosts:    []Host{mkHost("h1", arch.AMD64, 16, 32)},
		Queue:    []Job{warmJob(1, "acme/app", "k"), warmJob(2, "initech/api", "k")},
		Warm:     []Warm{{ID: "w", HostID: "h1", Key: "k", Arch: arch.AMD64, Ready: true}},
		OrgUsage: map[string]Usage{"acme": {VMs: 3, VCPUs: 6}},
	}
	p := Schedule(in)
	checkPlan(t, in, p)
	on := placedOn(p)
	if on[2].Warm != "w" || on[1].Warm != "" || on[1].HostID != "h1" {
		t.Fatalf("placements %+v: want initech's job on the warm VM, acme's on a new one", p.Placements)
	}
}

func TestWarmVMRespectsLimitsAndKeys(t *testing.T) {
	in := Input{
		Hosts:    []Host{mkHost("h1", arch.AMD64, 16, 32), mkHost("h2", arch.AMD64, 16, 32)},
		Queue:    []Job{warmJob(1, "acme/app", "k"), warmJob(2, "initech/api", "other"), mkJob(3, "initech/api", 2, 4)},
		Warm:     []Warm{{ID: "w", HostID: "h1", Key: "k", Arch: arch.AMD64, Ready: true}},
		Limits:   Limits{Org: map[string]OrgLimit{"acme": {MaxVMs: 2}}},
		OrgUsage: map[string]Usage{"acme": {VMs: 2}},
	}
	p := Schedule(in)
	checkPlan(t, in, p)
	if _, ok := reasons(p.Waiting)[1]; !ok {
		t.Errorf("job 1: its org is at its limit; want it waiting, plan %+v", p)
	}
	for _, pl := range p.Placements {
		if pl.Warm != "" {
			t.Errorf("job %d took warm VM %s of another key", pl.JobID, pl.Warm)
		}
	}
}

func TestWarmVMPreference(t *testing.T) {
	arm := mkHost("h-arm", arch.ARM64, 16, 32)
	amdEmu := mkHost("h-amd", arch.AMD64, 16, 32)
	amdEmu.Arches = append(amdEmu.Arches, ArchSupport{Arch: arch.ARM64, Emulated: true})
	cordoned := mkHost("h-off", arch.ARM64, 16, 32)
	cordoned.Schedulable = false
	j := warmJob(1, "acme/app", "k")
	j.Arch = arch.ARM64
	j.AvoidHosts = []string{"h-arm"}
	in := Input{
		Hosts: []Host{arm, amdEmu, cordoned},
		Queue: []Job{j},
		Warm: []Warm{
			{ID: "off", HostID: "h-off", Key: "k", Arch: arch.ARM64, Ready: true},         // host not schedulable
			{ID: "amd", HostID: "h-amd", Key: "k", Arch: arch.AMD64, Ready: true},         // not the job's arch
			{ID: "avoided", HostID: "h-arm", Key: "k", Arch: arch.ARM64, Ready: true},     // where its launch failed
			{ID: "emulated", HostID: "h-amd", Key: "k", Arch: arch.ARM64, Emulated: true}, // still booting
		},
	}
	p := Schedule(in)
	checkPlan(t, in, p)
	if got := placedOn(p)[1].Warm; got != "emulated" {
		t.Fatalf("took %q, want the emulated VM on a host it does not avoid; plan %+v", got, p)
	}
	in.Warm = in.Warm[:3]
	p = Schedule(in)
	checkPlan(t, in, p)
	if got := placedOn(p)[1].Warm; got != "avoided" {
		t.Fatalf("took %q, want the VM on the avoided host over none; plan %+v", got, p)
	}
}

func TestWarmVMListedTwiceIsTakenOnce(t *testing.T) {
	w := Warm{ID: "w", HostID: "h1", Key: "k", Arch: arch.AMD64, Ready: true}
	full := mkHost("h1", arch.AMD64, 2, 4)
	full.UsedVCPUs, full.UsedMemoryMiB = 2, 4*1024
	in := Input{
		Hosts: []Host{full},
		Queue: []Job{warmJob(1, "acme/app", "k"), warmJob(2, "acme/app", "k")},
		Warm:  []Warm{w, w},
	}
	p := Schedule(in)
	checkPlan(t, in, p)
	if len(p.Placements) != 1 {
		t.Fatalf("placements %+v: want one", p.Placements)
	}
}
