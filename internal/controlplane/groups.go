package controlplane

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/failure"
	"github.com/tandem-ci/tandem/internal/github"
	"github.com/tandem-ci/tandem/internal/lifecycle"
	"github.com/tandem-ci/tandem/internal/store"
)

// Runner groups. An organisation runner joins one runner group, and GitHub
// gives it a job only when the group allows the job's repository and the
// job does not ask for another group (runs-on: {group: NAME}). A queued
// job's payload does not say which group it asks for, so Tandem cannot
// know before it tries: the group its runners join is configured, by name,
// per organisation and repository (RunnerSpec.GroupFor), and looked up in
// GitHub; a job the group does not allow is shown as unmatched before a VM
// boots, and a job that asks for another group is found out when the one
// runner booted for it stays idle for the idle timeout while GitHub keeps
// the job queued (reconcile.go, stopIdle). Either way it gets no VM again
// until an operator queues it again (POST /api/v1/jobs/{id}/retry).

// GroupFor is the runner group (by name) a runner for repo's jobs joins:
// the repository's entry in Groups, else its organisation's, else Group.
// "" means the group GroupID names. Keys are compared without case.
func (r RunnerSpec) GroupFor(org, repo string) string {
	for _, k := range []string{repo, org} {
		for key, g := range r.Groups {
			if k != "" && strings.EqualFold(key, k) {
				return g
			}
		}
	}
	return r.Group
}

// groupTTL is how long GitHub's answer about an organisation's runner
// groups is used; groupRecheck how soon a group that was not found is
// looked for again (it may just have been created).
const (
	groupTTL     = 5 * time.Minute
	groupRecheck = 30 * time.Second
)

// notRoutedError says why GitHub will not give a job to the runner made
// for it; the job is unmatched.
type notRoutedError struct{ why string }

func (e *notRoutedError) Error() string { return e.why }

// groupResolver finds runner groups by name, and whether they allow a
// repository, through GitHub's API, remembering the answers for groupTTL.
type groupResolver struct {
	gh  github.API
	now func() time.Time

	mu    sync.Mutex
	lists map[groupQuery]groupList // guarded by mu
}

// groupQuery is one question to GitHub: an organisation's groups, or
// those one of its repositories may use.
type groupQuery struct {
	installation int64
	org, repo    string // lower case; repo "" for every group
}

type groupList struct {
	groups []github.RunnerGroup
	at     time.Time
}

func newGroupResolver(gh github.API, now func() time.Time) *groupResolver {
	return &groupResolver{gh: gh, now: now, lists: map[groupQuery]groupList{}}
}

// list returns the groups of q, asking GitHub when what it knows is older
// than maxAge.
func (g *groupResolver) list(ctx context.Context, q groupQuery, maxAge time.Duration) ([]github.RunnerGroup, error) {
	g.mu.Lock()
	l, ok := g.lists[q]
	g.mu.Unlock()
	if ok && g.now().Sub(l.at) < maxAge {
		return l.groups, nil
	}
	groups, err := g.gh.ListRunnerGroups(ctx, q.installation, q.org, q.repo)
	if err != nil {
		return nil, err
	}
	g.mu.Lock()
	g.lists[q] = groupList{groups: groups, at: g.now()}
	g.mu.Unlock()
	return groups, nil
}

// forget drops what GitHub said of an organisation's groups: an operator
// says they changed.
func (g *groupResolver) forget(installation int64, org string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for q := range g.lists {
		if q.installation == installation && q.org == strings.ToLower(org) {
			delete(g.lists, q)
		}
	}
}

// resolve returns the id of the runner group called name in org, for a
// job of repository repo ("owner/name"). A *notRoutedError says why the
// group cannot serve that job; other errors are GitHub's.
func (g *groupResolver) resolve(ctx context.Context, installation int64, org, repo string, public bool, name string) (int64, error) {
	q := groupQuery{installation: installation, org: strings.ToLower(org)}
	find := func(groups []github.RunnerGroup) (github.RunnerGroup, bool) {
		for _, gr := range groups {
			if strings.EqualFold(gr.Name, name) {
				return gr, true
			}
		}
		return github.RunnerGroup{}, false
	}
	groups, err := g.list(ctx, q, groupTTL)
	if err != nil {
		return 0, err
	}
	grp, ok := find(groups)
	if !ok {
		if groups, err = g.list(ctx, q, groupRecheck); err != nil {
			return 0, err
		}
		if grp, ok = find(groups); !ok {
			return 0, &notRoutedError{fmt.Sprintf("runner group %q does not exist in %s: create it on GitHub, or name another in runner.group/runner.groups", name, org)}
		}
	}
	if public && !grp.AllowsPublicRepos {
		return 0, &notRoutedError{fmt.Sprintf("runner group %q does not allow public repositories, and %s is public (the group's \"Allow public repositories\" setting)", grp.Name, repo)}
	}
	if grp.Visibility != "all" {
		_, name, _ := strings.Cut(repo, "/")
		q.repo = strings.ToLower(name)
		visible, err := g.list(ctx, q, groupTTL)
		if err != nil {
			return 0, err
		}
		if _, ok := find(visible); !ok {
			return 0, &notRoutedError{fmt.Sprintf("runner group %q (visibility %s) does not allow repository %s: give the repository access to the group, or map it to another group in runner.groups", grp.Name, grp.Visibility, repo)}
		}
	}
	return grp.ID, nil
}

