package controlplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/dashboard"
	"github.com/tandem-ci/tandem/internal/parity"
	"github.com/tandem-ci/tandem/internal/rightsize"
	"github.com/tandem-ci/tandem/internal/store"
)

// dashBackend is the dashboard's view of the control plane: the same
// queries as the JSON API (listJobs, jobDetail, hostViews, hostLoad,
// runnerViews, openJobLog, jobProfile, rightsizeFor, insights,
// parityView, setHostState, auditLog), with the API's scoping, converted
// to the dashboard's types.
type dashBackend struct{ a *api }

var _ dashboard.Backend = dashBackend{}

// principal turns a dashboard scope back into the API's principal.
func (dashBackend) principal(s dashboard.Scope) principal {
	p := principal{admin: s.Admin, label: s.Label}
	if s.Orgs != nil {
		p.orgs = map[string]bool{}
		for _, o := range s.Orgs {
			p.orgs[strings.ToLower(o)] = true
		}
	}
	return p
}

func (b dashBackend) Authenticate(token string) (dashboard.Scope, bool) {
	if token == "" {
		return dashboard.Scope{}, false
	}
	p, ok := b.a.principalOf(token)
	if !ok {
		return dashboard.Scope{}, false
	}
	return dashboard.Scope{Admin: p.admin, Orgs: p.scope(), Label: p.label}, true
}

func (b dashBackend) Summary(ctx context.Context, s dashboard.Scope, since time.Time) (dashboard.Summary, error) {
	p := b.principal(s)
	sum := dashboard.Summary{States: map[string]int{}}
	err := b.a.st.View(ctx, func(tx store.ReadTx) error {
		if p.orgs == nil {
			counts, err := tx.CountJobs()
			if err != nil {
				return err
			}
			for st, n := range counts {
				sum.States[string(st)] = n
			}
		} else {
			// A scoped token's counts: its orgs' jobs that have not ended.
			js, err := tx.Jobs(store.JobFilter{Orgs: p.scope(), States: []store.JobState{store.JobWaiting,
				store.JobQueued, store.JobScheduled, store.JobLaunching, store.JobUnmatched, store.JobRunning}})
			if err != nil {
				return err
			}
			for _, j := range js {
				sum.States[string(j.State)]++
			}
		}
		today, err := tx.CountQueuedSince(since, p.scope())
		if err != nil {
			return err
		}
		sum.Today = today
		hosts, err := tx.Hosts()
		if err != nil {
			return err
		}
		sum.Hosts = len(hosts)
		for _, h := range hosts {
			if h.State == store.HostOnline {
				sum.Online++
			}
		}
		return nil
	})
	for _, st := range []store.JobState{store.JobWaiting, store.JobQueued, store.JobScheduled, store.JobLaunching} {
		sum.Queued += sum.States[string(st)]
	}
	sum.Running = sum.States[string(store.JobRunning)]
	if err == nil {
		// Replicas share the store when terms have epochs or another
		// replica leads (or none, between terms).
		if h := b.a.cp.health(ctx); h.Replica != h.Leader || h.Epoch != 0 {
			sum.Leader, sum.Replica = h.Leader, h.Replica
			if sum.Leader == "" {
				sum.Leader = "none (between terms)"
			}
		}
	}
	return sum, err
}

func (b dashBackend) Jobs(ctx context.Context, s dashboard.Scope, q dashboard.JobQuery) ([]dashboard.Job, error) {
	f := store.JobFilter{Org: q.Org, Repo: q.Repo, Orgs: b.principal(s).scope(), Arch: arch.Arch(q.Arch),
		Newest: true, Limit: q.Limit, Offset: q.Offset}
	for _, st := range q.States {
		f.States = append(f.States, store.JobState(st))
	}
	vs, err := b.a.listJobs(ctx, f)
	if err != nil {
		return nil, err
	}
	out := make([]dashboard.Job, len(vs))
	for i, v := range vs {
		out[i] = dashJob(v)
	}
	return out, nil
}

func (b dashBackend) Job(ctx context.Context, s dashboard.Scope, id int64) (dashboard.Job, error) {
	v, err := b.a.jobDetail(ctx, b.principal(s), id)
	if err != nil {
		return dashboard.Job{}, err
	}
	return dashJob(v), nil
}

func (b dashBackend) JobLog(ctx context.Context, s dashboard.Scope, id int64, max int64) (string, bool, error) {
	f, err := b.a.openJobLog(ctx, b.principal(s), id)
	if err != nil {
		return "", false, nil // no log (or not this scope's job: Job said so already)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > max {
		if _, err := f.Seek(fi.Size()-max, io.SeekStart); err != nil {
			return "", false, err
		}
	}
	buf, err := io.ReadAll(io.LimitReader(f, max))
	if err != nil {
		return "", false, err
	}
	return strings.ToValidUTF8(string(buf), "\uFFFD"), true, nil
}

func (b dashBackend) JobProfile(ctx context.Context, s dashboard.Scope, id int64) (dashboard.Profile, bool, error) {
	v, err := b.a.jobProfile(ctx, b.principal(s), id)
	if errors.Is(err, errNoProfile) {
		return dashboard.Profile{}, false, nil
	}
	if err != nil {
		return dashboard.Profile{}, false, err
	}
	return dashboard.Profile{Live: v.Live, VCPUs: v.VCPUs, MemoryMiB: v.MemoryMiB, Profile: v.Profile}, true, nil
}

