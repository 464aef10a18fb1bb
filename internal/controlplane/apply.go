package controlplane

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/tandem-ci/tandem/internal/github"
	"github.com/tandem-ci/tandem/internal/labels"
	"github.com/tandem-ci/tandem/internal/lifecycle"
	"github.com/tandem-ci/tandem/internal/store"
)

// applied is what applying one delivery did.
type applied struct {
	outcome string // for metrics: created, queued, waiting, running, completed, duplicate, stale, ignored, malformed
	changed bool   // jobs or runners changed: the dispatcher should look
}

// applyDelivery applies one stored delivery inside tx and marks it processed.
func (s *Server) applyDelivery(tx store.Tx, fx *afterCommit, d store.Delivery) (applied, error) {
	now := s.now().UTC()
	if d.Event == "installation" || d.Event == "installation_repositories" {
		ev, err := github.ParseInstallationEvent(d.Event, d.Payload)
		if err != nil {
			return applied{outcome: "malformed"}, tx.MarkDelivery(d.GUID, now, err.Error())
		}
		res, err := s.applyInstallation(tx, fx, ev, now)
		if err != nil {
			return res, fmt.Errorf("delivery %s (%s %s): %w", d.GUID, d.Event, ev.Action, err)
		}
		return res, tx.MarkDelivery(d.GUID, now, "")
	}
	ev, err := github.ParseWorkflowJobEvent(d.Payload)
	if err != nil {
		// Ingest parsed it before storing; a delivery stored by an older
		// binary might still fail. It can never succeed: record why.
		return applied{outcome: "malformed"}, tx.MarkDelivery(d.GUID, now, err.Error())
	}
	res, err := s.applyEvent(tx, fx, ev, "webhook", now)
	if err != nil {
		return res, fmt.Errorf("delivery %s (%s job %d): %w", d.GUID, ev.Action, ev.Job.ID, err)
	}
	return res, tx.MarkDelivery(d.GUID, now, "")
}

// githubEvent is the lifecycle event of a workflow_job event. A job GitHub
// holds back (an environment's approval, a concurrency group) has status
// waiting; GitHub's own examples send it with action waiting and with
// action queued, so the status decides.
func githubEvent(ev github.WorkflowJobEvent) (lifecycle.Event, bool) {
	switch ev.Action {
	case "queued", "waiting":
		if ev.Action == "waiting" || strings.EqualFold(ev.Job.Status, "waiting") {
			return lifecycle.GHWaiting, true
		}
		return lifecycle.GHQueued, true
	case "in_progress":
		return lifecycle.GHRunning, true
	case "completed":
		if ev.Job.Conclusion == "cancelled" {
			return lifecycle.GHCancelled, true
		}
		return lifecycle.GHCompleted, true
	}
	return "", false
}

