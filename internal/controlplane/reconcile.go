package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/tandem-ci/tandem/internal/github"
	"github.com/tandem-ci/tandem/internal/lifecycle"
	"github.com/tandem-ci/tandem/internal/store"
)

// A reconciler makes one kind of GitHub misbehaviour harmless. Its actions
// are counted in the store under "reconciler/<name>/<action>" and logged.
type reconciler struct {
	name  string
	every time.Duration
	run   func(ctx context.Context) error
}

// Names of the reconcilers.
const (
	RecMissedWebhooks   = "missed-webhooks"
	RecFailedDeliveries = "failed-deliveries"
	RecOrphans          = "orphans"
	RecPrune            = "prune"
)

// Retention of processed deliveries, job events and ended runners. GitHub
// offers redelivery for three days, so a week of delivery GUIDs recognises
// every duplicate.
const retention = 7 * 24 * time.Hour

// staleBatch bounds the GitHub calls one pass makes for stale jobs.
const staleBatch = 50

// reconcilers run the reconciler passes, and verifyLoop. They read the
// store and GitHub, and change jobs and runners only through the control
// plane's lifecycle (cp). Their own memory is toVerify and redone, each
// with its own lock.
type reconcilers struct {
	st            store.Store
	gh            github.API
	iv            Intervals
	idleTimeout   time.Duration // runner.idle_timeout
	configTimeout time.Duration // runner.config_timeout
	log           *slog.Logger
	now           func() time.Time
	metrics       *metrics
	cp            reconcileControl

	toVerify   *jobSet       // jobs to check against GitHub (verifyLoop)
	redone     *redeliveries // deliveries this process asked GitHub to redeliver
	waitChecks *waitChecks   // when each waiting job was last asked about
}

// reconcileControl is what the reconcilers ask of the control plane: its
// lifecycle transactions (lifecycle.go, apply.go) and its runners.
type reconcileControl interface {
	update(ctx context.Context, fn func(store.Tx, *afterCommit) error) error
	applyEvent(tx store.Tx, fx *afterCommit, ev github.WorkflowJobEvent, source string, now time.Time) (applied, error)
	move(fx *afterCommit, j *store.Job, st jobStep, now time.Time) (lifecycle.Rule, error)
	retire(ctx context.Context, r store.Runner, reason, count string) bool
	beginRetire(name string) (first, configured bool)
	finishRetire(ctx context.Context, r store.Runner, configured bool, reason, count string) bool
	unroute(ctx context.Context, name string, jobID int64, why, source string) (bool, error)
	count(tx store.Tx, name string, n int64) error
	isOurRunnerName(name string) bool
	kickPlacement()
	leading() bool
}

func newReconcilers(s *Server) *reconcilers {
	return &reconcilers{st: s.st, gh: s.gh, iv: s.cfg.Reconcile, idleTimeout: s.cfg.Runner.IdleTimeout,
		configTimeout: s.cfg.Runner.ConfigTimeout, log: s.log, now: s.now, metrics: s.metrics, cp: s,
		toVerify: newJobSet(), redone: newRedeliveries(), waitChecks: newWaitChecks()}
}

// list is every reconciler, with how often it runs (<= 0: only when asked).
func (rc *reconcilers) list() []reconciler {
	iv := rc.iv
	return []reconciler{
		{RecMissedWebhooks, iv.MissedWebhooks, rc.reconcileMissedWebhooks},
		{RecFailedDeliveries, iv.FailedDeliveries, rc.reconcileFailedDeliveries},
		{RecOrphans, iv.Orphans, rc.reconcileOrphans},
		{RecPrune, time.Hour, rc.prune},
	}
}

// Reconcile runs one reconciler now (tests and operators use it).
func (s *Server) Reconcile(ctx context.Context, name string) error {
	for _, r := range s.rec.list() {
		if r.name == name {
			return r.run(ctx)
		}
	}
	return fmt.Errorf("no reconciler %q", name)
}

