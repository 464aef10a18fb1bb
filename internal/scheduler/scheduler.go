// Package scheduler decides where queued jobs run. It is pure placement logic:
// Schedule takes a snapshot of hosts, queued jobs, current usage and limits,
// and returns a Plan. It does no I/O, starts no goroutines and reads no clock,
// so the same Input always yields the same Plan. The control plane calls it
// whenever something changes (a job queued, a VM ended, a host joined) and
// acts on the result.
//
// # Matching
//
// A job fits a host when the host is Schedulable, supports an architecture
// the job accepts (arch.Any accepts amd64 and arm64), and has the job's
// vCPUs and memory free, and its disk when both count disk (a job's
// DiskMiB is what its VM may write; a host's DiskMiB what its VMs may
// write in all; zero on either side: not counted). vCPUs are accounted in whole quarter-vCPU units,
// so float sums never drift: requests and usage round up to the next quarter,
// host totals round down. A host that lists an architecture both natively and
// under emulation counts as native for it.
//
// # Choosing a host
//
// Among fitting hosts the scheduler prefers, in this order:
//  1. a host not in the job's AvoidHosts, running the job's architecture natively;
//  2. a host not in AvoidHosts, running it under emulation;
//  3. an avoided host, natively; 4. an avoided host, under emulation.
//
// So a job runs emulated on another host rather than natively on a host where
// it already failed to launch, and a one-host fleet still retries. Within a
// tier it picks the best fit: the host left with the fewest free vCPUs, then
// the least free memory, then the lowest host ID, so large hosts stay free for
// large jobs. For arch.Any with the same host natively running both
// architectures, amd64 is chosen.
//
// # Fair share
//
// Jobs are considered one at a time. Each turn takes the org with the fewest
// VMs (OrgUsage.VMs plus VMs placed earlier in this call; ties: the org whose
// oldest pending job is oldest, then org name), within it the repo with the
// fewest VMs by the same rule (RepoUsage, keyed by "owner/name"), and within
// the repo its oldest job (Queued, then ID). A burst of jobs from one org
// therefore cannot starve another org's single job. Within one call capacity
// only shrinks, so every job is considered exactly once.
//
// A job that does not fit now does not block anyone: the next job of its repo
// and of every other repo is still tried. Left at that, a large job could wait
// forever while its own repo's small jobs refill every slot that frees up. To
// prevent that, the first job of a repo that does not fit for lack of room
// reserves one host for the rest of the call: the schedulable host, able to
// hold it in total, that is closest to fitting it (the smallest missing share
// of vCPUs plus memory; native and non-avoided hosts first; then host ID).
// Later jobs of the same repo are not placed on that host, so as that repo's
// VMs there end the host drains towards the large job, which as the repo's
// oldest job is tried first in the next call. The trade-off: that repo's small
// jobs may wait even though the reserved host has room for them now. Other
// repos and orgs are not restricted by the reservation (fairness between
// them already bounds how much they take), so a large job can still be
// delayed by other repos' small jobs; it cannot be starved by its own repo.
//
// # Limits
//
// An org whose VMs or vCPUs (usage plus this call's placements) reach its
// MaxVMs or MaxVCPUs gets no more placements; a job that would take the org
// past MaxVCPUs waits while smaller jobs of the org may still be placed.
// Zero, negative or NaN limit fields mean unlimited; a positive MaxVCPUs is
// rounded down to a quarter vCPU. Jobs held back by a limit are Waiting,
// since limits can change.
//
// # Warm VMs
//
// Input.Warm lists VMs of warm pools: booted ahead of any job, waiting for
// one, their resources already counted in their hosts' usage. When a job
// whose Warm key matches one of them has its turn (fair share and limits
// decide turns as for any job), it takes a warm VM instead of room on a
// host: the placement names the VM (Placement.Warm) and its host, and the
// job counts against its org's and repo's usage from then on, as any
// placement does, while no host's free room changes. Among matching warm
// VMs it prefers, in this order: a VM on a host not in its AvoidHosts, a
// native one, a ready one (booted, rather than still booting), then the
// one listed first. Each warm VM is taken at most once; a warm VM on a host
// that is unknown or not schedulable, or of an architecture the job does
// not accept, is never taken. A job with no warm VM left is placed as any
// other.
//
// # Unschedulable and Waiting
//
// A job is Unschedulable when its request is invalid (vCPUs or memory not
// positive, unknown architecture), when no host supports its architecture, or
// when no single host of a matching architecture, schedulable or not, has the
// requested vCPUs and memory in total. Everything else that is not placed is
// Waiting: no room now, an org limit, or only unschedulable hosts are large
// enough. With no hosts at all every valid job is Waiting ("no hosts"), as a
// fleet still starting cannot tell us what it will hold.
//
// # Bad input
//
// Schedule never panics. If Queue holds a job ID more than once, only the
// first occurrence is considered; later ones appear in no list, so the Plan
// holds at most one decision per job ID. If Hosts holds a host ID more than
// once, only the first occurrence is used. A host with an empty ID or with a
// negative or non-finite capacity or usage is ignored. AvoidHosts entries
// that name no known host are ignored. Usage above a host's total leaves it
// with no free room (never negative room). Negative or NaN org or repo usage
// counts as none.
package scheduler

