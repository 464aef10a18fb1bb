package dashboard

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tandem-ci/tandem/internal/profile"
	"github.com/tandem-ci/tandem/internal/rightsize"
)

// What jobs used: a job's resource profile (summary and charts) on its
// page, the right-size note for its logical job, and the Right-sizing page.

// Profile is a job's resource profile as the Backend gives it.
type Profile struct {
	// Live: the VM still runs; the profile is what it has sent so far.
	Live      bool
	VCPUs     float64 // the size asked
	MemoryMiB int
	profile.Profile
}

// RightsizeQuery selects the runs right-sizing looks at.
type RightsizeQuery struct {
	Org, Repo string
	Days      int // profiles of the last Days days
}

// Rightsize is right-sizing's answer.
type Rightsize struct {
	Days    int
	Runs    int  // profiled runs looked at
	Partial bool // more runs than were read
	Advice  []rightsize.Advice
}

// rightsizeDays are the periods the Right-sizing page offers.
var rightsizeDays = []int{7, 14, 28}

// noteTTL is how long a job page keeps the right-size advice for a
// repository: the page refreshes every 2 s, the advice changes when runs
// end.
const noteTTL = 30 * time.Second

// noteCache keeps recent right-size advice per (repository, scope).
type noteCache struct {
	mu sync.Mutex
	m  map[string]noteEntry // guarded by mu
}

type noteEntry struct {
	at     time.Time
	advice []rightsize.Advice
}

// maxNotes bounds the cache; past it, it starts again.
const maxNotes = 512

// note returns the advice for job j's logical job, if right-sizing has
// any: from the cache, or asked of the Backend for j's repository.
func (d *Dashboard) note(ctx context.Context, s Scope, j Job) (*rightsize.Advice, error) {
	if j.Repo == "" || j.Name == "" {
		return nil, nil
	}
	key := fmt.Sprintf("%s\x00%t\x00%s", strings.ToLower(j.Repo), s.Orgs == nil, strings.Join(s.Orgs, ","))
	now := d.now()
	d.notes.mu.Lock()
	e, ok := d.notes.m[key]
	d.notes.mu.Unlock()
	if !ok || now.Sub(e.at) >= noteTTL || now.Before(e.at) {
		rs, err := d.be.Rightsize(ctx, s, RightsizeQuery{Repo: j.Repo, Days: 28})
		if err != nil {
			return nil, err
		}
		e = noteEntry{at: now, advice: rs.Advice}
		d.notes.mu.Lock()
		if d.notes.m == nil || len(d.notes.m) >= maxNotes {
			d.notes.m = map[string]noteEntry{}
		}
		d.notes.m[key] = e
		d.notes.mu.Unlock()
	}
	for i, a := range e.advice {
		if strings.EqualFold(a.Repo, j.Repo) && a.Workflow == j.Workflow && a.Name == j.Name && string(a.Arch) == j.Arch {
			return &e.advice[i], nil
		}
	}
	return nil, nil
}

// profileView is a profile as the job page shows it.
type profileView struct {
	Live   bool
	Rows   []statRow
	Charts []chart
	Guest  bool // the guest reported its side
}

// statRow is a line of the profile's summary table.
type statRow struct {
	Name, Peak, Avg, Asked, High string
	Warn                         bool
}

