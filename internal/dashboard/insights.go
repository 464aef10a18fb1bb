package dashboard

import (
	"fmt"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tandem-ci/tandem/internal/store"
)

// The Insights page: per org, repository, workflow or job and
// architecture, a period's numbers (the last 1, 7, 14 or 28 UTC days)
// beside the period before's, and the change; the jobs whose median run
// time grew week over week; the period's longest runs. The Backend
// computes them within the session's scope; this file only lays them out.

// InsightsQuery selects what the Insights page shows.
type InsightsQuery struct {
	Days      int              // 1, 7, 14 or 28
	By        store.StatsLevel // how rows are grouped
	Org, Repo string           // exact, without case; "" for all
}

// Insights is the Backend's answer: the controlplane's insights view.
type Insights struct {
	Days         int
	By           store.StatsLevel
	Since, Until time.Time // the period: whole UTC days, today's so far
	Rows         []InsightRow
	Increases    []Increase
	Slowest      []store.SlowRun
}

// InsightRow is one group's period beside the one before.
type InsightRow struct {
	store.StatsKey
	Current  store.JobStats
	Previous *store.JobStats // nil: none of the group's jobs ended then
}

// Increase is a job whose median run time grew week over week.
type Increase struct {
	store.StatsKey
	WasP50, NowP50 float64 // seconds
	Runs           int     // this week
}

// insightsDays are the periods the page offers.
var insightsDays = []int{1, 7, 14, 28}

// maxInsightRows bounds the table: the busiest groups first (the Backend
// sorts by jobs); the page says when there were more.
const maxInsightRows = 200

// Thresholds past which a change is marked better or worse: percentiles
// are a histogram bucket's middle (within ~4.5%), and a few seconds more
// of a short wait matter to nobody, so smaller changes are noise; a
// success rate moves by points.
const (
	changeShare   = 0.10
	changeSeconds = 5.0
	changePoints  = 2.0
)

type insightsData struct {
	Query        InsightsQuery
	Days         []int
	Levels       []store.StatsLevel
	Scoped       []string // a scoped token's orgs
	Since, Until time.Time
	Lines        []insightLine
	More         int // groups left out past maxInsightRows
	Increases    []increaseLine
	Slowest      []store.SlowRun
}

// insightLine is a table row, formatted.
type insightLine struct {
	Group, Detail string // e.g. the repository, and "workflow / job"
	Link          string // a finer view of the group
	Arch          string
	New           bool // no previous period to compare with
	Cells         []insightCell
}

// insightCell is a number, the previous period's and the change.
type insightCell struct {
	Now, Was, Change string
	Class            string // "better", "worse" or ""
}

type increaseLine struct {
	Repo, Workflow, Name, Arch string
	Link                       string
	Was, Now, Change           string
	Runs                       int
}

// insightColumns head the table's numbers, in insightCells' order.
var insightColumns = []string{"Jobs", "Success", "vCPU-min", "Queue p50", "Queue p95", "Run p50", "Run p95"}

// insightsPage serves /insights?days=&by=&org=&repo=.
func (d *Dashboard) insightsPage(w http.ResponseWriter, r *http.Request, s *session) {
	q, err := parseInsightsQuery(r.URL.Query())
	if err != nil {
		d.fail(w, r, s, err, "")
		return
	}
	res, err := d.be.Insights(r.Context(), s.scope, q)
	if err != nil {
		d.fail(w, r, s, err, "")
		return
	}
	d.render(w, r, s, http.StatusOK, "insights", makeInsightsData(q, res, s.scope.Orgs))
}

// parseInsightsQuery reads the page's query: days 7 and by repo unless
// asked otherwise.
func parseInsightsQuery(v url.Values) (InsightsQuery, error) {
	q := InsightsQuery{Days: 7, By: store.ByRepo, Org: strings.TrimSpace(v.Get("org")), Repo: strings.TrimSpace(v.Get("repo"))}
	if s := v.Get("days"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || !slices.Contains(insightsDays, n) {
			return q, fmt.Errorf("%w: days: want 1, 7, 14 or 28", errBadRequest)
		}
		q.Days = n
	}
	if s := v.Get("by"); s != "" {
		if !slices.Contains(store.StatsLevels, store.StatsLevel(s)) {
			return q, fmt.Errorf("%w: by: want org, repo, workflow or job", errBadRequest)
		}
		q.By = store.StatsLevel(s)
	}
	if len(q.Org) > 100 || len(q.Repo) > 200 {
		return q, fmt.Errorf("%w: org or repo too long", errBadRequest)
	}
	return q, nil
}

func makeInsightsData(q InsightsQuery, res Insights, scoped []string) insightsData {
	data := insightsData{Query: q, Days: insightsDays, Levels: store.StatsLevels, Scoped: scoped,
		Since: res.Since, Until: res.Until, Slowest: res.Slowest}
	rows := res.Rows
	if len(rows) > maxInsightRows {
		data.More = len(rows) - maxInsightRows
		rows = rows[:maxInsightRows]
	}
	for _, row := range rows {
		data.Lines = append(data.Lines, makeInsightLine(q, row))
	}
	for _, in := range res.Increases {
		data.Increases = append(data.Increases, increaseLine{Repo: in.Repo, Workflow: in.Workflow, Name: in.Name, Arch: string(in.Arch),
			Link: jobsURL(in.StatsKey), Was: fmtSeconds(in.WasP50), Now: fmtSeconds(in.NowP50),
			Change: fmtChange(relChange(in.WasP50, in.NowP50)), Runs: in.Runs})
	}
	return data
}

