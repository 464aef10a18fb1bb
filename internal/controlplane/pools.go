package controlplane

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/egress"
	"github.com/tandem-ci/tandem/internal/failure"
	"github.com/tandem-ci/tandem/internal/labels"
	"github.com/tandem-ci/tandem/internal/lifecycle"
	"github.com/tandem-ci/tandem/internal/pool"
	"github.com/tandem-ci/tandem/internal/scheduler"
	"github.com/tandem-ci/tandem/internal/store"
)

// Warm pools. A pool's VMs are runners booted ahead of any job: a runner
// record with Pool set and no job, org or installation, launched with no
// runner config and told to wait for one up to the pool's max_age. The
// placement pass (dispatch) hands them to queued jobs: the scheduler gives
// a job whose Tandem label is the pool's (and whose egress policy is the
// one pool VMs run under) a warm VM in its fair-share turn, and the claim
// binds the runner to the job and its scope in the same transaction;
// after the commit the runner's JIT config is fetched and handed to the
// waiting VM, which starts the runner at once. A pool VM is never reused:
// one job, then it is destroyed, as every VM.
//
// The same pass, in the same transaction, tends the pools: it recycles
// idle VMs past max_age, of an image no longer named, or on a host being
// drained or cordoned; stops those over max_idle (or all of them outside the
// pool's schedule); and boots new ones up to the pool's target, natively
// only, on the room the queued jobs leave (a pool never boots a VM while a
// job of its architecture waits for room). Pool VMs count against their
// hosts' capacity but against no organisation's quota until claimed.

// PoolSpec is one warm pool.
type PoolSpec struct {
	Label  string // its Tandem label, as configured
	Sizing pool.Sizing
	MaxAge time.Duration
}

// demandWindow is how far back demand mode counts a pool's arrivals.
const demandWindow = 10 * time.Minute

// defaultLead is how long a new VM is assumed to take to become ready
// until a pool has measured its own.
const defaultLead = 30 * time.Second

// warmPool is a configured pool, resolved.
type warmPool struct {
	key  string // its label's canonical form: jobs of the same key may claim its VMs
	spec PoolSpec
	req  labels.Request
}

// pools is the warm pools and what the leader remembers of them between
// passes: arrivals (demand mode), boot times, and the last pass's view for
// the API.
type pools struct {
	list   []*warmPool
	byKey  map[string]*warmPool
	policy egress.Policy // pool VMs run under the default egress policy

	mu       sync.Mutex
	keyOf    map[int64]string               // queued job → its pool key ("" none), from the last pass
	arrivals map[string]map[int64]time.Time // pool key → job → queued at, within demandWindow
	leads    map[string][]time.Duration     // pool key → recent created-to-ready times
	failed   map[string]int                 // pool key → VMs in a row that ended before they were ready
	retryAt  map[string]time.Time           // pool key → no new VM before then (after failures)
}

// Backoff of a pool whose VMs fail before they are ready (a broken image,
// a host that cannot boot them): the first failure waits poolBackoff, each
// next one twice as long, up to poolBackoffMax.
const (
	poolBackoff    = 5 * time.Second
	poolBackoffMax = 5 * time.Minute
)

func newPools(cfg Config) (*pools, error) {
	p := &pools{byKey: map[string]*warmPool{}, keyOf: map[int64]string{},
		arrivals: map[string]map[int64]time.Time{}, leads: map[string][]time.Duration{},
		failed: map[string]int{}, retryAt: map[string]time.Time{},
		policy: cfg.Egress.For("", "")}
	for _, spec := range cfg.Pools {
		req, ok, err := cfg.Labels.Parse([]string{spec.Label})
		if err != nil || !ok {
			return nil, fmt.Errorf("controlplane: pool %q: not a Tandem label (%v)", spec.Label, err)
		}
		key := req.Canonical()
		if _, dup := p.byKey[key]; dup {
			return nil, fmt.Errorf("controlplane: two pools of %s", key)
		}
		if spec.MaxAge <= 0 {
			spec.MaxAge = 30 * time.Minute
		}
		wp := &warmPool{key: key, spec: spec, req: req}
		p.list = append(p.list, wp)
		p.byKey[key] = wp
	}
	return p, nil
}

