package scheduler

import (
	"math"
	"math/rand/v2"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/tandem-ci/tandem/internal/arch"
)

func TestArchMatching(t *testing.T) {
	emu := func(h Host, a arch.Arch) Host {
		h.Arches = append(h.Arches, ArchSupport{Arch: a, Emulated: true})
		return h
	}
	full := func(h Host) Host { h.UsedVCPUs = h.VCPUs; return h }
	tests := []struct {
		name     string
		hosts    []Host
		arch     arch.Arch
		wantHost string
		wantArch arch.Arch
		wantEmu  bool
	}{
		{"native arch chosen over other arch", []Host{mkHost("a", arch.ARM64, 8, 16), mkHost("b", arch.AMD64, 64, 256)},
			arch.AMD64, "b", arch.AMD64, false},
		{"arm64 job on arm64 host", []Host{mkHost("a", arch.ARM64, 64, 256), mkHost("b", arch.AMD64, 8, 16)},
			arch.ARM64, "a", arch.ARM64, false},
		{"emulated when only emulation offered", []Host{emu(mkHost("a", arch.ARM64, 8, 16), arch.AMD64)},
			arch.AMD64, "a", arch.AMD64, true},
		{"native preferred over tighter emulated fit", []Host{mkHost("big", arch.AMD64, 64, 256), emu(mkHost("small", arch.ARM64, 4, 8), arch.AMD64)},
			arch.AMD64, "big", arch.AMD64, false},
		{"emulated when native hosts are full", []Host{full(mkHost("n", arch.AMD64, 8, 16)), emu(mkHost("e", arch.ARM64, 8, 16), arch.AMD64)},
			arch.AMD64, "e", arch.AMD64, true},
		{"any prefers native over emulated", []Host{emu(mkHost("a", arch.AMD64, 4, 8), arch.ARM64), mkHost("b", arch.ARM64, 64, 256)},
			arch.Any, "a", arch.AMD64, false},
		{"any best-fits across arches", []Host{mkHost("a", arch.AMD64, 64, 256), mkHost("b", arch.ARM64, 4, 8)},
			arch.Any, "b", arch.ARM64, false},
		{"native and emulated listed: native wins", []Host{emu(mkHost("a", arch.AMD64, 8, 16), arch.AMD64)},
			arch.AMD64, "a", arch.AMD64, false},
		{"unknown host arch ignored", []Host{{ID: "x", Arches: []ArchSupport{{Arch: "riscv64"}, {Arch: arch.Any}}, VCPUs: 64, MemoryMiB: 1 << 20, Schedulable: true}, mkHost("b", arch.AMD64, 8, 16)},
			arch.AMD64, "b", arch.AMD64, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j := mkJob(1, "o/r", 2, 4)
			j.Arch = tt.arch
			in := Input{Hosts: tt.hosts, Queue: []Job{j}}
			p := Schedule(in)
			checkPlan(t, in, p)
			want := []Placement{{JobID: 1, HostID: tt.wantHost, Arch: tt.wantArch, Emulated: tt.wantEmu}}
			if !reflect.DeepEqual(p.Placements, want) {
				t.Fatalf("got %+v (waiting %+v, unschedulable %+v), want %+v", p.Placements, p.Waiting, p.Unschedulable, want)
			}
		})
	}
}

func TestArchUnsupported(t *testing.T) {
	hosts := []Host{mkHost("a", arch.AMD64, 8, 16)}
	j := mkJob(1, "o/r", 2, 4)
	j.Arch = arch.ARM64
	p := Schedule(Input{Hosts: hosts, Queue: []Job{j}})
	if got := reasons(p.Unschedulable)[1]; got != "no host supports arm64" {
		t.Fatalf("reason %q; plan %+v", got, p)
	}
	// An emulating host makes it schedulable.
	hosts[0].Arches = append(hosts[0].Arches, ArchSupport{Arch: arch.ARM64, Emulated: true})
	p = Schedule(Input{Hosts: hosts, Queue: []Job{j}})
	if len(p.Placements) != 1 || !p.Placements[0].Emulated {
		t.Fatalf("want an emulated placement, got %+v", p)
	}
}

