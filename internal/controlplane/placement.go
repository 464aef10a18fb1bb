package controlplane

import (
	"math"
	"strings"
	"sync"
	"time"

	"github.com/tandem-ci/tandem/internal/egress"
	"github.com/tandem-ci/tandem/internal/scheduler"
	"github.com/tandem-ci/tandem/internal/store"
)

// placer is placement: which spare runner serves which queued job, where
// the other queued jobs go, and why the rest wait. It reads no store and
// calls nothing out: a placement pass (dispatch) gives it one snapshot of
// the store and applies what it decides in the pass's own transaction.
type placer struct {
	limits      scheduler.Limits
	scope       string // runners' scope: "repo" or "org"
	diskPerVCPU int    // MiB; 0: disk is not counted
	egress      *egress.Policies
	newName     func() string
	groupFor    func(org, repo string) string // the runner group a runner for repo's jobs joins

	mu      sync.Mutex
	waiting map[int64]string // guarded by mu: why each queued job waits, from the last pass
}

func newPlacer(cfg Config, newName func() string) *placer {
	return &placer{limits: cfg.Limits, scope: cfg.Runner.Scope, diskPerVCPU: cfg.Runner.DiskPerVCPU,
		egress: cfg.Egress, newName: newName, groupFor: cfg.Runner.GroupFor, waiting: map[int64]string{}}
}

// spareMatch is a spare runner given to a queued job.
type spareMatch struct {
	runner store.Runner
	job    store.Job
}

// matchSpares gives each spare runner (live, bound to no job, not busy,
// and not passed over by skip) the oldest queued job of its label set that
// GitHub would give it. It returns those pairs, the jobs still queued, and
// the spare runners that no queued job needs.
func (p *placer) matchSpares(queued []store.Job, live []store.Runner, skip func(store.Runner) bool) (pairs []spareMatch, rest []store.Job, unneeded []store.Runner) {
	taken := map[int64]bool{}
	for _, r := range live {
		if r.JobID != 0 || r.State == store.RunnerBusy || r.Idle() || skip(r) {
			continue // bound, busy, a warm pool's (claimed by placement), or passed over
		}
		var pick *store.Job
		for i := range queued {
			j := &queued[i]
			if taken[j.ID] || j.LabelKey != r.LabelKey || !p.serves(r, *j) {
				continue
			}
			if pick == nil || j.QueuedAt.Before(pick.QueuedAt) {
				pick = j
			}
		}
		if pick == nil {
			unneeded = append(unneeded, r)
			continue
		}
		taken[pick.ID] = true
		pairs = append(pairs, spareMatch{runner: r, job: *pick})
	}
	for _, j := range queued {
		if !taken[j.ID] {
			rest = append(rest, j)
		}
	}
	return pairs, rest, unneeded
}

// serves reports whether GitHub would give job j to runner r: same
// repository for a repository runner; for an organisation one, same owner
// and installation, and the runner group j's runners join. (Whether that
// group allows j's repository is known only to GitHub: a runner it does
// not give j stays idle, and j is found unmatched at the idle timeout.)
func (p *placer) serves(r store.Runner, j store.Job) bool {
	if r.Repo != "" {
		return strings.EqualFold(r.Repo, j.Repo)
	}
	return strings.EqualFold(r.Org, j.Org) && r.Installation == j.Installation &&
		strings.EqualFold(r.Group, p.groupFor(j.Org, j.Repo))
}

// plan places queued jobs on the hosts that are online and connected,
// counting what the live runners hold, and remembers why the jobs it does
// not place wait.
// Warm VMs may be claimed by the queued jobs whose pool key (warmKeys)
// is theirs.
func (p *placer) plan(hosts []store.Host, connected map[string]bool, live []store.Runner, queued []store.Job,
	warm []scheduler.Warm, warmKeys map[int64]string) scheduler.Plan {
	in := p.input(hosts, connected, live, queued)
	if len(warm) > 0 {
		in.Warm = warm
		for i := range in.Queue {
			in.Queue[i].Warm = warmKeys[in.Queue[i].ID]
		}
	}
	plan := scheduler.Schedule(in)
	// Why a job waits changes with every pass; it is shown by the API but
	// not written to the store, which would cost a write per queued job
	// per pass.
	waiting := make(map[int64]string, len(plan.Waiting))
	for _, d := range plan.Waiting {
		waiting[d.JobID] = d.Reason
	}
	p.mu.Lock()
	p.waiting = waiting
	p.mu.Unlock()
	return plan
}

