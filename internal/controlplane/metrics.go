package controlplane

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

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
}

func newMetrics(s *Server) *metrics {
	counters := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	}
	histogram := func(name, help string, buckets []float64) prometheus.Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets})
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
	}
	m.reg.MustRegister(m.webhooks, m.webhookDur, m.appliedCnt, m.placeDur, m.launched, m.started,
		m.recActions, m.recErrors, &stateCollector{s: s},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

func (m *metrics) webhook(result string, d time.Duration) {
	m.webhooks.WithLabelValues(result).Inc()
	m.webhookDur.Observe(d.Seconds())
}

func (m *metrics) applied(outcome string) { m.appliedCnt.WithLabelValues(outcome).Inc() }

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

// stateCollector reads gauges of jobs, runners and hosts from the store at
// scrape time.
type stateCollector struct{ s *Server }

var (
	descJobs    = prometheus.NewDesc("tandem_jobs", "Jobs by state.", []string{"state"}, nil)
	descRunners = prometheus.NewDesc("tandem_runners", "Live runners by state.", []string{"state"}, nil)
	descHosts   = prometheus.NewDesc("tandem_hosts", "Hosts by state.", []string{"state"}, nil)
	descUp      = prometheus.NewDesc("tandem_store_up", "1 if the store answered the scrape.", nil, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descJobs
	ch <- descRunners
	ch <- descHosts
	ch <- descUp
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var jobs map[store.JobState]int
	runners := map[store.RunnerState]int{}
	hosts := map[store.HostState]int{}
	err := c.s.st.View(ctx, func(tx store.ReadTx) error {
		var err error
		if jobs, err = tx.CountJobs(); err != nil {
			return err
		}
		live, err := tx.Runners(store.RunnerFilter{Live: true})
		if err != nil {
			return err
		}
		for _, r := range live {
			runners[r.State]++
		}
		hs, err := tx.Hosts()
		for _, h := range hs {
			hosts[h.State]++
		}
		return err
	})
	if err != nil {
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, 1)
	for _, st := range store.JobStates {
		ch <- prometheus.MustNewConstMetric(descJobs, prometheus.GaugeValue, float64(jobs[st]), string(st))
	}
	for _, st := range store.RunnerStates {
		if st != store.RunnerEnded {
			ch <- prometheus.MustNewConstMetric(descRunners, prometheus.GaugeValue, float64(runners[st]), string(st))
		}
	}
	for _, st := range []store.HostState{store.HostOnline, store.HostDraining, store.HostCordoned, store.HostOffline} {
		ch <- prometheus.MustNewConstMetric(descHosts, prometheus.GaugeValue, float64(hosts[st]), string(st))
	}
}
