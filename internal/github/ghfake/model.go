package ghfake

import (
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"time"
)

type run struct {
	id        int64
	repo      *repo
	number    int64
	name      string
	headSHA   string
	attempt   int // its latest attempt: 1, and one more at each re-run
	createdAt time.Time
	updatedAt time.Time
	startedAt time.Time // when its latest attempt started
	jobs      []*job    // every attempt's, oldest first
}

type job struct {
	id              int64
	run             *run
	attempt         int // the run attempt it belongs to
	name            string
	script          string
	labels          []string
	status          string
	conclusion      string
	runnerID        int64
	runnerName      string
	groupID         int64
	groupName       string
	group           string // the runner group it targets (runs-on: group:); "": any
	environment     string // the protected environment it waits for; "": none
	rerunOf         *job   // the job of an earlier attempt it re-runs; nil: none
	rerunAs         *job   // the job of a later attempt that re-runs it; nil: none
	createdAt       time.Time
	startedAt       time.Time // zero until claimed
	completedAt     time.Time
	exitCode        int
	output          string
	cancelRequested bool
	claims          int
	heard           time.Time // real time its runner was last heard from, while in progress
	annotation      string    // why GitHub ended it, when its runner did not say
}

type label struct {
	ID   int64  `json:"id"`
	Name string `json:"name"`
	Type string `json:"type"`
}

type runner struct {
	id         int64
	name       string
	repo       *repo  // repository runner; nil for an organization runner
	org        string // organization runner's org; "" for a repository runner
	labels     []label
	groupID    int64
	workFolder string
	createdAt  time.Time
	jitToken   string
	sessionAt  time.Time // zero: offline
	jobID      int64     // 0: idle
}

type session struct {
	runnerID     int64
	runnerName   string
	completedJob int64 // the job this session completed, for idempotent retries
}

func (rr *runner) scope() string {
	if rr.repo != nil {
		return rr.repo.fullName()
	}
	return rr.org
}

// covers reports whether the runner may run jobs of repository r.
func (rr *runner) covers(r *repo) bool {
	if rr.repo != nil {
		return rr.repo == r
	}
	return strings.EqualFold(rr.org, r.owner.login)
}

// matches reports whether the runner's labels include all of want,
// case-insensitively.
func (rr *runner) matches(want []string) bool {
	for _, w := range want {
		if !slices.ContainsFunc(rr.labels, func(l label) bool { return strings.EqualFold(l.Name, w) }) {
			return false
		}
	}
	return true
}

func (rr *runner) status() string {
	if rr.sessionAt.IsZero() {
		return "offline"
	}
	return "online"
}

func (rr *runner) labelNames() []string {
	out := make([]string, len(rr.labels))
	for i, l := range rr.labels {
		out[i] = l.Name
	}
	return out
}

func (rr *runner) info() RunnerInfo {
	return RunnerInfo{
		ID: rr.id, Name: rr.name, Scope: rr.scope(), Org: rr.repo == nil,
		Labels: rr.labelNames(), GroupID: rr.groupID, Status: rr.status(),
		Busy: rr.jobID != 0, JobID: rr.jobID, CreatedAt: rr.createdAt, SessionAt: rr.sessionAt,
	}
}

func (j *job) info() JobInfo {
	ji := JobInfo{
		ID: j.id, RunID: j.run.id, RunAttempt: j.attempt, Repo: j.run.repo.fullName(), Name: j.name,
		Labels: slices.Clone(j.labels), Script: j.script, Status: j.status, Conclusion: j.conclusion,
		RunnerID: j.runnerID, RunnerName: j.runnerName, RunnerGroupID: j.groupID,
		ExitCode: j.exitCode, Output: j.output, CancelRequested: j.cancelRequested, Annotation: j.annotation, Claims: j.claims,
		CreatedAt: j.createdAt, StartedAt: j.startedAt, CompletedAt: j.completedAt,
	}
	if j.rerunOf != nil {
		ji.RerunOf = j.rerunOf.id
	}
	if j.rerunAs != nil {
		ji.RerunAs = j.rerunAs.id
	}
	return ji
}

// jobsAt returns the jobs of the run as it stood at attempt n, oldest
// first: each job of an attempt up to n that no attempt up to n re-ran.
// A job that was not re-run belongs to every later attempt too.
func (rn *run) jobsAt(n int) []*job {
	var out []*job
	for _, j := range rn.jobs {
		if j.attempt <= n && (j.rerunAs == nil || j.rerunAs.attempt > n) {
			out = append(out, j)
		}
	}
	return out
}

// latest returns the jobs of the run's latest attempt.
func (rn *run) latest() []*job { return rn.jobsAt(rn.attempt) }