import (
	"cmp"
	"slices"
	"strings"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
)

// ArchSupport is one architecture a host can run: its native architecture,
// or another one under emulation.
type ArchSupport struct {
	Arch     arch.Arch
	Emulated bool
}

// Host is a snapshot of one host's capacity.
type Host struct {
	ID            string
	Arches        []ArchSupport
	VCPUs         float64 // total allocatable
	MemoryMiB     int     // total allocatable
	DiskMiB       int     // total allocatable to VMs' disks; 0: not counted
	UsedVCPUs     float64 // by VMs already placed (any state)
	UsedMemoryMiB int
	UsedDiskMiB   int
	Schedulable   bool // online and neither draining nor cordoned
}

// Job is a queued job waiting for a VM.
type Job struct {
	ID         int64
	Org        string // owner of Repo
	Repo       string // "owner/name"
	Arch       arch.Arch
	VCPUs      float64
	MemoryMiB  int
	DiskMiB    int       // what its VM may write; 0: not counted
	Queued     time.Time // FIFO order within a repo
	AvoidHosts []string  // hosts where a launch of this job failed
	// Warm is the key of the warm VMs the job may take (Input.Warm); "":
	// none.
	Warm string
}

// Usage is what an org or repo has placed right now.
type Usage struct {
	VMs   int
	VCPUs float64
}

// Limits caps what each org may run at once.
type Limits struct {
	// Org is per org, keyed by name in any case: GitHub's names are not
	// case-sensitive. Orgs not listed get Default.
	Org     map[string]OrgLimit
	Default OrgLimit
}

// OrgLimit caps one org. Zero (or negative) fields are unlimited.
type OrgLimit struct {
	MaxVMs   int
	MaxVCPUs float64
}

// For returns the limit that applies to org.
func (l Limits) For(org string) OrgLimit {
	if ol, ok := l.Org[org]; ok {
		return ol
	}
	for name, ol := range l.Org {
		if strings.EqualFold(name, org) {
			return ol
		}
	}
	return l.Default
}

// Input is everything Schedule looks at.
type Input struct {
	Hosts []Host
	Queue []Job
	// OrgUsage and RepoUsage count what is already running or placed,
	// excluding the jobs in Queue. RepoUsage is keyed by "owner/name".
	// Names are compared without case, as GitHub's are: usage under
	// "Acme" and "acme" is one org's.
	OrgUsage  map[string]Usage
	RepoUsage map[string]Usage
	Limits    Limits
	// Warm lists the warm pools' VMs no job has taken yet, in the order
	// they are preferred when all else is equal.
	Warm []Warm
}

// Warm is a VM of a warm pool waiting for a job. Its vCPUs, memory and disk
// are in its host's Used* already.
type Warm struct {
	ID       string
	HostID   string
	Key      string // jobs whose Warm equals it may take it
	Arch     arch.Arch
	Emulated bool
	Ready    bool // its guest is ready; false: still booting
}

// Placement puts a job on a host, running Arch (never arch.Any), emulated or not.
type Placement struct {
	JobID    int64
	HostID   string
	Arch     arch.Arch
	Emulated bool
	// Warm is the warm VM (Warm.ID) the job takes; "": a new VM on HostID.
	Warm string
}

// Decision says why a job was not placed.
type Decision struct {
	JobID  int64
	Reason string
	// Limited: the job waits for its org's limit, not for room.
	Limited bool
}

// Plan is the outcome of one Schedule call. Each job ID of the Input's Queue
// appears in exactly one of the three lists.
type Plan struct {
	Placements    []Placement // in the order they were decided
	Waiting       []Decision  // could run later (no room now, org at its limit, no schedulable host now)
	Unschedulable []Decision  // no host in Input.Hosts (schedulable or not) could ever hold it
}

