package ghfake

import (
	"cmp"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/tandem-ci/tandem/internal/github/ghfake/runnerapi"
)

func (s *Server) routes() {
	m := http.NewServeMux()
	// App (JWT) endpoints.
	m.HandleFunc("GET /app", s.appHandler(s.getApp))
	m.HandleFunc("GET /app/installations", s.appHandler(s.listInstallations))
	m.HandleFunc("POST /app/installations/{id}/access_tokens", s.appHandler(s.createToken))
	m.HandleFunc("GET /app/hook/deliveries", s.appHandler(s.listDeliveries))
	m.HandleFunc("GET /app/hook/deliveries/{id}", s.appHandler(s.getDelivery))
	m.HandleFunc("POST /app/hook/deliveries/{id}/attempts", s.appHandler(s.redeliver))
	// Installation-token endpoints.
	m.HandleFunc("GET /installation/repositories", s.instHandler(s.listRepos))
	for _, scope := range []string{"/repos/{owner}/{repo}", "/orgs/{org}"} {
		m.HandleFunc("POST "+scope+"/actions/runners/generate-jitconfig", s.instHandler(s.generateJIT))
		m.HandleFunc("GET "+scope+"/actions/runners", s.instHandler(s.listRunners))
		m.HandleFunc("GET "+scope+"/actions/runners/{id}", s.instHandler(s.getRunner))
		m.HandleFunc("DELETE "+scope+"/actions/runners/{id}", s.instHandler(s.deleteRunner))
	}
	m.HandleFunc("GET /orgs/{org}/actions/runner-groups", s.instHandler(s.listRunnerGroups))
	m.HandleFunc("GET /repos/{owner}/{repo}/actions/runs", s.instHandler(s.listRuns))
	m.HandleFunc("GET /repos/{owner}/{repo}/actions/runs/{run_id}", s.instHandler(s.getRun))
	m.HandleFunc("GET /repos/{owner}/{repo}/actions/runs/{run_id}/jobs", s.instHandler(s.listJobs))
	m.HandleFunc("GET /repos/{owner}/{repo}/actions/runs/{run_id}/attempts/{attempt_number}/jobs", s.instHandler(s.listAttemptJobs))
	m.HandleFunc("GET /repos/{owner}/{repo}/actions/jobs/{job_id}", s.instHandler(s.getJob))
	m.HandleFunc("POST /repos/{owner}/{repo}/actions/jobs/{job_id}/rerun", s.instHandler(s.postJobRerun))
	m.HandleFunc("POST /repos/{owner}/{repo}/statuses/{sha}", s.instHandler(s.createStatus))
	m.HandleFunc("GET /repos/{owner}/{repo}/commits/{ref}/statuses", s.instHandler(s.listStatuses))
	// Fake runner protocol.
	m.HandleFunc("POST "+runnerapi.PathSession, s.runnerSession)
	m.HandleFunc("POST "+runnerapi.PathAcquire, s.runnerAcquire)
	m.HandleFunc("POST "+runnerapi.PathJobs+"{id}/heartbeat", s.runnerHeartbeat)
	m.HandleFunc("POST "+runnerapi.PathJobs+"{id}/complete", s.runnerComplete)
	s.controlRoutes(m)
	s.manifestRoutes(m)
	m.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { notFound(w) })
	s.mux = m
}

func pathID(r *http.Request, name string) (int64, bool) {
	id, err := strconv.ParseInt(r.PathValue(name), 10, 64)
	return id, err == nil && id > 0
}

// ---- installations and tokens ----

type apiInstallation struct {
	ID                  int64             `json:"id"`
	Account             apiAccount        `json:"account"`
	AppID               int64             `json:"app_id"`
	TargetID            int64             `json:"target_id"`
	TargetType          string            `json:"target_type"`
	RepositorySelection string            `json:"repository_selection"`
	AccessTokensURL     string            `json:"access_tokens_url"`
	RepositoriesURL     string            `json:"repositories_url"`
	Permissions         map[string]string `json:"permissions"`
	Events              []string          `json:"events"`
	CreatedAt           string            `json:"created_at"`
	UpdatedAt           string            `json:"updated_at"`
}

// defaultPermissions are an installation's permissions until
// SetPermissions changes them.
func defaultPermissions() map[string]string {
	return map[string]string{
		"actions": "read", "administration": "write", "metadata": "read",
		"organization_self_hosted_runners": "write",
	}
}

