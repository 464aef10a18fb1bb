package scheduler

import (
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
)

var t0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// mkHost returns a schedulable host running arch natively.
func mkHost(id string, a arch.Arch, vcpus float64, memGiB int) Host {
	return Host{
		ID:          id,
		Arches:      []ArchSupport{{Arch: a}},
		VCPUs:       vcpus,
		MemoryMiB:   memGiB * 1024,
		Schedulable: true,
	}
}

// mkJob returns an amd64 job queued id seconds after t0.
func mkJob(id int64, repo string, vcpus float64, memGiB int) Job {
	org := repo
	for i := range len(repo) {
		if repo[i] == '/' {
			org = repo[:i]
			break
		}
	}
	return Job{
		ID: id, Org: org, Repo: repo, Arch: arch.AMD64,
		VCPUs: vcpus, MemoryMiB: memGiB * 1024,
		Queued: t0.Add(time.Duration(id) * time.Second),
	}
}

func placedOn(p Plan) map[int64]Placement {
	m := make(map[int64]Placement, len(p.Placements))
	for _, pl := range p.Placements {
		m[pl.JobID] = pl
	}
	return m
}

func reasons(ds []Decision) map[int64]string {
	m := make(map[int64]string, len(ds))
	for _, d := range ds {
		m[d.JobID] = d.Reason
	}
	return m
}

// checkPlan verifies the invariants every Plan must satisfy, whatever the input.
func checkPlan(t testing.TB, in Input, p Plan) {
	t.Helper()
	// Every distinct job ID is decided exactly once.
	want := map[int64]*Job{}
	for i := range in.Queue {
		if _, ok := want[in.Queue[i].ID]; !ok {
			want[in.Queue[i].ID] = &in.Queue[i]
		}
	}
	seen := map[int64]string{}
	note := func(id int64, list string) {
		if prev, ok := seen[id]; ok {
			t.Fatalf("job %d in %s and %s", id, prev, list)
		}
		if _, ok := want[id]; !ok {
			t.Fatalf("job %d in %s is not in the queue", id, list)
		}
		seen[id] = list
	}
	for _, pl := range p.Placements {
		note(pl.JobID, "Placements")
	}
	for _, d := range p.Waiting {
		note(d.JobID, "Waiting")
		if d.Reason == "" {
			t.Fatalf("job %d waiting without a reason", d.JobID)
		}
	}
	for _, d := range p.Unschedulable {
		note(d.JobID, "Unschedulable")
		if d.Reason == "" {
			t.Fatalf("job %d unschedulable without a reason", d.JobID)
		}
	}
	if len(seen) != len(want) {
		t.Fatalf("decided %d jobs, queue has %d distinct", len(seen), len(want))
	}

	// Placements go to valid, schedulable hosts that support the arch, and
	// no host ends up over capacity.
	hosts := map[string]*Host{}
	for i := range in.Hosts {
		if _, ok := hosts[in.Hosts[i].ID]; !ok {
			hosts[in.Hosts[i].ID] = &in.Hosts[i]
		}
	}
	addCPU := map[string]float64{}
	addMem := map[string]int{}
	addDisk := map[string]int{}
	orgVMs := map[string]int{}
	orgCPU := map[string]float64{}
	warm := map[string]*Warm{}
	for i := range in.Warm {
		if _, ok := warm[in.Warm[i].ID]; !ok {
			warm[in.Warm[i].ID] = &in.Warm[i]
		}
	}
	warmTaken := map[string]int64{}
	for _, pl := range p.Placements {
		h, j := hosts[pl.HostID], want[pl.JobID]
		if h == nil || !h.Schedulable {
			t.Fatalf("job %d placed on unknown or unschedulable host %q", pl.JobID, pl.HostID)
		}
		if !j.Arch.Matches(pl.Arch) {
			t.Fatalf("job %d (%s) placed as %s", pl.JobID, j.Arch, pl.Arch)
		}
		if pl.Warm != "" {
			w := warm[pl.Warm]
			switch {
			case w == nil:
				t.Fatalf("job %d took unknown warm VM %q", pl.JobID, pl.Warm)
			case warmTaken[pl.Warm] != 0:
				t.Fatalf("warm VM %s taken by jobs %d and %d", pl.Warm, warmTaken[pl.Warm], pl.JobID)
			case w.Key != j.Warm || j.Warm == "":
				t.Fatalf("job %d (warm key %q) took warm VM %s of key %q", pl.JobID, j.Warm, w.ID, w.Key)
			case w.HostID != pl.HostID || w.Arch != pl.Arch || w.Emulated != pl.Emulated:
				t.Fatalf("job %d placed as %+v, its warm VM is %+v", pl.JobID, pl, *w)
			}
			warmTaken[pl.Warm] = pl.JobID
			orgVMs[j.Org]++
			orgCPU[j.Org] += j.VCPUs
			continue // its room was counted already
		}
		native, emulated := false, false
		for _, a := range h.Arches {
			if a.Arch == pl.Arch {
				native = native || !a.Emulated
				emulated = emulated || a.Emulated
			}
		}
		if pl.Emulated && (native || !emulated) || !pl.Emulated && !native {
			t.Fatalf("job %d placed on %s as %s emulated=%v; host arches %v", pl.JobID, h.ID, pl.Arch, pl.Emulated, h.Arches)
		}
		addCPU[h.ID] += j.VCPUs
		addMem[h.ID] += j.MemoryMiB
		addDisk[h.ID] += j.DiskMiB
		orgVMs[j.Org]++
		orgCPU[j.Org] += j.VCPUs
	}
	for id, c := range addCPU {
		h := hosts[id]
		if h.UsedVCPUs+c > h.VCPUs+1e-9 || h.UsedMemoryMiB+addMem[id] > h.MemoryMiB {
			t.Fatalf("host %s over capacity: %v+%v vCPUs of %v, %d+%d MiB of %d",
				id, h.UsedVCPUs, c, h.VCPUs, h.UsedMemoryMiB, addMem[id], h.MemoryMiB)
		}
		if h.DiskMiB > 0 && h.UsedDiskMiB+addDisk[id] > h.DiskMiB {
			t.Fatalf("host %s over its disk: %d+%d MiB of %d", id, h.UsedDiskMiB, addDisk[id], h.DiskMiB)
		}
	}
	for org, n := range orgVMs {
		lim := in.Limits.For(org)
		u := in.OrgUsage[org]
		if lim.MaxVMs > 0 && u.VMs+n > lim.MaxVMs {
			t.Fatalf("org %s: %d+%d VMs over limit %d", org, u.VMs, n, lim.MaxVMs)
		}
		if lim.MaxVCPUs > 0 && u.VCPUs+orgCPU[org] > lim.MaxVCPUs+1e-9 {
			t.Fatalf("org %s: %v+%v vCPUs over limit %v", org, u.VCPUs, orgCPU[org], lim.MaxVCPUs)
		}
	}
}

