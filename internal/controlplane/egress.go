package controlplane

import (
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/tandem-ci/tandem/internal/egress"
	"github.com/tandem-ci/tandem/internal/store"
)

// EgressView is a job's egress: the policy its VM ran under and what the
// VM did under it.
type EgressView struct {
	Job    int64          `json:"job"`
	Repo   string         `json:"repo"`
	Runner string         `json:"runner,omitempty"`
	Policy egress.Policy  `json:"policy"`
	Record *egress.Record `json:"record,omitempty"`
}

// SuggestView is an allowlist suggested from a repository's recent jobs.
type SuggestView struct {
	Repo        string              `json:"repo"`
	Jobs        int                 `json:"jobs"`    // jobs looked at
	Recorded    int                 `json:"records"` // of which under a recording policy
	Suggestions []egress.Suggestion `json:"suggestions"`
}

// handleJobEgress serves GET /api/v1/jobs/{id}/egress.
func (a *api) handleJobEgress(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		httpError(w, http.StatusBadRequest, "job id: want a positive integer")
		return
	}
	var v EgressView
	err = a.st.View(r.Context(), func(tx store.ReadTx) error {
		j, err := tx.Job(id)
		if err != nil {
			return err
		}
		if !who(r).sees(j.Org) {
			return store.ErrNotFound
		}
		v = EgressView{Job: j.ID, Repo: j.Repo, Runner: j.RunnerName, Policy: egress.Policy{Mode: egress.Open}}
		if j.RunnerName == "" {
			return nil
		}
		ru, err := tx.Runner(j.RunnerName)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if ru.Egress.Mode != "" {
			v.Policy = ru.Egress
		}
		v.Record = ru.EgressRecord
		return nil
	})
	if storeFailed(w, err, "no such job") {
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// handleEgressSuggest serves GET /api/v1/egress/suggest?repo=OWNER/NAME&last=N:
// the allowlist that would have let the recorded flows of the repository's
// last N finished jobs through (egress.Suggest).
func (a *api) handleEgressSuggest(w http.ResponseWriter, r *http.Request) {
	repo := r.URL.Query().Get("repo")
	owner, name, ok := strings.Cut(repo, "/")
	if !ok || owner == "" || name == "" || strings.Contains(name, "/") {
		httpError(w, http.StatusBadRequest, "repo: want OWNER/NAME")
		return
	}
	if !who(r).sees(owner) {
		httpError(w, http.StatusForbidden, "this token may not read "+owner+"'s jobs")
		return
	}
	last := 20
	if q := r.URL.Query().Get("last"); q != "" {
		n, err := strconv.Atoi(q)
		if err != nil || n < 1 || n > 500 {
			httpError(w, http.StatusBadRequest, "last: want 1 to 500")
			return
		}
		last = n
	}
	v := SuggestView{Repo: repo, Suggestions: []egress.Suggestion{}}
	var records []egress.Record
	err := a.st.View(r.Context(), func(tx store.ReadTx) error {
		jobs, err := tx.Jobs(store.JobFilter{Repo: repo, States: []store.JobState{store.JobCompleted, store.JobFailed,
			store.JobCancelled, store.JobLost}, Newest: true, Limit: last})
		if err != nil {
			return err
		}
		var names []string
		for _, j := range jobs {
			if j.RunnerName != "" {
				names = append(names, j.RunnerName)
			}
		}
		v.Jobs = len(jobs)
		if len(names) == 0 {
			return nil
		}
		rs, err := tx.Runners(store.RunnerFilter{Names: names})
		if err != nil {
			return err
		}
		for _, ru := range rs {
			if ru.EgressRecord != nil {
				records = append(records, *ru.EgressRecord)
			}
		}
		return nil
	})
	if err != nil {
		httpError(w, http.StatusInternalServerError, err.Error())
		return
	}
	v.Recorded = len(records)
	v.Suggestions = append(v.Suggestions, egress.Suggest(records)...)
	writeJSON(w, http.StatusOK, v)
}