func TestBestFit(t *testing.T) {
	tests := []struct {
		name  string
		hosts []Host
		jobs  []Job
		want  map[int64]string
	}{
		{"least free vCPU left", []Host{mkHost("big", arch.AMD64, 64, 64), mkHost("mid", arch.AMD64, 16, 64), mkHost("small", arch.AMD64, 8, 64)},
			[]Job{mkJob(1, "o/r", 4, 4)}, map[int64]string{1: "small"}},
		{"then least free memory", []Host{mkHost("a", arch.AMD64, 8, 64), mkHost("b", arch.AMD64, 8, 16), mkHost("c", arch.AMD64, 8, 32)},
			[]Job{mkJob(1, "o/r", 4, 4)}, map[int64]string{1: "b"}},
		{"then host ID", []Host{mkHost("c", arch.AMD64, 8, 16), mkHost("a", arch.AMD64, 8, 16), mkHost("b", arch.AMD64, 8, 16)},
			[]Job{mkJob(1, "o/r", 4, 4)}, map[int64]string{1: "a"}},
		{"skips hosts short of memory", []Host{mkHost("a", arch.AMD64, 8, 4), mkHost("b", arch.AMD64, 16, 64)},
			[]Job{mkJob(1, "o/r", 4, 8)}, map[int64]string{1: "b"}},
		{"usage updated within a call", []Host{mkHost("h8", arch.AMD64, 8, 64), mkHost("h16", arch.AMD64, 16, 64)},
			[]Job{mkJob(1, "o/r", 6, 4), mkJob(2, "o/r", 6, 4), mkJob(3, "o/r", 6, 4)},
			map[int64]string{1: "h8", 2: "h16", 3: "h16"}},
		{"big host kept for big job", []Host{mkHost("big", arch.AMD64, 32, 64), mkHost("small", arch.AMD64, 8, 64)},
			[]Job{mkJob(1, "o/r", 2, 4), mkJob(2, "o/r", 2, 4), mkJob(3, "o/r", 32, 32)},
			map[int64]string{1: "small", 2: "small", 3: "big"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := Input{Hosts: tt.hosts, Queue: tt.jobs}
			p := Schedule(in)
			checkPlan(t, in, p)
			got := map[int64]string{}
			for id, pl := range placedOn(p) {
				got[id] = pl.HostID
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %v, want %v (waiting %+v)", got, tt.want, p.Waiting)
			}
		})
	}
}

func TestQuarterVCPUAccounting(t *testing.T) {
	h := mkHost("h", arch.AMD64, 1, 64)
	h.UsedVCPUs = 0.1 + 0.2 // 0.30000000000000004: rounds up to 0.5
	var jobs []Job
	for i := range 4 {
		jobs = append(jobs, mkJob(int64(i+1), "o/r", 0.25, 1))
	}
	in := Input{Hosts: []Host{h}, Queue: jobs}
	p := Schedule(in)
	checkPlan(t, in, p)
	if len(p.Placements) != 2 {
		t.Fatalf("want 2 quarter-vCPU jobs placed in the remaining 0.5 vCPU, got %+v", p)
	}
	// A total of 0.1*3 (0.30000000000000004) rounds down to a single quarter.
	h = mkHost("h", arch.AMD64, 0.1*3, 64)
	in = Input{Hosts: []Host{h}, Queue: []Job{mkJob(1, "o/r", 0.25, 1), mkJob(2, "o/r", 0.25, 1)}}
	p = Schedule(in)
	checkPlan(t, in, p)
	if len(p.Placements) != 1 {
		t.Fatalf("want 1 placement, got %+v", p)
	}
}

func TestFairShareOrgs(t *testing.T) {
	var jobs []Job
	for i := range 500 {
		jobs = append(jobs, mkJob(int64(i+1), "a/big", 2, 4))
	}
	jobs = append(jobs, mkJob(1000, "b/one", 2, 4)) // queued last
	in := Input{Hosts: []Host{mkHost("h", arch.AMD64, 6, 64)}, Queue: jobs}
	p := Schedule(in)
	checkPlan(t, in, p)
	if len(p.Placements) != 3 {
		t.Fatalf("want 3 placements, got %d", len(p.Placements))
	}
	got := placedOn(p)
	if _, ok := got[1000]; !ok {
		t.Fatalf("org b's only job was starved: %+v", p.Placements)
	}
	// Org a gets its two oldest jobs.
	if _, ok := got[1]; !ok {
		t.Fatalf("org a's oldest job not placed: %+v", p.Placements)
	}
	if _, ok := got[2]; !ok {
		t.Fatalf("org a's second job not placed: %+v", p.Placements)
	}
}