// makeInsightLine names a row's group at its level, links it to the next
// level down (or, for a job, to its runs), and formats its numbers.
func makeInsightLine(q InsightsQuery, row InsightRow) insightLine {
	k := row.StatsKey
	l := insightLine{Arch: string(k.Arch), New: row.Previous == nil}
	finer := func(by store.StatsLevel, org, repo string) string {
		v := url.Values{"days": {strconv.Itoa(q.Days)}, "by": {string(by)}}
		if org != "" {
			v.Set("org", org)
		}
		if repo != "" {
			v.Set("repo", repo)
		}
		return "/insights?" + v.Encode()
	}
	switch q.By {
	case store.ByOrg:
		l.Group, l.Link = k.Org, finer(store.ByRepo, k.Org, "")
	case store.ByRepo:
		l.Group, l.Link = k.Repo, finer(store.ByWorkflow, "", k.Repo)
	case store.ByWorkflow:
		l.Group, l.Detail, l.Link = k.Repo, k.Workflow, finer(store.ByJob, "", k.Repo)
	default:
		l.Group, l.Detail, l.Link = k.Repo, k.Workflow+" / "+k.Name, jobsURL(k)
	}
	cur, prev := row.Current, row.Previous
	was := func(f func(store.JobStats) string) string {
		if prev == nil {
			return ""
		}
		return f(*prev)
	}
	// count: more is neither better nor worse; time: more is worse.
	count := func(f func(store.JobStats) float64, format func(float64) string) insightCell {
		c := insightCell{Now: format(f(cur)), Was: was(func(s store.JobStats) string { return format(f(s)) })}
		if prev != nil {
			c.Change = fmtChange(relChange(f(*prev), f(cur)))
		}
		return c
	}
	dur := func(f func(store.JobStats) float64) insightCell {
		c := count(f, fmtSeconds)
		if prev != nil && math.Abs(f(cur)-f(*prev)) >= changeSeconds {
			c.Class = judge(relChange(f(*prev), f(cur)), changeShare, true)
		}
		return c
	}
	success := insightCell{Now: fmtRatePct(cur), Was: was(fmtRatePct)}
	if prev != nil && prev.Ran > 0 && cur.Ran > 0 {
		pts := 100 * (successRate(cur) - successRate(*prev))
		success.Change = signed(pts) + " pts"
		success.Class = judge(pts, changePoints, false)
	}
	l.Cells = []insightCell{
		count(func(s store.JobStats) float64 { return float64(s.Jobs) }, func(v float64) string { return strconv.Itoa(int(v)) }),
		success,
		count(func(s store.JobStats) float64 { return s.VCPUMinutes }, func(v float64) string { return strconv.FormatFloat(v, 'f', 0, 64) }),
		dur(func(s store.JobStats) float64 { return s.QueueP50 }),
		dur(func(s store.JobStats) float64 { return s.QueueP95 }),
		dur(func(s store.JobStats) float64 { return s.RunP50 }),
		dur(func(s store.JobStats) float64 { return s.RunP95 }),
	}
	return l
}

// jobsURL is the Jobs page searching for a logical job's runs.
func jobsURL(k store.StatsKey) string {
	v := url.Values{"repo": {k.Repo}}
	if k.Name != "" {
		v.Set("q", k.Name)
	}
	if k.Arch != "" {
		v.Set("arch", string(k.Arch))
	}
	return "/jobs?" + v.Encode()
}

func successRate(s store.JobStats) float64 { return float64(s.Succeeded) / float64(s.Ran) }

func fmtRatePct(s store.JobStats) string {
	if s.Ran == 0 {
		return "–"
	}
	return strconv.Itoa(int(math.Round(100*successRate(s)))) + "%"
}

// relChange is the change from was to now as a share of was: 0 from
// nothing to nothing, +Inf when something appeared.
func relChange(was, now float64) float64 {
	switch {
	case was == 0 && now == 0:
		return 0
	case was == 0:
		return math.Inf(1)
	}
	return (now - was) / was
}

// fmtChange writes a share as a signed percentage ("new" from nothing).
func fmtChange(share float64) string {
	switch {
	case math.IsNaN(share):
		return ""
	case math.IsInf(share, 1):
		return "new"
	}
	return signed(100*share) + "%"
}

// signed writes v rounded with its sign, and 0 as ±0.
func signed(v float64) string {
	r := math.Round(v)
	if r == 0 {
		return "±0"
	}
	return fmt.Sprintf("%+.0f", r)
}

// judge says whether a change past threshold is better or worse: worse
// when it grew and more is worse, or shrank and more is better.
func judge(change, threshold float64, moreIsWorse bool) string {
	if math.IsNaN(change) || math.Abs(change) < threshold {
		return ""
	}
	if (change > 0) == moreIsWorse {
		return "worse"
	}
	return "better"
}

// fmtSeconds writes a time in seconds as a short duration ("–" for none:
// statistics say 0 when no job had the time).
func fmtSeconds(s float64) string {
	switch {
	case !(s > 0) || math.IsInf(s, 0):
		return "–"
	case s < 1:
		return "<1s"
	}
	return fmtDuration(time.Duration(s * float64(time.Second)))
}
