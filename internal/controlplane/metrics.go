package controlplane

import (
	"cmp"
	"context"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/store"
)

// metrics are the control plane's Prometheus metrics, on a registry of its
// own (several Servers may live in one test process).
type metrics struct {
	reg        *prometheus.Registry
	webhooks   *prometheus.CounterVec
	webhookDur prometheus.Histogram
	appliedCnt *prometheus.CounterVec
	placeDur   prometheus.Histogram
	launched   prometheus.Counter
	started    prometheus.Histogram
	recActions *prometheus.CounterVec
	recErrors  *prometheus.CounterVec
	jobRun     *prometheus.HistogramVec
	jobQueue   *prometheus.HistogramVec
	vmBoot     *prometheus.HistogramVec
	samples    prometheus.Counter
	leader     prometheus.Gauge
	leaderEp   prometheus.Gauge
	leaderChg  *prometheus.CounterVec
	poolVMs    *prometheus.GaugeVec
	poolTarget *prometheus.GaugeVec
	poolClaims *prometheus.CounterVec
	poolRecyc  *prometheus.CounterVec
	poolWait   *prometheus.HistogramVec
	poolBoot   *prometheus.HistogramVec
	retries    *prometheus.CounterVec
}

// Label values are bounded: never a job id, a runner's name or a
// repository. Hosts are a fleet an operator keeps, so a host id is one;
// label sets are capped (maxLabelSets).