// status of a run, over its latest attempt's jobs: queued (waiting, while
// a job waits for an approval) until a job starts, in_progress until all
// complete, then completed. A re-run thus puts a completed run back in
// progress.
func (rn *run) status() (status, conclusion string) {
	started, done, waiting := false, 0, false
	failed, cancelled := false, false
	jobs := rn.latest()
	for _, j := range jobs {
		switch j.status {
		case StatusWaiting:
			waiting = true
		case StatusInProgress:
			started = true
		case StatusCompleted:
			started = true
			done++
			failed = failed || j.conclusion == ConclusionFailure
			cancelled = cancelled || j.conclusion == ConclusionCancelled
		}
	}
	switch {
	case done == len(jobs):
		switch {
		case failed:
			return StatusCompleted, ConclusionFailure
		case cancelled:
			return StatusCompleted, ConclusionCancelled
		}
		return StatusCompleted, ConclusionSuccess
	case started:
		return StatusInProgress, ""
	case waiting:
		return StatusWaiting, ""
	}
	return StatusQueued, ""
}

// finishJobLocked completes a job, frees and removes its (ephemeral)
// runner, and sends the "completed" webhook.
func (s *Server) finishJobLocked(j *job, conclusion string) {
	now := s.now()
	j.status = StatusCompleted
	j.conclusion = conclusion
	j.completedAt = now
	j.run.updatedAt = now
	if rr, ok := s.runners[j.runnerID]; ok && rr.jobID == j.id {
		s.removeRunnerLocked(rr)
	}
	s.emitLocked("completed", j)
}

// removeRunnerLocked deletes a runner from the registry; its JIT token
// dies with it.
func (s *Server) removeRunnerLocked(rr *runner) {
	delete(s.runners, rr.id)
	delete(s.jitTokens, rr.jitToken)
	if !rr.sessionAt.IsZero() {
		s.usedJIT[rr.jitToken] = true // a second session stays a conflict
	}
	s.wakeRunnersLocked() // a long poll of the removed runner must end
}

// ---- REST representations ----

type apiAccount struct {
	Login   string `json:"login"`
	ID      int64  `json:"id"`
	NodeID  string `json:"node_id"`
	Type    string `json:"type"`
	URL     string `json:"url"`
	HTMLURL string `json:"html_url"`
}

func (a *account) api() apiAccount {
	return apiAccount{
		Login: a.login, ID: a.id, NodeID: nodeID("U_", a.id), Type: a.typ,
		URL: "https://api.github.com/users/" + a.login, HTMLURL: "https://github.com/" + a.login,
	}
}

type apiRepo struct {
	ID            int64      `json:"id"`
	NodeID        string     `json:"node_id"`
	Name          string     `json:"name"`
	FullName      string     `json:"full_name"`
	Private       bool       `json:"private"`
	Visibility    string     `json:"visibility"`
	Owner         apiAccount `json:"owner"`
	HTMLURL       string     `json:"html_url"`
	URL           string     `json:"url"`
	DefaultBranch string     `json:"default_branch"`
}

func (r *repo) api() apiRepo {
	vis := "private"
	if r.public {
		vis = "public"
	}
	return apiRepo{
		ID: r.id, NodeID: nodeID("R_", r.id), Name: r.name, FullName: r.fullName(), Private: !r.public, Visibility: vis,
		Owner: r.owner.api(), HTMLURL: "https://github.com/" + r.fullName(),
		URL: "https://api.github.com/repos/" + r.fullName(), DefaultBranch: "main",
	}
}

type apiRunner struct {
	ID     int64   `json:"id"`
	Name   string  `json:"name"`
	OS     string  `json:"os"`
	Status string  `json:"status"`
	Busy   bool    `json:"busy"`
	Labels []label `json:"labels"`
	// RunnerGroupID is returned by GitHub for organization runners.
	RunnerGroupID int64 `json:"runner_group_id,omitempty"`
	Ephemeral     bool  `json:"ephemeral"`
}

func (rr *runner) api() apiRunner {
	a := apiRunner{
		ID: rr.id, Name: rr.name, OS: "linux", Status: rr.status(), Busy: rr.jobID != 0,
		Labels: slices.Clone(rr.labels), Ephemeral: true,
	}
	if rr.repo == nil {
		a.RunnerGroupID = rr.groupID
	}
	return a
}