// applyEvent moves a job as a workflow_job event says. The same code applies
// webhooks and what reconcilers learn from GitHub's API (source says which).
// Events may come late, twice or out of order: the lifecycle table keeps a
// job where it is for an event that would move it back.
func (s *Server) applyEvent(tx store.Tx, fx *afterCommit, ev github.WorkflowJobEvent, source string, now time.Time) (applied, error) {
	req, ok, perr := s.cfg.Labels.Parse(ev.Job.Labels)
	if !ok && perr == nil {
		return applied{outcome: "ignored"}, nil // not a job for Tandem
	}
	if err := tx.TouchRepo(ev.Repo.FullName, ev.InstallationID, now); err != nil {
		return applied{}, err
	}
	job, err := tx.Job(ev.Job.ID)
	known := err == nil
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return applied{}, err
	}
	if !known {
		// A late webhook of an installation the App has lost: no job is
		// taken in that the App may not run.
		if inst, err := tx.Installation(ev.InstallationID); err == nil && inst.State != store.InstallationActive {
			return applied{outcome: "ignored"}, nil
		} else if err != nil && !errors.Is(err, store.ErrNotFound) {
			return applied{}, err
		}
	}
	if known {
		identity(&job, ev)
	} else {
		if job, err = s.createJob(tx, fx, ev, req, perr, source, now); err != nil {
			return applied{}, err
		}
		if job.State.Terminal() {
			return applied{outcome: "unschedulable", changed: true}, nil
		}
	}
	ghEv, ok := githubEvent(ev)
	if !ok {
		return applied{outcome: "ignored", changed: !known}, nil
	}
	switch ghEv {
	case lifecycle.GHRunning:
		return s.bindRunning(tx, fx, job, ev.Job.RunnerName, source, now)
	case lifecycle.GHCompleted, lifecycle.GHCancelled:
		return s.complete(tx, fx, job, ghEv, ev.Job, source, now)
	}
	// Queued or waiting: a job moves between the two, is opened again when
	// Tandem had given up on it, and otherwise stays where it is.
	from := job.State
	rule, err := s.move(fx, &job, jobStep{ev: ghEv}, now)
	if err != nil {
		return applied{}, err
	}
	if rule.To != lifecycle.Unchanged {
		switch {
		case rule.Does(lifecycle.Reopen):
			job.Reason = fmt.Sprintf("opened again (%d of %d): GitHub still has it %s after Tandem gave up",
				job.Reopens, lifecycle.MaxReopens, orText(ev.Job.Status, ev.Action))
			fx.do(func() { s.log.Info("job opened again", "job", job.ID, "reopens", job.Reopens, "source", source) })
		case job.State == store.JobWaiting:
			job.Reason = "GitHub holds it back (an environment's approval or a concurrency group); no VM until it is queued"
		default:
			job.Reason = "waiting for a host"
		}
		if rule.Does(lifecycle.FreeRunner) {
			if err := s.unbind(tx, job.RunnerName, job.ID, now); err != nil {
				return applied{}, err
			}
			job.RunnerName, job.HostID = "", ""
		}
		if err := tx.UpdateJob(job, store.Event{Source: source, Reason: job.Reason}); err != nil {
			return applied{}, err
		}
	}
	switch {
	case !known:
		return applied{outcome: "created", changed: true}, nil
	case rule.To != lifecycle.Unchanged:
		return applied{outcome: string(job.State), changed: true}, nil
	case from.Terminal():
		return applied{outcome: "stale"}, nil
	}
	return applied{outcome: "duplicate"}, nil
}

// createJob stores a job Tandem hears of for the first time, queued, or
// unschedulable when its Tandem labels are malformed (perr).
func (s *Server) createJob(tx store.Tx, fx *afterCommit, ev github.WorkflowJobEvent, req labels.Request, perr error, source string, now time.Time) (store.Job, error) {
	job := store.Job{
		ID: ev.Job.ID, RunID: ev.Job.RunID, RunAttempt: ev.Job.RunAttempt,
		Installation: ev.InstallationID, Org: ev.Repo.Owner, Repo: ev.Repo.FullName,
		Name: ev.Job.Name, Workflow: ev.Job.WorkflowName,
		Labels: ev.Job.Labels, LabelKey: store.LabelKey(ev.Job.Labels),
		State: lifecycle.New, CreatedAt: ev.Job.CreatedAt.UTC(), QueuedAt: now,
	}
	if job.Org == "" {
		job.Org = ev.Org
	}
	identity(&job, ev)
	job.Public = ev.Repo.Visibility != "private" && ev.Repo.Visibility != "internal"
	if errors.Is(perr, labels.ErrLimits) {
		// Kept as far as a runner could carry them: the reason says the rest.
		job.Labels = boundLabels(job.Labels)
		job.LabelKey = store.LabelKey(job.Labels)
	}
	refused := ""
	if job.Public && perr == nil && !s.publicAllowed(job.Org, job.Repo) {
		refused = fmt.Sprintf("%s is a public repository: anyone who can open a pull request could run code on this fleet. "+
			"To run its jobs, list it (or %s) under github.allow_public in the config", job.Repo, job.Org)
		if ev.Repo.Visibility == "" {
			refused = fmt.Sprintf("GitHub did not say whether %s is public, so it is taken to be: anyone who can open a pull request "+
				"could run code on this fleet. To run its jobs, list it (or %s) under github.allow_public in the config", job.Repo, job.Org)
		}
	}
	step := jobStep{ev: lifecycle.Seen}
	switch {
	case perr != nil:
		step.ev = lifecycle.SeenInvalid
	case refused != "":
		step.ev = lifecycle.SeenRefused
	}
	if _, err := s.move(fx, &job, step, now); err != nil {
		return job, err
	}
	switch {
	case perr != nil:
		job.Reason = perr.Error()
	case refused != "":
		job.Reason = refused
		fx.do(func() { s.log.Warn("job refused", "job", job.ID, "repo", job.Repo, "why", "public repository") })
	default:
		job.Arch, job.VCPUs, job.MemoryMiB = req.Arch, req.VCPUs, req.MemoryMiB
		job.Reason = "waiting for a host"
	}
	reason := "queued on GitHub"
	if ev.Action == "waiting" {
		reason = "waiting on GitHub"
	} else if ev.Action != "queued" {
		reason = fmt.Sprintf("first seen as %s (the queued event was missed)", ev.Action)
	}
	if err := tx.CreateJob(job, store.Event{Source: source, Reason: reason}); err != nil {
		return job, err
	}
	if s.pools.on() && job.State != store.JobRefused && perr == nil {
		fx.do(func() { s.pools.arrive(job, s.cfg.Labels, s.place.policyFor) })
	}
	if source != "webhook" {
		if err := s.count(tx, source+"/jobs-found", 1); err != nil {
			return job, err
		}
	}
	return job, nil
}