func TestFairShareUsageAndTies(t *testing.T) {
	tests := []struct {
		name      string
		jobs      []Job
		orgUsage  map[string]Usage
		repoUsage map[string]Usage
		room      float64 // vCPUs; jobs take 1 each
		wantOrder []int64
	}{
		{"orgs alternate", []Job{mkJob(1, "a/x", 1, 1), mkJob(2, "a/x", 1, 1), mkJob(3, "b/y", 1, 1), mkJob(4, "b/y", 1, 1)},
			nil, nil, 4, []int64{1, 3, 2, 4}},
		{"busier org goes last", []Job{mkJob(1, "a/x", 1, 1), mkJob(2, "a/x", 1, 1), mkJob(3, "b/y", 1, 1), mkJob(4, "b/y", 1, 1)},
			map[string]Usage{"a": {VMs: 2}}, nil, 4, []int64{3, 4, 1, 2}},
		{"tie: oldest job first", []Job{mkJob(5, "a/x", 1, 1), mkJob(2, "b/y", 1, 1)},
			nil, nil, 2, []int64{2, 5}},
		{"tie: then org name", []Job{func() Job { j := mkJob(2, "b/y", 1, 1); j.Queued = t0; return j }(),
			func() Job { j := mkJob(1, "a/x", 1, 1); j.Queued = t0; return j }()},
			nil, nil, 2, []int64{1, 2}},
		{"repos alternate within an org", []Job{mkJob(1, "a/x", 1, 1), mkJob(2, "a/x", 1, 1), mkJob(3, "a/x", 1, 1), mkJob(4, "a/y", 1, 1)},
			nil, nil, 2, []int64{1, 4}},
		{"busier repo goes last", []Job{mkJob(1, "a/x", 1, 1), mkJob(2, "a/x", 1, 1), mkJob(3, "a/y", 1, 1)},
			nil, map[string]Usage{"a/x": {VMs: 3}}, 2, []int64{3, 1}},
		{"fifo within repo by queued then ID", []Job{mkJob(3, "a/x", 1, 1), func() Job { j := mkJob(9, "a/x", 1, 1); j.Queued = t0; return j }(), mkJob(2, "a/x", 1, 1)},
			nil, nil, 3, []int64{9, 2, 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := Input{
				Hosts:    []Host{mkHost("h", arch.AMD64, tt.room, 64)},
				Queue:    tt.jobs,
				OrgUsage: tt.orgUsage, RepoUsage: tt.repoUsage,
			}
			p := Schedule(in)
			checkPlan(t, in, p)
			var order []int64
			for _, pl := range p.Placements {
				order = append(order, pl.JobID)
			}
			if !reflect.DeepEqual(order, tt.wantOrder) {
				t.Fatalf("placement order %v, want %v", order, tt.wantOrder)
			}
		})
	}
}

func TestNoRoomDoesNotBlock(t *testing.T) {
	// Org a's oldest job is too big for the room left; a's smaller job of
	// another repo, and org b, still get placed.
	in := Input{
		Hosts: []Host{mkHost("h", arch.AMD64, 16, 64)},
		Queue: []Job{mkJob(1, "a/x", 16, 8), mkJob(2, "a/y", 2, 4), mkJob(3, "b/z", 2, 4)},
	}
	in.Hosts[0].UsedVCPUs = 8
	p := Schedule(in)
	checkPlan(t, in, p)
	got := placedOn(p)
	if _, ok := got[2]; !ok {
		t.Fatalf("job 2 blocked: %+v", p)
	}
	if _, ok := got[3]; !ok {
		t.Fatalf("job 3 blocked: %+v", p)
	}
	want := "no amd64 host has 16 vCPUs / 8 GiB free (best: h with 8 vCPUs / 64 GiB free)"
	if r := reasons(p.Waiting)[1]; r != want {
		t.Fatalf("reason %q, want %q", r, want)
	}
}

func TestReservationWithinRepo(t *testing.T) {
	// Repo a/x: a big job first, then small ones. h1 is the only host that
	// can ever hold the big job; its own repo's small jobs must not refill it,
	// but they may use h2, and another repo may use h1.
	h1 := mkHost("h1", arch.AMD64, 8, 32)
	h1.UsedVCPUs = 4
	h2 := mkHost("h2", arch.AMD64, 2, 32)
	in := Input{
		Hosts: []Host{h1, h2},
		Queue: []Job{mkJob(1, "a/x", 8, 8), mkJob(2, "a/x", 2, 4), mkJob(3, "a/x", 2, 4), mkJob(4, "b/y", 2, 4)},
	}
	p := Schedule(in)
	checkPlan(t, in, p)
	got := placedOn(p)
	if pl, ok := got[2]; !ok || pl.HostID != "h2" {
		t.Fatalf("job 2 should go to h2, got %+v", p)
	}
	if _, ok := got[3]; ok {
		t.Fatalf("job 3 took the host reserved for job 1: %+v", p)
	}
	if r := reasons(p.Waiting)[3]; r != "held back for older job 1 of a/x, which has h1 reserved" {
		t.Fatalf("job 3 reason %q", r)
	}
	if pl, ok := got[4]; !ok || pl.HostID != "h1" {
		t.Fatalf("other repo's job 4 should use h1, got %+v", p)
	}

	// Once h1 frees up, the big job, oldest in its repo, goes first.
	in.Hosts[0].UsedVCPUs = 0
	p = Schedule(in)
	checkPlan(t, in, p)
	if pl, ok := placedOn(p)[1]; !ok || pl.HostID != "h1" {
		t.Fatalf("big job should get h1 once free: %+v", p)
	}
}