// on reports whether any pool is configured.
func (p *pools) on() bool { return len(p.list) > 0 }

// keyFor is the pool key of a queued job: its Tandem label's canonical
// form when a pool has it and the job's VM would run under the pool's
// egress policy; "" otherwise. The answer is remembered per job for the
// next pass (labels and policy do not change while a job is queued).
func (p *pools) keyFor(j store.Job, parser *labels.Parser, policy func(store.Job) egress.Policy) string {
	if k, ok := p.keyOf[j.ID]; ok {
		return k
	}
	key := ""
	if req, ok, err := parser.Parse(j.Labels); err == nil && ok {
		if _, pooled := p.byKey[req.Canonical()]; pooled && reflect.DeepEqual(policy(j), p.policy) {
			key = req.Canonical()
		}
	}
	p.keyOf[j.ID] = key
	return key
}

// observe notes the keys of the jobs queued in this pass (forgetting the
// jobs no longer queued), and forgets arrivals older than the demand
// window.
func (p *pools) observe(queued []store.Job, parser *labels.Parser, policy func(store.Job) egress.Policy, now time.Time) map[int64]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	keys := make(map[int64]string, len(queued))
	for _, j := range queued {
		keys[j.ID] = p.keyFor(j, parser, policy)
	}
	for id := range p.keyOf {
		if _, ok := keys[id]; !ok {
			delete(p.keyOf, id)
		}
	}
	for _, a := range p.arrivals {
		for id, at := range a {
			if now.Sub(at) > demandWindow {
				delete(a, id)
			}
		}
	}
	return keys
}

// arrive notes a job Tandem has just learnt of, for demand mode: every job
// of a pool's label counts, however it is then served (a spare runner, a
// warm VM, a new one, or a runner that took it before it was seen queued).
func (p *pools) arrive(j store.Job, parser *labels.Parser, policy func(store.Job) egress.Policy) {
	p.mu.Lock()
	defer p.mu.Unlock()
	k := p.keyFor(j, parser, policy)
	if k == "" {
		return
	}
	a := p.arrivals[k]
	if a == nil {
		a = map[int64]time.Time{}
		p.arrivals[k] = a
	}
	a[j.ID] = j.QueuedAt
}

// ready notes how long one of a pool's VMs took from placement to ready.
func (p *pools) ready(key string, d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.failed, key)
	delete(p.retryAt, key)
	l := append(p.leads[key], d)
	if len(l) > 16 {
		l = l[len(l)-16:]
	}
	p.leads[key] = l
}

// ended notes the end of a pool VM no job had claimed: one that failed
// before it was ready holds the pool's next boots back, longer at each
// failure in a row, so that a broken image is not booted in a loop.
func (p *pools) ended(r store.Runner, e agentapi.Event, now time.Time, log *slog.Logger) {
	if !r.ReadyAt.IsZero() || e.Failure == "" || e.Failure == failure.Cancelled {
		return
	}
	p.mu.Lock()
	n := p.failed[r.Pool] + 1
	p.failed[r.Pool] = n
	wait := poolBackoffMax
	if n <= 7 {
		wait = min(poolBackoff<<(n-1), poolBackoffMax)
	}
	p.retryAt[r.Pool] = now.Add(wait)
	p.mu.Unlock()
	log.Warn("a pool VM failed before it was ready; the pool waits before it boots another",
		"pool", r.Pool, "runner", r.Name, "host", r.HostID, "failure", e.Failure, "detail", firstLine(e.Detail),
		"failures_in_a_row", n, "wait", wait)
}

// holdsBack reports whether a pool boots nothing now, after failures.
func (p *pools) holdsBack(key string, now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return now.Before(p.retryAt[key])
}

// lead is the median of a pool's recent created-to-ready times, or
// defaultLead before it has measured any.
func (p *pools) lead(key string) time.Duration {
	if d, ok := p.measuredLead(key); ok {
		return d
	}
	return defaultLead
}