func (rc *reconcilers) loop(ctx context.Context, r reconciler) {
	// Reconcilers poll: they leave the last of the hour's GitHub quota to
	// launches (github.Background), and catch up after the reset.
	ctx = github.Background(ctx)
	t := time.NewTicker(r.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := r.run(ctx); err != nil && ctx.Err() == nil {
			rc.log.Warn("reconciler failed", "reconciler", r.name, "err", err)
			rc.metrics.reconcileError(r.name)
		}
	}
}

// record applies a reconciler's finding in its own transaction and counts it.
func (rc *reconcilers) record(ctx context.Context, rec, action string, fn func(tx store.Tx, fx *afterCommit, now time.Time) (bool, error)) error {
	did := false
	err := rc.cp.update(ctx, func(tx store.Tx, fx *afterCommit) error {
		var err error
		if did, err = fn(tx, fx, rc.now().UTC()); err != nil || !did {
			return err
		}
		return rc.cp.count(tx, "reconciler/"+rec+"/"+action, 1)
	})
	if err == nil && did {
		rc.metrics.reconciled(rec, action)
		rc.cp.kickPlacement()
	}
	return err
}

// reconcileMissedWebhooks finds what lost webhooks did not tell: queued
// jobs Tandem never heard of (in every recently active repository), and
// the present state of jobs that have not moved for a while.
func (rc *reconcilers) reconcileMissedWebhooks(ctx context.Context) error {
	now := rc.now().UTC()
	var repos []store.Repo
	var stale []store.Job
	err := rc.st.View(ctx, func(tx store.ReadTx) error {
		var err error
		if repos, err = tx.Repos(now.Add(-rc.iv.ActiveRepoWindow)); err != nil {
			return err
		}
		jobs, err := tx.Jobs(store.JobFilter{States: []store.JobState{
			store.JobQueued, store.JobScheduled, store.JobLaunching, store.JobRunning}})
		if err != nil {
			return err
		}
		for _, j := range jobs {
			if now.Sub(j.UpdatedAt) >= rc.iv.LostAfter {
				stale = append(stale, j)
			}
		}
		// A job GitHub holds back may wait for hours, and so may one it
		// keeps for runners that are not Tandem's: the queued jobs listed
		// below find a held one once GitHub queues it, and each is asked
		// about on its own only now and then, in case its end was missed.
		waiting, err := tx.Jobs(store.JobFilter{States: []store.JobState{store.JobWaiting, store.JobUnmatched}})
		if err != nil {
			return err
		}
		stale = append(stale, rc.waitChecks.due(waiting, now)...)
		return nil
	})
	if err != nil {
		return err
	}
	var errs []error
	for _, repo := range repos {
		jobs, err := rc.gh.ListQueuedJobs(ctx, repo.Installation, repo.FullName)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", repo.FullName, err))
			continue
		}
		for _, gj := range jobs {
			if err := rc.learn(ctx, repo.Installation, gj, "found queued on GitHub"); err != nil {
				errs = append(errs, err)
			}
		}
	}
	sort.Slice(stale, func(a, b int) bool { return stale[a].UpdatedAt.Before(stale[b].UpdatedAt) })
	if len(stale) > staleBatch {
		stale = stale[:staleBatch]
	}
	for _, j := range stale {
		if err := rc.refreshJob(ctx, j); err != nil {
			errs = append(errs, fmt.Errorf("job %d: %w", j.ID, err))
		}
	}
	return errors.Join(errs...)
}