func TestReservationPicksClosestHost(t *testing.T) {
	// Both hosts can hold the 8-vCPU job in total; h2 is closer to fitting,
	// so the small job of the same repo goes to h1.
	h1 := mkHost("h1", arch.AMD64, 8, 32)
	h1.UsedVCPUs = 6
	h2 := mkHost("h2", arch.AMD64, 8, 32)
	h2.UsedVCPUs = 4
	in := Input{Hosts: []Host{h1, h2}, Queue: []Job{mkJob(1, "a/x", 8, 8), mkJob(2, "a/x", 2, 4)}}
	p := Schedule(in)
	checkPlan(t, in, p)
	if pl, ok := placedOn(p)[2]; !ok || pl.HostID != "h1" {
		t.Fatalf("job 2 should avoid reserved h2, got %+v", p)
	}
}

func TestLimits(t *testing.T) {
	jobs := func(repo string, n int, vcpus float64, first int64) []Job {
		var js []Job
		for i := range n {
			js = append(js, mkJob(first+int64(i), repo, vcpus, 1))
		}
		return js
	}
	big := []Host{mkHost("h", arch.AMD64, 256, 1024)}
	tests := []struct {
		name       string
		queue      []Job
		usage      map[string]Usage
		limits     Limits
		wantPlaced map[string]int
		wantReason map[int64]string
	}{
		{"max VMs", jobs("a/x", 5, 1, 1), nil, Limits{Org: map[string]OrgLimit{"a": {MaxVMs: 3}}},
			map[string]int{"a": 3}, map[int64]string{4: "org a at its limit of 3 VMs", 5: "org a at its limit of 3 VMs"}},
		{"max VMs counts usage", jobs("a/x", 5, 1, 1), map[string]Usage{"a": {VMs: 2}}, Limits{Org: map[string]OrgLimit{"a": {MaxVMs: 3}}},
			map[string]int{"a": 1}, nil},
		{"default applies to unlisted orgs", append(jobs("a/x", 3, 1, 1), jobs("b/y", 3, 1, 10)...),
			nil, Limits{Org: map[string]OrgLimit{"b": {}}, Default: OrgLimit{MaxVMs: 1}},
			map[string]int{"a": 1, "b": 3}, map[int64]string{2: "org a at its limit of 1 VM"}},
		{"max vCPUs", jobs("a/x", 5, 2, 1), map[string]Usage{"a": {VMs: 1, VCPUs: 2}}, Limits{Default: OrgLimit{MaxVCPUs: 6}},
			map[string]int{"a": 2}, map[int64]string{3: "org a at its limit of 6 vCPUs"}},
		{"smaller job fits under vCPU limit", append(jobs("a/x", 1, 4, 1), jobs("a/x", 1, 1, 2)...),
			map[string]Usage{"a": {VCPUs: 2}}, Limits{Default: OrgLimit{MaxVCPUs: 4}},
			map[string]int{"a": 1}, map[int64]string{1: "org a would exceed its limit of 4 vCPUs (2 in use, needs 4)"}},
		{"job larger than the limit", jobs("a/x", 1, 8, 1), nil, Limits{Default: OrgLimit{MaxVCPUs: 4}},
			nil, map[int64]string{1: "needs 8 vCPUs, more than org a's limit of 4 vCPUs"}},
		{"other org unaffected", append(jobs("a/x", 3, 1, 1), jobs("b/y", 3, 1, 10)...), nil,
			Limits{Org: map[string]OrgLimit{"a": {MaxVMs: 1}}}, map[string]int{"a": 1, "b": 3}, nil},
		{"negative limits are unlimited", jobs("a/x", 3, 1, 1), nil, Limits{Default: OrgLimit{MaxVMs: -1, MaxVCPUs: -1}},
			map[string]int{"a": 3}, nil},
		// GitHub's names are not case-sensitive: a limit keyed "a" is org
		// A's, and usage under "a" and "A" is one org's.
		{"limits and usage without case", append(jobs("A/x", 2, 1, 1), jobs("a/X", 2, 1, 10)...),
			map[string]Usage{"a": {VMs: 1}, "A": {VMs: 1}}, Limits{Org: map[string]OrgLimit{"a": {MaxVMs: 3}}},
			map[string]int{"A": 1}, map[int64]string{2: "org A at its limit of 3 VMs", 10: "org A at its limit of 3 VMs"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := Input{Hosts: big, Queue: tt.queue, OrgUsage: tt.usage, Limits: tt.limits}
			p := Schedule(in)
			checkPlan(t, in, p)
			placed := map[string]int{}
			byID := map[int64]Job{}
			for _, j := range tt.queue {
				byID[j.ID] = j
			}
			for _, pl := range p.Placements {
				placed[byID[pl.JobID].Org]++
			}
			if len(placed) == 0 {
				placed = nil
			}
			if !reflect.DeepEqual(placed, tt.wantPlaced) {
				t.Fatalf("placed per org %v, want %v (waiting %+v)", placed, tt.wantPlaced, p.Waiting)
			}
			got := reasons(p.Waiting)
			for id, want := range tt.wantReason {
				if got[id] != want {
					t.Errorf("job %d reason %q, want %q", id, got[id], want)
				}
			}
			if len(p.Unschedulable) != 0 {
				t.Fatalf("limits must never make a job unschedulable: %+v", p.Unschedulable)
			}
		})
	}
}