// measuredLead is the median of a pool's recent created-to-ready times,
// and whether it has any.
func (p *pools) measuredLead(key string) (time.Duration, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := slices.Clone(p.leads[key])
	if len(l) == 0 {
		return 0, false
	}
	slices.Sort(l)
	return l[len(l)/2], true
}

// target is how many idle VMs wp should hold at now.
func (p *pools) target(wp *warmPool, now time.Time) int {
	p.mu.Lock()
	n := len(p.arrivals[wp.key])
	p.mu.Unlock()
	return wp.spec.Sizing.Target(now, n, demandWindow, p.lead(wp.key))
}

// arrived is how many of wp's jobs this replica saw queued in the demand
// window (only the leader sees them).
func (p *pools) arrived(wp *warmPool) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.arrivals[wp.key])
}

// warmVMs lists the live pool runners that a job may claim: booting or
// ready, bound to no job, not being stopped; oldest first, so that the
// VMs nearest their max_age are used first.
func warmVMs(live []store.Runner, skip func(store.Runner) bool) []scheduler.Warm {
	var idle []store.Runner
	for _, r := range live {
		if r.Idle() && r.State == store.RunnerBooting && !skip(r) {
			idle = append(idle, r)
		}
	}
	sort.SliceStable(idle, func(a, b int) bool { return idle[a].CreatedAt.Before(idle[b].CreatedAt) })
	out := make([]scheduler.Warm, len(idle))
	for i, r := range idle {
		out[i] = scheduler.Warm{ID: r.Name, HostID: r.HostID, Key: r.Pool, Arch: r.Arch, Emulated: r.Emulated, Ready: !r.ReadyAt.IsZero()}
	}
	return out
}

// claim binds warm runner r to queued job j: the runner takes the job's
// scope (its installation, org, repository or group, labels), and the job
// moves as a placed one, whose launch only configures the VM.
func (s *Server) claim(tx store.Tx, fx *afterCommit, r store.Runner, j store.Job, now time.Time) error {
	nr := s.place.newRunner(j, scheduler.Placement{HostID: r.HostID, Arch: r.Arch, Emulated: r.Emulated}, now)
	r.JobID, r.Installation, r.Org, r.Repo, r.Group = j.ID, nr.Installation, nr.Org, nr.Repo, nr.Group
	r.Labels, r.LabelKey, r.ClaimedAt, r.UpdatedAt = j.Labels, j.LabelKey, now, now
	if err := tx.PutRunner(r); err != nil {
		return err
	}
	j.RunnerName, j.HostID = r.Name, r.HostID
	if _, err := s.move(fx, &j, jobStep{ev: lifecycle.Placed, run: r, claim: true}, now); err != nil {
		return err
	}
	j.Reason = fmt.Sprintf("claimed warm VM %s on %s (attempt %d)", r.Name, r.HostID, j.Attempts)
	if r.Emulated {
		j.Reason += ", emulated " + string(r.Arch)
	}
	if err := tx.UpdateJob(j, store.Event{Source: "scheduler", Reason: j.Reason}); err != nil {
		return err
	}
	waited := time.Duration(0)
	if !r.ReadyAt.IsZero() {
		waited = now.Sub(r.ReadyAt)
	}
	fx.do(func() { s.metrics.poolClaimed(r.Pool, true, waited) })
	return s.count(tx, "pools/"+r.Pool+"/hits", 1)
}

// poolStop is a pool VM to stop after the pass commits, and why.
type poolStop struct {
	runner store.Runner
	reason string
	cause  string // metric label: max-age, image, host, excess, schedule
}