// learn applies a job's state as GitHub's API reports it, as a webhook
// would have. Nothing happens if Tandem already knows as much.
func (rc *reconcilers) learn(ctx context.Context, installation int64, gj github.Job, why string) error {
	action := gj.Status
	switch gj.Status {
	case "queued", "in_progress", "completed", "waiting":
	case "pending", "requested":
		action = "queued"
	default:
		return nil
	}
	owner, _, _ := strings.Cut(gj.Repo, "/")
	ev := github.WorkflowJobEvent{Action: action, Job: gj, InstallationID: installation,
		Repo: github.Repository{FullName: gj.Repo, Owner: owner, Visibility: gj.RepoVisibility}}
	var res applied
	src := "reconciler/" + RecMissedWebhooks
	err := rc.cp.update(ctx, func(tx store.Tx, fx *afterCommit) error {
		before, err := tx.Job(gj.ID)
		known := err == nil
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if res, err = rc.cp.applyEvent(tx, fx, ev, src, rc.now().UTC()); err != nil {
			return err
		}
		if known && res.changed {
			after, err := tx.Job(gj.ID)
			if err != nil {
				return err
			}
			if after.State != before.State {
				return rc.cp.count(tx, src+"/jobs-moved", 1)
			}
		}
		return nil
	})
	if err == nil && res.changed {
		rc.log.Info("reconciler: applied GitHub's view of a job", "reconciler", RecMissedWebhooks,
			"job", gj.ID, "repo", gj.Repo, "status", gj.Status, "why", why, "outcome", res.outcome)
		rc.cp.kickPlacement()
	}
	return err
}

// refreshJob asks GitHub about a job that has not moved for a while. A
// running job whose runner VM has ended and that GitHub still reports in
// progress after LostAfter is lost.
func (rc *reconcilers) refreshJob(ctx context.Context, j store.Job) error {
	gj, err := rc.gh.GetJob(ctx, j.Installation, j.Repo, j.ID)
	if err != nil {
		return err
	}
	if gj.Repo == "" {
		gj.Repo = j.Repo
	}
	if gj.Status != "in_progress" || j.State != store.JobRunning || gj.RunnerName != j.RunnerName {
		if (gj.Status == "queued" && (j.State == store.JobQueued || j.State == store.JobUnmatched)) ||
			(gj.Status == "waiting" && j.State == store.JobWaiting) {
			return nil
		}
		return rc.learn(ctx, j.Installation, gj, "job had not moved for "+rc.iv.LostAfter.String())
	}
	// Running on GitHub and here: is its runner still alive?
	return rc.record(ctx, RecMissedWebhooks, "jobs-lost", func(tx store.Tx, fx *afterCommit, now time.Time) (bool, error) {
		r, err := tx.Runner(j.RunnerName)
		if errors.Is(err, store.ErrNotFound) {
			return false, nil // a runner not ours: GitHub will end it
		}
		if err != nil || r.State != store.RunnerEnded || now.Sub(r.EndedAt) < rc.iv.LostAfter {
			return false, err
		}
		cur, err := tx.Job(j.ID)
		if err != nil || cur.RunnerName != r.Name {
			return false, err
		}
		rule, err := rc.cp.move(fx, &cur, jobStep{ev: lifecycle.RunnerVanished}, now)
		if err != nil || rule.To == lifecycle.Unchanged {
			return false, err
		}
		cur.Reason = fmt.Sprintf("runner %s's VM ended %s ago (%s) and GitHub still reports the job in progress",
			r.Name, now.Sub(r.EndedAt).Round(time.Second), orText(r.Reason, "exited"))
		fx.do(func() { rc.log.Warn("job lost", "job", cur.ID, "reason", cur.Reason) })
		return true, tx.UpdateJob(cur, store.Event{Source: "reconciler/" + RecMissedWebhooks, Reason: cur.Reason})
	})
}

// verify asks verifyLoop to fetch a job's state from GitHub soon. Safe to
// call inside a transaction: it only records the wish.
func (rc *reconcilers) verify(jobID int64) {
	// Only the leader asks GitHub; another replica's request is dropped
	// (its periodic passes bring the job up to date all the same).
	if rc.cp.leading() {
		rc.toVerify.add(jobID)
	}
}

// verifyLoop brings jobs whose fate Tandem could only guess up to date with
// GitHub.
func (rc *reconcilers) verifyLoop(ctx context.Context) {
	ctx = github.Background(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-rc.toVerify.kick:
		}
		for _, id := range rc.toVerify.take() {
			var j store.Job
			err := rc.st.View(ctx, func(tx store.ReadTx) error {
				var err error
				j, err = tx.Job(id)
				return err
			})
			if err == nil && !j.State.Terminal() {
				err = rc.refreshJob(ctx, j)
			}
			if err != nil && ctx.Err() == nil {
				rc.log.Warn("checking a job with GitHub", "job", id, "err", err)
			}
		}
	}
}