// makeProfileView turns a profile into the summary table and the charts:
// CPU in vCPUs from 0 to the size asked, memory from 0 to the limit, disk
// I/O and network in bytes per second.
func makeProfileView(p Profile) profileView {
	sm := p.Summary
	v := profileView{Live: p.Live, Guest: sm.Guest}
	vcpus, memBytes := p.VCPUs, float64(p.MemoryMiB)*(1<<20)
	if sm.VCPUs > 0 {
		vcpus = sm.VCPUs
	}
	if sm.MemoryBytes > 0 {
		memBytes = float64(sm.MemoryBytes)
	}
	share := func(part, whole float64) string {
		if whole <= 0 {
			return ""
		}
		return fmt.Sprintf(" (%d%%)", pct(part, whole))
	}
	high := func(secs float64) string {
		if sm.Seconds <= 0 {
			return ""
		}
		return fmtDuration(time.Duration(secs*float64(time.Second))) + share(secs, sm.Seconds)
	}
	asked := func(f func(float64) string, x float64) string {
		if x <= 0 {
			return ""
		}
		return f(x)
	}
	v.Rows = []statRow{
		{Name: "CPU", Peak: fmtCPU(sm.CPUPeak) + share(sm.CPUPeak, vcpus), Avg: fmtCPU(sm.CPUAvg),
			Asked: asked(fmtCPU, vcpus), High: high(sm.CPUHighSeconds), Warn: sm.Seconds > 0 && sm.CPUHighSeconds > sm.Seconds/2},
		{Name: "Memory", Peak: fmtBytes(float64(sm.MemPeak)) + share(float64(sm.MemPeak), memBytes), Avg: fmtBytes(float64(sm.MemAvg)),
			Asked: asked(fmtBytes, memBytes), High: high(sm.MemHighSeconds),
			Warn: memBytes > 0 && float64(sm.MemPeak) >= rightsize.NearLimit*memBytes},
		{Name: "OOM kills", Peak: strconv.FormatInt(sm.OOMKills, 10), Warn: sm.OOMKills > 0},
		{Name: "Hypervisor", Peak: "RSS " + fmtBytes(float64(sm.RSSPeak)), Avg: "host CPU " + fmtCPU(sm.HostCPUAvg)},
		{Name: "Disk", Peak: fmtBytes(float64(sm.DiskPeak)) + " used in the guest", Avg: fmtBytes(float64(sm.AllocPeak)) + " on the host (peak)"},
		{Name: "Disk I/O", Peak: fmtBytes(float64(sm.ReadBytes)) + " read", Avg: fmtBytes(float64(sm.WriteBytes)) + " written"},
		{Name: "Network", Peak: fmtBytes(float64(sm.RxBytes)) + " received", Avg: fmtBytes(float64(sm.TxBytes)) + " sent"},
		{Name: "Load, processes", Peak: strconv.FormatFloat(sm.LoadPeak, 'f', 2, 64) + ", " + strconv.Itoa(sm.ProcsPeak)},
		{Name: "Samples", Peak: strconv.Itoa(sm.Samples), Avg: "over " + fmtDuration(time.Duration(sm.Seconds*float64(time.Second)))},
	}
	pts := p.Points
	xs := make([]float64, len(pts))
	span := 0.0
	if len(pts) > 0 {
		start := pts[0].At
		for i, pt := range pts {
			xs[i] = pt.At.Sub(start).Seconds()
		}
		last := pts[len(pts)-1]
		span = last.At.Sub(start).Seconds() + last.Seconds
	}
	col := func(f func(profile.Point) float64) []float64 {
		out := make([]float64, len(pts))
		for i, pt := range pts {
			out[i] = f(pt)
		}
		return out
	}
	v.Charts = []chart{
		buildChart("chart-cpu", "CPU (vCPUs busy)", xs, span, vcpus, fmtCPU,
			seriesIn{name: "average", class: "s-cpu", values: col(func(p profile.Point) float64 { return p.CPU }), area: true},
			seriesIn{name: "peak", class: "s-peak", values: col(func(p profile.Point) float64 { return p.CPUPeak })}),
		buildChart("chart-mem", "Memory", xs, span, memBytes, fmtBytes,
			seriesIn{name: "guest in use", class: "s-mem", values: col(func(p profile.Point) float64 { return float64(p.Mem) }), area: true},
			seriesIn{name: "hypervisor RSS", class: "s-rss", values: col(func(p profile.Point) float64 { return float64(p.RSS) })}),
	}
	rates := func(fs ...func(profile.Point) float64) float64 {
		top := 0.0
		for _, f := range fs {
			for _, pt := range pts {
				top = max(top, clean(f(pt)))
			}
		}
		return niceBytes(top)
	}
	rd, wr := func(p profile.Point) float64 { return p.Read }, func(p profile.Point) float64 { return p.Write }
	rx, tx := func(p profile.Point) float64 { return p.Rx }, func(p profile.Point) float64 { return p.Tx }
	v.Charts = append(v.Charts,
		buildChart("chart-io", "Disk I/O", xs, span, rates(rd, wr), fmtRate,
			seriesIn{name: "read", class: "s-read", values: col(rd), area: true},
			seriesIn{name: "written", class: "s-write", values: col(wr)}),
		buildChart("chart-net", "Network", xs, span, rates(rx, tx), fmtRate,
			seriesIn{name: "received", class: "s-rx", values: col(rx), area: true},
			seriesIn{name: "sent", class: "s-tx", values: col(tx)}))
	return v
}

type rightsizeData struct {
	Query  RightsizeQuery
	Days   []int
	Result Rightsize
	Scoped []string // a scoped token's orgs
}

// rightsizePage serves /rightsize?org=&repo=&days=: advice per logical
// job that the session's scope sees.
func (d *Dashboard) rightsizePage(w http.ResponseWriter, r *http.Request, s *session) {
	q := r.URL.Query()
	data := rightsizeData{Query: RightsizeQuery{Org: strings.TrimSpace(q.Get("org")), Repo: strings.TrimSpace(q.Get("repo")), Days: 28},
		Days: rightsizeDays, Scoped: s.scope.Orgs}
	if len(data.Query.Org) > 100 || len(data.Query.Repo) > 200 {
		d.fail(w, r, s, fmt.Errorf("%w: org or repo too long", errBadRequest), "")
		return
	}
	if v := q.Get("days"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 28 {
			d.fail(w, r, s, fmt.Errorf("%w: days: want a whole number from 1 to 28", errBadRequest), "")
			return
		}
		data.Query.Days = n
	}
	res, err := d.be.Rightsize(r.Context(), s.scope, data.Query)
	if err != nil {
		d.fail(w, r, s, err, "")
		return
	}
	data.Result = res
	d.render(w, r, s, http.StatusOK, "rightsize", data)
}

// rightsizeURL is the Right-sizing page for one repository.
func rightsizeURL(repo string) string {
	return "/rightsize?" + url.Values{"repo": {repo}}.Encode()
}

// gbOf writes bytes as GiB with one decimal.
func gbOf(b int64) string {
	return strconv.FormatFloat(float64(b)/(1<<30), 'f', 1, 64) + " GiB"
}

// cpuOf writes vCPUs with one decimal.
func cpuOf(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "?"
	}
	return strconv.FormatFloat(v, 'f', 1, 64)
}