// permissionLevels ranks the access levels of a permission.
var permissionLevels = map[string]int{"read": 1, "write": 2, "admin": 3}

// can reports whether the installation has permission perm at level or
// above ("read" < "write" < "admin").
func (in *installation) can(perm, level string) bool {
	want := permissionLevels[level]
	return want > 0 && permissionLevels[in.permissions[perm]] >= want
}

func (s *Server) listInstallations(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	all := make([]apiInstallation, 0, len(s.installations))
	for _, in := range s.installations {
		all = append(all, apiInstallation{
			ID: in.id, Account: in.account.api(), AppID: s.app.id,
			TargetID: in.account.id, TargetType: in.account.typ, RepositorySelection: "selected",
			AccessTokensURL: fmt.Sprintf("https://api.github.com/app/installations/%d/access_tokens", in.id),
			RepositoriesURL: "https://api.github.com/installation/repositories",
			Permissions:     maps.Clone(in.permissions), Events: []string{"workflow_job"},
			CreatedAt: timestamp(in.createdAt), UpdatedAt: timestamp(in.createdAt),
		})
	}
	s.mu.Unlock()
	slices.SortFunc(all, func(a, b apiInstallation) int { return cmp.Compare(a.ID, b.ID) })
	writeJSON(w, http.StatusOK, paginate(w, r, all))
}

func (s *Server) createToken(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(r, "id")
	if !ok {
		notFound(w)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	in, ok := s.installations[id]
	if !ok {
		notFound(w)
		return
	}
	if in.suspended {
		writeError(w, http.StatusForbidden, "This installation has been suspended")
		return
	}
	tok := secret("ghs_")
	exp := s.now().Add(s.cfg.TokenTTL)
	s.tokens[tok] = &instToken{installID: id, expires: exp}
	writeJSON(w, http.StatusCreated, map[string]any{
		"token": tok, "expires_at": timestamp(exp), "permissions": maps.Clone(in.permissions),
		"repository_selection": "selected",
	})
}

func (s *Server) listRepos(w http.ResponseWriter, r *http.Request, inst *installation) {
	s.mu.Lock()
	all := make([]apiRepo, 0, len(inst.repos))
	for _, key := range inst.repos {
		all = append(all, s.repos[key].api())
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{
		"total_count": len(all), "repository_selection": "selected", "repositories": paginate(w, r, all),
	})
}

// ---- scopes ----

// scope is the repository or organization a runner request addresses.
type scope struct {
	repo *repo  // set for /repos/{owner}/{repo}
	org  string // set for /orgs/{org}
}

// scopeLocked resolves the request's scope as seen by inst. It reports
// false when the installation cannot see it: GitHub then answers 404.
func (s *Server) scopeLocked(r *http.Request, inst *installation) (scope, bool) {
	if org := r.PathValue("org"); org != "" {
		a := inst.account
		return scope{org: a.login}, a.typ == AccountOrganization && strings.EqualFold(a.login, org)
	}
	rp, ok := s.repos[strings.ToLower(r.PathValue("owner")+"/"+r.PathValue("repo"))]
	if !ok || rp.installID != inst.id {
		return scope{}, false
	}
	return scope{repo: rp}, true
}

// has reports whether runner rr is registered in this scope.
func (sc scope) has(rr *runner) bool {
	if sc.repo != nil {
		return rr.repo == sc.repo
	}
	return rr.repo == nil && strings.EqualFold(rr.org, sc.org)
}

// ---- runners ----

type jitRequest struct {
	Name          string   `json:"name"`
	RunnerGroupID int64    `json:"runner_group_id"`
	Labels        []string `json:"labels"`
	WorkFolder    string   `json:"work_folder"`
}

func invalid(w http.ResponseWriter, why string) {
	writeError(w, http.StatusUnprocessableEntity, "Invalid request.\n\n"+why)
}

func (s *Server) generateJIT(w http.ResponseWriter, r *http.Request, inst *installation) {
	var req jitRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, "Problems parsing JSON")
		return
	}
	switch {
	case strings.TrimSpace(req.Name) == "":
		invalid(w, `"name" wasn't supplied.`)
		return
	case len(req.Labels) == 0:
		invalid(w, `"labels" wasn't supplied.`)
		return
	case len(req.Labels) > 100:
		invalid(w, `"labels" has more than 100 items.`)
		return
	case req.RunnerGroupID <= 0:
		invalid(w, `"runner_group_id" wasn't supplied.`)
		return
	case slices.ContainsFunc(req.Labels, func(l string) bool { return strings.TrimSpace(l) == "" }):
		invalid(w, `"labels" contains an empty label.`)
		return
	}
	if req.WorkFolder == "" {
		req.WorkFolder = "_work"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sc, ok := s.scopeLocked(r, inst)
	if !ok {
		notFound(w)
		return
	}
	if sc.repo == nil && s.groupLocked(sc.org, req.RunnerGroupID) == nil {
		notFound(w) // no such runner group in the organization
		return
	}
	for _, rr := range s.runners {
		if sc.has(rr) && strings.EqualFold(rr.name, req.Name) {
			writeError(w, http.StatusConflict,
				fmt.Sprintf("Already exists - A runner with the name %s already exists.", req.Name))
			return
		}
	}
	s.ids.runner++
	rr := &runner{
		id: s.ids.runner, name: req.Name, repo: sc.repo, org: sc.org, groupID: req.RunnerGroupID,
		workFolder: req.WorkFolder, createdAt: s.now(), jitToken: secret("jit_"),
	}
	for _, l := range req.Labels {
		rr.labels = append(rr.labels, label{ID: s.labelIDLocked(l), Name: l, Type: "custom"})
	}
	base := s.cfg.RunnerURL
	if base == "" {
		base = "http://" + r.Host
		if r.TLS != nil {
			base = "https://" + r.Host
		}
	}
	enc, err := runnerapi.JITConfig{
		URL: strings.TrimSuffix(base, "/"), RunnerID: rr.id, RunnerName: rr.name,
		Token: rr.jitToken, Labels: rr.labelNames(), Scope: rr.scope(),
	}.Encode()
	if err != nil {
		s.log.Error("ghfake: encode jit config", "err", err)
		writeError(w, http.StatusInternalServerError, "Server Error")
		return
	}
	s.runners[rr.id] = rr
	s.jitTokens[rr.jitToken] = rr.id
	s.log.Debug("ghfake: jit runner registered", "runner", rr.name, "id", rr.id, "scope", rr.scope())
	writeJSON(w, http.StatusCreated, map[string]any{"runner": rr.api(), "encoded_jit_config": enc})
}

