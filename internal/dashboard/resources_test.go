package dashboard

import (
	"bytes"
	"math"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/profile"
	"github.com/tandem-ci/tandem/internal/rightsize"
)

// coords returns every x,y pair of an SVG points list.
func coords(t *testing.T, points string) [][2]float64 {
	t.Helper()
	var out [][2]float64
	for _, p := range strings.Fields(points) {
		xs, ys, ok := strings.Cut(p, ",")
		x, err1 := strconv.ParseFloat(xs, 64)
		y, err2 := strconv.ParseFloat(ys, 64)
		if !ok || err1 != nil || err2 != nil {
			t.Fatalf("bad point %q in %q", p, points)
		}
		out = append(out, [2]float64{x, y})
	}
	return out
}

// Every point of every series lies in the plot area, whatever the values:
// not numbers, infinite, negative, far above the top; and a top that is
// not a number becomes a round one above the data.
func TestChartBounds(t *testing.T) {
	xs := []float64{0, 1, 2, 3, 4, 5, math.NaN(), 1e9}
	vals := []float64{0, 1, math.NaN(), math.Inf(1), -5, 1e300, 2, 0.5}
	for _, top := range []float64{2, 0, -1, math.NaN(), math.Inf(1)} {
		for _, span := range []float64{5, 0, math.NaN(), -3} {
			c := buildChart("c", "t", xs, span, top, fmtCPU,
				seriesIn{name: "a", class: "s-cpu", values: vals, area: true},
				seriesIn{name: "b", class: "s-peak", values: vals[:3]})
			if len(c.Series) != 2 {
				t.Fatalf("top %v span %v: %d series", top, span, len(c.Series))
			}
			if n := len(coords(t, c.Series[0].Line)); n != len(xs) {
				t.Errorf("series a has %d points, want %d", n, len(xs))
			}
			if n := len(coords(t, c.Series[1].Line)); n != 3 {
				t.Errorf("series b has %d points, want 3 (its values)", n)
			}
			for _, s := range c.Series {
				for _, pts := range []string{s.Line, s.Area} {
					for _, p := range coords(t, pts) {
						if p[0] < c.X0 || p[0] > c.X1 || p[1] < c.Y0 || p[1] > c.Y1 {
							t.Errorf("top %v span %v: point %v outside the plot [%v,%v]x[%v,%v]", top, span, p, c.X0, c.X1, c.Y0, c.Y1)
						}
					}
				}
			}
			if top == 2 && (!c.ClippedSeries || c.Note == "") {
				t.Errorf("top %v: values above the top are not said to be clipped", top)
			}
			for _, tk := range append(c.XTicks, c.YTicks...) {
				if math.IsNaN(tk.X) || math.IsNaN(tk.Y) || strings.Contains(tk.Label, "NaN") || strings.Contains(tk.Label, "Inf") {
					t.Errorf("top %v span %v: tick %+v", top, span, tk)
				}
			}
		}
	}
	// A top of 0 with data: a round number above the largest value.
	c := buildChart("c", "t", []float64{0, 1}, 1, 0, fmtCPU, seriesIn{name: "r", class: "s-cpu", values: []float64{0, 3}})
	if got := c.YTicks[2].Label; got != "5 vCPU" || c.ClippedSeries {
		t.Errorf("top label %q, want 5 vCPU", got)
	}
	for v, want := range map[float64]string{3 << 20: "5.0 MiB", 900: "1000 B", 1000: "1.0 KiB", 0: "1.0 KiB", 1.5e9: "2.0 GiB"} {
		if got := fmtBytes(niceBytes(v)); got != want {
			t.Errorf("niceBytes(%v) = %s, want %s", v, got, want)
		}
	}
	// The bottom of the chart is 0, its top the size.
	c = buildChart("c", "t", []float64{0, 10}, 10, 2, fmtCPU, seriesIn{name: "a", class: "s-cpu", values: []float64{0, 2}})
	if pts := coords(t, c.Series[0].Line); pts[0] != [2]float64{c.X0, c.Y1} || pts[1] != [2]float64{c.X1, c.Y0} {
		t.Errorf("0 at the start and the size at the end: %v", pts)
	}
	if c.YTicks[2].Label != "2 vCPU" || c.XTicks[2].Label != "10s" || c.ClippedSeries {
		t.Errorf("ticks %+v %+v", c.YTicks, c.XTicks)
	}
}