// publicAllowed reports whether the config lets jobs of public repository
// repo (of org) run: github.allow_public lists it or its org.
func (s *Server) publicAllowed(org, repo string) bool {
	for _, a := range s.cfg.AllowPublic {
		if strings.EqualFold(a, org) || strings.EqualFold(a, repo) {
			return true
		}
	}
	return false
}

// identity copies what GitHub says of where a job comes from, and GitHub's
// own times, into j. It is a stranger's input that the API and the CLI
// show, so it is checked and bounded: a branch of at most 255 bytes, a
// commit id in hex, an https link, a login of at most 100 bytes. A field
// an event does not carry (the API's view has no sender) is kept.
func identity(j *store.Job, ev github.WorkflowJobEvent) {
	gj := ev.Job
	if b := labels.Truncate(gj.HeadBranch, 255); b != "" {
		j.HeadBranch = b
	}
	if isHexID(gj.HeadSHA) {
		j.HeadSHA = strings.ToLower(gj.HeadSHA)
	}
	if u, err := url.Parse(gj.HTMLURL); err == nil && len(gj.HTMLURL) <= 2048 && u.Scheme == "https" && u.Host != "" {
		j.HTMLURL = u.String()
	}
	if ev.Sender != "" && len(ev.Sender) <= 100 {
		j.Sender = ev.Sender
	}
	// GitHub sets started_at on a queued job too, to its creation time.
	if !gj.StartedAt.IsZero() && (gj.Status == "in_progress" || gj.Status == "completed") {
		j.GitHubStartedAt = gj.StartedAt.UTC()
	}
	if !gj.CompletedAt.IsZero() {
		j.GitHubCompletedAt = gj.CompletedAt.UTC()
	}
}