// jobSet is the jobs to check against GitHub soon; kick says it grew.
type jobSet struct {
	kick chan struct{}

	mu  sync.Mutex
	ids map[int64]bool // guarded by mu
}

func newJobSet() *jobSet {
	return &jobSet{kick: make(chan struct{}, 1), ids: map[int64]bool{}}
}

func (q *jobSet) add(id int64) {
	q.mu.Lock()
	q.ids[id] = true
	q.mu.Unlock()
	kick(q.kick)
}

// take empties the set and returns what it held, in no order.
func (q *jobSet) take() []int64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	ids := make([]int64, 0, len(q.ids))
	for id := range q.ids {
		ids = append(ids, id)
	}
	clear(q.ids)
	return ids
}

// waitChecks spaces out the questions about jobs GitHub holds back.
type waitChecks struct {
	mu   sync.Mutex
	last map[int64]time.Time // guarded by mu: waiting job → when it was last picked
}

// Every waitCheckEvery, at most waitCheckBatch waiting jobs are asked about.
const (
	waitCheckEvery = 30 * time.Minute
	waitCheckBatch = 10
)

func newWaitChecks() *waitChecks { return &waitChecks{last: map[int64]time.Time{}} }

// due picks, of the jobs waiting now, the ones longest without a question
// and not asked about for waitCheckEvery, waitCheckBatch at most, and
// forgets jobs that no longer wait.
func (w *waitChecks) due(waiting []store.Job, now time.Time) []store.Job {
	w.mu.Lock()
	defer w.mu.Unlock()
	last := make(map[int64]time.Time, len(waiting))
	var due []store.Job
	for _, j := range waiting {
		t := j.UpdatedAt
		if l, ok := w.last[j.ID]; ok && l.After(t) {
			t = l
		}
		last[j.ID] = t
		if now.Sub(t) >= waitCheckEvery {
			due = append(due, j)
		}
	}
	sort.Slice(due, func(a, b int) bool { return last[due[a].ID].Before(last[due[b].ID]) })
	if len(due) > waitCheckBatch {
		due = due[:waitCheckBatch]
	}
	for _, j := range due {
		last[j.ID] = now
	}
	w.last = last
	return due
}

// redeliveries remembers the deliveries this process asked GitHub to
// redeliver, so that each is asked for once.
type redeliveries struct {
	mu    sync.Mutex
	asked map[string]time.Time // guarded by mu: delivery GUID → when
}

func newRedeliveries() *redeliveries { return &redeliveries{asked: map[string]time.Time{}} }

// forget drops what was asked before t (GitHub no longer lists it).
func (r *redeliveries) forget(before time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for g, t := range r.asked {
		if t.Before(before) {
			delete(r.asked, g)
		}
	}
}

func (r *redeliveries) done(guid string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.asked[guid]
	return ok
}

func (r *redeliveries) add(guid string, at time.Time) {
	r.mu.Lock()
	r.asked[guid] = at
	r.mu.Unlock()
}