// tendPools recycles and refills the pools, in the placement pass's
// transaction: live is every live runner as the pass began, placed the
// runners it launched, claimed the warm runners it handed to jobs, and
// waiting the jobs it left queued. It returns the pool VMs to stop.
func (s *Server) tendPools(tx store.Tx, fx *afterCommit, hosts []store.Host, connected map[string]bool,
	live, placed []store.Runner, claimed map[string]bool, waiting []store.Job, now time.Time) ([]poolStop, error) {
	// A host the operator drains or cordons is to empty: its idle pool
	// VMs go. One that is merely disconnected (its agent restarting) keeps
	// them; no job claims them meanwhile, and if the host is lost they end
	// with it.
	closing := map[string]bool{}
	for _, h := range hosts {
		closing[h.ID] = h.State == store.HostDraining || h.State == store.HostCordoned
	}
	idle := map[string][]store.Runner{}
	for _, r := range live {
		if r.Idle() && !claimed[r.Name] && !s.marks.isStopping(r.Name) {
			idle[r.Pool] = append(idle[r.Pool], r)
		}
	}
	var stops []poolStop
	var queue []scheduler.Job
	want := map[int64]*warmPool{}
	s.imgMu.RLock()
	defer s.imgMu.RUnlock()
	for _, wp := range s.pools.list {
		var keep []store.Runner
		for _, r := range idle[wp.key] {
			switch {
			case now.Sub(r.CreatedAt) >= wp.spec.MaxAge:
				stops = append(stops, poolStop{r, fmt.Sprintf("pool VM took no job within its max_age of %s", wp.spec.MaxAge), "max-age"})
			case r.Image != s.imageFor(r):
				stops = append(stops, poolStop{r, "pool VM of a replaced image", "image"})
			case closing[r.HostID]:
				stops = append(stops, poolStop{r, "pool VM on a host being drained or cordoned", "host"})
			default:
				keep = append(keep, r)
			}
		}
		target := s.pools.target(wp, now)
		limit, cause := wp.spec.Sizing.MaxIdle, "excess"
		if !wp.spec.Sizing.Schedule.Active(now) {
			limit, cause = 0, "schedule"
		}
		if over := len(keep) - limit; over > 0 {
			// Stop the ones still booting first, then the oldest.
			slices.SortStableFunc(keep, func(a, b store.Runner) int {
				if c := cmp.Compare(b2i(!a.ReadyAt.IsZero()), b2i(!b.ReadyAt.IsZero())); c != 0 {
					return c
				}
				return a.CreatedAt.Compare(b.CreatedAt)
			})
			for _, r := range keep[:over] {
				stops = append(stops, poolStop{r, fmt.Sprintf("pool holds more idle VMs than it may (%d)", limit), cause})
			}
			keep = keep[over:]
		}
		fx.do(func() { s.metrics.poolIdle(wp.key, keep, target) })
		if starved(wp, waiting) || s.pools.holdsBack(wp.key, now) {
			continue // the room is a queued job's, or the pool's VMs keep failing
		}
		// A claimed VM's replacement boots at once. (Booting it only once
		// the claimed runner had started was measured slower under TCG:
		// the boot then competed with the runner's first request.)
		for range target - len(keep) {
			id := -int64(len(queue) + 1)
			want[id] = wp
			queue = append(queue, scheduler.Job{ID: id, Org: "pool", Repo: "pool/" + wp.key, Arch: wp.req.Arch,
				VCPUs: wp.req.VCPUs, MemoryMiB: wp.req.MemoryMiB, DiskMiB: s.place.diskFor(wp.req.VCPUs), Queued: now})
		}
	}
	if len(queue) == 0 {
		return stops, nil
	}
	in := s.place.input(hosts, connected, append(slices.Clone(live), placed...), nil)
	in.Queue, in.Limits = queue, scheduler.Limits{}
	plan := scheduler.Schedule(in)
	booted := 0
	for _, pl := range plan.Placements {
		if pl.Emulated {
			// A warm VM is for speed: one emulated would make a job of its
			// arch run 10-20x slower than a native VM booted for it.
			continue
		}
		booted++
		wp := want[pl.JobID]
		r := store.Runner{Name: s.place.newName(), HostID: pl.HostID, Labels: []string{wp.key},
			LabelKey: store.LabelKey([]string{wp.key}), Arch: pl.Arch, Emulated: pl.Emulated,
			VCPUs: wp.req.VCPUs, MemoryMiB: wp.req.MemoryMiB, State: store.RunnerAssigned,
			Pool: wp.key, Egress: s.pools.policy, CreatedAt: now, UpdatedAt: now}
		r.Image = s.imageFor(r)
		if err := tx.PutRunner(r); err != nil {
			return nil, err
		}
		fx.launches = append(fx.launches, launch{runner: r})
	}
	if booted > 0 {
		if err := s.count(tx, "pools/vms-booted", int64(booted)); err != nil {
			return nil, err
		}
	}
	return stops, nil
}

