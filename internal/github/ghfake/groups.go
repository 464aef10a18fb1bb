package ghfake

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
)

// Runner groups, as GitHub has them: every organization has the "Default"
// group (id 1, every repository, public ones not allowed), and may have
// others. An organization runner is in exactly one group, named by id when
// it registers. A job that names a group (runs-on: {group: NAME}) goes only
// to that group's runners, and an organization runner takes a job only
// when its group allows the job's repository. Repository runners are in no
// group: they take no job that names one. A queued job's payload does not
// say which group it targets; runner_group_id and runner_group_name are
// filled in once a runner takes it.

// Group visibilities: which repositories may use a group.
const (
	GroupVisibilityAll      = "all"
	GroupVisibilitySelected = "selected"
	GroupVisibilityPrivate  = "private"
)

// defaultGroupID is the id of every organization's "Default" group.
const defaultGroupID = 1

// RunnerGroupSpec describes a runner group for SetRunnerGroup.
type RunnerGroupSpec struct {
	Name string `json:"name"`
	// Visibility is "all" (the default), "selected" (the repositories in
	// Repos) or "private" (private repositories only).
	Visibility string `json:"visibility,omitempty"`
	// Repos are the repositories ("owner/name") a "selected" group allows.
	Repos []string `json:"repos,omitempty"`
	// AllowsPublicRepos lets public repositories use the group (GitHub's
	// default is no, for every group including Default).
	AllowsPublicRepos bool `json:"allows_public_repositories,omitempty"`
}

type runnerGroup struct {
	id           int64
	name         string
	visibility   string
	repos        map[int64]bool // repository ids a "selected" group allows
	allowsPublic bool
}

// allows reports whether the group's runners may run repository r's jobs.
func (g *runnerGroup) allows(r *repo) bool {
	if r.public && !g.allowsPublic {
		return false
	}
	switch g.visibility {
	case GroupVisibilitySelected:
		return g.repos[r.id]
	case GroupVisibilityPrivate:
		return !r.public
	}
	return true
}

type apiRunnerGroup struct {
	ID                       int64    `json:"id"`
	Name                     string   `json:"name"`
	Visibility               string   `json:"visibility"`
	Default                  bool     `json:"default"`
	SelectedRepositoriesURL  string   `json:"selected_repositories_url,omitempty"`
	RunnersURL               string   `json:"runners_url"`
	Inherited                bool     `json:"inherited"`
	AllowsPublicRepositories bool     `json:"allows_public_repositories"`
	RestrictedToWorkflows    bool     `json:"restricted_to_workflows"`
	SelectedWorkflows        []string `json:"selected_workflows"`
}

func (g *runnerGroup) api(org string) apiRunnerGroup {
	u := fmt.Sprintf("https://api.github.com/orgs/%s/actions/runner-groups/%d", org, g.id)
	a := apiRunnerGroup{ID: g.id, Name: g.name, Visibility: g.visibility, Default: g.id == defaultGroupID,
		RunnersURL: u + "/runners", AllowsPublicRepositories: g.allowsPublic, SelectedWorkflows: []string{}}
	if g.visibility == GroupVisibilitySelected {
		a.SelectedRepositoriesURL = u + "/repositories"
	}
	return a
}

// groupsLocked returns an organization's runner groups, Default first.
func (s *Server) groupsLocked(org string) []*runnerGroup {
	key := strings.ToLower(org)
	if _, ok := s.groups[key]; !ok {
		s.groups[key] = []*runnerGroup{{id: defaultGroupID, name: "Default", visibility: GroupVisibilityAll}}
	}
	return s.groups[key]
}

// groupLocked returns an organization's group by id, or nil.
func (s *Server) groupLocked(org string, id int64) *runnerGroup {
	for _, g := range s.groupsLocked(org) {
		if g.id == id {
			return g
		}
	}
	return nil
}

// SetRunnerGroup creates an organization's runner group, or replaces the
// settings of the one of that name (compared without case; "Default" is
// the Default group), and returns its id.
func (s *Server) SetRunnerGroup(org string, spec RunnerGroupSpec) (int64, error) {
	if !validName(org) {
		return 0, fmt.Errorf("%w: organization %q", ErrInvalid, org)
	}
	if strings.TrimSpace(spec.Name) == "" || len(spec.Name) > 100 {
		return 0, fmt.Errorf("%w: runner group name %q", ErrInvalid, spec.Name)
	}
	switch spec.Visibility {
	case "":
		spec.Visibility = GroupVisibilityAll
	case GroupVisibilityAll, GroupVisibilitySelected, GroupVisibilityPrivate:
	default:
		return 0, fmt.Errorf("%w: visibility %q (all, selected or private)", ErrInvalid, spec.Visibility)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	repos := map[int64]bool{}
	for _, full := range spec.Repos {
		owner, name, ok := splitRepo(full)
		if !ok || !strings.EqualFold(owner, org) {
			return 0, fmt.Errorf("%w: repository %q is not one of %s's", ErrInvalid, full, org)
		}
		repos[s.repoLocked(owner, name).id] = true
	}
	groups := s.groupsLocked(org)
	i := slices.IndexFunc(groups, func(g *runnerGroup) bool { return strings.EqualFold(g.name, spec.Name) })
	if i < 0 {
		s.ids.group++
		groups = append(groups, &runnerGroup{id: s.ids.group, name: spec.Name})
		s.groups[strings.ToLower(org)] = groups
		i = len(groups) - 1
	}
	g := groups[i]
	g.visibility, g.repos, g.allowsPublic = spec.Visibility, repos, spec.AllowsPublicRepos
	s.wakeRunnersLocked() // a runner may take a job it could not before
	return g.id, nil
}

// admitsLocked reports whether, as far as runner groups go, GitHub gives
// job j to runner rr: a job that names a group goes only to that group's
// runners, and an organization runner's group must allow j's repository.
func (s *Server) admitsLocked(rr *runner, j *job) bool {
	if rr.repo != nil {
		return j.group == ""
	}
	g := s.groupLocked(rr.org, rr.groupID)
	if g == nil {
		return false
	}
	return (j.group == "" || strings.EqualFold(j.group, g.name)) && g.allows(j.run.repo)
}

// claimGroupLocked is the group id and name a job taken by rr reports.
func (s *Server) claimGroupLocked(rr *runner) (int64, string) {
	if rr.repo == nil {
		if g := s.groupLocked(rr.org, rr.groupID); g != nil {
			return g.id, g.name
		}
	}
	return defaultGroupID, "Default"
}

// listRunnerGroups is GET /orgs/{org}/actions/runner-groups, with the
// optional visible_to_repository (a repository name of the organization):
// then only the groups that repository may use.
func (s *Server) listRunnerGroups(w http.ResponseWriter, r *http.Request, inst *installation) {
	s.mu.Lock()
	sc, ok := s.scopeLocked(r, inst)
	if !ok {
		s.mu.Unlock()
		notFound(w)
		return
	}
	var visibleTo *repo
	if name := r.URL.Query().Get("visible_to_repository"); name != "" {
		rp, ok := s.repos[strings.ToLower(sc.org+"/"+name)]
		if !ok {
			s.mu.Unlock()
			notFound(w)
			return
		}
		visibleTo = rp
	}
	all := []apiRunnerGroup{}
	for _, g := range s.groupsLocked(sc.org) {
		if visibleTo == nil || g.allows(visibleTo) {
			all = append(all, g.api(sc.org))
		}
	}
	s.mu.Unlock()
	page := paginate(w, r, all)
	writeJSON(w, http.StatusOK, map[string]any{"total_count": len(all), "runner_groups": page})
}