func orText(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// reconcileFailedDeliveries asks GitHub to redeliver, once, each recent
// workflow_job delivery that never reached Tandem.
func (rc *reconcilers) reconcileFailedDeliveries(ctx context.Context) error {
	since := rc.now().Add(-72 * time.Hour)
	ds, err := rc.gh.ListDeliveries(ctx, since)
	if err != nil {
		return err
	}
	type attempts struct {
		ok     bool
		latest github.Delivery
	}
	byGUID := map[string]*attempts{}
	for _, d := range ds {
		if d.Event != "workflow_job" {
			continue
		}
		a := byGUID[d.GUID]
		if a == nil {
			a = &attempts{latest: d}
			byGUID[d.GUID] = a
		}
		if d.StatusCode >= 200 && d.StatusCode < 300 {
			a.ok = true
		}
		if d.DeliveredAt.After(a.latest.DeliveredAt) {
			a.latest = d
		}
	}
	rc.redone.forget(since)
	var errs []error
	for guid, a := range byGUID {
		if a.ok || rc.redone.done(guid) {
			continue
		}
		have := false
		if err := rc.st.View(ctx, func(tx store.ReadTx) error {
			_, err := tx.Delivery(guid)
			have = err == nil
			if errors.Is(err, store.ErrNotFound) {
				return nil
			}
			return err
		}); err != nil {
			return err
		}
		if have {
			continue // it reached us after all (GitHub logged a slow reply)
		}
		if err := rc.gh.Redeliver(ctx, a.latest.ID); err != nil {
			errs = append(errs, fmt.Errorf("redeliver %s: %w", guid, err))
			continue
		}
		rc.redone.add(guid, rc.now())
		rc.log.Info("reconciler: asked GitHub to redeliver a failed webhook", "reconciler", RecFailedDeliveries,
			"delivery", guid, "action", a.latest.Action, "status", a.latest.Status)
		if err := rc.record(ctx, RecFailedDeliveries, "redelivered", func(store.Tx, *afterCommit, time.Time) (bool, error) {
			return true, nil
		}); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// reconcileOrphans deletes Tandem's GitHub runners whose VM is gone, and
// stops VMs whose runner took no job within the idle timeout (asking GitHub
// what became of the job first, so demand is recomputed from the truth).
func (rc *reconcilers) reconcileOrphans(ctx context.Context) error {
	now := rc.now().UTC()
	var runners []store.Runner
	lost := map[int64]bool{} // installations the App may not act for
	if err := rc.st.View(ctx, func(tx store.ReadTx) error {
		var err error
		if runners, err = tx.Runners(store.RunnerFilter{}); err != nil {
			return err
		}
		for _, r := range runners {
			if _, seen := lost[r.Installation]; seen || r.Installation == 0 {
				continue
			}
			inst, err := tx.Installation(r.Installation)
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
			lost[r.Installation] = err == nil && inst.State != store.InstallationActive
		}
		return nil
	}); err != nil {
		return err
	}
	type scopeKey struct {
		inst  int64
		scope github.Scope
	}
	scopes := map[scopeKey]bool{}
	byName := map[string]store.Runner{}
	var errs []error
	for _, r := range runners {
		byName[r.Name] = r
		if r.Installation != 0 && !lost[r.Installation] && now.Sub(r.CreatedAt) < rc.iv.ActiveRepoWindow {
			scopes[scopeKey{r.Installation, runnerScope(r)}] = true
		}
		if r.State == store.RunnerIdle && now.Sub(r.StartedAt) >= rc.idleTimeout {
			if err := rc.stopIdle(ctx, r); err != nil {
				errs = append(errs, err)
			}
		}
		// A warm pool's VM waits for a job up to its pool's max_age (the
		// pool pass recycles it); once claimed, it has as long to start
		// as any runner.
		stuck, since := rc.configTimeout+10*time.Minute, r.CreatedAt
		if r.Pool != "" {
			since = r.ClaimedAt
		}
		if (r.State == store.RunnerAssigned || r.State == store.RunnerBooting) && !since.IsZero() && now.Sub(since) >= stuck {
			if rc.cp.retire(ctx, r, fmt.Sprintf("did not start within %s", stuck), "reconciler/"+RecOrphans+"/stuck-vms-stopped") {
				rc.metrics.reconciled(RecOrphans, "stuck-vms-stopped")
			}
		}
	}
	for k := range scopes {
		ghRunners, err := rc.gh.ListRunners(ctx, k.inst, k.scope)
		if err != nil {
			errs = append(errs, fmt.Errorf("list runners of %s: %w", scopeString(k.scope), err))
			continue
		}
		for _, gr := range ghRunners {
			if !rc.cp.isOurRunnerName(gr.Name) || gr.Busy {
				continue
			}
			if r, ok := byName[gr.Name]; ok && r.State != store.RunnerEnded {
				continue // its VM is alive
			}
			if err := rc.gh.DeleteRunner(ctx, k.inst, k.scope, gr.ID); err != nil && !errors.Is(err, github.ErrNotFound) {
				errs = append(errs, fmt.Errorf("delete runner %s: %w", gr.Name, err))
				continue
			}
			rc.log.Info("reconciler: deleted a GitHub runner whose VM is gone", "reconciler", RecOrphans,
				"runner", gr.Name, "scope", scopeString(k.scope))
			if err := rc.record(ctx, RecOrphans, "github-runners-deleted", func(store.Tx, *afterCommit, time.Time) (bool, error) { return true, nil }); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// stopIdle stops a runner that took no job within the idle timeout, after
// bringing its job up to date from GitHub. When GitHub still has the job
// queued and the runner is online with GitHub, GitHub chose not to give it
// the job all along: the job asks for another runner group (runs-on:
// group:), or the group's rules exclude it. It is unmatched, and gets no
// VM again: booting another would end the same way. A runner that never
// came online (its VM could not reach GitHub) is a failed launch, and its
// job is placed again until its launches are spent.
func (rc *reconcilers) stopIdle(ctx context.Context, r store.Runner) error {
	passedOver := false
	if r.JobID != 0 {
		var j store.Job
		err := rc.st.View(ctx, func(tx store.ReadTx) error {
			var err error
			j, err = tx.Job(r.JobID)
			return err
		})
		if err == nil {
			if gj, err := rc.gh.GetJob(ctx, j.Installation, j.Repo, j.ID); err == nil {
				if gj.Repo == "" {
					gj.Repo = j.Repo
				}
				if err := rc.learn(ctx, j.Installation, gj, "its runner stayed idle"); err != nil {
					return err
				}
				passedOver = gj.Status == "queued" && rc.online(ctx, r)
			}
		}
	}
	first, configured := rc.cp.beginRetire(r.Name)
	if !first {
		return nil // being retired already
	}
	reason := fmt.Sprintf("took no job within %s", rc.idleTimeout)
	if passedOver {
		group := orText(r.Group, "the one runner.group_id names")
		why := fmt.Sprintf("GitHub kept it queued while runner %s (runner group %s) sat idle and online for %s: "+
			"its workflow asks for another runner group (runs-on: group:), or the group does not allow its repository or workflow; "+
			"no VM is booted for it again (an operator may queue it again: POST /api/v1/jobs/%d/retry)",
			r.Name, group, rc.idleTimeout, r.JobID)
		if _, err := rc.cp.unroute(ctx, r.Name, r.JobID, why, "reconciler/"+RecOrphans); err != nil {
			rc.log.Warn("marking a job unmatched", "job", r.JobID, "err", err)
		}
	}
	if rc.cp.finishRetire(ctx, r, configured, reason, "reconciler/"+RecOrphans+"/idle-vms-stopped") {
		rc.log.Info("reconciler: stopped an idle runner VM", "reconciler", RecOrphans, "runner", r.Name, "reason", reason)
		rc.metrics.reconciled(RecOrphans, "idle-vms-stopped")
	}
	return nil
}

// online reports whether GitHub lists runner r as online: its process
// reached GitHub and waits for a job. false when GitHub cannot be asked.
func (rc *reconcilers) online(ctx context.Context, r store.Runner) bool {
	if r.GitHubID == 0 {
		return false
	}
	runners, err := rc.gh.ListRunners(ctx, r.Installation, runnerScope(r))
	if err != nil {
		rc.log.Warn("asking GitHub whether an idle runner is online", "runner", r.Name, "err", err)
		return false
	}
	for _, gr := range runners {
		if gr.ID == r.GitHubID {
			return gr.Status == "online" && !gr.Busy
		}
	}
	return false
}

func scopeString(sc github.Scope) string {
	if sc.Repo == "" {
		return sc.Owner
	}
	return sc.Owner + "/" + sc.Repo
}

func (rc *reconcilers) prune(ctx context.Context) error {
	n, err := rc.st.Prune(ctx, rc.now().Add(-retention))
	if err == nil && n > 0 {
		rc.log.Info("pruned old records", "rows", n)
	}
	return err
}
