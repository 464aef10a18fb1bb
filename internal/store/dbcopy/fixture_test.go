package dbcopy

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/egress"
	"github.com/tandem-ci/tandem/internal/failure"
	"github.com/tandem-ci/tandem/internal/profile"
	"github.com/tandem-ci/tandem/internal/store"
	"github.com/tandem-ci/tandem/internal/store/sqlite"
)

// t0 has nanoseconds and a zone other than UTC: what is copied is what the
// store made of it.
var t0 = time.Date(2025, 3, 14, 15, 9, 26, 535_897_932, time.FixedZone("UTC+3", 3*3600))

func at(d time.Duration) time.Time { return t0.Add(d) }

// fixtureDB writes a SQLite database with rows in every table, through the
// store, and returns its path (the store closed).
func fixtureDB(t *testing.T) string {
	t.Helper()
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "tandem.db")
	st, err := sqlite.Open(ctx, path, sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	fill(t, st)
	return path
}

// fill puts rows in every table of s.
func fill(t *testing.T, s store.Store) {
	t.Helper()
	ctx := t.Context()
	deliveries(t, s)
	update(t, s, jobsAndRunners)
	update(t, s, fleet)
	update(t, s, agents)
	update(t, s, profiles)
	update(t, s, audit)
	update(t, s, tiers)
	update(t, s, retries)
	// The newest delivery, pruned: SQLite's AUTOINCREMENT remembers its
	// number, which the copy's sequence must pass.
	if _, err := s.InsertDelivery(ctx, store.Delivery{GUID: "d-old", Event: "ping", Payload: []byte("{}"), ReceivedAt: at(-30 * 24 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	update(t, s, func(tx store.Tx) error { return tx.MarkDelivery("d-old", at(-30*24*time.Hour), "") })
	if n, err := s.Prune(ctx, at(-20*24*time.Hour)); err != nil || n != 1 {
		t.Fatalf("prune: %d rows, %v; want the one old delivery", n, err)
	}
}

func update(t *testing.T, s store.Store, fn func(store.Tx) error) {
	t.Helper()
	if err := s.Update(t.Context(), fn); err != nil {
		t.Fatal(err)
	}
}

// deliveries: processed (one failed for good) and pending, with binary
// payloads.
func deliveries(t *testing.T, s store.Store) {
	for i := range 6 {
		p := make([]byte, 64+i)
		for j := range p {
			p[j] = byte(j*7 + i) // zero bytes and invalid UTF-8 included
		}
		d := store.Delivery{GUID: fmt.Sprintf("d-%d", i), Event: "workflow_job", Payload: p, ReceivedAt: at(time.Duration(i) * time.Second)}
		if _, err := s.InsertDelivery(t.Context(), d); err != nil {
			t.Fatal(err)
		}
	}
	update(t, s, func(tx store.Tx) error {
		if err := tx.MarkDelivery("d-0", at(time.Minute), ""); err != nil {
			return err
		}
		return tx.MarkDelivery("d-1", at(time.Minute), "bad payload: unexpected EOF")
	})
}

// job returns a queued job of a logical "build" on arch a.
func job(id int64, a arch.Arch, sha string) store.Job {
	ls := []string{"tandem-" + string(a) + "-4cpu-8gb", "Self-Hosted"}
	return store.Job{
		ID: id, RunID: id * 10, RunAttempt: 1, Installation: 4242, Org: "Acme", Repo: "Acme/Widgets",
		Name: fmt.Sprintf("build (%s) — ünïcode, 'quotes'", a), Workflow: ".github/workflows/ci.yml",
		Labels: ls, LabelKey: store.LabelKey(ls), Arch: a, VCPUs: 4.5, MemoryMiB: 8192,
		State: store.JobQueued, Reason: "queued", HeadBranch: "main", HeadSHA: sha, Public: id%2 == 0,
		HTMLURL: fmt.Sprintf("https://github.com/acme/widgets/actions/runs/%d/job/%d", id*10, id), Sender: "octocat",
		AvoidHosts: []string{"host-b"}, CreatedAt: at(-time.Minute), QueuedAt: at(time.Duration(id) * time.Millisecond),
		UpdatedAt: at(time.Duration(id) * time.Millisecond),
	}
}

// step moves j to state at minute m.
func step(tx store.Tx, j *store.Job, state store.JobState, m int, src string) error {
	j.State, j.UpdatedAt = state, at(time.Duration(m)*time.Minute+time.Duration(j.ID)*time.Millisecond)
	switch state {
	case store.JobScheduled:
		j.RunnerName, j.HostID, j.Attempts = fmt.Sprintf("tandem-%d", j.ID), "host-a", j.Attempts+1
	case store.JobRunning:
		j.StartedAt, j.GitHubStartedAt = j.UpdatedAt, j.UpdatedAt.Add(-time.Second)
	case store.JobCompleted, store.JobCancelled, store.JobFailed:
		j.CompletedAt, j.GitHubCompletedAt = j.UpdatedAt, j.UpdatedAt.Add(-time.Second)
	}
	return tx.UpdateJob(*j, store.Event{Source: src, Reason: "to " + string(state)})
}

// jobsAndRunners: jobs in several states with their events (those that
// ended fill the daily statistics and the parity records), and runners.
func jobsAndRunners(tx store.Tx) error {
	type plan struct {
		j          store.Job
		path       []store.JobState
		conclusion string
	}
	run := []store.JobState{store.JobScheduled, store.JobLaunching, store.JobRunning}
	plans := []plan{
		{job(101, arch.AMD64, "aaa"), append(run, store.JobCompleted), "success"},
		{job(102, arch.ARM64, "aaa"), append(run, store.JobCompleted), "failure"},
		{job(103, arch.AMD64, "bbb"), append(run, store.JobCompleted), "success"},
		{job(104, arch.ARM64, "bbb"), append(run, store.JobCompleted), "success"},
		{job(105, arch.ARM64, "ccc"), append(run, store.JobCancelled), "cancelled"},
		{job(106, arch.AMD64, "ccc"), run, ""},
		{job(107, arch.AMD64, "ddd"), []store.JobState{store.JobScheduled, store.JobLaunching, store.JobFailed}, ""},
		{job(108, arch.ARM64, "ddd"), nil, ""},
	}
	for _, p := range plans {
		j := p.j
		if err := tx.CreateJob(j, store.Event{Source: "webhook", Reason: "queued"}); err != nil {
			return err
		}
		for m, s := range p.path {
			if s.Terminal() {
				j.Conclusion = p.conclusion
			}
			if err := step(tx, &j, s, m+1, "test"); err != nil {
				return fmt.Errorf("job %d to %s: %w", j.ID, s, err)
			}
		}
	}
	policy := egress.Policy{Mode: egress.Allowlist, Names: []string{"*.example.org", "github.com"},
		Nets: []egress.Net{{Prefix: netip.MustParsePrefix("198.51.100.0/24"), Port: 443}}}
	for i, state := range []store.RunnerState{store.RunnerBusy, store.RunnerEnded, store.RunnerIdle} {
		r := store.Runner{Name: fmt.Sprintf("tandem-%d", 104+i), HostID: "host-a", JobID: int64(104 + i), Installation: 4242,
			Org: "acme", Group: "Arm Fleet", Labels: []string{"tandem-arm64"}, LabelKey: "tandem-arm64", Arch: arch.ARM64,
			Emulated: i == 0, VCPUs: 0.5, MemoryMiB: 1024, State: state, GitHubID: 1 << 40, VMID: fmt.Sprintf("vm-%d", i),
			ExitCode: -1, Egress: policy, CreatedAt: at(0), UpdatedAt: at(time.Second), StartedAt: at(2 * time.Second),
			BusyAt: at(3 * time.Second)}
		if state == store.RunnerEnded {
			r.Reason, r.EndedAt = "vm exited", at(4*time.Second)
			r.EgressRecord = &egress.Record{Mode: egress.Allowlist, Refused: map[string]int{"evil.example": 2},
				Flows: []egress.Flow{{Addr: netip.MustParseAddr("198.51.100.7"), Proto: "tcp", Port: 443, Name: "a.example.org", Allowed: true, Count: 9}}}
		}
		if err := tx.PutRunner(r); err != nil {
			return err
		}
	}
	return nil
}

// fleet: hosts and their load, repositories, an installation, counters.
func fleet(tx store.Tx) error {
	for i, id := range []string{"host-a", "host-b"} {
		h := store.Host{ID: id, Arches: []store.ArchSupport{{Arch: arch.AMD64}, {Arch: arch.ARM64, Emulated: i == 0}},
			VCPUs: 63.5, MemoryMiB: 256 << 10, DiskMiB: 900 << 10, State: store.HostOnline, Version: "v1.2.3",
			LastSeen: at(10 * time.Second), CreatedAt: at(-24 * time.Hour), Replica: "cp-1"}
		if i == 1 {
			h.State, h.Reason = store.HostCordoned, "kernel upgrade"
		}
		if err := tx.PutHost(h); err != nil {
			return err
		}
	}
	// A stop no replica took yet.
	if err := tx.AddRunnerCommand(store.RunnerCommand{HostID: "host-b", Runner: "tandem-0123456789ab", Kind: store.CommandStop,
		Reason: "spare: no queued job needs it", At: at(11 * time.Second)}); err != nil {
		return err
	}
	var loads []store.HostLoad
	for m := range 3 {
		loads = append(loads, store.HostLoad{Host: "host-a", At: at(time.Duration(m) * time.Minute), State: store.HostOnline,
			VCPUs: 8, AllocVCPUs: 2.5, MemoryMiB: 16384, AllocMemoryMiB: 4096, VMs: 2, Load1: float64(m) / 3, HeartbeatAge: 1.5})
	}
	if err := tx.AddHostLoad(loads); err != nil {
		return err
	}
	if err := tx.TouchRepo("Acme/Widgets", 4242, at(time.Hour)); err != nil {
		return err
	}
	if err := tx.TouchRepo("bob/cli", 7, at(2*time.Hour)); err != nil {
		return err
	}
	if err := tx.PutInstallation(store.Installation{ID: 7, Account: "bob", State: store.InstallationSuspended,
		Reason: "suspended by bob", UpdatedAt: at(time.Hour)}); err != nil {
		return err
	}
	if err := tx.AddCounter("webhooks", 42); err != nil {
		return err
	}
	return tx.AddCounter("launch_failures", -3)
}

// agents: enrolment tokens (one used, one re-admitting a host) and
// credentials (one revoked).
func agents(tx store.Tx) error {
	toks := []store.EnrollToken{
		{Hash: "h1", CreatedAt: at(0), ExpiresAt: at(time.Hour), Comment: "rack 4"},
		{Hash: "h2", CreatedAt: at(time.Second), ExpiresAt: at(time.Hour), HostID: "host-b", Readmit: true},
	}
	for _, tok := range toks {
		if err := tx.CreateEnrollToken(tok); err != nil {
			return err
		}
	}
	if _, err := tx.UseEnrollToken("h1", "host-a", at(time.Minute)); err != nil {
		return err
	}
	for _, h := range []string{"host-a", "host-b"} {
		if err := tx.PutAgentCredential(store.AgentCredential{HostID: h, Hash: "c-" + h, CreatedAt: at(time.Minute)}); err != nil {
			return err
		}
	}
	return tx.RevokeAgent("host-b", at(time.Hour))
}

// profiles: a live runner's samples, an ended one's profile.
func profiles(tx store.Tx) error {
	smp := func(sec int) profile.Sample {
		return profile.Sample{At: at(time.Duration(sec) * time.Second), CPUSeconds: float64(sec) / 2, RSS: 1 << 30, GuestOK: true,
			GuestCPUSeconds: float64(sec), MemTotal: 2 << 30, MemAvailable: 1 << 30, Procs: 7, NetRx: 1 << 40}
	}
	if err := tx.AddProfileSamples("tandem-104", at(0), []profile.Sample{smp(0), smp(1)}); err != nil {
		return err
	}
	if err := tx.AddProfileSamples("tandem-104", at(2*time.Second), []profile.Sample{smp(2)}); err != nil {
		return err
	}
	ss := []profile.Sample{smp(0), smp(1), smp(2), smp(3)}
	return tx.PutProfile(store.Profile{Runner: "tandem-105", JobID: 105, EndedAt: at(4 * time.Second), Profile: profile.Build(ss, 2, 2<<30, 0)})
}

func audit(tx store.Tx) error {
	for i, a := range []string{"host.drain", "host.cordon", "token.create"} {
		e := store.AuditEntry{At: at(time.Duration(i) * time.Minute), Actor: "token:1a2b3c4d", Action: a, Target: "host-a",
			Addr: "192.0.2.1", Via: "api", Result: "ok"}
		if _, err := tx.AppendAudit(e); err != nil {
			return err
		}
	}
	return nil
}

// tiers: a repository's first tier and a move.
func tiers(tx store.Tx) error {
	for i, tier := range []string{"tier-2", "tier-1"} {
		r := store.RepoTier{Org: "acme", Repo: "acme/widgets", Tier: tier, Reason: "because " + tier, CheckedAt: at(time.Duration(i+1) * time.Hour)}
		if _, err := tx.SetRepoTier(r); err != nil {
			return err
		}
	}
	return nil
}

// retries: a pending retry of a lost job and a requested one.
func retries(tx store.Tx) error {
	for i, st := range []store.RetryState{store.RetryPending, store.RetryRequested} {
		r := store.Retry{JobID: int64(500 + i), Installation: 7, Org: "acme", Repo: "acme/widgets", RunID: 77, Name: fmt.Sprintf("job %d", i),
			Cause: failure.HostOffline, State: st, Detail: "’quoted’ \"text\"", Tries: i, NextAt: at(time.Duration(i) * time.Minute),
			CreatedAt: at(0), UpdatedAt: at(time.Duration(i) * time.Second)}
		if _, err := tx.AddRetry(r); err != nil {
			return err
		}
	}
	return nil
}

// contents is everything a store returns, read through its API.
type contents struct {
	Jobs         []store.Job
	Events       map[int64][]store.JobEvent
	CountJobs    map[store.JobState]int
	Runners      []store.Runner
	Hosts        []store.Host
	HostLoad     []store.HostLoad
	Repos        []store.Repo
	Installation store.Installation
	Counters     map[string]int64
	Deliveries   []store.Delivery
	Pending      []store.Delivery
	Tokens       []store.EnrollToken
	Credentials  []store.AgentCredential
	Samples      []profile.Sample
	Profile      store.Profile
	ProfiledRuns []store.ProfiledRun
	JobStats     []store.JobStats
	SlowestRuns  []store.SlowRun
	Parity       []store.CommitParity
	Tiers        []store.RepoTier
	TierChanges  []store.TierChange
	Audit        []store.AuditEntry
	Retries      []store.Retry
}

// read reads c from s.
func read(ctx context.Context, s store.Store) (c contents, err error) {
	period := store.StatsFilter{Since: at(-24 * time.Hour), Until: at(24 * time.Hour), Level: store.ByJob}
	err = s.View(ctx, func(tx store.ReadTx) error {
		var errs []error
		e := func(err error) { errs = append(errs, err) }
		var err error
		c.Jobs, err = tx.Jobs(store.JobFilter{})
		e(err)
		c.Retries, err = tx.Retries(store.RetryFilter{})
		e(err)
		c.Events = map[int64][]store.JobEvent{}
		for _, j := range c.Jobs {
			c.Events[j.ID], err = tx.JobEvents(j.ID)
			e(err)
		}
		c.CountJobs, err = tx.CountJobs()
		e(err)
		c.Runners, err = tx.Runners(store.RunnerFilter{})
		e(err)
		c.Hosts, err = tx.Hosts()
		e(err)
		c.HostLoad, err = tx.HostLoad("host-a", time.Time{})
		e(err)
		c.Repos, err = tx.Repos(time.Time{})
		e(err)
		c.Installation, err = tx.Installation(7)
		e(err)
		c.Counters, err = tx.Counters()
		e(err)
		for i := range 6 {
			d, err := tx.Delivery(fmt.Sprintf("d-%d", i))
			e(err)
			c.Deliveries = append(c.Deliveries, d)
		}
		c.Tokens, err = tx.EnrollTokens()
		e(err)
		for _, h := range []string{"host-a", "host-b"} {
			cr, err := tx.AgentCredential(h)
			e(err)
			c.Credentials = append(c.Credentials, cr)
		}
		c.Samples, err = tx.ProfileSamples("tandem-104")
		e(err)
		c.Profile, err = tx.Profile("tandem-105")
		e(err)
		c.ProfiledRuns, err = tx.ProfiledRuns(store.ProfiledRunFilter{})
		e(err)
		c.JobStats, err = tx.JobStats(period)
		e(err)
		c.SlowestRuns, err = tx.SlowestRuns(period, 10)
		e(err)
		c.Parity, err = tx.ParityCommits(period)
		e(err)
		c.Tiers, err = tx.RepoTiers(store.TierFilter{})
		e(err)
		c.TierChanges, err = tx.TierChanges(store.TierFilter{})
		e(err)
		c.Audit, err = tx.Audit(store.AuditFilter{})
		e(err)
		for _, err := range errs {
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return c, err
	}
	// In no particular order: put them in one.
	slices.SortFunc(c.JobStats, func(a, b store.JobStats) int { return cmp.Compare(fmt.Sprint(a.StatsKey), fmt.Sprint(b.StatsKey)) })
	slices.SortFunc(c.Parity, func(a, b store.CommitParity) int {
		return cmp.Compare(a.Org+"/"+a.Repo+"/"+a.Workflow+"/"+a.Logical, b.Org+"/"+b.Repo+"/"+b.Workflow+"/"+b.Logical)
	})
	c.Pending, err = s.PendingDeliveries(ctx, 0, 100)
	return c, err
}
