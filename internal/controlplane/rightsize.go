package controlplane

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tandem-ci/tandem/internal/rightsize"
	"github.com/tandem-ci/tandem/internal/store"
)

// Right-sizing: the profiles of each logical job's recent runs against the
// size it asks for (internal/rightsize).

// maxRightsizeRuns bounds the profiled runs one answer reads.
const maxRightsizeRuns = 50_000

// RightsizeView is the answer of GET /api/v1/rightsize.
type RightsizeView struct {
	Days    int                `json:"days"`
	Runs    int                `json:"runs"` // profiled runs looked at
	Advice  []rightsize.Advice `json:"advice"`
	Partial bool               `json:"partial,omitempty"` // more runs than were read
}

// adviceTTL is how long an answer is reused: advice moves as runs end,
// slowly, and reading weeks of profiles for every page load would not do.
const adviceTTL = time.Minute

// adviceCache keeps recent answers, by question.
type adviceCache struct {
	mu sync.Mutex
	m  map[string]adviceEntry // guarded by mu
}

type adviceEntry struct {
	v  RightsizeView
	at time.Time
}

func newAdviceCache() *adviceCache { return &adviceCache{m: map[string]adviceEntry{}} }

func (c *adviceCache) get(key string, now time.Time) (RightsizeView, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[key]
	return e.v, ok && now.Sub(e.at) < adviceTTL
}

func (c *adviceCache) put(key string, v RightsizeView, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= 256 {
		clear(c.m) // many questions: start again rather than grow
	}
	c.m[key] = adviceEntry{v: v, at: now}
}

// rightsizeFor advises on the logical jobs p may see, from profiles of the
// last days; at most perJob runs each. Answers are reused for adviceTTL.
func (a *api) rightsizeFor(ctx context.Context, p principal, org, repo string, days, perJob int) (RightsizeView, error) {
	scope := p.scope()
	slices.Sort(scope)
	key := fmt.Sprintf("%q %q %q %d %d", strings.Join(scope, ","), strings.ToLower(org), strings.ToLower(repo), days, perJob)
	if p.orgs == nil {
		key = "* " + key
	}
	if v, ok := a.advice.get(key, a.now()); ok {
		return v, nil
	}
	v, err := a.computeRightsize(ctx, p, org, repo, days, perJob)
	if err == nil {
		a.advice.put(key, v, a.now())
	}
	return v, err
}

func (a *api) computeRightsize(ctx context.Context, p principal, org, repo string, days, perJob int) (RightsizeView, error) {
	v := RightsizeView{Days: days, Advice: []rightsize.Advice{}}
	var runs []store.ProfiledRun
	err := a.st.View(ctx, func(tx store.ReadTx) error {
		var err error
		runs, err = tx.ProfiledRuns(store.ProfiledRunFilter{Since: a.now().Add(-time.Duration(days) * 24 * time.Hour),
			Org: org, Repo: repo, Orgs: p.scope(), Limit: maxRightsizeRuns + 1})
		return err
	})
	if err != nil {
		return v, err
	}
	if len(runs) > maxRightsizeRuns {
		runs, v.Partial = runs[:maxRightsizeRuns], true
	}
	in := make([]rightsize.Run, 0, len(runs))
	for _, r := range runs {
		prefix := ""
		if a.labels != nil {
			if req, ok, err := a.labels.Parse(r.Labels); ok && err == nil {
				prefix = req.Prefix
			}
		}
		in = append(in, rightsize.Run{JobID: r.ID, Repo: r.Repo, Workflow: r.Workflow, Name: r.Name, Arch: r.Arch,
			Prefix: prefix, VCPUs: r.VCPUs, MemoryMiB: r.MemoryMiB, EndedAt: r.EndedAt, Summary: r.Summary})
	}
	v.Runs = len(in)
	v.Advice = append(v.Advice, rightsize.Analyze(in, rightsize.Options{MaxRuns: perJob})...)
	return v, nil
}

// handleRightsize serves GET /api/v1/rightsize?org=&repo=&days=28&runs=30.
func (a *api) handleRightsize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	days, err := intParam(q.Get("days"), 28, 1, 28)
	if err != nil {
		httpError(w, http.StatusBadRequest, "days: "+err.Error())
		return
	}
	perJob, err := intParam(q.Get("runs"), rightsize.DefaultRuns, rightsize.MinRuns, 500)
	if err != nil {
		httpError(w, http.StatusBadRequest, "runs: "+err.Error())
		return
	}
	v, err := a.rightsizeFor(r.Context(), who(r), q.Get("org"), q.Get("repo"), days, perJob)
	if storeFailed(w, err, "") {
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// intParam parses an integer query parameter within [lo, hi]; "" is def.
func intParam(s string, def, lo, hi int) (int, error) {
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("want a whole number from %d to %d", lo, hi)
	}
	return n, nil
}