func (s *Server) labelIDLocked(name string) int64 {
	key := strings.ToLower(name)
	if id, ok := s.labelIDs[key]; ok {
		return id
	}
	s.ids.label++
	s.labelIDs[key] = s.ids.label
	return s.ids.label
}

func (s *Server) listRunners(w http.ResponseWriter, r *http.Request, inst *installation) {
	s.mu.Lock()
	sc, ok := s.scopeLocked(r, inst)
	var all []apiRunner
	name := r.URL.Query().Get("name")
	for _, rr := range s.runners {
		if ok && sc.has(rr) && (name == "" || strings.EqualFold(rr.name, name)) {
			all = append(all, rr.api())
		}
	}
	s.mu.Unlock()
	if !ok {
		notFound(w)
		return
	}
	slices.SortFunc(all, func(a, b apiRunner) int { return cmp.Compare(a.ID, b.ID) })
	writeJSON(w, http.StatusOK, map[string]any{"total_count": len(all), "runners": nonNil(paginate(w, r, all))})
}

// runnerInScopeLocked finds runner {id} within the request's scope.
func (s *Server) runnerInScopeLocked(r *http.Request, inst *installation) (*runner, bool) {
	sc, ok := s.scopeLocked(r, inst)
	id, idOK := pathID(r, "id")
	if !ok || !idOK {
		return nil, false
	}
	rr, ok := s.runners[id]
	if !ok || !sc.has(rr) {
		return nil, false
	}
	return rr, true
}

func (s *Server) getRunner(w http.ResponseWriter, r *http.Request, inst *installation) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rr, ok := s.runnerInScopeLocked(r, inst)
	if !ok {
		notFound(w)
		return
	}
	writeJSON(w, http.StatusOK, rr.api())
}

func (s *Server) deleteRunner(w http.ResponseWriter, r *http.Request, inst *installation) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rr, ok := s.runnerInScopeLocked(r, inst)
	if !ok {
		notFound(w)
		return
	}
	if rr.jobID != 0 {
		writeError(w, http.StatusUnprocessableEntity,
			fmt.Sprintf("Bad request - Runner %q is still running a job\"", rr.name))
		return
	}
	s.removeRunnerLocked(rr)
	w.WriteHeader(http.StatusNoContent)
}