// apiJob is a workflow job as both the REST API and the workflow_job
// webhook represent it.
type apiJob struct {
	ID              int64    `json:"id"`
	RunID           int64    `json:"run_id"`
	RunAttempt      int      `json:"run_attempt"`
	RunURL          string   `json:"run_url"`
	URL             string   `json:"url"`
	HTMLURL         string   `json:"html_url"`
	CheckRunURL     string   `json:"check_run_url"`
	NodeID          string   `json:"node_id"`
	HeadSHA         string   `json:"head_sha"`
	HeadBranch      string   `json:"head_branch"`
	Status          string   `json:"status"`
	Conclusion      *string  `json:"conclusion"`
	CreatedAt       string   `json:"created_at"`
	StartedAt       string   `json:"started_at"`
	CompletedAt     *string  `json:"completed_at"`
	Name            string   `json:"name"`
	WorkflowName    string   `json:"workflow_name"`
	Steps           []any    `json:"steps"`
	Labels          []string `json:"labels"`
	RunnerID        *int64   `json:"runner_id"`
	RunnerName      *string  `json:"runner_name"`
	RunnerGroupID   *int64   `json:"runner_group_id"`
	RunnerGroupName *string  `json:"runner_group_name"`
}

func (j *job) api() apiJob {
	full := j.run.repo.fullName()
	a := apiJob{
		ID: j.id, RunID: j.run.id, RunAttempt: j.attempt,
		RunURL:      fmt.Sprintf("https://api.github.com/repos/%s/actions/runs/%d", full, j.run.id),
		URL:         fmt.Sprintf("https://api.github.com/repos/%s/actions/jobs/%d", full, j.id),
		HTMLURL:     fmt.Sprintf("https://github.com/%s/actions/runs/%d/job/%d", full, j.run.id, j.id),
		CheckRunURL: fmt.Sprintf("https://api.github.com/repos/%s/check-runs/%d", full, j.id),
		NodeID:      nodeID("CR_", j.id), HeadSHA: j.run.headSHA, HeadBranch: "main",
		Status: j.status, CreatedAt: timestamp(j.createdAt), Name: j.name,
		WorkflowName: j.run.name, Steps: []any{}, Labels: slices.Clone(j.labels),
	}
	// GitHub sets started_at on a queued job too, to its creation time.
	a.StartedAt = a.CreatedAt
	if !j.startedAt.IsZero() {
		a.StartedAt = timestamp(j.startedAt)
	}
	if j.status == StatusCompleted {
		c, t := j.conclusion, timestamp(j.completedAt)
		a.Conclusion, a.CompletedAt = &c, &t
	}
	if j.runnerID != 0 {
		id, name, gid, gname := j.runnerID, j.runnerName, j.groupID, j.groupName
		a.RunnerID, a.RunnerName, a.RunnerGroupID, a.RunnerGroupName = &id, &name, &gid, &gname
	}
	return a
}

type apiRun struct {
	ID           int64   `json:"id"`
	Name         string  `json:"name"`
	NodeID       string  `json:"node_id"`
	HeadBranch   string  `json:"head_branch"`
	HeadSHA      string  `json:"head_sha"`
	RunNumber    int64   `json:"run_number"`
	RunAttempt   int     `json:"run_attempt"`
	Event        string  `json:"event"`
	Status       string  `json:"status"`
	Conclusion   *string `json:"conclusion"`
	WorkflowID   int64   `json:"workflow_id"`
	URL          string  `json:"url"`
	HTMLURL      string  `json:"html_url"`
	JobsURL      string  `json:"jobs_url"`
	CreatedAt    string  `json:"created_at"`
	UpdatedAt    string  `json:"updated_at"`
	RunStartedAt string  `json:"run_started_at"`
	Repository   apiRepo `json:"repository"`
}

func (rn *run) api() apiRun {
	full := rn.repo.fullName()
	st, concl := rn.status()
	a := apiRun{
		ID: rn.id, Name: rn.name, NodeID: nodeID("WFR_", rn.id), HeadBranch: "main",
		HeadSHA: rn.headSHA, RunNumber: rn.number, RunAttempt: rn.attempt, Event: "push", Status: st,
		WorkflowID: 1000 + rn.repo.id%1000,
		URL:        fmt.Sprintf("https://api.github.com/repos/%s/actions/runs/%d", full, rn.id),
		HTMLURL:    fmt.Sprintf("https://github.com/%s/actions/runs/%d", full, rn.id),
		JobsURL:    fmt.Sprintf("https://api.github.com/repos/%s/actions/runs/%d/jobs", full, rn.id),
		CreatedAt:  timestamp(rn.createdAt), UpdatedAt: timestamp(rn.updatedAt),
		RunStartedAt: timestamp(rn.startedAt), Repository: rn.repo.api(),
	}
	if concl != "" {
		a.Conclusion = &concl
	}
	return a
}

// timestamp formats t as GitHub does: RFC 3339, UTC, whole seconds.
func timestamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// nodeID makes a GraphQL-node-id-looking string.
func nodeID(prefix string, id int64) string {
	return prefix + base64.RawURLEncoding.EncodeToString(fmt.Appendf(nil, "%d", id))
}