// job is a validated queued job.
type job struct {
	src   *Job
	cpu   int64 // quarter vCPUs
	mem   int64 // MiB
	disk  int64 // MiB; 0: not counted
	avoid []int // ords of avoided hosts
	done  bool
}

type orgQ struct {
	name   string
	vms    int
	cpu    int64 // quarter vCPUs in use
	maxVMs int   // 0: unlimited
	maxCPU int64 // quarter vCPUs, rounded down; -1: unlimited
	limit  OrgLimit
	repos  []*repoQ // min-heap by repoBefore
	jobs   []*job   // all jobs of the org, FIFO; for the oldest pending job
	oldest int      // index in jobs of the first job not yet decided
}

type repoQ struct {
	name        string
	vms         int
	jobs        []*job // FIFO
	next        int
	reserved    *host // held for reservedFor; nil if none
	reservedFor int64
}

func (o *orgQ) oldestPending() *job {
	for o.oldest < len(o.jobs) && o.jobs[o.oldest].done {
		o.oldest++
	}
	if o.oldest == len(o.jobs) {
		return nil
	}
	return o.jobs[o.oldest]
}

// fifo orders jobs by Queued, then ID.
func fifo(a, b *job) int {
	if c := a.src.Queued.Compare(b.src.Queued); c != 0 {
		return c
	}
	return cmp.Compare(a.src.ID, b.src.ID)
}

// fairBefore orders two queues by VMs, then the age of their oldest pending
// job, then name.
func fairBefore(vmsA, vmsB int, oldA, oldB *job, nameA, nameB string) bool {
	if vmsA != vmsB {
		return vmsA < vmsB
	}
	if c := fifo(oldA, oldB); c != 0 {
		return c < 0
	}
	return nameA < nameB
}

func orgBefore(a, b *orgQ) bool {
	return fairBefore(a.vms, b.vms, a.oldestPending(), b.oldestPending(), a.name, b.name)
}

func repoBefore(a, b *repoQ) bool {
	return fairBefore(a.vms, b.vms, a.jobs[a.next], b.jobs[b.next], a.name, b.name)
}

// Schedule decides, for every job in in.Queue, whether it is placed now and
// where, or why not. See the package documentation for the rules.
func Schedule(in Input) Plan {
	s := newState(in)
	var plan Plan
	jobs := s.admit(in.Queue, &plan)
	if len(jobs) == 0 {
		return plan
	}
	orgs := groupByOrg(jobs, in)
	s.run(orgs, &plan)
	return plan
}

// admit validates the queue and decides the jobs that need no placement
// attempt: invalid, unschedulable, or waiting for any host at all. It returns
// the rest in FIFO order.
func (s *state) admit(queue []Job, plan *Plan) []*job {
	seen := make(map[int64]struct{}, len(queue))
	jobs := make([]*job, 0, len(queue))
	for i := range queue {
		j := &queue[i]
		if _, dup := seen[j.ID]; dup {
			continue
		}
		seen[j.ID] = struct{}{}
		jobs = append(jobs, &job{src: j})
	}
	slices.SortStableFunc(jobs, fifo)

	kept := jobs[:0]
	for _, j := range jobs {
		if reason, ok := validate(j); !ok {
			plan.Unschedulable = append(plan.Unschedulable, Decision{JobID: j.src.ID, Reason: reason})
			continue
		}
		if len(s.hosts) == 0 {
			plan.Waiting = append(plan.Waiting, Decision{JobID: j.src.ID, Reason: s.noHostsReason()})
			continue
		}
		if reason, ok := s.everFits(j); !ok {
			plan.Unschedulable = append(plan.Unschedulable, Decision{JobID: j.src.ID, Reason: reason})
			continue
		}
		if reason, ok := s.fitsSchedulable(j); !ok {
			plan.Waiting = append(plan.Waiting, Decision{JobID: j.src.ID, Reason: reason})
			continue
		}
		j.avoid = s.resolveAvoid(j.src.AvoidHosts)
		kept = append(kept, j)
	}
	return kept
}

// foldUsage is u keyed by lower-case name, the usage of names that differ
// only in case added up.
func foldUsage(u map[string]Usage) map[string]Usage {
	out := make(map[string]Usage, len(u))
	for name, v := range u {
		k := strings.ToLower(name)
		f := out[k]
		f.VMs += v.VMs
		f.VCPUs += v.VCPUs
		out[k] = f
	}
	return out
}

