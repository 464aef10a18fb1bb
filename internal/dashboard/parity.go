package dashboard

import (
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/tandem-ci/tandem/internal/parity"
)

// The Parity page: how well each project runs on Arm64 beside x86_64
// (internal/parity), within the session's scope. Per organisation its
// tier and its repositories per tier; per repository its tier, since
// when, why, and a rendition of its badge; the matrix of logical jobs
// with their numbers on each architecture, the names matched into each
// and, for a job that runs on amd64 only, the runs-on change that adds
// arm64; the recent moves between tiers. The Backend computes the view
// (the same as GET /api/v1/parity); this file only lays it out.

// ParityQuery selects what the Parity page shows.
type ParityQuery struct {
	Days      int    // 1 to 90; 0: the Backend's default (the policy's period)
	Org, Repo string // exact, without case; "" for all
}

// maxParityDays is the longest period the page asks for (the API's).
const maxParityDays = 90

// maxParityRows bounds the matrix; the page says when there were more.
const maxParityRows = 300

var (
	parityOrg  = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,100}$`)
	parityRepo = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$`)
)

type parityData struct {
	Query        ParityQuery
	Days         int // the period shown
	Scoped       []string
	Since, Until time.Time
	Tiers        []parity.Tier
	Summary      []statusCount // logical jobs by status, worst first
	Orgs         []parityOrgLine
	Repos        []parityRepoLine
	Rows         []parityRow
	More         int // rows left out past maxParityRows
	Moves        []parity.Move
}

type statusCount struct {
	Status parity.Status
	Class  string
	N      int
}

type tierCount struct {
	Tier string
	N    int
}

type parityOrgLine struct {
	Org, Tier, Class string
	Link             string
	ByTier           []tierCount // in the policy's order, tiers with none left out
}

type parityRepoLine struct {
	parity.RepoTier
	Class    string // of the tier: tier-best, tier-mid or tier-last
	PassRate string // arm64's, as the badge writes it
	Link     string
}

// parityRow is a matrix row, formatted.
type parityRow struct {
	Org, Repo, Workflow, Job string
	Status                   parity.Status
	Class                    string // of the status
	Arches                   []archCell
	Ratio                    string
	Emulated                 bool // the ratio compares with emulated runs
	Nudge                    string
	AMD64Only                bool
}

// archCell is a logical job's numbers on one architecture; Ran false when
// it did not run there.
type archCell struct {
	Arch     string
	Ran      bool
	Runs     int
	Success  string
	P50      string
	Emulated int
	Names    []string
}

// parityPage serves /parity?days=&org=&repo=.
func (d *Dashboard) parityPage(w http.ResponseWriter, r *http.Request, s *session) {
	q, err := parseParityQuery(r.URL.Query())
	if err != nil {
		d.fail(w, r, s, err, "")
		return
	}
	v, err := d.be.Parity(r.Context(), s.scope, q)
	if err != nil {
		d.fail(w, r, s, err, "")
		return
	}
	d.render(w, r, s, http.StatusOK, "parity", makeParityData(q, v, s.scope.Orgs))
}

// parseParityQuery reads the page's query: the Backend's period unless
// asked otherwise.
func parseParityQuery(v url.Values) (ParityQuery, error) {
	q := ParityQuery{Org: strings.TrimSpace(v.Get("org")), Repo: strings.TrimSpace(v.Get("repo"))}
	if s := strings.TrimSpace(v.Get("days")); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxParityDays {
			return q, fmt.Errorf("%w: days: want a whole number from 1 to %d", errBadRequest, maxParityDays)
		}
		q.Days = n
	}
	if q.Org != "" && !parityOrg.MatchString(q.Org) {
		return q, fmt.Errorf("%w: org: want an organisation's name (letters, digits, '-', '_' or '.')", errBadRequest)
	}
	if q.Repo != "" && !parityRepo.MatchString(q.Repo) {
		return q, fmt.Errorf("%w: repo: want OWNER/NAME", errBadRequest)
	}
	return q, nil
}

