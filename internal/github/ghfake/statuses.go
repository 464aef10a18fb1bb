package ghfake

import (
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Commit statuses, as GitHub's REST API keeps them: POST
// /repos/{owner}/{repo}/statuses/{sha} by an installation of the App (its
// "Commit statuses: write" permission is not modelled), GET
// /repos/{owner}/{repo}/commits/{ref}/statuses newest first. The commit
// must be one of the repository's runs' (GitHub answers 422 for a commit
// it does not have); a status needs a valid state, a description of at
// most 140 characters, and there may be at most 1000 per context and
// commit.

// CommitStatus is one status of a commit.
type CommitStatus struct {
	ID          int64     `json:"id"`
	NodeID      string    `json:"node_id"`
	State       string    `json:"state"`
	Description string    `json:"description,omitempty"`
	TargetURL   string    `json:"target_url,omitempty"`
	Context     string    `json:"context"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
}

var fullSHA = regexp.MustCompile(`^[0-9a-f]{40}$`)

func statusKey(repo, sha string) string { return strings.ToLower(repo) + "@" + strings.ToLower(sha) }

func (s *Server) createStatus(w http.ResponseWriter, r *http.Request, inst *installation) {
	var in struct {
		State       string `json:"state"`
		Description string `json:"description"`
		TargetURL   string `json:"target_url"`
		Context     string `json:"context"`
	}
	if err := decodeBody(r, &in); err != nil {
		writeError(w, http.StatusBadRequest, "Problems parsing JSON")
		return
	}
	switch {
	case !slices.Contains([]string{"error", "failure", "pending", "success"}, in.State):
		invalid(w, fmt.Sprintf("%q is not a valid state", in.State))
		return
	case len([]rune(in.Description)) > 140:
		invalid(w, "description is too long (maximum is 140 characters)")
		return
	case in.TargetURL != "" && !strings.HasPrefix(in.TargetURL, "http://") && !strings.HasPrefix(in.TargetURL, "https://"):
		invalid(w, "target_url must be an http(s) URL")
		return
	}
	if in.Context == "" {
		in.Context = "default"
	}
	sha := strings.ToLower(r.PathValue("sha"))
	s.mu.Lock()
	defer s.mu.Unlock()
	sc, ok := s.scopeLocked(r, inst)
	if !ok {
		notFound(w)
		return
	}
	known := fullSHA.MatchString(sha) && slices.ContainsFunc(s.runsOfLocked(sc.repo), func(rn *run) bool { return rn.headSHA == sha })
	if !known {
		invalid(w, "No commit found for SHA: "+r.PathValue("sha"))
		return
	}
	key := statusKey(sc.repo.fullName(), sha)
	n := 0
	for _, st := range s.statuses[key] {
		if st.Context == in.Context {
			n++
		}
	}
	if n >= 1000 {
		invalid(w, "This SHA and context has reached the maximum number of statuses.")
		return
	}
	s.ids.status++
	now := s.now()
	st := CommitStatus{ID: s.ids.status, NodeID: nodeID("SC_", s.ids.status), State: in.State, Description: in.Description,
		TargetURL: in.TargetURL, Context: in.Context, CreatedAt: now, UpdatedAt: now}
	if s.statuses == nil {
		s.statuses = map[string][]CommitStatus{}
	}
	s.statuses[key] = append(s.statuses[key], st)
	writeJSON(w, http.StatusCreated, st)
}

func (s *Server) listStatuses(w http.ResponseWriter, r *http.Request, inst *installation) {
	s.mu.Lock()
	sc, ok := s.scopeLocked(r, inst)
	var all []CommitStatus
	if ok {
		all = slices.Clone(s.statuses[statusKey(sc.repo.fullName(), r.PathValue("ref"))])
	}
	s.mu.Unlock()
	if !ok {
		notFound(w)
		return
	}
	slices.Reverse(all) // newest first
	writeJSON(w, http.StatusOK, nonNil(paginate(w, r, all)))
}

// runsOfLocked lists a repository's runs.
func (s *Server) runsOfLocked(rp *repo) []*run {
	var out []*run
	for _, rn := range s.runs {
		if rn.repo == rp {
			out = append(out, rn)
		}
	}
	return out
}

// Statuses returns the statuses of a repository's ("owner/name") commit,
// newest first.
func (s *Server) Statuses(repo, sha string) []CommitStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := slices.Clone(s.statuses[statusKey(repo, sha)])
	slices.Reverse(out)
	return out
}
