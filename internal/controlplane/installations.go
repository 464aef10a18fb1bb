package controlplane

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tandem-ci/tandem/internal/github"
	"github.com/tandem-ci/tandem/internal/lifecycle"
	"github.com/tandem-ci/tandem/internal/store"
)

// applyInstallation applies an installation or installation_repositories
// webhook. When the App loses an installation (deleted, suspended) or
// repositories (removed from it), Tandem stops acting for them: their
// repositories are no longer polled, their jobs that have not ended fail
// (running ones are lost) with the reason, and their runners' VMs are
// stopped. A suspended installation that is unsuspended is polled again,
// and jobs GitHub still has queued are opened again (lifecycle.Reopen).
func (s *Server) applyInstallation(tx store.Tx, fx *afterCommit, ev github.InstallationEvent, now time.Time) (applied, error) {
	by := ""
	if ev.Sender != "" {
		by = " by " + ev.Sender
	}
	var (
		state store.InstallationState
		why   string
		gone  func(org, repo string, inst int64) bool // whose jobs and runners end
	)
	switch {
	case ev.Event == "installation" && ev.Action == "deleted":
		state, why = store.InstallationRemoved, fmt.Sprintf("the App was uninstalled from %s%s", ev.Account, by)
	case ev.Event == "installation" && ev.Action == "suspend":
		state, why = store.InstallationSuspended, fmt.Sprintf("the App's installation on %s was suspended%s", ev.Account, by)
	case ev.Event == "installation" && (ev.Action == "unsuspend" || ev.Action == "created"):
		state, why = store.InstallationActive, ""
	case ev.Event == "installation_repositories" && ev.Action == "removed" && len(ev.Removed) > 0:
		why = fmt.Sprintf("its repository was removed from the App's installation on %s%s", ev.Account, by)
		gone = func(_, repo string, inst int64) bool {
			return inst == ev.InstallationID && slices.ContainsFunc(ev.Removed, func(r string) bool { return strings.EqualFold(r, repo) })
		}
		for _, r := range ev.Removed {
			if err := tx.RemoveRepo(r); err != nil {
				return applied{}, err
			}
		}
	default:
		return applied{outcome: "ignored"}, nil
	}
	if state != "" {
		if err := tx.PutInstallation(store.Installation{ID: ev.InstallationID, Account: ev.Account,
			State: state, Reason: why, UpdatedAt: now}); err != nil {
			return applied{}, err
		}
		fx.do(func() {
			s.log.Warn("installation changed", "installation", ev.InstallationID, "account", ev.Account, "state", state, "why", why)
		})
		if state == store.InstallationActive {
			return applied{outcome: "installation", changed: true}, nil
		}
		gone = func(_, _ string, inst int64) bool { return inst == ev.InstallationID }
	}
	if err := s.endForInstallation(tx, fx, gone, why, now); err != nil {
		return applied{}, err
	}
	return applied{outcome: "installation", changed: true}, nil
}

// endForInstallation ends the jobs that gone selects (lifecycle.Uninstalled)
// and stops the VMs of its live runners, after the commit.
func (s *Server) endForInstallation(tx store.Tx, fx *afterCommit, gone func(org, repo string, inst int64) bool, why string, now time.Time) error {
	jobs, err := tx.Jobs(store.JobFilter{States: []store.JobState{store.JobWaiting, store.JobQueued, store.JobUnmatched,
		store.JobScheduled, store.JobLaunching, store.JobRunning}})
	if err != nil {
		return err
	}
	for _, j := range jobs {
		if !gone(j.Org, j.Repo, j.Installation) {
			continue
		}
		rule, err := s.move(fx, &j, jobStep{ev: lifecycle.Uninstalled}, now)
		if err != nil {
			return err
		}
		if rule.To == lifecycle.Unchanged {
			continue
		}
		if rule.Does(lifecycle.FreeRunner) {
			if err := s.unbind(tx, j.RunnerName, j.ID, now); err != nil {
				return err
			}
		}
		j.Reason = why
		if err := tx.UpdateJob(j, store.Event{Source: "webhook", Reason: why}); err != nil {
			return err
		}
	}
	runners, err := tx.Runners(store.RunnerFilter{Live: true})
	if err != nil {
		return err
	}
	for _, r := range runners {
		if gone(r.Org, r.Repo, r.Installation) {
			fx.do(func() { s.stopRunner(r.HostID, r.Name, why) })
		}
	}
	return nil
}