func newMetrics(s *Server) *metrics {
	counters := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	}
	histogram := func(name, help string, buckets []float64) prometheus.Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets})
	}
	histograms := func(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, labels)
	}
	fast := prometheus.ExponentialBuckets(0.0005, 2, 14) // 0.5 ms to 4 s
	m := &metrics{
		reg:        prometheus.NewRegistry(),
		webhooks:   counters("tandem_webhooks_total", "Webhook requests by result.", "result"),
		webhookDur: histogram("tandem_webhook_duration_seconds", "Time to answer a webhook request.", fast),
		appliedCnt: counters("tandem_deliveries_applied_total", "Stored deliveries applied to the job state machine, by outcome.", "outcome"),
		placeDur:   histogram("tandem_placement_pass_seconds", "Duration of one placement pass.", fast),
		launched: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tandem_runners_launched_total", Help: "Runner VMs placed and launched.",
		}),
		started: histogram("tandem_queue_to_runner_started_seconds",
			"From GitHub creating a job (Tandem learning of it, if GitHub's time is missing) to its runner process starting in a VM.",
			prometheus.ExponentialBuckets(0.1, 1.6, 16)),
		recActions: counters("tandem_reconciler_actions_total", "Actions taken by reconcilers.", "reconciler", "action"),
		recErrors:  counters("tandem_reconciler_errors_total", "Reconciler passes that failed.", "reconciler"),
		jobRun: histograms("tandem_job_run_seconds",
			"Run time of jobs that ran (GitHub's started_at to completed_at where known, else Tandem's), observed when a job ends; "+
				"arch is the one it asked for (amd64, arm64, any), result GitHub's conclusion or Tandem's end state (see jobResult).",
			prometheus.ExponentialBuckets(1, 2, 16), "arch", "result"), // 1 s to 9 h
		jobQueue: histograms("tandem_job_queue_seconds",
			"Queue time (GitHub's created_at, else Tandem learning of the job, to its start, or to its end if it never started), "+
				"observed when a job ends; labels as tandem_job_run_seconds.",
			prometheus.ExponentialBuckets(0.5, 2, 16), "arch", "result"), // 0.5 s to 4.5 h
		vmBoot: histograms("tandem_vm_boot_seconds",
			"From a runner VM being placed to its runner process starting (launch, boot and JIT configuration), by the VM's arch and whether it is emulated.",
			prometheus.ExponentialBuckets(0.25, 1.6, 16), "arch", "emulated"), // 0.25 s to 4.8 min
		samples: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tandem_profile_samples_total", Help: "Resource profile samples of running VMs taken in from agents.",
		}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tandem_leader", Help: "1 while this control-plane replica leads (places jobs, reconciles), else 0.",
		}),
		leaderEp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tandem_leader_epoch", Help: "The epoch of this replica's current or last term as leader (0: none yet).",
		}),
		leaderChg: counters("tandem_leadership_changes_total", "Terms as leader this replica began (gained) and ended (lost).", "change"),
		poolVMs: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tandem_pool_idle_vms",
			Help: "Warm pool VMs no job has claimed, by pool (its label) and state (booting, ready), as the leader's last placement pass saw them."},
			[]string{"pool", "state"}),
		poolTarget: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tandem_pool_target_vms",
			Help: "How many idle VMs each warm pool aims to hold now (0 outside its schedule)."}, []string{"pool"}),
		poolClaims: counters("tandem_pool_claims_total",
			"Jobs of a warm pool's label placed: on a warm VM (hit) or on a new one because none was left (miss).", "pool", "result"),
		poolRecyc: counters("tandem_pool_vms_recycled_total",
			"Warm pool VMs stopped without a job, by pool and reason (max-age, image, host, excess, schedule).", "pool", "reason"),
		poolWait: histograms("tandem_pool_ready_to_claim_seconds",
			"How long a warm pool VM waited, ready, before a job claimed it (0 for one claimed still booting).",
			prometheus.ExponentialBuckets(0.5, 2, 14), "pool"), // 0.5 s to 68 min
		poolBoot: histograms("tandem_pool_boot_seconds",
			"From a warm pool VM being placed to its guest being ready.", prometheus.ExponentialBuckets(0.25, 1.6, 16), "pool"),
		retries: counters("tandem_job_retries_total",
			"Jobs lost to Tandem or their host, and their re-runs on GitHub: noted (to be re-run), requested (GitHub re-runs it), "+
				"moot (GitHub ended it other than as failed), refused (GitHub would not, or never ended it), once-only (re-run for the cause before).",
			"result"),
	}
	for _, r := range []string{"noted", "requested", "moot", "refused", "once-only"} {
		m.retries.WithLabelValues(r)
	}
	for _, wp := range s.pools.list {
		m.poolVMs.WithLabelValues(wp.key, "booting")
		m.poolVMs.WithLabelValues(wp.key, "ready")
		m.poolTarget.WithLabelValues(wp.key)
		m.poolClaims.WithLabelValues(wp.key, "hit")
		m.poolClaims.WithLabelValues(wp.key, "miss")
		for _, why := range []string{"max-age", "image", "host", "excess", "schedule"} {
			m.poolRecyc.WithLabelValues(wp.key, why)
		}
	}
	m.leaderChg.WithLabelValues("gained")
	m.leaderChg.WithLabelValues("lost")
	// Every reconciler's series from the start, at zero: a rate over them
	// reads 0 rather than nothing before the first action.
	for rec, actions := range reconcilerActions {
		m.recErrors.WithLabelValues(rec)
		for _, a := range actions {
			m.recActions.WithLabelValues(rec, a)
		}
	}
	m.reg.MustRegister(m.webhooks, m.webhookDur, m.appliedCnt, m.placeDur, m.launched, m.started,
		m.recActions, m.recErrors, m.jobRun, m.jobQueue, m.vmBoot, m.samples, m.leader, m.leaderEp, m.leaderChg, &stateCollector{s: s},
		m.poolVMs, m.poolTarget, m.poolClaims, m.poolRecyc, m.poolWait, m.poolBoot, m.retries,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// reconcilerActions are the actions each reconciler counts
// (reconcilers.record and metrics.reconciled).
var reconcilerActions = map[string][]string{
	RecMissedWebhooks:   {"jobs-lost"},
	RecFailedDeliveries: {"redelivered"},
	RecOrphans:          {"stuck-vms-stopped", "github-runners-deleted", "idle-vms-stopped"},
	RecPrune:            nil,
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

func (m *metrics) webhook(result string, d time.Duration) {
	m.webhooks.WithLabelValues(result).Inc()
	m.webhookDur.Observe(d.Seconds())
}

func (m *metrics) applied(outcome string) { m.appliedCnt.WithLabelValues(outcome).Inc() }

// leading records a term as leader beginning (with its epoch) or ending.
func (m *metrics) leading(begins bool, epoch int64) {
	if begins {
		m.leader.Set(1)
		m.leaderEp.Set(float64(epoch))
		m.leaderChg.WithLabelValues("gained").Inc()
		return
	}
	m.leader.Set(0)
	m.leaderChg.WithLabelValues("lost").Inc()
}

// poolIdle sets a pool's idle VMs (keep) and its target, after a pass.
func (m *metrics) poolIdle(pool string, keep []store.Runner, target int) {
	ready := 0
	for _, r := range keep {
		if !r.ReadyAt.IsZero() {
			ready++
		}
	}
	m.poolVMs.WithLabelValues(pool, "ready").Set(float64(ready))
	m.poolVMs.WithLabelValues(pool, "booting").Set(float64(len(keep) - ready))
	m.poolTarget.WithLabelValues(pool).Set(float64(target))
}

// poolClaimed counts a job of a pool's label placed: on a warm VM that had
// waited ready for waited, or (hit false) on a new one.
// retried counts a step of a lost job's retry (retries.go).
func (m *metrics) retried(result string) { m.retries.WithLabelValues(result).Inc() }

func (m *metrics) poolClaimed(pool string, hit bool, waited time.Duration) {
	if !hit {
		m.poolClaims.WithLabelValues(pool, "miss").Inc()
		return
	}
	m.poolClaims.WithLabelValues(pool, "hit").Inc()
	m.poolWait.WithLabelValues(pool).Observe(waited.Seconds())
}

func (m *metrics) poolRecycled(pool, reason string) { m.poolRecyc.WithLabelValues(pool, reason).Inc() }

func (m *metrics) poolReady(pool string, d time.Duration) {
	m.poolBoot.WithLabelValues(pool).Observe(d.Seconds())
}

func (m *metrics) placement(d time.Duration, launched int) {
	m.placeDur.Observe(d.Seconds())
	m.launched.Add(float64(launched))
}

// queuedSince is when job j started to wait: GitHub's created_at, unless
// it is missing or (a clock apart) after now or Tandem's first word of it.
func queuedSince(j store.Job, now time.Time) time.Time {
	if t := j.CreatedAt; !t.IsZero() && !t.After(now) && (j.QueuedAt.IsZero() || !t.After(j.QueuedAt)) {
		return t
	}
	return j.QueuedAt
}

func (m *metrics) runnerStarted(d time.Duration) { m.started.Observe(d.Seconds()) }

func (m *metrics) reconciled(rec, action string) { m.recActions.WithLabelValues(rec, action).Inc() }

func (m *metrics) reconcileError(rec string) { m.recErrors.WithLabelValues(rec).Inc() }

// profileSamples counts n resource profile samples taken in.
func (m *metrics) profileSamples(n int) { m.samples.Add(float64(n)) }

// vmBooted observes runner r's boot: from its placement to its runner
// process starting at started.
func (m *metrics) vmBooted(r store.Runner, started time.Time) {
	if r.CreatedAt.IsZero() || started.Before(r.CreatedAt) {
		return
	}
	m.vmBoot.WithLabelValues(archLabel(r.Arch), strconv.FormatBool(r.Emulated)).Observe(started.Sub(r.CreatedAt).Seconds())
}

// jobEnded observes the run time (if it ran) and queue time of job j,
// which has just ended.
func (m *metrics) jobEnded(j store.Job) {
	a, res := archLabel(j.Arch), jobResult(j)
	start, end := j.StartedAt, j.CompletedAt
	if gs, ge := j.GitHubStartedAt, j.GitHubCompletedAt; !gs.IsZero() && !ge.IsZero() && !ge.Before(gs) {
		start, end = gs, ge // GitHub's clock for both ends, when it gave both
	}
	if !start.IsZero() && !end.IsZero() && !end.Before(start) {
		m.jobRun.WithLabelValues(a, res).Observe(end.Sub(start).Seconds())
	}
	waited := start // the wait ends with the start, or with the end
	if waited.IsZero() {
		waited = j.CompletedAt
	}
	if since := queuedSince(j, waited); !since.IsZero() && !waited.IsZero() && !waited.Before(since) {
		m.jobQueue.WithLabelValues(a, res).Observe(waited.Sub(since).Seconds())
	}
}

// jobResult is how job j ended, as a bounded label value: GitHub's
// conclusion for a job GitHub completed (one GitHub documents, else
// "other"), and Tandem's end state for the rest (cancelled, failed, lost,
// unschedulable, refused).
func jobResult(j store.Job) string {
	if j.State != store.JobCompleted {
		return string(j.State)
	}
	switch j.Conclusion {
	case "success", "failure", "neutral", "cancelled", "skipped", "timed_out", "action_required", "stale", "startup_failure":
		return j.Conclusion
	case "":
		return "completed"
	}
	return "other"
}

// archLabel is a, or "none" for a job whose labels did not parse.
func archLabel(a arch.Arch) string {
	if a == "" {
		return "none"
	}
	return string(a)
}

// stateCollector reads gauges of jobs, runners and hosts from the store at
// scrape time, and what hosts' last heartbeats said from links.
type stateCollector struct{ s *Server }

var (
	descJobs    = prometheus.NewDesc("tandem_jobs", "Jobs by state.", []string{"state"}, nil)
	descRunners = prometheus.NewDesc("tandem_runners", "Live runners by state.", []string{"state"}, nil)
	descHosts   = prometheus.NewDesc("tandem_hosts", "Hosts by state.", []string{"state"}, nil)
	descUp      = prometheus.NewDesc("tandem_store_up", "1 if the store answered the scrape.", nil, nil)

	descQueue = prometheus.NewDesc("tandem_queue_depth",
		"Jobs waiting for a runner (queued, scheduled or launching) by the arch they ask for.", []string{"arch"}, nil)
	descQueueLabels = prometheus.NewDesc("tandem_queue_depth_by_labels",
		"Jobs waiting for a runner by runs-on label set (lower-cased, sorted, comma-joined); "+
			"the 50 largest sets, the rest summed as (other).", []string{"labels"}, nil)

	hostLabel          = []string{"host"}
	descHostVCPUs      = prometheus.NewDesc("tandem_host_vcpus", "vCPUs a host offers to VMs.", hostLabel, nil)
	descHostVCPUsUsed  = prometheus.NewDesc("tandem_host_allocated_vcpus", "vCPUs a host's live runner VMs hold.", hostLabel, nil)
	descHostMem        = prometheus.NewDesc("tandem_host_memory_bytes", "Memory a host offers to VMs.", hostLabel, nil)
	descHostMemUsed    = prometheus.NewDesc("tandem_host_allocated_memory_bytes", "Memory a host's live runner VMs hold.", hostLabel, nil)
	descHostDisk       = prometheus.NewDesc("tandem_host_disk_bytes", "Disk a host's VMs may fill in all (only when runner.disk_per_vcpu counts disk).", hostLabel, nil)
	descHostDiskUsed   = prometheus.NewDesc("tandem_host_allocated_disk_bytes", "Disk a host's live runner VMs may fill (only when runner.disk_per_vcpu counts disk).", hostLabel, nil)
	descHostVMs        = prometheus.NewDesc("tandem_host_vms", "Live runner VMs on a host (assigned, booting, idle or busy).", hostLabel, nil)
	descHostLoad       = prometheus.NewDesc("tandem_host_load1", "A host's one-minute load average, from its agent's last heartbeat (remote agents only).", hostLabel, nil)
	descHostHeartbeat  = prometheus.NewDesc("tandem_host_heartbeat_age_seconds", "Seconds since a host's agent was last heard from (remote agents only).", hostLabel, nil)
	descHostSchedState = prometheus.NewDesc("tandem_host_state", "1 for a host's state (online, draining, cordoned, offline).", []string{"host", "state"}, nil)
)

// maxLabelSets bounds tandem_queue_depth_by_labels.
const maxLabelSets = 50

// queueArches are the arches a job may ask for: each has a queue depth,
// zero or not.
var queueArches = []arch.Arch{arch.AMD64, arch.ARM64, arch.Any}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descJobs, descRunners, descHosts, descUp, descQueue, descQueueLabels,
		descHostVCPUs, descHostVCPUsUsed, descHostMem, descHostMemUsed, descHostDisk, descHostDiskUsed,
		descHostVMs, descHostLoad, descHostHeartbeat, descHostSchedState} {
		ch <- d
	}
}

