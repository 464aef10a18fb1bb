package ghfake

import (
	"errors"
	"net/http"
	"time"
)

// controlRoutes registers the unauthenticated test-control API, for running
// ghfake as a standalone process (tandem dev ghfake):
//
//	POST /_ghfake/installations        {"account","account_type","repos":[...]} → 201 {"id"}
//	PUT  /_ghfake/installations/{id}/permissions {"actions":"write",...} → 204 (see SetPermissions)
//	POST /_ghfake/jobs                 {"repo","labels","script","name"} or {"repo","jobs":[...]}
//	                                   → 201 {"run_id","job_ids"}
//	POST /_ghfake/jobs/{id}/cancel     → 204
//	POST /_ghfake/jobs/{id}/rerun      → 201 {"job_id"} (see RerunJob)
//	GET  /_ghfake/jobs                 → [JobInfo]
//	GET  /_ghfake/runners              → [RunnerInfo]
//	PUT  /_ghfake/faults               {"lose","fail","duplicate","reorder","max_delay":"250ms"} → 204
//	POST /_ghfake/ratelimit            {"n":3,"mode":"primary"|"secondary"} → 204
//	POST /_ghfake/flush                → 204 once no webhook is in flight
//	GET  /_ghfake/app                  → AppInfo (the App, id 0 before the manifest flow makes one)
//	POST /_ghfake/runner-groups        {"org","name","visibility","repos":[...],"allows_public_repositories"} → 201 {"id"}
func (s *Server) controlRoutes(m *http.ServeMux) {
	m.HandleFunc("POST /_ghfake/installations", s.ctlInstallation)
	m.HandleFunc("PUT /_ghfake/installations/{id}/permissions", s.ctlPermissions)
	m.HandleFunc("POST /_ghfake/jobs", s.ctlQueue)
	m.HandleFunc("POST /_ghfake/jobs/{id}/cancel", s.ctlCancel)
	m.HandleFunc("POST /_ghfake/jobs/{id}/approve", s.ctlApprove)
	m.HandleFunc("POST /_ghfake/jobs/{id}/rerun", s.ctlRerun)
	m.HandleFunc("GET /_ghfake/jobs", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, s.Jobs())
	})
	m.HandleFunc("GET /_ghfake/runners", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, s.Runners())
	})
	m.HandleFunc("PUT /_ghfake/faults", s.ctlFaults)
	m.HandleFunc("POST /_ghfake/runner-groups", s.ctlRunnerGroup)
	m.HandleFunc("POST /_ghfake/ratelimit", s.ctlRateLimit)
	m.HandleFunc("POST /_ghfake/flush", func(w http.ResponseWriter, _ *http.Request) {
		s.Flush()
		w.WriteHeader(http.StatusNoContent)
	})
}

func (s *Server) ctlInstallation(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Account     string   `json:"account"`
		AccountType string   `json:"account_type"`
		Repos       []string `json:"repos"`
	}
	if err := decodeBody(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, "Problems parsing JSON")
		return
	}
	if req.AccountType == "" {
		req.AccountType = AccountOrganization
	}
	id := s.AddInstallation(req.Account, req.AccountType, req.Repos...)
	if id == 0 {
		invalid(w, "account must be a valid login and account_type Organization or User.")
		return
	}
	writeJSON(w, http.StatusCreated, map[string]int64{"id": id})
}

func (s *Server) ctlPermissions(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(r, "id")
	if !ok {
		notFound(w)
		return
	}
	var perms map[string]string
	if err := decodeBody(r, &perms); err != nil {
		writeError(w, http.StatusBadRequest, "Problems parsing JSON")
		return
	}
	if ctlFailed(w, s.SetPermissions(id, perms)) {
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// ctlFailed answers a control call's error, if any: 404 for ErrNotFound,
// 422 with the error for any other; it reports whether it answered.
func ctlFailed(w http.ResponseWriter, err error) bool {
	switch {
	case errors.Is(err, ErrNotFound):
		notFound(w)
	case err != nil:
		invalid(w, err.Error())
	default:
		return false
	}
	return true
}

func (s *Server) ctlRunnerGroup(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Org string `json:"org"`
		RunnerGroupSpec
	}
	if err := decodeBody(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, "Problems parsing JSON")
		return
	}
	id, err := s.SetRunnerGroup(req.Org, req.RunnerGroupSpec)
	if err != nil {
		invalid(w, err.Error())
		return
	}
	writeJSON(w, http.StatusCreated, map[string]int64{"id": id})
}

func (s *Server) ctlQueue(w http.ResponseWriter, r *http.Request) {
	var req struct {
		JobSpec
		Jobs []JobSpec `json:"jobs"`
	}
	if err := decodeBody(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, "Problems parsing JSON")
		return
	}
	specs := req.Jobs
	if len(specs) == 0 {
		specs = []JobSpec{req.JobSpec}
	}
	runID, ids, err := s.QueueRun(req.Repo, specs...)
	if err != nil {
		invalid(w, err.Error())
		return
	}
	writeJSON(w, http.StatusCreated, map[string]any{"run_id": runID, "job_ids": ids})
}

func (s *Server) ctlCancel(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(r, "id")
	if !ok {
		notFound(w)
		return
	}
	if err := s.CancelJob(id); errors.Is(err, ErrNotFound) {
		notFound(w)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) ctlApprove(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(r, "id")
	if !ok {
		notFound(w)
		return
	}
	if ctlFailed(w, s.ApproveJob(id)) {
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) ctlRerun(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(r, "id")
	if !ok {
		notFound(w)
		return
	}
	newID, err := s.RerunJob(id)
	if ctlFailed(w, err) {
		return
	}
	writeJSON(w, http.StatusCreated, map[string]int64{"job_id": newID})
}

func (s *Server) ctlFaults(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Lose      float64 `json:"lose"`
		Fail      float64 `json:"fail"`
		Duplicate float64 `json:"duplicate"`
		Reorder   float64 `json:"reorder"`
		MaxDelay  string  `json:"max_delay"`
	}
	if err := decodeBody(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, "Problems parsing JSON")
		return
	}
	f := Faults{Lose: req.Lose, Fail: req.Fail, Duplicate: req.Duplicate, Reorder: req.Reorder}
	for _, p := range []float64{f.Lose, f.Fail, f.Duplicate, f.Reorder} {
		if p < 0 || p > 1 {
			invalid(w, "probabilities must be within [0, 1].")
			return
		}
	}
	if req.MaxDelay != "" {
		d, err := time.ParseDuration(req.MaxDelay)
		if err != nil || d < 0 {
			invalid(w, "max_delay must be a duration such as 250ms.")
			return
		}
		f.MaxDelay = d
	}
	s.SetFaults(f)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) ctlRateLimit(w http.ResponseWriter, r *http.Request) {
	var req struct {
		N    int    `json:"n"`
		Mode string `json:"mode"`
	}
	if err := decodeBody(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, "Problems parsing JSON")
		return
	}
	var mode RateLimitMode
	switch req.Mode {
	case "", "primary":
		mode = RateLimitPrimary
	case "secondary":
		mode = RateLimitSecondary
	default:
		invalid(w, `mode must be "primary" or "secondary".`)
		return
	}
	if req.N < 0 {
		invalid(w, "n must not be negative.")
		return
	}
	s.RateLimit(req.N, mode)
	w.WriteHeader(http.StatusNoContent)
}