func TestAvoidHosts(t *testing.T) {
	avoid := func(j Job, hosts ...string) Job { j.AvoidHosts = hosts; return j }
	emuArm := mkHost("e", arch.ARM64, 64, 256)
	emuArm.Arches = append(emuArm.Arches, ArchSupport{Arch: arch.AMD64, Emulated: true})
	tests := []struct {
		name     string
		hosts    []Host
		job      Job
		wantHost string
	}{
		{"skip avoided best fit", []Host{mkHost("a", arch.AMD64, 4, 8), mkHost("b", arch.AMD64, 64, 256)},
			avoid(mkJob(1, "o/r", 2, 4), "a"), "b"},
		{"one-host fleet retries", []Host{mkHost("a", arch.AMD64, 4, 8)},
			avoid(mkJob(1, "o/r", 2, 4), "a"), "a"},
		{"only avoided hosts fit", []Host{mkHost("a", arch.AMD64, 4, 8), mkHost("b", arch.AMD64, 1, 8)},
			avoid(mkJob(1, "o/r", 2, 4), "a"), "a"},
		{"avoided hosts: best fit among them", []Host{mkHost("a", arch.AMD64, 64, 256), mkHost("b", arch.AMD64, 4, 8)},
			avoid(mkJob(1, "o/r", 2, 4), "a", "b"), "b"},
		{"unknown avoided host ignored", []Host{mkHost("a", arch.AMD64, 4, 8)},
			avoid(mkJob(1, "o/r", 2, 4), "zz"), "a"},
		{"emulated elsewhere beats avoided native", []Host{mkHost("a", arch.AMD64, 4, 8), emuArm},
			avoid(mkJob(1, "o/r", 2, 4), "a"), "e"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := Input{Hosts: tt.hosts, Queue: []Job{tt.job}}
			p := Schedule(in)
			checkPlan(t, in, p)
			if len(p.Placements) != 1 || p.Placements[0].HostID != tt.wantHost {
				t.Fatalf("got %+v, want host %s", p, tt.wantHost)
			}
		})
	}
}