// starved reports whether a job that a VM of wp's architecture could run
// waits for room: the pool then boots nothing.
func starved(wp *warmPool, waiting []store.Job) bool {
	for _, j := range waiting {
		if j.Arch.Matches(wp.req.Arch) || wp.req.Arch.Matches(j.Arch) {
			return true
		}
	}
	return false
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// PoolView is a warm pool as the API shows it.
type PoolView struct {
	Label    string   `json:"label"` // canonical: the VM's arch and size
	MinIdle  int      `json:"min_idle"`
	MaxIdle  int      `json:"max_idle"`
	MaxAge   string   `json:"max_age"`
	Schedule string   `json:"schedule"` // "always" when none
	Demand   bool     `json:"demand"`
	Active   bool     `json:"active"` // inside its schedule now
	Target   int      `json:"target"` // idle VMs it aims to hold now
	Ready    int      `json:"ready"`  // idle VMs whose guest is ready
	Booting  int      `json:"booting"`
	Claimed  int      `json:"claimed"` // VMs claimed by jobs, still running them
	Hits     int64    `json:"hits"`    // jobs placed on a warm VM, all time
	Misses   int64    `json:"misses"`  // jobs of its label placed on a new VM
	Arrivals int      `json:"arrivals_10m"`
	BootP50  float64  `json:"boot_p50_seconds"` // placed to ready, recent VMs (0: none yet)
	VMs      []PoolVM `json:"vms"`
}

// PoolVM is one of a pool's idle VMs.
type PoolVM struct {
	Runner    string     `json:"runner"`
	Host      string     `json:"host"`
	State     string     `json:"state"` // assigned, booting, ready
	CreatedAt time.Time  `json:"created_at"`
	ReadyAt   *time.Time `json:"ready_at,omitempty"`
	ExpiresAt time.Time  `json:"expires_at"` // recycled then, unless claimed
}

// poolViews is every pool as the API shows it.
func (s *Server) poolViews(ctx context.Context) ([]PoolView, error) {
	var live []store.Runner
	var counters map[string]int64
	if err := s.st.View(ctx, func(tx store.ReadTx) error {
		var err error
		if live, err = tx.Runners(store.RunnerFilter{Live: true}); err != nil {
			return err
		}
		counters, err = tx.Counters()
		return err
	}); err != nil {
		return nil, err
	}
	now := s.now()
	out := make([]PoolView, 0, len(s.pools.list))
	for _, wp := range s.pools.list {
		z := wp.spec.Sizing
		v := PoolView{Label: wp.key, MinIdle: z.MinIdle, MaxIdle: z.MaxIdle, MaxAge: wp.spec.MaxAge.String(),
			Schedule: z.Schedule.String(), Demand: z.Demand, Active: z.Schedule.Active(now),
			Target: s.pools.target(wp, now), Hits: counters["pools/"+wp.key+"/hits"],
			Misses: counters["pools/"+wp.key+"/misses"], Arrivals: s.pools.arrived(wp), VMs: []PoolVM{}}
		if d, ok := s.pools.measuredLead(wp.key); ok {
			v.BootP50 = d.Seconds()
		}
		for _, r := range live {
			if r.Pool != wp.key {
				continue
			}
			if !r.Idle() {
				v.Claimed++
				continue
			}
			vm := PoolVM{Runner: r.Name, Host: r.HostID, State: string(r.State), CreatedAt: r.CreatedAt,
				ReadyAt: optTime(r.ReadyAt), ExpiresAt: r.CreatedAt.Add(wp.spec.MaxAge)}
			if !r.ReadyAt.IsZero() {
				vm.State = "ready"
				v.Ready++
			} else {
				v.Booting++
			}
			v.VMs = append(v.VMs, vm)
		}
		out = append(out, v)
	}
	return out, nil
}