func makeParityData(q ParityQuery, v parity.View, scoped []string) parityData {
	data := parityData{Query: q, Days: v.Days, Scoped: scoped, Since: v.Since, Until: v.Until, Tiers: v.Tiers, Moves: v.Recent}
	if data.Days == 0 {
		data.Days = q.Days
	}
	link := func(org, repo string) string {
		u := url.Values{}
		if q.Days != 0 {
			u.Set("days", strconv.Itoa(q.Days))
		}
		if org != "" {
			u.Set("org", org)
		}
		if repo != "" {
			u.Set("repo", repo)
		}
		return "/parity?" + u.Encode()
	}
	counts := map[parity.Status]int{}
	for _, r := range v.Rows {
		counts[r.Status]++
	}
	for _, st := range parity.Statuses {
		if counts[st] > 0 {
			data.Summary = append(data.Summary, statusCount{Status: st, Class: statusClass(st), N: counts[st]})
		}
	}
	for _, o := range v.Orgs {
		l := parityOrgLine{Org: o.Org, Tier: o.Tier, Class: tierClass(v.Tiers, o.Tier), Link: link(o.Org, "")}
		for _, t := range v.Tiers {
			if n := o.Repos[t.Name]; n > 0 {
				l.ByTier = append(l.ByTier, tierCount{Tier: t.Name, N: n})
			}
		}
		data.Orgs = append(data.Orgs, l)
	}
	for _, rt := range v.Repos {
		data.Repos = append(data.Repos, parityRepoLine{RepoTier: rt, Class: tierClass(v.Tiers, rt.Tier),
			PassRate: fmtShare(rt.ARM64SuccessRate), Link: link("", rt.Repo)})
	}
	rows := v.Rows
	if len(rows) > maxParityRows {
		data.More = len(rows) - maxParityRows
		rows = rows[:maxParityRows]
	}
	for _, r := range rows {
		data.Rows = append(data.Rows, makeParityRow(r))
	}
	return data
}

func makeParityRow(r parity.Row) parityRow {
	pr := parityRow{Org: r.Org, Repo: r.Repo, Workflow: r.Workflow, Job: r.Job, Status: r.Status, Class: statusClass(r.Status),
		Ratio: "–", Nudge: r.Nudge, AMD64Only: r.Status == parity.AMD64Only}
	for _, a := range []struct {
		name string
		s    *parity.ArchStats
	}{{"amd64", r.AMD64}, {"arm64", r.ARM64}} {
		c := archCell{Arch: a.name}
		if s := a.s; s != nil {
			c = archCell{Arch: a.name, Ran: true, Runs: s.Runs, Success: fmtShare(s.SuccessRate), P50: fmtSeconds(s.RunP50),
				Emulated: s.Emulated, Names: s.Names}
			pr.Emulated = pr.Emulated || s.Emulated > 0
		}
		pr.Arches = append(pr.Arches, c)
	}
	if r.Ratio > 0 {
		pr.Ratio = strconv.FormatFloat(r.Ratio, 'f', 2, 64) + "×"
	}
	return pr
}

// statusClass colours a status: both green, flaky amber, failing red, on
// one architecture only grey.
func statusClass(st parity.Status) string {
	switch st {
	case parity.Both:
		return "parity-both"
	case parity.ARM64Flaky:
		return "parity-flaky"
	case parity.ARM64Failing:
		return "parity-failing"
	}
	return "parity-one"
}

// tierClass colours a tier by its rank, as the badge does: the best
// green, the last (or an unknown one) grey, amber between.
func tierClass(tiers []parity.Tier, name string) string {
	rank := len(tiers)
	for i, t := range tiers {
		if strings.EqualFold(t.Name, name) {
			rank = i
			break
		}
	}
	switch {
	case rank == 0:
		return "tier-best"
	case rank < len(tiers)-1:
		return "tier-mid"
	}
	return "tier-last"
}

// fmtShare writes a share (0 to 1) as the badge does ("97.5%", "100%"),
// and "none" for -1 (no run passed or failed).
func fmtShare(x float64) string {
	if x < 0 {
		return "none"
	}
	return strings.TrimSuffix(strconv.FormatFloat(100*x, 'f', 1, 64), ".0") + "%"
}