// snapshot is what one scrape reads from the store.
type snapshot struct {
	jobs   map[store.JobState]int
	live   []store.Runner
	hosts  []store.Host
	queued []store.Job
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var sn snapshot
	err := c.s.st.View(ctx, func(tx store.ReadTx) error {
		var err error
		if sn.jobs, err = tx.CountJobs(); err != nil {
			return err
		}
		if sn.live, err = tx.Runners(store.RunnerFilter{Live: true}); err != nil {
			return err
		}
		if sn.queued, err = tx.Jobs(store.JobFilter{States: waitingForRunner}); err != nil {
			return err
		}
		sn.hosts, err = tx.Hosts()
		return err
	})
	if err != nil {
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, 1)
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, st := range store.JobStates {
		gauge(descJobs, float64(sn.jobs[st]), string(st))
	}
	runners := map[store.RunnerState]int{}
	for _, r := range sn.live {
		runners[r.State]++
	}
	for _, st := range store.RunnerStates {
		if st != store.RunnerEnded {
			gauge(descRunners, float64(runners[st]), string(st))
		}
	}
	hosts := map[store.HostState]int{}
	for _, h := range sn.hosts {
		hosts[h.State]++
	}
	for _, st := range hostStates {
		gauge(descHosts, float64(hosts[st]), string(st))
	}
	c.collectQueue(gauge, sn.queued)
	c.collectHosts(gauge, sn)
}

