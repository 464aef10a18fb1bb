package controlplane

import (
	"cmp"
	"context"
	"net/http"
	"slices"
	"time"

	"github.com/tandem-ci/tandem/internal/store"
)

// Insights: per org, repository, workflow or job, the numbers of a period
// (the last 1, 7, 14 or 28 UTC days, today's so far included) beside those
// of the period before it; the jobs
// whose median run time grew week over week; the longest runs. The store
// computes them (store.JobStats), over the jobs that ended in each period.

// InsightRow is one group's period against the one before.
type InsightRow struct {
	store.StatsKey
	Current  store.JobStats  `json:"current"`
	Previous *store.JobStats `json:"previous,omitempty"` // nil: no job of the group ended then
}

// Increase is a job whose median run time grew week over week.
type Increase struct {
	store.StatsKey
	WasP50 float64 `json:"was_p50_s"`
	NowP50 float64 `json:"now_p50_s"`
	Runs   int     `json:"runs"` // this week
}

// InsightsView is the answer of GET /api/v1/insights.
type InsightsView struct {
	Days      int              `json:"days"`
	By        store.StatsLevel `json:"by"`
	Since     time.Time        `json:"since"`
	Until     time.Time        `json:"until"`
	Rows      []InsightRow     `json:"rows"`
	Increases []Increase       `json:"increases"`
	Slowest   []store.SlowRun  `json:"slowest"`
}

// Thresholds of an increase: the median run time grew by more than this
// share, and by at least minIncrease (a job of seconds jitters).
const (
	increaseShare = 0.2
	minIncrease   = 30 * time.Second
	slowestRuns   = 10
)

// insights computes the view for p.
func (a *api) insights(ctx context.Context, p principal, days int, by store.StatsLevel, org, repo string) (InsightsView, error) {
	// Periods are whole UTC days (the store keeps statistics per day): the
	// last days of them, today's so far included, and the days before.
	now := a.now().UTC()
	today := now.Truncate(24 * time.Hour)
	period := time.Duration(days) * 24 * time.Hour
	since := today.Add(-period + 24*time.Hour)
	v := InsightsView{Days: days, By: by, Since: since, Until: now, Rows: []InsightRow{}, Increases: []Increase{}}
	f := func(since, until time.Time, level store.StatsLevel) store.StatsFilter {
		return store.StatsFilter{Since: since, Until: until, Level: level, Org: org, Repo: repo, Orgs: p.scope()}
	}
	dayBefore := func(t time.Time) time.Time { return t.Add(-24 * time.Hour) }
	week := 7 * 24 * time.Hour
	thisWeek := today.Add(-week + 24*time.Hour)
	err := a.st.View(ctx, func(tx store.ReadTx) error {
		cur, err := tx.JobStats(f(since, now, by))
		if err != nil {
			return err
		}
		prev, err := tx.JobStats(f(since.Add(-period), dayBefore(since), by))
		if err != nil {
			return err
		}
		before := map[store.StatsKey]store.JobStats{}
		for _, s := range prev {
			before[s.StatsKey] = s
		}
		for _, s := range cur {
			row := InsightRow{StatsKey: s.StatsKey, Current: s}
			if b, ok := before[s.StatsKey]; ok {
				row.Previous = &b
			}
			v.Rows = append(v.Rows, row)
		}
		cw, err := tx.JobStats(f(thisWeek, now, store.ByJob))
		if err != nil {
			return err
		}
		lw, err := tx.JobStats(f(thisWeek.Add(-week), dayBefore(thisWeek), store.ByJob))
		if err != nil {
			return err
		}
		v.Increases = increases(lw, cw)
		v.Slowest, err = tx.SlowestRuns(f(since, now, by), slowestRuns)
		return err
	})
	slices.SortFunc(v.Rows, func(x, y InsightRow) int {
		return cmp.Or(cmp.Compare(y.Current.Jobs, x.Current.Jobs), cmp.Compare(x.Org, y.Org), cmp.Compare(x.Repo, y.Repo),
			cmp.Compare(x.Workflow, y.Workflow), cmp.Compare(x.Name, y.Name), cmp.Compare(x.Arch, y.Arch))
	})
	return v, err
}

// increases lists the jobs whose median run time grew from last to this,
// by more than increaseShare and at least minIncrease, most first.
func increases(last, this []store.JobStats) []Increase {
	before := map[store.StatsKey]store.JobStats{}
	for _, s := range last {
		before[s.StatsKey] = s
	}
	out := []Increase{}
	for _, s := range this {
		b, ok := before[s.StatsKey]
		if !ok || b.RunP50 <= 0 || s.RunP50 <= b.RunP50*(1+increaseShare) || s.RunP50-b.RunP50 < minIncrease.Seconds() {
			continue
		}
		out = append(out, Increase{StatsKey: s.StatsKey, WasP50: b.RunP50, NowP50: s.RunP50, Runs: s.Ran})
	}
	slices.SortFunc(out, func(x, y Increase) int {
		return cmp.Or(cmp.Compare(y.NowP50-y.WasP50, x.NowP50-x.WasP50), cmp.Compare(x.Repo, y.Repo), cmp.Compare(x.Name, y.Name))
	})
	return out
}

// handleInsights serves GET /api/v1/insights?days=7&by=repo&org=&repo=.
func (a *api) handleInsights(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	days, err := intParam(q.Get("days"), 7, 1, 28)
	if err != nil || !slices.Contains([]int{1, 7, 14, 28}, days) {
		httpError(w, http.StatusBadRequest, "days: want 1, 7, 14 or 28")
		return
	}
	by := store.StatsLevel(q.Get("by"))
	if by == "" {
		by = store.ByRepo
	}
	if !slices.Contains(store.StatsLevels, by) {
		httpError(w, http.StatusBadRequest, "by: want org, repo, workflow or job")
		return
	}
	v, err := a.insights(r.Context(), who(r), days, by, q.Get("org"), q.Get("repo"))
	if storeFailed(w, err, "") {
		return
	}
	writeJSON(w, http.StatusOK, v)
}