func TestUnschedulableVsWaiting(t *testing.T) {
	arm := func(j Job) Job { j.Arch = arch.ARM64; return j }
	anyArch := func(j Job) Job { j.Arch = arch.Any; return j }
	down := func(h Host) Host { h.Schedulable = false; return h }
	busy := func(h Host, cpu float64) Host { h.UsedVCPUs = cpu; return h }
	tests := []struct {
		name    string
		hosts   []Host
		job     Job
		waiting bool
		reason  string
	}{
		{"no hosts at all", nil, mkJob(1, "o/r", 2, 4), true, "no hosts"},
		{"too big for any host", []Host{mkHost("a", arch.ARM64, 16, 64), mkHost("b", arch.ARM64, 8, 128), mkHost("c", arch.AMD64, 128, 512)},
			arm(mkJob(1, "o/r", 64, 8)), false, "needs 64 vCPUs / 8 GiB on arm64; the largest arm64 host has 16 vCPUs / 64 GiB"},
		{"no single host has both", []Host{mkHost("a", arch.AMD64, 64, 16), mkHost("b", arch.AMD64, 8, 256)},
			mkJob(1, "o/r", 32, 64), false, "needs 32 vCPUs / 64 GiB on amd64; the largest amd64 host has 64 vCPUs / 16 GiB"},
		{"too big for any arch", []Host{mkHost("a", arch.AMD64, 4, 8), mkHost("b", arch.ARM64, 8, 8)},
			anyArch(mkJob(1, "o/r", 16, 4)), false, "needs 16 vCPUs / 4 GiB; the largest host has 8 vCPUs / 8 GiB"},
		{"unschedulable hosts count for ever fitting", []Host{down(mkHost("a", arch.AMD64, 64, 256)), mkHost("b", arch.AMD64, 4, 8)},
			mkJob(1, "o/r", 32, 64), true, "no schedulable amd64 host can hold 32 vCPUs / 64 GiB; only draining, cordoned or offline ones can"},
		{"no schedulable host", []Host{down(mkHost("a", arch.AMD64, 64, 256)), down(mkHost("b", arch.AMD64, 64, 256))},
			mkJob(1, "o/r", 2, 4), true, "no schedulable amd64 host (2 hosts draining, cordoned or offline)"},
		{"no room now", []Host{busy(mkHost("h1", arch.AMD64, 8, 64), 8), busy(mkHost("h2", arch.AMD64, 4, 16), 2)},
			mkJob(1, "o/r", 4, 8), true, "no amd64 host has 4 vCPUs / 8 GiB free (best: h2 with 2 vCPUs / 16 GiB free)"},
		{"all full", []Host{busy(mkHost("h1", arch.AMD64, 8, 64), 8)},
			mkJob(1, "o/r", 4, 8), true, "no amd64 host has 4 vCPUs / 8 GiB free (all are full)"},
		{"invalid request beats host checks", []Host{mkHost("h1", arch.AMD64, 1, 1)},
			mkJob(1, "o/r", 1.5, 0), false, "invalid request: memory must be positive (got 0 MiB)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := Input{Hosts: tt.hosts, Queue: []Job{tt.job}}
			p := Schedule(in)
			checkPlan(t, in, p)
			list := p.Unschedulable
			if tt.waiting {
				list = p.Waiting
			}
			if len(list) != 1 || list[0].Reason != tt.reason {
				t.Fatalf("got %+v, want waiting=%v reason %q", p, tt.waiting, tt.reason)
			}
		})
	}
}

func TestBadInput(t *testing.T) {
	hosts := []Host{mkHost("h", arch.AMD64, 64, 256)}
	bad := func(mut func(*Job)) Job { j := mkJob(1, "o/r", 2, 4); mut(&j); return j }
	tests := []struct {
		name   string
		job    Job
		reason string
	}{
		{"zero vCPUs", bad(func(j *Job) { j.VCPUs = 0 }), "invalid request: vCPUs must be positive (got 0)"},
		{"negative vCPUs", bad(func(j *Job) { j.VCPUs = -2 }), "invalid request: vCPUs must be positive (got -2)"},
		{"NaN vCPUs", bad(func(j *Job) { j.VCPUs = math.NaN() }), "invalid request: vCPUs must be a finite number (got NaN)"},
		{"infinite vCPUs", bad(func(j *Job) { j.VCPUs = math.Inf(1) }), "invalid request: vCPUs must be a finite number (got +Inf)"},
		{"zero memory", bad(func(j *Job) { j.MemoryMiB = 0 }), "invalid request: memory must be positive (got 0 MiB)"},
		{"negative memory", bad(func(j *Job) { j.MemoryMiB = -5 }), "invalid request: memory must be positive (got -5 MiB)"},
		{"empty arch", bad(func(j *Job) { j.Arch = "" }), `invalid request: unknown arch ""`},
		{"unknown arch", bad(func(j *Job) { j.Arch = "sparc" }), `invalid request: unknown arch "sparc"`},
		{"huge vCPUs", bad(func(j *Job) { j.VCPUs = 1e300 }), "needs 274877906944 vCPUs / 4 GiB on amd64; the largest amd64 host has 64 vCPUs / 256 GiB"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := Input{Hosts: hosts, Queue: []Job{tt.job}}
			p := Schedule(in)
			checkPlan(t, in, p)
			if len(p.Unschedulable) != 1 || p.Unschedulable[0].Reason != tt.reason {
				t.Fatalf("got %+v, want unschedulable %q", p, tt.reason)
			}
		})
	}
}

func TestBadInputNoHosts(t *testing.T) {
	// An invalid request is unschedulable even with no hosts; a valid one waits.
	j := mkJob(1, "o/r", 0, 4)
	p := Schedule(Input{Queue: []Job{j, mkJob(2, "o/r", 1, 1)}})
	if len(p.Unschedulable) != 1 || p.Unschedulable[0].JobID != 1 || len(p.Waiting) != 1 || p.Waiting[0].Reason != "no hosts" {
		t.Fatalf("got %+v", p)
	}
	// Only invalid hosts is the same as none.
	p = Schedule(Input{Hosts: []Host{{ID: "", VCPUs: 8, MemoryMiB: 8}, {ID: "x", VCPUs: math.NaN()}}, Queue: []Job{mkJob(2, "o/r", 1, 1)}})
	if len(p.Waiting) != 1 || p.Waiting[0].Reason != "no hosts (2 invalid hosts ignored)" {
		t.Fatalf("got %+v", p)
	}
}