// waitingForRunner are the states of a job in Tandem's queue: GitHub wants
// a runner for it and none has taken it yet.
var waitingForRunner = []store.JobState{store.JobQueued, store.JobScheduled, store.JobLaunching}

var hostStates = []store.HostState{store.HostOnline, store.HostDraining, store.HostCordoned, store.HostOffline}

// collectQueue reports queue depth by arch, and by label set: the
// maxLabelSets largest sets (ties by name), the rest as one.
func (c *stateCollector) collectQueue(gauge func(*prometheus.Desc, float64, ...string), queued []store.Job) {
	byArch := map[string]int{}
	byKey := map[string]int{}
	for _, j := range queued {
		byArch[archLabel(j.Arch)]++
		byKey[j.LabelKey]++
	}
	for _, a := range queueArches {
		gauge(descQueue, float64(byArch[string(a)]), string(a))
		delete(byArch, string(a))
	}
	for a, n := range byArch { // "none": a queued job always has an arch, but say so if not
		gauge(descQueue, float64(n), a)
	}
	type set struct {
		key string
		n   int
	}
	sets := make([]set, 0, len(byKey))
	for k, n := range byKey {
		sets = append(sets, set{k, n})
	}
	slices.SortFunc(sets, func(a, b set) int { return cmp.Or(cmp.Compare(b.n, a.n), cmp.Compare(a.key, b.key)) })
	other := 0
	for i, st := range sets {
		if i >= maxLabelSets {
			other += st.n
			continue
		}
		gauge(descQueueLabels, float64(st.n), st.key)
	}
	if other > 0 {
		gauge(descQueueLabels, float64(other), "(other)")
	}
}

