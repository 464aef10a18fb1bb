package controlplane

import (
	"context"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/tandem-ci/tandem/internal/parity"
	"github.com/tandem-ci/tandem/internal/store"
)

// Arm64/x86 parity (internal/parity): the matrix, tiers and report the
// store's sums make, the release gate, the badge, and the loop that
// records each repository's tier and its moves.
//
//	GET /api/v1/parity         ?org=&repo=&days=: matrix, repository and organisation tiers
//	GET /api/v1/parity/check   ?repo=OWNER/NAME&sha=SHA&require=both: the release gate
//	GET /api/v1/parity/report  ?days=7: tiers now, moves in the last days, what to fix
//	GET /badge/parity/ORG/REPO.svg  the badge: to a token that sees ORG, or to anyone
//	                           for a public repository when parity.public_badges is set
//
// Who can reach what: the API needs a token, and a token scoped to some
// organisations sees only theirs (the store filters by scope). The badge
// answers an unknown repository, one the caller may not see and a private
// one the same way (404, an "unknown" badge), so that it tells a stranger
// nothing of what exists.

const defaultParityEvery = 10 * time.Minute

// parityView computes the view of the last days for p, filtered by org
// and repository.
func (a *api) parityView(ctx context.Context, p principal, days int, org, repo string) (parity.View, error) {
	pol := a.parity
	since, until := parity.Period(a.now(), days)
	v := parity.View{Days: days, Since: since, Until: until, Tiers: pol.Tiers}
	f := store.StatsFilter{Since: since, Until: until, Org: org, Repo: repo, Orgs: p.scope()}
	var recorded []store.RepoTier
	var changes []store.TierChange
	err := a.st.View(ctx, func(tx store.ReadTx) error {
		var err error
		if v.Rows, err = parity.Load(tx, f, pol, a.labels.LabelPrefix()); err != nil {
			return err
		}
		tf := store.TierFilter{Org: org, Repo: repo, Orgs: p.scope(), Since: since}
		if recorded, err = tx.RepoTiers(tf); err != nil {
			return err
		}
		changes, err = tx.TierChanges(tf)
		return err
	})
	if err != nil {
		return v, err
	}
	v.Repos = pol.RepoTiers(v.Rows)
	recordedTier := map[string]store.RepoTier{}
	for _, r := range recorded {
		recordedTier[r.Repo] = r
	}
	for i, r := range v.Repos {
		if rec, ok := recordedTier[r.Repo]; ok && rec.Tier == r.Tier {
			v.Repos[i].Since = rec.Since
		}
	}
	v.Orgs = pol.OrgTiers(v.Repos)
	v.Recent = pol.Moves(changes)
	if v.Rows == nil {
		v.Rows = []parity.Row{}
	}
	if v.Repos == nil {
		v.Repos = []parity.RepoTier{}
	}
	if v.Orgs == nil {
		v.Orgs = []parity.OrgTier{}
	}
	return v, nil
}

