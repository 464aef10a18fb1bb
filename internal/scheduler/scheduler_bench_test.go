package scheduler

import (
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
)

// benchInput builds a skewed fleet and queue: mixed arches and sizes, some
// hosts emulating the other arch, nOrgs orgs of which org0 holds half the jobs.
func benchInput(nHosts, nJobs, nOrgs int) Input {
	r := rand.New(rand.NewPCG(42, 42))
	archs := []arch.Arch{arch.AMD64, arch.ARM64}
	in := Input{OrgUsage: map[string]Usage{}, RepoUsage: map[string]Usage{}}
	for i := range nHosts {
		a := archs[i%2]
		h := Host{
			ID:          "host-" + strconv.Itoa(i),
			Arches:      []ArchSupport{{Arch: a}},
			VCPUs:       float64([]int{8, 16, 32, 64, 128}[r.IntN(5)]),
			Schedulable: r.IntN(20) > 0,
		}
		h.MemoryMiB = int(h.VCPUs) * 4 * 1024
		if r.IntN(5) == 0 {
			h.Arches = append(h.Arches, ArchSupport{Arch: archs[1-i%2], Emulated: true})
		}
		h.UsedVCPUs = float64(r.IntN(int(h.VCPUs) / 2))
		h.UsedMemoryMiB = int(h.UsedVCPUs) * 4 * 1024
		in.Hosts = append(in.Hosts, h)
	}
	jobArchs := []arch.Arch{arch.AMD64, arch.AMD64, arch.ARM64, arch.Any}
	for i := range nJobs {
		org := "org0"
		if i%2 == 1 {
			org = "org" + strconv.Itoa(1+r.IntN(nOrgs-1))
		}
		cpu := []float64{1, 2, 2, 4, 4, 8, 16}[r.IntN(7)]
		in.Queue = append(in.Queue, Job{
			ID:        int64(i + 1),
			Org:       org,
			Repo:      org + "/repo" + strconv.Itoa(r.IntN(10)),
			Arch:      jobArchs[r.IntN(len(jobArchs))],
			VCPUs:     cpu,
			MemoryMiB: int(cpu) * []int{2, 4, 8}[r.IntN(3)] * 1024,
			Queued:    t0.Add(time.Duration(r.IntN(86400)) * time.Second),
		})
	}
	for o := range nOrgs {
		org := "org" + strconv.Itoa(o)
		in.OrgUsage[org] = Usage{VMs: r.IntN(50), VCPUs: float64(r.IntN(200))}
	}
	in.Limits.Org = map[string]OrgLimit{"org3": {MaxVMs: 20}, "org4": {MaxVCPUs: 64}}
	return in
}

func benchSchedule(b *testing.B, nHosts, nJobs, nOrgs int) {
	in := benchInput(nHosts, nJobs, nOrgs)
	var p Plan
	b.ReportAllocs()
	for b.Loop() {
		p = Schedule(in)
	}
	b.ReportMetric(float64(len(p.Placements)), "placed")
	b.ReportMetric(float64(len(p.Waiting)), "waiting")
}

func BenchmarkSchedule10kJobs1kHosts(b *testing.B) { benchSchedule(b, 1000, 10000, 50) }

func BenchmarkSchedule1kJobs100Hosts(b *testing.B) { benchSchedule(b, 100, 1000, 10) }

// TestBenchInputValid keeps the benchmark honest: its plan is valid too.
func TestBenchInputValid(t *testing.T) {
	in := benchInput(1000, 10000, 50)
	start := time.Now()
	p := Schedule(in)
	if d := time.Since(start); d > 5*time.Second { // generous: -race and slow CI
		t.Fatalf("Schedule took %v", d)
	}
	checkPlan(t, in, p)
	if len(p.Placements) == 0 || len(p.Waiting) == 0 {
		t.Fatalf("benchmark input should both place and leave waiting: %d placed, %d waiting", len(p.Placements), len(p.Waiting))
	}
}

// BenchmarkScheduleMemoryBound is the index's worst case: every host has
// vCPUs to spare but almost no memory, so each search walks past them to the
// few hosts with memory left.
func BenchmarkScheduleMemoryBound(b *testing.B) {
	var in Input
	for i := range 1000 {
		h := mkHost("h"+strconv.Itoa(i), arch.AMD64, 64, 64)
		if i%100 != 0 {
			h.UsedMemoryMiB = h.MemoryMiB - 1024
		}
		in.Hosts = append(in.Hosts, h)
	}
	for i := range 10000 {
		j := mkJob(int64(i+1), "org"+strconv.Itoa(i%50)+"/r", float64(1+i%8), 0)
		j.MemoryMiB = 2048 + i%512 // many distinct sizes defeat the failure memo
		in.Queue = append(in.Queue, j)
	}
	b.ReportAllocs()
	for b.Loop() {
		Schedule(in)
	}
}
