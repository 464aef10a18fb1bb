package scheduler

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/tandem-ci/tandem/internal/arch"
)

// FuzzSchedule checks that Schedule never panics and always returns a valid
// plan, with arbitrary values spliced into an otherwise random input.
func FuzzSchedule(f *testing.F) {
	f.Add(uint64(1), uint8(5), uint8(20), 2.0, 4096, 0.5, 100, "amd64", "h1", 1.0, 3)
	f.Add(uint64(2), uint8(0), uint8(3), math.NaN(), -1, math.Inf(1), -5, "any", "", -1.0, -1)
	f.Add(uint64(3), uint8(40), uint8(200), 1e300, math.MaxInt, -0.0, math.MinInt, "arm64", "h0", math.NaN(), 0)
	f.Add(uint64(4), uint8(1), uint8(1), 0.1, 1, 0.3, 1, "", "h0", 0.25, 1)
	f.Fuzz(func(t *testing.T, seed uint64, nHosts, nJobs uint8, cpu float64, mem int, used float64, usedMem int,
		archName string, hostID string, limitCPU float64, limitVMs int) {
		r := rand.New(rand.NewPCG(seed, seed>>1))
		in := randomInput(r, int(nHosts%64), int(nJobs), 1+int(seed%5))
		in.Hosts = append(in.Hosts, Host{
			ID: hostID, Arches: []ArchSupport{{Arch: arch.Arch(archName)}, {Arch: arch.AMD64, Emulated: true}},
			VCPUs: cpu, MemoryMiB: mem, UsedVCPUs: used, UsedMemoryMiB: usedMem, Schedulable: true,
		})
		in.Queue = append(in.Queue, Job{
			ID: int64(seed % 300), Org: "org0", Repo: "org0/r0", Arch: arch.Arch(archName),
			VCPUs: cpu, MemoryMiB: mem, AvoidHosts: []string{hostID},
		})
		in.Limits.Default = OrgLimit{MaxVMs: limitVMs, MaxVCPUs: limitCPU}
		in.OrgUsage["org1"] = Usage{VMs: usedMem, VCPUs: used}
		// Warm VMs: on some hosts (and one that does not exist), keyed
		// as some jobs are, one listed twice.
		keys := []string{"", "k0", "k1"}
		for i, h := range in.Hosts {
			if i%3 == int(seed%3) && len(h.Arches) > 0 {
				in.Warm = append(in.Warm, Warm{ID: "w" + h.ID, HostID: h.ID, Key: keys[i%3],
					Arch: h.Arches[0].Arch, Emulated: h.Arches[0].Emulated, Ready: i%2 == 0})
			}
		}
		in.Warm = append(in.Warm, Warm{ID: "ghost", HostID: "nowhere", Key: "k1", Arch: arch.AMD64})
		if len(in.Warm) > 1 {
			in.Warm = append(in.Warm, in.Warm[0])
		}
		for i := range in.Queue {
			in.Queue[i].Warm = keys[(int(seed)+i)%3]
		}
		p := Schedule(in)
		checkFuzzPlan(t, in, p)
	})
}

// checkFuzzPlan is checkPlan after normalising the garbage Schedule is
// documented to ignore: invalid hosts and negative usage.
func checkFuzzPlan(t *testing.T, in Input, p Plan) {
	t.Helper()
	for i := range in.Hosts {
		h := &in.Hosts[i]
		if !validHost(h) {
			h.Schedulable = false // Schedule must not have used it; checkPlan now rejects any placement on it
		}
	}
	// Negative usage counts as none.
	for org, u := range in.OrgUsage {
		u.VMs = max(u.VMs, 0)
		if u.VCPUs < 0 {
			u.VCPUs = 0
		}
		in.OrgUsage[org] = u
	}
	checkPlan(t, in, p)
}