// handleParity serves GET /api/v1/parity?org=&repo=&days=.
func (a *api) handleParity(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	days, err := intParam(q.Get("days"), a.parity.Days, 1, 90)
	if err != nil {
		httpError(w, http.StatusBadRequest, "days: want 1 to 90")
		return
	}
	v, err := a.parityView(r.Context(), who(r), days, q.Get("org"), q.Get("repo"))
	if storeFailed(w, err, "") {
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// handleParityReport serves GET /api/v1/parity/report?days=7: tiers over
// the policy's period, and the moves of the last days.
func (a *api) handleParityReport(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	days, err := intParam(q.Get("days"), 7, 1, 90)
	if err != nil {
		httpError(w, http.StatusBadRequest, "days: want 1 to 90")
		return
	}
	v, err := a.parityView(r.Context(), who(r), a.parity.Days, q.Get("org"), q.Get("repo"))
	if storeFailed(w, err, "") {
		return
	}
	since, until := parity.Period(a.now(), days)
	var moves []parity.Move
	for _, m := range v.Recent {
		if !m.At.Before(since) {
			moves = append(moves, m)
		}
	}
	rep := parity.NewReport(v, moves)
	rep.Since, rep.Until = since, until
	if rep.Moves == nil {
		rep.Moves = []parity.Move{}
	}
	writeJSON(w, http.StatusOK, rep)
}

var (
	repoName = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$`)
	commitID = regexp.MustCompile(`^([0-9a-f]{40}|[0-9a-f]{64})$`)
)

// handleParityCheck serves GET /api/v1/parity/check?repo=&sha=&require=.
func (a *api) handleParityCheck(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	repo, sha := q.Get("repo"), strings.ToLower(q.Get("sha"))
	if !repoName.MatchString(repo) {
		httpError(w, http.StatusBadRequest, "repo: want OWNER/NAME")
		return
	}
	if !commitID.MatchString(sha) {
		httpError(w, http.StatusBadRequest, "sha: want a full commit id (40 or 64 hex digits)")
		return
	}
	req, err := parity.ParseRequire(q.Get("require"))
	if err != nil {
		httpError(w, http.StatusBadRequest, err.Error())
		return
	}
	var jobs []store.Job
	err = a.st.View(r.Context(), func(tx store.ReadTx) error {
		var err error
		jobs, err = tx.Jobs(store.JobFilter{Repo: repo, HeadSHA: sha, Orgs: who(r).scope()})
		return err
	})
	if storeFailed(w, err, "") {
		return
	}
	writeJSON(w, http.StatusOK, parity.Check(repo, sha, req, jobs))
}

// handleBadge serves GET /badge/parity/{org}/{file}, file being REPO.svg.
func (a *api) handleBadge(w http.ResponseWriter, r *http.Request) {
	org, file := r.PathValue("org"), r.PathValue("file")
	name, ok := strings.CutSuffix(file, ".svg")
	repo := org + "/" + name
	w.Header().Set("Content-Type", "image/svg+xml")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
	unknown := func() {
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusNotFound)
		w.Write(a.parity.Badge(nil)) //nolint:errcheck // the client went away
	}
	if !ok || !repoName.MatchString(repo) {
		unknown()
		return
	}
	p, authed := a.authenticate(r)
	if authed && !p.sees(org) || !authed && !a.parity.PublicBadges {
		unknown()
		return
	}
	var tier *parity.RepoTier
	err := a.st.View(r.Context(), func(tx store.ReadTx) error {
		if !authed { // public badges: only for a repository whose jobs were public
			last, err := tx.Jobs(store.JobFilter{Repo: repo, Newest: true, Limit: 1})
			if err != nil || len(last) == 0 || !last[0].Public {
				return err
			}
		}
		since, until := parity.Period(a.now(), a.parity.Days)
		rows, err := parity.Load(tx, store.StatsFilter{Since: since, Until: until, Repo: repo}, a.parity, a.labels.LabelPrefix())
		if err != nil {
			return err
		}
		if len(rows) > 0 {
			t := a.parity.Evaluate(rows)
			tier = &t
		}
		return nil
	})
	if err != nil {
		a.log.Warn("parity badge", "repo", repo, "err", err)
		http.Error(w, "store unavailable", http.StatusServiceUnavailable)
		return
	}
	if tier == nil {
		unknown()
		return
	}
	if authed {
		w.Header().Set("Cache-Control", "private, max-age=300")
	} else {
		w.Header().Set("Cache-Control", "public, max-age=300")
	}
	w.Write(a.parity.Badge(tier)) //nolint:errcheck // the client went away
}

// parityLoop records every repository's tier every cfg.ParityEvery.
func (s *Server) parityLoop(ctx context.Context) {
	if s.cfg.ParityEvery <= 0 {
		return
	}
	if err := s.RecordParityTiers(ctx); err != nil && ctx.Err() == nil {
		s.log.Warn("recording parity tiers", "err", err)
	}
	s.periodically(ctx, s.cfg.ParityEvery, "recording parity tiers", s.RecordParityTiers)
}

// RecordParityTiers evaluates every repository with jobs in the policy's
// period and records its tier now, as the loop does every ParityEvery; a
// move is logged after it is committed.
func (s *Server) RecordParityTiers(ctx context.Context) error {
	v, err := s.api.parityView(ctx, principal{admin: true}, s.cfg.Parity.Days, "", "")
	if err != nil {
		return err
	}
	now := s.now().UTC()
	var moved []parity.RepoTier
	err = s.st.Update(ctx, func(tx store.Tx) error {
		moved = moved[:0]
		for _, r := range v.Repos {
			changed, err := tx.SetRepoTier(store.RepoTier{Org: r.Org, Repo: r.Repo, Tier: r.Tier, Reason: r.Reason, CheckedAt: now})
			if err != nil {
				return err
			}
			if changed {
				moved = append(moved, r)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, r := range moved {
		s.log.Info("parity tier", "repo", r.Repo, "tier", r.Tier, "reason", r.Reason)
	}
	return nil
}