// whyWaiting is why a queued job was not placed by the last pass.
func (p *placer) whyWaiting(jobID int64) (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	why, ok := p.waiting[jobID]
	return why, ok
}

func (p *placer) input(hosts []store.Host, connected map[string]bool, live []store.Runner, queued []store.Job) scheduler.Input {
	in := scheduler.Input{
		Hosts:    make([]scheduler.Host, 0, len(hosts)),
		OrgUsage: map[string]scheduler.Usage{}, RepoUsage: map[string]scheduler.Usage{},
		Limits: p.limits,
	}
	// Indexes, not pointers: a pointer into in.Hosts taken before a later
	// append may point into the array append left behind, and the host it
	// stands for would be seen empty, and filled past its capacity.
	at := make(map[string]int, len(hosts))
	for _, h := range hosts {
		sh := scheduler.Host{ID: h.ID, VCPUs: h.VCPUs, MemoryMiB: h.MemoryMiB,
			Schedulable: h.State == store.HostOnline && connected[h.ID]}
		if p.diskPerVCPU > 0 {
			sh.DiskMiB = h.DiskMiB
		}
		for _, a := range h.Arches {
			sh.Arches = append(sh.Arches, scheduler.ArchSupport{Arch: a.Arch, Emulated: a.Emulated})
		}
		at[h.ID] = len(in.Hosts)
		in.Hosts = append(in.Hosts, sh)
	}
	for _, r := range live {
		if i, ok := at[r.HostID]; ok {
			h := &in.Hosts[i]
			h.UsedVCPUs += r.VCPUs
			h.UsedMemoryMiB += r.MemoryMiB
			h.UsedDiskMiB += p.diskFor(r.VCPUs)
		}
		if r.Idle() {
			continue // a warm pool's VM counts against no organisation until claimed
		}
		ou := in.OrgUsage[r.Org]
		ou.VMs++
		ou.VCPUs += r.VCPUs
		in.OrgUsage[r.Org] = ou
		if r.Repo != "" {
			ru := in.RepoUsage[r.Repo]
			ru.VMs++
			ru.VCPUs += r.VCPUs
			in.RepoUsage[r.Repo] = ru
		}
	}
	for _, j := range queued {
		in.Queue = append(in.Queue, scheduler.Job{ID: j.ID, Org: j.Org, Repo: j.Repo,
			Arch: j.Arch, VCPUs: j.VCPUs, MemoryMiB: j.MemoryMiB, DiskMiB: p.diskFor(j.VCPUs),
			Queued: j.QueuedAt, AvoidHosts: j.AvoidHosts})
	}
	return in
}

// diskFor is what a VM of vcpus may write to its disk (runner.disk_per_vcpu,
// at least one vCPU's worth); 0 when not configured.
func (p *placer) diskFor(vcpus float64) int {
	if p.diskPerVCPU <= 0 {
		return 0
	}
	return int(math.Ceil(math.Max(vcpus, 1) * float64(p.diskPerVCPU)))
}

// newRunner is the runner a placement launches for job j.
func (p *placer) newRunner(j store.Job, pl scheduler.Placement, now time.Time) store.Runner {
	r := store.Runner{
		Name: p.newName(), HostID: pl.HostID, Arch: pl.Arch, Emulated: pl.Emulated,
		VCPUs: j.VCPUs, MemoryMiB: j.MemoryMiB, State: store.RunnerAssigned,
		CreatedAt: now, UpdatedAt: now,
	}
	p.bind(&r, j)
	r.Egress = p.policyFor(j)
	return r
}

// bind makes r job j's runner: bound to it, registered where GitHub will
// give it j (its repository, or its organisation and runner group), with
// its labels. The VM's egress policy is set apart (policyFor): a warm VM
// that a job claims keeps the one it booted under, which is the job's.
func (p *placer) bind(r *store.Runner, j store.Job) {
	r.JobID, r.Installation, r.Org, r.Labels, r.LabelKey = j.ID, j.Installation, j.Org, j.Labels, j.LabelKey
	r.Repo, r.Group = "", ""
	if p.scope == "repo" {
		r.Repo = j.Repo
	} else {
		r.Group = p.groupFor(j.Org, j.Repo)
	}
}

// policyFor is the egress policy of j's VM: its repository's, for a
// repository runner; an organisation runner may take any of the org's
// jobs, so its org's. A public repository's job (a stranger's pull
// request, maybe) gets its org's, never a looser one its repository was
// given.
func (p *placer) policyFor(j store.Job) egress.Policy {
	if p.scope == "repo" && !j.Public {
		return p.egress.For(j.Org, j.Repo)
	}
	return p.egress.For(j.Org, "")
}
