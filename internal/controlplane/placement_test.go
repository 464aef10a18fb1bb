package controlplane

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/egress"
	"github.com/tandem-ci/tandem/internal/scheduler"
	"github.com/tandem-ci/tandem/internal/store"
)

func testPlacer(scope string, diskPerVCPU int) *placer {
	n := 0
	return newPlacer(Config{Runner: RunnerSpec{Scope: scope, DiskPerVCPU: diskPerVCPU}}, func() string {
		n++
		return fmt.Sprintf("tandem-%012d", n)
	})
}

// A spare runner takes the oldest queued job that GitHub would give it:
// same label set, same repository (or, for an org runner, same org and
// installation). Runners bound, busy or skipped are neither matched nor
// called unneeded.
func TestMatchSpares(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)
	job := func(id int64, repo, key string, age int) store.Job {
		org, _, _ := strings.Cut(repo, "/")
		return store.Job{ID: id, Repo: repo, Org: org, Installation: 1, LabelKey: key,
			QueuedAt: t0.Add(-time.Duration(age) * time.Minute)}
	}
	queued := []store.Job{
		job(1, "o/a", "arm", 1),
		job(2, "o/a", "arm", 5), // older: taken first
		job(3, "o/b", "arm", 9), // another repo
		job(4, "o/a", "x86", 9), // another label set
		job(5, "p/c", "arm", 9), // another org
	}
	live := []store.Runner{
		{Name: "repo-a", Repo: "o/a", Org: "o", Installation: 1, LabelKey: "arm", State: store.RunnerIdle},
		{Name: "repo-a-2", Repo: "o/a", Org: "o", Installation: 1, LabelKey: "arm", State: store.RunnerBooting},
		{Name: "repo-a-3", Repo: "o/a", Org: "o", Installation: 1, LabelKey: "arm", State: store.RunnerIdle},
		{Name: "org-o", Org: "O", Installation: 1, LabelKey: "arm", State: store.RunnerIdle},
		{Name: "org-o-other-install", Org: "o", Installation: 2, LabelKey: "arm", State: store.RunnerIdle},
		{Name: "bound", Repo: "o/b", Org: "o", Installation: 1, LabelKey: "arm", JobID: 99, State: store.RunnerIdle},
		{Name: "busy", Repo: "o/b", Org: "o", Installation: 1, LabelKey: "arm", State: store.RunnerBusy},
		{Name: "stopping", Repo: "o/b", Org: "o", Installation: 1, LabelKey: "arm", State: store.RunnerIdle},
	}
	pairs, rest, unneeded := testPlacer("repo", 0).matchSpares(queued, live, func(r store.Runner) bool {
		return r.Name == "stopping"
	})
	got := map[string]int64{}
	for _, p := range pairs {
		got[p.runner.Name] = p.job.ID
	}
	want := map[string]int64{"repo-a": 2, "repo-a-2": 1, "org-o": 3}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("pairs %v, want %v", got, want)
	}
	var restIDs []int64
	for _, j := range rest {
		restIDs = append(restIDs, j.ID)
	}
	if fmt.Sprint(restIDs) != "[4 5]" {
		t.Errorf("still queued %v, want [4 5]", restIDs)
	}
	var names []string
	for _, r := range unneeded {
		names = append(names, r.Name)
	}
	if fmt.Sprint(names) != "[repo-a-3 org-o-other-install]" {
		t.Errorf("unneeded %v, want [repo-a-3 org-o-other-install]", names)
	}
}

// An organisation runner joins the runner group its job's repository maps
// to, and a spare serves only jobs that map to the same group (GitHub would
// not give it the others).
func TestMatchSparesByRunnerGroup(t *testing.T) {
	p := newPlacer(Config{Runner: RunnerSpec{Scope: "org", Group: "Tandem",
		Groups: map[string]string{"o/big": "Big", "P": "P Fleet"}}}, func() string { return "r" })
	t0 := time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)
	job := func(id int64, repo string) store.Job {
		org, _, _ := strings.Cut(repo, "/")
		return store.Job{ID: id, Repo: repo, Org: org, Installation: 1, LabelKey: "k", QueuedAt: t0.Add(time.Duration(id) * time.Minute)}
	}
	for repo, want := range map[string]string{"o/a": "Tandem", "O/BIG": "Big", "p/x": "P Fleet"} {
		org, _, _ := strings.Cut(repo, "/")
		if r := p.newRunner(job(1, repo), scheduler.Placement{HostID: "h"}, t0); r.Group != want || r.Repo != "" || r.Org != org {
			t.Errorf("runner for %s: group %q repo %q, want group %q", repo, r.Group, r.Repo, want)
		}
	}
	queued := []store.Job{job(1, "o/big"), job(2, "o/a")}
	live := []store.Runner{{Name: "tandem-group", Org: "o", Installation: 1, LabelKey: "k", Group: "tandem", State: store.RunnerIdle}}
	pairs, _, _ := p.matchSpares(queued, live, func(store.Runner) bool { return false })
	if len(pairs) != 1 || pairs[0].job.ID != 2 {
		t.Errorf("pairs %+v: want the Tandem group's runner given job 2 (o/a), not the older job of o/big (group Big)", pairs)
	}
}