func TestDuplicatesAndOddHosts(t *testing.T) {
	t.Run("duplicate job IDs: first occurrence only", func(t *testing.T) {
		in := Input{
			Hosts: []Host{mkHost("h", arch.AMD64, 4, 8)},
			Queue: []Job{mkJob(1, "o/r", 2, 4), mkJob(1, "o/r", 64, 4), mkJob(2, "o/r", 2, 4)},
		}
		p := Schedule(in)
		checkPlan(t, in, p)
		if len(p.Placements) != 2 || len(p.Waiting)+len(p.Unschedulable) != 0 {
			t.Fatalf("got %+v", p)
		}
	})
	t.Run("duplicate host IDs: first occurrence only", func(t *testing.T) {
		in := Input{
			Hosts: []Host{mkHost("h", arch.AMD64, 2, 4), mkHost("h", arch.AMD64, 64, 256)},
			Queue: []Job{mkJob(1, "o/r", 2, 4), mkJob(2, "o/r", 2, 4)},
		}
		p := Schedule(in)
		checkPlan(t, in, p)
		if len(p.Placements) != 1 || len(p.Waiting) != 1 {
			t.Fatalf("got %+v", p)
		}
	})
	t.Run("invalid host ignored", func(t *testing.T) {
		neg := mkHost("a", arch.AMD64, 64, 256)
		neg.UsedVCPUs = -64
		nan := mkHost("b", arch.AMD64, math.NaN(), 256)
		in := Input{Hosts: []Host{neg, nan, mkHost("c", arch.AMD64, 4, 8)}, Queue: []Job{mkJob(1, "o/r", 2, 4)}}
		p := Schedule(in)
		checkPlan(t, in, p)
		if len(p.Placements) != 1 || p.Placements[0].HostID != "c" {
			t.Fatalf("got %+v", p)
		}
	})
	t.Run("overcommitted host has no room", func(t *testing.T) {
		h := mkHost("a", arch.AMD64, 4, 8)
		h.UsedVCPUs, h.UsedMemoryMiB = 10, 100000
		in := Input{Hosts: []Host{h}, Queue: []Job{mkJob(1, "o/r", 1, 1)}}
		p := Schedule(in)
		checkPlan(t, in, p)
		if len(p.Waiting) != 1 || !strings.Contains(p.Waiting[0].Reason, "all are full") {
			t.Fatalf("got %+v", p)
		}
	})
}

func TestDeterministic(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 20 {
		in := randomInput(r, 30, 300, 6)
		want := Schedule(in)
		checkPlan(t, in, want)
		if again := Schedule(in); !reflect.DeepEqual(again, want) {
			t.Fatalf("round %d: second call differs", i)
		}
		// Input order of hosts and jobs (IDs are unique) must not matter.
		shuffled := in
		shuffled.Hosts = append([]Host(nil), in.Hosts...)
		shuffled.Queue = append([]Job(nil), in.Queue...)
		r.Shuffle(len(shuffled.Hosts), func(a, b int) { shuffled.Hosts[a], shuffled.Hosts[b] = shuffled.Hosts[b], shuffled.Hosts[a] })
		r.Shuffle(len(shuffled.Queue), func(a, b int) { shuffled.Queue[a], shuffled.Queue[b] = shuffled.Queue[b], shuffled.Queue[a] })
		if got := Schedule(shuffled); !reflect.DeepEqual(got, want) {
			t.Fatalf("round %d: shuffled input gives a different plan", i)
		}
	}
}

func TestPropertyRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 11))
	for i := range 300 {
		nHosts := r.IntN(40)
		in := randomInput(r, nHosts, r.IntN(400), 1+r.IntN(8))
		p := Schedule(in)
		checkPlan(t, in, p)
		if t.Failed() {
			t.Fatalf("round %d failed", i)
		}
		checkMaximal(t, in, p)
	}
}