// collectHosts reports each host's capacity, what its live runners hold,
// and what its agent's last heartbeat said.
func (c *stateCollector) collectHosts(gauge func(*prometheus.Desc, float64, ...string), sn snapshot) {
	const mib = 1 << 20
	type held struct {
		vcpus   float64
		mem     int
		disk    int
		runners int
	}
	use := map[string]held{}
	for _, r := range sn.live {
		u := use[r.HostID]
		u.vcpus += r.VCPUs
		u.mem += r.MemoryMiB
		u.disk += c.s.place.diskFor(r.VCPUs)
		u.runners++
		use[r.HostID] = u
	}
	now := c.s.now()
	for _, h := range sn.hosts {
		u := use[h.ID]
		gauge(descHostVCPUs, h.VCPUs, h.ID)
		gauge(descHostVCPUsUsed, u.vcpus, h.ID)
		gauge(descHostMem, float64(h.MemoryMiB)*mib, h.ID)
		gauge(descHostMemUsed, float64(u.mem)*mib, h.ID)
		if h.DiskMiB > 0 && c.s.place.diskPerVCPU > 0 {
			gauge(descHostDisk, float64(h.DiskMiB)*mib, h.ID)
			gauge(descHostDiskUsed, float64(u.disk)*mib, h.ID)
		}
		gauge(descHostVMs, float64(u.runners), h.ID)
		for _, st := range hostStates {
			v := 0.0
			if h.State == st {
				v = 1
			}
			gauge(descHostSchedState, v, h.ID, string(st))
		}
		seen, hb, beat := c.s.links.seen(h.ID)
		if !beat {
			continue // an in-process agent sends no heartbeats
		}
		gauge(descHostLoad, hb.Load1, h.ID)
		if !seen.IsZero() {
			gauge(descHostHeartbeat, max(now.Sub(seen).Seconds(), 0), h.ID)
		}
	}
}