// Every live runner counts against its own host; a host not connected is
// not schedulable; disk is counted only when configured, at least one
// vCPU's worth per VM.
func TestPlacerInput(t *testing.T) {
	hosts := []store.Host{
		{ID: "h1", State: store.HostOnline, VCPUs: 4, MemoryMiB: 8192, DiskMiB: 10000,
			Arches: []store.ArchSupport{{Arch: arch.AMD64}}},
		{ID: "h2", State: store.HostOnline, VCPUs: 4, MemoryMiB: 8192, DiskMiB: 10000,
			Arches: []store.ArchSupport{{Arch: arch.AMD64}, {Arch: arch.ARM64, Emulated: true}}},
		{ID: "h3", State: store.HostOnline, VCPUs: 4, MemoryMiB: 8192},
	}
	live := []store.Runner{
		{Name: "a", HostID: "h1", Org: "o", Repo: "o/a", VCPUs: 2, MemoryMiB: 4096},
		{Name: "b", HostID: "h2", Org: "o", Repo: "o/b", VCPUs: 0.5, MemoryMiB: 1024},
		{Name: "c", HostID: "h2", Org: "p", VCPUs: 1, MemoryMiB: 2048},
	}
	connected := map[string]bool{"h1": true, "h2": true}
	queued := []store.Job{{ID: 7, Org: "o", Repo: "o/a", Arch: arch.ARM64, VCPUs: 2, MemoryMiB: 4096}}

	in := testPlacer("repo", 100).input(hosts, connected, live, queued)
	want := []scheduler.Host{
		{ID: "h1", VCPUs: 4, MemoryMiB: 8192, DiskMiB: 10000, UsedVCPUs: 2, UsedMemoryMiB: 4096, UsedDiskMiB: 200, Schedulable: true},
		{ID: "h2", VCPUs: 4, MemoryMiB: 8192, DiskMiB: 10000, UsedVCPUs: 1.5, UsedMemoryMiB: 3072, UsedDiskMiB: 200, Schedulable: true},
		{ID: "h3", VCPUs: 4, MemoryMiB: 8192},
	}
	for i, h := range in.Hosts {
		h.Arches = nil
		if fmt.Sprint(h) != fmt.Sprint(want[i]) {
			t.Errorf("host %d:\n got %+v\nwant %+v", i, h, want[i])
		}
	}
	if len(in.Hosts[1].Arches) != 2 || !in.Hosts[1].Arches[1].Emulated {
		t.Errorf("h2 arches %+v", in.Hosts[1].Arches)
	}
	if u := in.OrgUsage["o"]; u.VMs != 2 || u.VCPUs != 2.5 {
		t.Errorf("org o usage %+v", u)
	}
	if u := in.RepoUsage["o/a"]; u.VMs != 1 || u.VCPUs != 2 {
		t.Errorf("repo o/a usage %+v", u)
	}
	if len(in.Queue) != 1 || in.Queue[0].DiskMiB != 200 || in.Queue[0].Arch != arch.ARM64 {
		t.Errorf("queue %+v", in.Queue)
	}

	in = testPlacer("repo", 0).input(hosts, connected, live, queued)
	if in.Hosts[0].DiskMiB != 0 || in.Hosts[0].UsedDiskMiB != 0 || in.Queue[0].DiskMiB != 0 {
		t.Errorf("disk counted though not configured: %+v, %+v", in.Hosts[0], in.Queue[0])
	}
}

// A pass remembers why each job it could not place waits, and forgets the
// reasons of the pass before.
func TestPlacerWaiting(t *testing.T) {
	p := testPlacer("org", 0)
	hosts := []store.Host{{ID: "h1", State: store.HostOnline, VCPUs: 2, MemoryMiB: 4096,
		Arches: []store.ArchSupport{{Arch: arch.AMD64}}}}
	connected := map[string]bool{"h1": true}
	q := []store.Job{
		{ID: 1, Org: "o", Repo: "o/a", Arch: arch.AMD64, VCPUs: 2, MemoryMiB: 4096},
		{ID: 2, Org: "o", Repo: "o/a", Arch: arch.AMD64, VCPUs: 2, MemoryMiB: 4096, QueuedAt: time.Unix(1, 0)},
	}
	plan := p.plan(hosts, connected, nil, q, nil, nil)
	if len(plan.Placements) != 1 || plan.Placements[0].JobID != 1 {
		t.Fatalf("placements %+v", plan.Placements)
	}
	if why, ok := p.whyWaiting(2); !ok || why == "" {
		t.Errorf("job 2 waits with no reason (%q, %v)", why, ok)
	}
	r := p.newRunner(q[0], plan.Placements[0], time.Unix(2, 0))
	if r.Repo != "" || r.Org != "o" || r.HostID != "h1" || r.JobID != 1 || r.Egress.Mode != egress.Open {
		t.Errorf("org-scoped runner %+v", r)
	}
	p.plan(hosts, connected, []store.Runner{r}, q[1:], nil, nil)
	if why, ok := p.whyWaiting(2); !ok || why == "" {
		t.Errorf("job 2 should still wait behind the runner of job 1 (%q, %v)", why, ok)
	}
	p.plan(hosts, connected, nil, q[1:], nil, nil)
	if _, ok := p.whyWaiting(2); ok {
		t.Error("job 2 placed, but still has the last pass's reason to wait")
	}
}