// isHexID reports whether s is a git object id: 40 (SHA-1) or 64
// (SHA-256) hex digits.
func isHexID(s string) bool {
	if len(s) != 40 && len(s) != 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// boundLabels is ls cut to labels.MaxLabels labels of at most
// labels.MaxLabelLen bytes each.
func boundLabels(ls []string) []string {
	out := slices.Clone(ls[:min(len(ls), labels.MaxLabels)])
	for i, l := range out {
		out[i] = labels.Truncate(l, labels.MaxLabelLen)
	}
	return out
}

// bindRunning records that runnerName took job. If that runner is ours and
// was made for another job of the same labels, the two jobs trade runners:
// the other job gets the runner this job was holding, so every queued job
// still has one VM on its way (lifecycle.BindTaker, lifecycle.FreeRunner).
func (s *Server) bindRunning(tx store.Tx, fx *afterCommit, job store.Job, runnerName, source string, now time.Time) (applied, error) {
	held := "" // our runner this waiting job held, if GitHub gave it another
	if (job.State == store.JobScheduled || job.State == store.JobLaunching) && job.RunnerName != runnerName {
		held = job.RunnerName
	}
	rule, err := s.move(fx, &job, jobStep{ev: lifecycle.GHRunning, facts: lifecycle.Facts{
		RunnerNamed: runnerName != "", SameRunner: runnerName == job.RunnerName}}, now)
	if err != nil {
		return applied{}, err
	}
	if rule.To == lifecycle.Unchanged {
		if job.State.Terminal() || runnerName == "" {
			return applied{outcome: "stale"}, nil
		}
		return applied{outcome: "duplicate"}, nil
	}
	job.RunnerName, job.HostID = runnerName, ""
	job.Reason = "running on " + runnerName
	if runnerName == "" {
		job.Reason = "running (GitHub did not name the runner)"
	}
	if rule.Does(lifecycle.BindTaker) {
		gave, err := s.bindTaker(tx, fx, &job, held, runnerName, now)
		if err != nil {
			return applied{}, err
		}
		if gave {
			held = ""
		}
	}
	if err := tx.UpdateJob(job, store.Event{Source: source, Reason: job.Reason}); err != nil {
		return applied{}, err
	}
	if rule.Does(lifecycle.FreeRunner) && held != "" {
		if err := s.unbind(tx, held, job.ID, now); err != nil {
			return applied{}, err
		}
	}
	return applied{outcome: "running", changed: true}, nil
}

// bindTaker makes runnerName, if it is ours, busy with job, and hands the
// job it was made for the runner spare (reporting whether it took it).
func (s *Server) bindTaker(tx store.Tx, fx *afterCommit, job *store.Job, spare, runnerName string, now time.Time) (bool, error) {
	r, err := tx.Runner(runnerName)
	if errors.Is(err, store.ErrNotFound) {
		job.Reason = "running on " + runnerName + ", a runner Tandem did not make"
		return false, nil
	}
	if err != nil {
		return false, err
	}
	job.HostID = r.HostID
	prev := r.JobID
	if _, err := moveRunner(&r, lifecycle.TookJob); err != nil {
		return false, err
	}
	if r.State == store.RunnerBusy && r.BusyAt.IsZero() {
		r.BusyAt = now
	}
	r.JobID, r.UpdatedAt = job.ID, now
	if err := tx.PutRunner(r); err != nil {
		return false, err
	}
	if prev == 0 || prev == job.ID {
		return false, nil
	}
	return true, s.handOver(tx, fx, prev, spare, runnerName, now)
}

// handOver tells job prevID that its runner taker took another job, and
// gives it the runner spare when that can serve it (else spare is freed).
func (s *Server) handOver(tx store.Tx, fx *afterCommit, prevID int64, spare, taker string, now time.Time) error {
	prev, err := tx.Job(prevID)
	if errors.Is(err, store.ErrNotFound) {
		return s.unbind(tx, spare, 0, now)
	}
	if err != nil {
		return err
	}
	var sp store.Runner
	ok := false
	if spare != "" {
		if sp, err = tx.Runner(spare); err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		// GitHub must be able to give prev to it: same labels, and the
		// same repository or runner group (groups may overlap, so a job
		// may well be taken by another group's runner).
		ok = err == nil && sp.State != store.RunnerEnded && sp.LabelKey == prev.LabelKey && s.place.serves(sp, prev)
	}
	rule := lifecycle.Rule{To: lifecycle.Unchanged}
	if prev.RunnerName == taker { // else it has moved on already
		if rule, err = s.move(fx, &prev, jobStep{ev: lifecycle.RunnerTaken,
			facts: lifecycle.Facts{Spare: ok, Registered: ok && registered(sp)}}, now); err != nil {
			return err
		}
	}
	if rule.To == lifecycle.Unchanged || !ok {
		if err := s.unbind(tx, spare, 0, now); err != nil {
			return err
		}
	}
	if rule.To == lifecycle.Unchanged {
		return nil
	}
	if ok {
		sp.JobID, sp.UpdatedAt = prev.ID, now
		if err := tx.PutRunner(sp); err != nil {
			return err
		}
		prev.RunnerName, prev.HostID = sp.Name, sp.HostID
		prev.Reason = fmt.Sprintf("its runner %s took another job; now waiting for %s", taker, sp.Name)
	} else {
		prev.RunnerName, prev.HostID = "", ""
		prev.Reason = fmt.Sprintf("its runner %s took another job", taker)
	}
	return tx.UpdateJob(prev, store.Event{Source: "webhook", Reason: prev.Reason})
}

// unbind detaches one of our runners from job jobID (0: from whatever it
// holds) so the dispatcher re-assigns it to a queued job or stops it.
func (s *Server) unbind(tx store.Tx, name string, jobID int64, now time.Time) error {
	if name == "" {
		return nil
	}
	r, err := tx.Runner(name)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if r.State == store.RunnerEnded || r.State == store.RunnerBusy || (jobID != 0 && r.JobID != jobID) {
		return nil
	}
	r.JobID, r.UpdatedAt = 0, now
	return tx.PutRunner(r)
}

// complete ends a job as GitHub reports it (ev: lifecycle.GHCompleted or
// GHCancelled). A job that ended before any runner took it frees the runner
// VM made for it.
func (s *Server) complete(tx store.Tx, fx *afterCommit, job store.Job, ev lifecycle.Event, gj github.Job, source string, now time.Time) (applied, error) {
	// Whatever Tandem makes of it (a lost job has ended here already),
	// GitHub's end of a job may be what a retry of its run waits for.
	if err := s.wakeRetries(tx, fx, job, now); err != nil {
		return applied{}, err
	}
	if gj.RunnerName != "" && !job.State.Terminal() && job.State != store.JobRunning {
		// The in_progress event was missed (or comes late): bind first,
		// so runner accounting (and the trade) stays right, and the
		// runner that ran it, ours for it or another, is taken for busy
		// with it rather than freed for another job (a spare, which
		// would be stopped before its VM ends by itself, or is kept
		// after a failure).
		if _, err := s.bindRunning(tx, fx, job, gj.RunnerName, source, now); err != nil {
			return applied{}, err
		}
		var err error
		if job, err = tx.Job(job.ID); err != nil {
			return applied{}, err
		}
	}
	held := ""
	if job.State != store.JobRunning {
		held = job.RunnerName
	}
	rule, err := s.move(fx, &job, jobStep{ev: ev}, now)
	if err != nil {
		return applied{}, err
	}
	if rule.To == lifecycle.Unchanged {
		return applied{outcome: "stale"}, nil
	}
	job.Conclusion = gj.Conclusion
	switch {
	case job.State == store.JobCancelled:
		job.Reason = "cancelled on GitHub"
	case gj.Conclusion == "":
		job.Reason = "completed"
	default:
		job.Reason = "completed: " + gj.Conclusion
	}
	if err := tx.UpdateJob(job, store.Event{Source: source, Reason: job.Reason}); err != nil {
		return applied{}, err
	}
	if job.State == store.JobCompleted && s.cfg.KeepFailedAny {
		if err := s.keepVerdict(tx, fx, job, now); err != nil {
			return applied{}, err
		}
	}
	if rule.Does(lifecycle.FreeRunner) && held != "" {
		if err := s.unbind(tx, held, job.ID, now); err != nil {
			return applied{}, err
		}
		if job.State == store.JobCancelled {
			if err := s.count(tx, "reconciler/cancelled-queued/vms-freed", 1); err != nil {
				return applied{}, err
			}
		}
	}
	return applied{outcome: "completed", changed: true}, nil
}