func (b dashBackend) Rightsize(ctx context.Context, s dashboard.Scope, q dashboard.RightsizeQuery) (dashboard.Rightsize, error) {
	v, err := b.a.rightsizeFor(ctx, b.principal(s), q.Org, q.Repo, q.Days, rightsize.DefaultRuns)
	if err != nil {
		return dashboard.Rightsize{}, err
	}
	return dashboard.Rightsize{Days: v.Days, Runs: v.Runs, Partial: v.Partial, Advice: v.Advice}, nil
}

func (b dashBackend) Hosts(ctx context.Context) ([]dashboard.Host, error) {
	vs, err := b.a.hostViews(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]dashboard.Host, len(vs))
	for i, v := range vs {
		h := dashboard.Host{ID: v.ID, State: v.State, Reason: v.Reason, Connected: v.Connected, Replica: v.Replica, VCPUs: v.VCPUs,
			MemoryMiB: v.MemoryMiB, UsedVCPUs: v.UsedVCPUs, UsedMemoryMiB: v.UsedMemoryMiB, Runners: v.Runners,
			LastSeen: v.LastSeen, Load1: v.Load1, DiskFreeMiB: v.DiskFreeMiB}
		for _, a := range v.Arches {
			name := string(a.Arch)
			if a.Emulated {
				name += " (emulated)"
			}
			h.Arches = append(h.Arches, name)
		}
		out[i] = h
	}
	return out, nil
}

func (b dashBackend) HostLoad(ctx context.Context, host string, since time.Time) ([]store.HostLoad, error) {
	return b.a.hostLoad(ctx, host, since)
}

func (b dashBackend) Runners(ctx context.Context, s dashboard.Scope, host string) ([]dashboard.Runner, error) {
	vs, err := b.a.runnerViews(ctx, b.principal(s), store.RunnerFilter{HostID: host, Live: true, Limit: 1000})
	if err != nil {
		return nil, err
	}
	out := make([]dashboard.Runner, len(vs))
	for i, v := range vs {
		out[i] = dashboard.Runner{Name: v.Name, Host: v.Host, Job: v.Job, Repo: v.Repo, Org: v.Org, Arch: v.Arch,
			Emulated: v.Emulated, VCPUs: v.VCPUs, MemoryMiB: v.MemoryMiB, State: v.State, VMID: v.VMID, CreatedAt: v.CreatedAt}
	}
	return out, nil
}

func (b dashBackend) Audit(ctx context.Context, before int64, limit int) ([]store.AuditEntry, error) {
	return b.a.auditLog(ctx, store.AuditFilter{Before: before, Limit: limit})
}

func (b dashBackend) HostAction(ctx context.Context, host, action string, by dashboard.Actor) (string, error) {
	st, err := b.a.setHostState(ctx, host, action, auditActor{label: by.Label, addr: by.Addr, via: "dashboard"})
	switch {
	case errors.Is(err, errUnknownAction):
		return "", dashboard.ErrNotFound
	case errors.Is(err, errOffline):
		return "", errors.New("the host is offline")
	}
	return string(st), err
}

func dashJob(v JobView) dashboard.Job {
	j := dashboard.Job{ID: v.ID, RunID: v.RunID, Repo: v.Repo, Org: v.Org, Name: v.Name, Workflow: v.Workflow,
		Labels: v.Labels, Arch: v.Arch, VCPUs: v.VCPUs, MemoryMiB: v.MemoryMiB, State: v.State, Reason: v.Reason,
		Runner: v.Runner, Host: v.Host, HTMLURL: v.HTMLURL, HeadBranch: v.HeadBranch, HeadSHA: v.HeadSHA,
		Sender: v.Sender, Attempts: v.Attempts, Conclusion: v.Conclusion, QueuedAt: v.QueuedAt, UpdatedAt: v.UpdatedAt}
	deref := func(t *time.Time) time.Time {
		if t == nil {
			return time.Time{}
		}
		return *t
	}
	j.StartedAt, j.CompletedAt, j.VMKeptUntil = deref(v.StartedAt), deref(v.CompletedAt), deref(v.VMKeptUntil)
	if r := v.Rerun; r != nil {
		j.Rerun = fmt.Sprintf("%s (lost: %s): %s", r.State, r.Cause, r.Detail)
	}
	if r := v.RerunOf; r != nil {
		j.RerunOf, j.RerunCause = r.Job, r.Cause
	}
	for _, e := range v.Events {
		j.Events = append(j.Events, dashboard.Event{At: e.At, From: e.From, To: e.To, Source: e.Source,
			Reason: e.Reason, Runner: e.Runner, Host: e.Host})
	}
	return j
}

func (b dashBackend) Insights(ctx context.Context, s dashboard.Scope, q dashboard.InsightsQuery) (dashboard.Insights, error) {
	v, err := b.a.insights(ctx, b.principal(s), q.Days, q.By, q.Org, q.Repo)
	if err != nil {
		return dashboard.Insights{}, err
	}
	out := dashboard.Insights{Days: v.Days, By: v.By, Since: v.Since, Until: v.Until, Slowest: v.Slowest}
	for _, r := range v.Rows {
		out.Rows = append(out.Rows, dashboard.InsightRow{StatsKey: r.StatsKey, Current: r.Current, Previous: r.Previous})
	}
	for _, i := range v.Increases {
		out.Increases = append(out.Increases, dashboard.Increase{StatsKey: i.StatsKey, WasP50: i.WasP50, NowP50: i.NowP50, Runs: i.Runs})
	}
	return out, nil
}

// Parity is GET /api/v1/parity's view for the dashboard: Days 0 is the
// policy's period.
func (b dashBackend) Parity(ctx context.Context, s dashboard.Scope, q dashboard.ParityQuery) (parity.View, error) {
	days := q.Days
	if days == 0 {
		days = b.a.parity.Days
	}
	return b.a.parityView(ctx, b.principal(s), days, q.Org, q.Repo)
}