func groupByOrg(jobs []*job, in Input) []*orgQ {
	orgUsage, repoUsage := foldUsage(in.OrgUsage), foldUsage(in.RepoUsage)
	orgByName := make(map[string]*orgQ)
	type repoKey struct{ org, repo string }
	repoByKey := make(map[repoKey]*repoQ)
	var orgs []*orgQ
	type repoOf struct {
		org  *orgQ
		repo *repoQ
	}
	var repos []repoOf
	for _, j := range jobs { // FIFO, so every per-org and per-repo list is too
		orgKey := strings.ToLower(j.src.Org)
		o := orgByName[orgKey]
		if o == nil {
			u := orgUsage[orgKey]
			lim := in.Limits.For(j.src.Org)
			o = &orgQ{
				name:   j.src.Org,
				vms:    max(u.VMs, 0),
				cpu:    quartersCeil(u.VCPUs),
				maxVMs: max(lim.MaxVMs, 0),
				maxCPU: -1,
			}
			if lim.MaxVCPUs > 0 {
				o.maxCPU = quartersFloor(lim.MaxVCPUs)
			}
			orgByName[orgKey] = o
			orgs = append(orgs, o)
		}
		o.jobs = append(o.jobs, j)
		k := repoKey{orgKey, strings.ToLower(j.src.Repo)}
		r := repoByKey[k]
		if r == nil {
			r = &repoQ{name: j.src.Repo, vms: max(repoUsage[k.repo].VMs, 0)}
			repoByKey[k] = r
			repos = append(repos, repoOf{o, r})
		}
		r.jobs = append(r.jobs, j)
	}
	for _, x := range repos {
		heapPush(&x.org.repos, x.repo, repoBefore)
	}
	return orgs
}

// run is the fair-share loop: one job per turn, each decided exactly once.
func (s *state) run(orgList []*orgQ, plan *Plan) {
	var orgs []*orgQ
	for _, o := range orgList {
		heapPush(&orgs, o, orgBefore)
	}
	for len(orgs) > 0 {
		o := orgs[0]
		if reason, full := o.atLimit(); full {
			for _, j := range o.jobs {
				if !j.done {
					j.done = true
					plan.Waiting = append(plan.Waiting, Decision{JobID: j.src.ID, Reason: reason, Limited: true})
				}
			}
			heapPop(&orgs, orgBefore)
			continue
		}
		r := o.repos[0]
		j := r.jobs[r.next]
		r.next++
		j.done = true

		if reason, ok := o.admits(j); !ok {
			plan.Waiting = append(plan.Waiting, Decision{JobID: j.src.ID, Reason: reason, Limited: true})
		} else if p, ok := s.takeWarm(j); ok {
			plan.Placements = append(plan.Placements, p)
			o.vms++
			o.cpu += j.cpu
			r.vms++
		} else if p, reason, ok := s.place(j, r); ok {
			plan.Placements = append(plan.Placements, p)
			o.vms++
			o.cpu += j.cpu
			r.vms++
		} else {
			plan.Waiting = append(plan.Waiting, Decision{JobID: j.src.ID, Reason: reason})
		}

		if r.next == len(r.jobs) {
			heapPop(&o.repos, repoBefore)
		} else {
			heapFixTop(o.repos, repoBefore)
		}
		if len(o.repos) == 0 {
			heapPop(&orgs, orgBefore)
		} else {
			heapFixTop(orgs, orgBefore)
		}
	}
}

// atLimit reports whether the org can take no more VMs at all.
func (o *orgQ) atLimit() (string, bool) {
	if o.maxVMs > 0 && o.vms >= o.maxVMs {
		return "org " + o.name + " at its limit of " + plural(int64(o.maxVMs), "VM"), true
	}
	if o.maxCPU >= 0 && o.cpu >= o.maxCPU {
		return "org " + o.name + " at its limit of " + fmtCPU(o.maxCPU), true
	}
	return "", false
}

// admits reports whether placing j keeps the org within its vCPU limit.
func (o *orgQ) admits(j *job) (string, bool) {
	if o.maxCPU < 0 || o.cpu+j.cpu <= o.maxCPU {
		return "", true
	}
	if j.cpu > o.maxCPU {
		return "needs " + fmtCPU(j.cpu) + ", more than org " + o.name + "'s limit of " + fmtCPU(o.maxCPU), false
	}
	return "org " + o.name + " would exceed its limit of " + fmtCPU(o.maxCPU) +
		" (" + fmtQuarters(o.cpu) + " in use, needs " + fmtQuarters(j.cpu) + ")", false
}