// randomInput builds a varied input: mixed arches, emulation, sizes, usage,
// unschedulable hosts, orgs, repos, limits and avoid lists.
func randomInput(r *rand.Rand, nHosts, nJobs, nOrgs int) Input {
	archs := []arch.Arch{arch.AMD64, arch.ARM64}
	var in Input
	for i := range nHosts {
		a := archs[r.IntN(2)]
		h := Host{
			ID:          "h" + strconv.Itoa(i),
			Arches:      []ArchSupport{{Arch: a}},
			VCPUs:       float64(int(2) << r.IntN(6)),
			MemoryMiB:   (4 << r.IntN(7)) * 1024,
			Schedulable: r.IntN(10) > 0,
		}
		if r.IntN(4) == 0 {
			h.Arches = append(h.Arches, ArchSupport{Arch: archs[1-archIdxMust(a)], Emulated: true})
		}
		if r.IntN(2) == 0 {
			h.UsedVCPUs = float64(r.IntN(int(h.VCPUs)*4+1)) / 4
			h.UsedMemoryMiB = r.IntN(h.MemoryMiB + 1)
		}
		// Every other host counts disk: as much as its memory, some used.
		// (Derived, not drawn: the seeded draws stay as they were.)
		if i%2 == 1 {
			h.DiskMiB, h.UsedDiskMiB = h.MemoryMiB, h.UsedMemoryMiB/2
		}
		in.Hosts = append(in.Hosts, h)
	}
	jobArchs := []arch.Arch{arch.AMD64, arch.AMD64, arch.ARM64, arch.Any}
	in.OrgUsage = map[string]Usage{}
	in.RepoUsage = map[string]Usage{}
	in.Limits.Org = map[string]OrgLimit{}
	for i := range nJobs {
		org := "org" + strconv.Itoa(r.IntN(nOrgs))
		if r.IntN(2) == 0 {
			org = "org0" // skew
		}
		repo := org + "/r" + strconv.Itoa(r.IntN(5))
		j := Job{
			ID: int64(i + 1), Org: org, Repo: repo,
			Arch:      jobArchs[r.IntN(len(jobArchs))],
			VCPUs:     []float64{0.25, 0.5, 1, 2, 4, 8, 16}[r.IntN(7)],
			MemoryMiB: []int{512, 1024, 2048, 4096, 8192, 16384, 32768}[r.IntN(7)],
			Queued:    t0.Add(time.Duration(r.IntN(3600)) * time.Second),
		}
		if i%3 == 0 {
			j.DiskMiB = j.MemoryMiB / 2
		}
		if nHosts > 0 && r.IntN(10) == 0 {
			j.AvoidHosts = []string{"h" + strconv.Itoa(r.IntN(nHosts))}
		}
		in.Queue = append(in.Queue, j)
	}
	for o := range nOrgs {
		org := "org" + strconv.Itoa(o)
		if r.IntN(3) == 0 {
			in.OrgUsage[org] = Usage{VMs: r.IntN(5), VCPUs: float64(r.IntN(20))}
		}
		if r.IntN(3) == 0 {
			in.Limits.Org[org] = OrgLimit{MaxVMs: r.IntN(20), MaxVCPUs: float64(r.IntN(64))}
		}
	}
	if r.IntN(2) == 0 {
		in.Limits.Default = OrgLimit{MaxVMs: 50}
	}
	return in
}

func archIdxMust(a arch.Arch) int {
	i, _ := archIdx(a)
	return i
}