// runnerGroupID is the id of the group runner r joins, for job j.
func (s *Server) runnerGroupID(ctx context.Context, r store.Runner, j store.Job) (int64, error) {
	if r.Group == "" {
		return s.cfg.Runner.GroupID, nil
	}
	return s.groups.resolve(ctx, r.Installation, r.Org, j.Repo, j.Public, r.Group)
}

// unroute moves the job runner name is bound to (jobID) to unmatched with
// the reason, and frees the runner, which the caller stops. It reports
// whether the job moved.
func (s *Server) unroute(ctx context.Context, name string, jobID int64, why, source string) (bool, error) {
	moved := false
	err := s.update(ctx, func(tx store.Tx, fx *afterCommit) error {
		moved = false
		now := s.now().UTC()
		j, err := tx.Job(jobID)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil || j.RunnerName != name {
			return err
		}
		rule, err := s.move(fx, &j, jobStep{ev: lifecycle.NotRouted}, now)
		if err != nil || rule.To == lifecycle.Unchanged {
			return err
		}
		if rule.Does(lifecycle.FreeRunner) {
			if err := s.unbind(tx, name, j.ID, now); err != nil {
				return err
			}
			j.RunnerName, j.HostID = "", ""
		}
		j.Reason = why
		if err := tx.UpdateJob(j, store.Event{Source: source, Reason: why}); err != nil {
			return err
		}
		moved = true
		fx.do(func() {
			s.log.Warn("job unmatched: GitHub will not give it to Tandem's runners", "job", j.ID, "repo", j.Repo, "why", why)
		})
		return s.count(tx, source+"/jobs-unmatched", 1)
	})
	return moved, err
}

// notRouted ends a runner whose launch found that GitHub will not give its
// job to it: no VM is booted, and its job is unmatched.
func (s *Server) notRouted(ctx context.Context, r store.Runner, jobID int64, why string) {
	s.marks.stop(r.Name) // no placement pass hands it to another job meanwhile
	if _, err := s.unroute(ctx, r.Name, jobID, why, "dispatch"); err != nil {
		s.log.Warn("marking a job unmatched", "job", jobID, "err", err)
	}
	s.HostEvent(agentapi.Event{Host: r.HostID, Runner: r.Name, Kind: agentapi.EventEnded,
		Failure: failure.Launch, Detail: "not booted: " + why})
}

// errNotUnmatched: only an unmatched job can be queued again.
type errNotUnmatched struct{ state store.JobState }

func (e *errNotUnmatched) Error() string {
	return fmt.Sprintf("the job is %s: only an unmatched job can be queued again", e.state)
}

// retryJob queues an unmatched job again, after an operator fixed what kept
// GitHub from giving it to Tandem's runners (lifecycle.Retried).
func (s *Server) retryJob(ctx context.Context, id int64, by string) (store.Job, error) {
	var j store.Job
	err := s.update(ctx, func(tx store.Tx, fx *afterCommit) error {
		now := s.now().UTC()
		var err error
		if j, err = tx.Job(id); err != nil {
			return err
		}
		rule, err := s.move(fx, &j, jobStep{ev: lifecycle.Retried}, now)
		if err != nil {
			return err
		}
		if rule.To == lifecycle.Unchanged {
			return &errNotUnmatched{j.State}
		}
		j.Reason = "queued again by an operator"
		fx.do(func() {
			s.groups.forget(j.Installation, j.Org) // the operator changed them, maybe
			s.log.Info("job queued again by an operator", "job", id, "by", by)
		})
		return tx.UpdateJob(j, store.Event{Source: "operator", Reason: j.Reason})
	})
	if err == nil {
		s.kickPlacement()
	}
	return j, err
}