// checkMaximal verifies a waiting job for lack of room really had no room:
// after all placements no non-reserved host has room for it. It checks only
// jobs whose reason claims no room, with no limits configured for their org.
func checkMaximal(t *testing.T, in Input, p Plan) {
	t.Helper()
	freeCPU := map[string]float64{}
	freeMem := map[string]int{}
	freeDisk := map[string]int{}
	for _, h := range in.Hosts {
		if _, ok := freeCPU[h.ID]; ok || !validHost(&h) || !h.Schedulable {
			continue
		}
		freeCPU[h.ID] = float64(quartersFloor(h.VCPUs)-quartersCeil(h.UsedVCPUs)) / 4
		freeMem[h.ID] = h.MemoryMiB - h.UsedMemoryMiB
		freeDisk[h.ID] = math.MaxInt
		if h.DiskMiB > 0 {
			freeDisk[h.ID] = h.DiskMiB - h.UsedDiskMiB
		}
	}
	jobs := map[int64]Job{}
	for _, j := range in.Queue {
		if _, ok := jobs[j.ID]; !ok {
			jobs[j.ID] = j
		}
	}
	for _, pl := range p.Placements {
		freeCPU[pl.HostID] -= float64(quartersCeil(jobs[pl.JobID].VCPUs)) / 4
		freeMem[pl.HostID] -= jobs[pl.JobID].MemoryMiB
		if freeDisk[pl.HostID] != math.MaxInt {
			freeDisk[pl.HostID] -= jobs[pl.JobID].DiskMiB
		}
	}
	for _, d := range p.Waiting {
		if !strings.HasPrefix(d.Reason, "no ") || !strings.Contains(d.Reason, " free") {
			continue
		}
		j := jobs[d.JobID]
		for _, h := range in.Hosts {
			ok := false
			for _, a := range h.Arches {
				ok = ok || j.Arch.Matches(a.Arch)
			}
			if ok && h.Schedulable && freeCPU[h.ID] >= float64(quartersCeil(j.VCPUs))/4 && freeMem[h.ID] >= j.MemoryMiB &&
				freeDisk[h.ID] >= j.DiskMiB {
				t.Fatalf("job %d waits (%q) but host %s has %v vCPUs / %d MiB free", j.ID, d.Reason, h.ID, freeCPU[h.ID], freeMem[h.ID])
			}
		}
	}
}

func TestLargeFleetAllPlaced(t *testing.T) {
	// Plenty of room: everything valid is placed, nothing is left waiting.
	var hosts []Host
	for i := range 50 {
		hosts = append(hosts, mkHost("h"+strconv.Itoa(i), arch.AMD64, 64, 256))
	}
	var jobs []Job
	for i := range 400 {
		jobs = append(jobs, mkJob(int64(i+1), "o"+strconv.Itoa(i%7)+"/r", 2, 4))
	}
	in := Input{Hosts: hosts, Queue: jobs}
	p := Schedule(in)
	checkPlan(t, in, p)
	if len(p.Placements) != 400 {
		t.Fatalf("placed %d of 400", len(p.Placements))
	}
}

// TestDisk: a job's disk counts on a host that counts disk, and not on
// one that does not; a job whose disk no host has is unschedulable.
func TestDisk(t *testing.T) {
	counted := mkHost("a", arch.AMD64, 16, 64)
	counted.DiskMiB = 10 << 10
	free := mkHost("b", arch.AMD64, 16, 64)
	job := func(id int64, disk int) Job {
		j := mkJob(id, "o/r", 1, 1)
		j.DiskMiB = disk
		return j
	}
	// Two 6 GiB jobs on a host with 10 GiB: one, then none.
	in := Input{Hosts: []Host{counted}, Queue: []Job{job(1, 6<<10), job(2, 6<<10)}}
	p := Schedule(in)
	checkPlan(t, in, p)
	if len(p.Placements) != 1 || len(p.Waiting) != 1 || !strings.Contains(p.Waiting[0].Reason, "6 GiB of disk") {
		t.Errorf("plan %+v", p)
	}
	// A host that does not count disk takes both.
	in.Hosts = append(in.Hosts, free)
	p = Schedule(in)
	checkPlan(t, in, p)
	if len(p.Placements) != 2 {
		t.Errorf("with a host not counting disk: %+v", p)
	}
	// More disk than the counting host has in all, and only it: never.
	in = Input{Hosts: []Host{counted}, Queue: []Job{job(3, 20<<10)}}
	p = Schedule(in)
	if len(p.Unschedulable) != 1 || !strings.Contains(p.Unschedulable[0].Reason, "20 GiB of disk") {
		t.Errorf("20 GiB on a 10 GiB host: %+v", p)
	}
	in = Input{Hosts: []Host{counted}, Queue: []Job{job(4, -1)}}
	if p = Schedule(in); len(p.Unschedulable) != 1 || !strings.Contains(p.Unschedulable[0].Reason, "disk must not be negative") {
		t.Errorf("negative disk: %+v", p)
	}
}