func renderChart(t *testing.T, c chart) string {
	t.Helper()
	var buf bytes.Buffer
	if err := parsePages()["job"].ExecuteTemplate(&buf, "chart", c); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

// The SVG's text is escaped, and it carries no script or style attribute
// (the Content-Security-Policy allows neither).
func TestChartSVGEscapes(t *testing.T) {
	evil := `</text><script>alert(1)</script><text onload="x">`
	c := buildChart("chart-x", evil, []float64{0, 1}, 1, 1, func(float64) string { return evil },
		seriesIn{name: evil, class: "s-cpu", values: []float64{0, 1}, area: true})
	svg := renderChart(t, c)
	if strings.Contains(svg, "<script") || strings.Contains(svg, `onload="`) || strings.Contains(svg, "style=") {
		t.Errorf("the chart lets markup through:\n%s", svg)
	}
	if !strings.Contains(svg, "&lt;script&gt;alert(1)&lt;/script&gt;") || !strings.Contains(svg, "<polyline") || !strings.Contains(svg, "<polygon") {
		t.Errorf("chart:\n%s", svg)
	}
	empty := renderChart(t, buildChart("chart-e", "Empty", nil, 0, 0, fmtCPU, seriesIn{name: "a", class: "s-cpu"}))
	if !strings.Contains(empty, "no samples yet") || strings.Contains(empty, "<polyline") || !strings.Contains(empty, "<svg") {
		t.Errorf("empty chart:\n%s", empty)
	}
}

// testProfile is a minute of a 2-vCPU, 1-GiB VM.
func testProfile(live bool) Profile {
	t0 := time.Date(2026, 1, 2, 3, 0, 0, 0, time.UTC)
	var ss []profile.Sample
	for i := range 61 {
		ss = append(ss, profile.Sample{At: t0.Add(time.Duration(i) * time.Second), GuestOK: true,
			GuestCPUSeconds: 1.5 * float64(i), CPUSeconds: 1.6 * float64(i), MemTotal: 1 << 30,
			MemAvailable: 1<<30 - int64(i)*(10<<20), RSS: 600 << 20, DiskRead: int64(i) << 20, NetRx: int64(i) << 21})
	}
	return Profile{Live: live, VCPUs: 2, MemoryMiB: 1024, Profile: profile.Build(ss, 2, 1<<30, 0)}
}

func TestJobPageProfile(t *testing.T) {
	e := newEnv(t)
	e.be.profiles = map[int64]Profile{1: testProfile(true)}
	c := e.login("admin-token")
	w := e.do("GET", "/jobs/1", c, nil, nil)
	body := w.Body.String()
	if w.Code != http.StatusOK {
		t.Fatalf("job page: %d %s", w.Code, body)
	}
	for _, want := range []string{`id="profile-summary"`, `id="profile-live"`, `id="chart-cpu"`, `id="chart-mem"`, `id="chart-io"`,
		`id="chart-net"`, "<polyline", "1.5 vCPU", "2 vCPU", "600.0 MiB (59%)", "1.0 GiB", "60.0 MiB read", "1m00s"} {
		if !strings.Contains(body, want) {
			t.Errorf("the job page lacks %q", want)
		}
	}
	if strings.Contains(body, "style=") || regexp.MustCompile(`<script[^>]*>[^<]`).MatchString(body) {
		t.Error("the job page has an inline style or script")
	}
	// The same in the live fragment.
	if frag := e.do("GET", "/jobs/1?fragment=1", c, nil, nil).Body.String(); !strings.Contains(frag, `id="chart-cpu"`) || strings.Contains(frag, "<html") {
		t.Errorf("fragment:\n%s", frag)
	}
	if body := e.do("GET", "/jobs/2", c, nil, nil).Body.String(); !strings.Contains(body, `id="no-profile"`) || strings.Contains(body, "<svg") {
		t.Errorf("a job without a profile:\n%s", body)
	}
	// An ended VM's profile is not live; a CPU-bound one is flagged.
	p := testProfile(false)
	p.Summary.CPUHighSeconds = p.Summary.Seconds
	e.be.profiles[1] = p
	body = e.do("GET", "/jobs/1", c, nil, nil).Body.String()
	if strings.Contains(body, `id="profile-live"`) || !strings.Contains(body, `<tr class="warn"><th scope="row">CPU</th>`) {
		t.Errorf("an ended, CPU-bound profile:\n%s", body)
	}
	// An empty profile (no points) draws empty charts.
	e.be.profiles[1] = Profile{Live: true, VCPUs: 2, MemoryMiB: 1024, Profile: profile.Build(nil, 2, 1<<30, 0)}
	if body := e.do("GET", "/jobs/1", c, nil, nil).Body.String(); !strings.Contains(body, "no samples yet") {
		t.Errorf("an empty profile:\n%s", body)
	}
}

func testAdvice() []rightsize.Advice {
	frees := rightsize.Size{VCPUs: 2, MemoryMiB: 4096, Label: "tandem-2cpu-4gb"}
	return []rightsize.Advice{
		{Key: rightsize.Key{Repo: "acme/app", Workflow: "CI", Name: "build", Arch: "amd64"}, Runs: 12,
			Asked: rightsize.Size{VCPUs: 8, MemoryMiB: 16384, Label: "tandem-8cpu-16gb"}, P95CPUPeak: 1.4, P95MemPeak: 3 << 30,
			Suggest: &frees, FreesVCPUs: 6, FreesMemoryMiB: 12288, Evidence: "asked tandem-8cpu-16gb; over 12 runs p95 peak was 1.4 vCPU / 3.0 GB"},
		{Key: rightsize.Key{Repo: "globex/secret", Workflow: "CI", Name: "<i>leak</i>", Arch: "arm64"}, Runs: 7,
			Asked: rightsize.Size{VCPUs: 2, MemoryMiB: 2048, Label: "tandem-arm64-2cpu-2gb"}, P95CPUPeak: 2, P95MemPeak: 2 << 30,
			Warnings: []string{"memory within 10% of its limit"}, Evidence: "globex evidence"},
	}
}

// The Right-sizing page shows the advice a token's scope sees, filtered by
// org and repository.
func TestRightsizePage(t *testing.T) {
	e := newEnv(t)
	e.be.advice = testAdvice()
	admin := e.login("admin-token")
	body := e.do("GET", "/rightsize", admin, nil, nil).Body.String()
	for _, want := range []string{`data-repo="acme/app"`, `data-repo="globex/secret"`, "tandem-2cpu-4gb", "frees 6 vCPU and 12.0 GiB per run",
		"1.4 of 8 vCPU", "3.0 GiB of 16.0 GiB", "memory within 10% of its limit", "&lt;i&gt;leak&lt;/i&gt;", `aria-current="page">Right-sizing`, "19 profiled runs"} {
		if !strings.Contains(body, want) {
			t.Errorf("the Right-sizing page lacks %q", want)
		}
	}
	if body := e.do("GET", "/rightsize?org=globex&days=7", admin, nil, nil).Body.String(); strings.Contains(body, `data-repo="acme/app"`) ||
		!strings.Contains(body, `data-repo="globex/secret"`) || !strings.Contains(body, `<option value="7" selected>`) {
		t.Errorf("filtered by org globex:\n%s", body)
	}
	if q := e.be.rsQueries[len(e.be.rsQueries)-1]; q != (RightsizeQuery{Org: "globex", Days: 7}) {
		t.Errorf("query %+v", q)
	}
	acme := e.login("acme-token")
	for _, p := range []string{"/rightsize", "/rightsize?org=globex", "/rightsize?repo=globex/secret"} {
		body := e.do("GET", p, acme, nil, nil).Body.String()
		if strings.Contains(body, `data-repo="globex/secret"`) || strings.Contains(body, "leak") {
			t.Errorf("a read:acme token sees globex's advice at %s", p)
		}
		if p == "/rightsize" && !strings.Contains(body, `data-repo="acme/app"`) {
			t.Errorf("a read:acme token does not see acme's advice:\n%s", body)
		}
	}
}

// A job's page carries the right-size note of its logical job, read at
// most once per noteTTL however often the page refreshes.
func TestJobRightsizeNote(t *testing.T) {
	e := newEnv(t)
	e.be.advice = testAdvice()
	e.be.jobs[0].Workflow, e.be.jobs[0].Arch = "CI", "amd64"
	c := e.login("acme-token")
	body := e.do("GET", "/jobs/1", c, nil, nil).Body.String()
	if !strings.Contains(body, `id="rightsize-note"`) || !strings.Contains(body, "runs-on: tandem-2cpu-4gb") ||
		!strings.Contains(body, `href="/rightsize?repo=acme%2Fapp"`) {
		t.Errorf("job 1 lacks its right-size note:\n%s", body)
	}
	for range 5 {
		e.do("GET", "/jobs/1?fragment=1", c, nil, nil)
	}
	if n := len(e.be.rsQueries); n != 1 {
		t.Errorf("%d right-size queries for 6 views in a second, want 1", n)
	}
	e.now = e.now.Add(noteTTL)
	e.do("GET", "/jobs/1?fragment=1", c, nil, nil)
	if n := len(e.be.rsQueries); n != 2 {
		t.Errorf("%d right-size queries after the TTL, want 2", n)
	}
	if q := e.be.rsQueries[0]; q != (RightsizeQuery{Repo: "acme/app", Days: 28}) {
		t.Errorf("query %+v", q)
	}
	// Another arch of the same job has no note.
	e.be.jobs[0].Arch = "arm64"
	if body := e.do("GET", "/jobs/1", c, nil, nil).Body.String(); strings.Contains(body, `id="rightsize-note"`) {
		t.Error("a note for another arch's logical job")
	}
}

// A running job's log tail grows in the live fragment and is marked to be
// followed; the tail is bounded.
func TestLogFollow(t *testing.T) {
	e := newEnv(t)
	e.be.jobs[0].State = "running"
	e.be.logs = map[int64]string{1: "step 1\n"}
	c := e.login("admin-token")
	body := e.do("GET", "/jobs/1", c, nil, nil).Body.String()
	if !strings.Contains(body, `<pre class="log" id="log" data-follow="1">step 1`) || !strings.Contains(body, "following") {
		t.Errorf("running job's log:\n%s", body)
	}
	e.be.mu.Lock()
	e.be.logs[1] += "step 2 <done>\n"
	e.be.mu.Unlock()
	frag := e.do("GET", "/jobs/1?fragment=1", c, nil, nil).Body.String()
	if !strings.Contains(frag, "step 1\nstep 2 &lt;done&gt;\n</pre>") {
		t.Errorf("the fragment lacks the log's new line:\n%s", frag)
	}
	// The tail is the last 32 KiB.
	e.be.mu.Lock()
	e.be.logs[1] = "FIRST" + strings.Repeat("x", 40<<10) + "LAST"
	e.be.mu.Unlock()
	frag = e.do("GET", "/jobs/1?fragment=1", c, nil, nil).Body.String()
	if strings.Contains(frag, "FIRST") || !strings.Contains(frag, "LAST</pre>") {
		t.Error("the log is not its last 32 KiB")
	}
	// Once the job ends, the log is not followed.
	e.be.jobs[0].State = "completed"
	if body := e.do("GET", "/jobs/1", c, nil, nil).Body.String(); strings.Contains(body, "data-follow") {
		t.Error("an ended job's log is marked to be followed")
	}
	// live.js keeps it scrolled to the end.
	js := e.do("GET", "/static/live.js", nil, nil, nil).Body.String()
	if !strings.Contains(js, `getElementById("log")`) || !strings.Contains(js, "scrollHeight") {
		t.Error("live.js does not follow the log")
	}
}

// The label filter and search pick from the jobs the other filters
// select, a page at a time, and stop at searchWindow jobs.
func TestJobsSearch(t *testing.T) {
	e := newEnv(t)
	e.be.jobs = nil
	for i := range 6000 {
		j := Job{ID: int64(6000 - i), Org: "acme", Repo: "acme/app", Workflow: "CI", Name: "unit", HeadBranch: "main",
			Labels: []string{"tandem-2cpu-4gb"}, State: "completed"}
		if i%50 == 0 {
			j.Name, j.HeadBranch, j.Labels = "Integration tests", "feature/Fast-Boot", []string{"self-hosted", "tandem-arm64-8cpu-16gb"}
		}
		if i == 5500 {
			j.Name = "integration tests (old)"
		}
		e.be.jobs = append(e.be.jobs, j)
	}
	c := e.login("admin-token")
	rows := regexp.MustCompile(`data-job="(\d+)"`)
	ids := func(body string) []string {
		var out []string
		for _, m := range rows.FindAllStringSubmatch(body, -1) {
			out = append(out, m[1])
		}
		return out
	}
	body := e.do("GET", "/jobs?label=TANDEM-arm64-8cpu-16gb", c, nil, nil).Body.String()
	if got := ids(body); len(got) != 50 || got[0] != "6000" || got[1] != "5950" || !strings.Contains(body, "page=2") ||
		strings.Contains(body, `id="search-window"`) {
		t.Errorf("label filter, page 1: %v", got)
	}
	body = e.do("GET", "/jobs?q=integration+fast-boot&page=2", c, nil, nil).Body.String()
	// Matches are every fiftieth of the newest 5000 (100), then the window
	// ends: page 2 has the second 50 and says the search stopped.
	if got := ids(body); len(got) != 50 || got[0] != "3500" || !strings.Contains(body, `id="search-window"`) || strings.Contains(body, "page=3") {
		t.Errorf("search page 2: %v", got)
	}
	body = e.do("GET", "/jobs?q=fast-boot", c, nil, nil).Body.String()
	if got := ids(body); len(got) != 50 || strings.Contains(body, `id="search-window"`) || !strings.Contains(body, `value="fast-boot"`) {
		t.Errorf("search page 1: %d rows", len(got))
	}
	// Within the window: a rare match, no notice.
	e.be.jobCalls = 0
	body = e.do("GET", "/jobs?q=old", c, nil, nil).Body.String()
	if got := ids(body); len(got) != 0 || !strings.Contains(body, `id="search-window"`) || e.be.jobCalls != searchWindow/searchBatch {
		t.Errorf("a match beyond the window: %v, %d calls", got, e.be.jobCalls)
	}
	body = e.do("GET", "/jobs?q=old&repo=acme/app&state=completed", c, nil, nil).Body.String()
	if strings.Contains(body, "page=2") {
		t.Errorf("a page of fewer than 50 has a next page")
	}
	// Search input is escaped back into the form and the pager.
	evil := `"><script>x</script>`
	body = e.do("GET", "/jobs?q="+urlQueryEscape(evil)+"&label="+urlQueryEscape(evil), c, nil, nil).Body.String()
	if strings.Contains(body, "<script>x") {
		t.Error("the search is not escaped")
	}
}