// ---- runs and jobs ----

func (s *Server) listRuns(w http.ResponseWriter, r *http.Request, inst *installation) {
	filter := r.URL.Query().Get("status")
	s.mu.Lock()
	sc, ok := s.scopeLocked(r, inst)
	var all []apiRun
	if ok {
		for _, rn := range s.runs {
			if rn.repo != sc.repo {
				continue
			}
			st, concl := rn.status()
			if filter == "" || filter == st || filter == concl {
				all = append(all, rn.api())
			}
		}
	}
	s.mu.Unlock()
	if !ok {
		notFound(w)
		return
	}
	slices.SortFunc(all, func(a, b apiRun) int { return cmp.Compare(b.ID, a.ID) }) // newest first
	writeJSON(w, http.StatusOK, map[string]any{"total_count": len(all), "workflow_runs": nonNil(paginate(w, r, all))})
}

// runLocked finds run {run_id} of the request's repository.
func (s *Server) runLocked(r *http.Request, inst *installation) (*run, bool) {
	sc, ok := s.scopeLocked(r, inst)
	id, idOK := pathID(r, "run_id")
	if !ok || !idOK {
		return nil, false
	}
	rn, ok := s.runs[id]
	return rn, ok && rn.repo == sc.repo
}

func (s *Server) getRun(w http.ResponseWriter, r *http.Request, inst *installation) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rn, ok := s.runLocked(r, inst)
	if !ok {
		notFound(w)
		return
	}
	writeJSON(w, http.StatusOK, rn.api())
}

// listJobs lists a run's jobs: with ?filter=latest (the default) those of
// its latest attempt, with ?filter=all every attempt's.
func (s *Server) listJobs(w http.ResponseWriter, r *http.Request, inst *installation) {
	filter := cmp.Or(r.URL.Query().Get("filter"), "latest")
	if filter != "latest" && filter != "all" {
		invalid(w, `"filter" must be one of: latest, all.`)
		return
	}
	s.writeRunJobs(w, r, inst, func(rn *run) ([]*job, bool) {
		if filter == "latest" {
			return rn.latest(), true
		}
		return rn.jobs, true
	})
}

// writeRunJobs answers with the jobs of the request's run that pick
// chooses (under s.mu), or 404 when there is no such run or pick says so.
func (s *Server) writeRunJobs(w http.ResponseWriter, r *http.Request, inst *installation, pick func(*run) ([]*job, bool)) {
	s.mu.Lock()
	rn, ok := s.runLocked(r, inst)
	var all []apiJob
	if ok {
		var jobs []*job
		if jobs, ok = pick(rn); ok {
			for _, j := range jobs {
				all = append(all, j.api())
			}
		}
	}
	s.mu.Unlock()
	if !ok {
		notFound(w)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"total_count": len(all), "jobs": nonNil(paginate(w, r, all))})
}

// listAttemptJobs lists the jobs of one attempt of a run: the run as it
// stood then (see run.jobsAt).
func (s *Server) listAttemptJobs(w http.ResponseWriter, r *http.Request, inst *installation) {
	s.writeRunJobs(w, r, inst, func(rn *run) ([]*job, bool) {
		n, err := strconv.Atoi(r.PathValue("attempt_number"))
		if err != nil || n < 1 || n > rn.attempt {
			return nil, false
		}
		return rn.jobsAt(n), true
	})
}

// jobLocked finds job {job_id} of the request's repository.
func (s *Server) jobLocked(r *http.Request, inst *installation) (*job, bool) {
	sc, ok := s.scopeLocked(r, inst)
	id, idOK := pathID(r, "job_id")
	if !ok || !idOK {
		return nil, false
	}
	j, ok := s.jobs[id]
	return j, ok && j.run.repo == sc.repo
}

func (s *Server) getJob(w http.ResponseWriter, r *http.Request, inst *installation) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j, ok := s.jobLocked(r, inst)
	if !ok {
		notFound(w)
		return
	}
	writeJSON(w, http.StatusOK, j.api())
}

// nonNil makes an empty list encode as [] rather than null.
func nonNil[T any](v []T) []T {
	if v == nil {
		return []T{}
	}
	return v
}
