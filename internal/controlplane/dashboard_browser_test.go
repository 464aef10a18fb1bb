package controlplane_test

import (
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/profile"
	"github.com/tandem-ci/tandem/internal/store"
)

// chromium finds Debian's chromium (scripts/install-deps.sh installs it).
func chromium(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("SKIPPED: the dashboard's browser test needs Chromium and there is none on PATH " +
		"(apt-get install --no-install-recommends chromium; scripts/install-deps.sh does)")
	return ""
}

// TestDashboardInBrowser drives the dashboard in headless Chromium against
// a real control plane, ghfake and an in-process host (goHost: fake
// runners, no VMs): log in with a token; drain the host with its button
// and see its state change; watch two jobs appear queued on the Jobs page
// (the host is draining) and become completed once it is uncordoned,
// without a reload; open a running job whose agent sends resource samples
// and see its profile charted, marked live, with its logical job's
// right-size note, and its log tail grow and stay scrolled to the end,
// without a reload; open the Right-sizing page; open the Insights page
// over a made-up fortnight (internal/demo) and a longest run's job from
// it; see the overview's queue-time chart and the host's load charts from
// the records taken every 200 ms; and a read:acme token sees neither
// globex's job in the list nor its page by URL, nor globex's right-size
// advice, nor the made-up orgs' insights. A screenshot of each page goes to
// $TANDEM_SCREENSHOTS, or a temporary directory the log names.
func TestDashboardInBrowser(t *testing.T) {
	chromium(t) // skips the test, before anything starts, when there is none
	var logDir string
	r := newRig(t, rigOptions{configure: func(c *controlplane.Config) {
		c.APITokens = append(c.APITokens, controlplane.APIToken{Secret: acmeReader, Orgs: []string{"acme"}})
		c.HostLoadEvery = 200 * time.Millisecond
		logDir = c.LogDir
	}})
	r.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	r.gh.AddInstallation("globex", ghfake.AccountOrganization, "globex/web")
	putRightsizeHistory(t, r)
	putDemoHistory(t, r, 14, 60)

	c := newChrome(t, r.web.URL)
	base, do, text, eval, waitFor, shot, login := c.base, c.do, c.text, c.eval, c.waitFor, c.shot, c.login

	// An admin logs in, with a pasted token.
	login(rigAdminToken)
	waitFor("the queue-time chart", "#chart-queue svg polyline", 5*time.Second)
	shot("overview")

	// Drains h1 with the button; the page shows it.
	do("open h1", chromedp.Navigate(base+"/hosts/h1"), chromedp.WaitVisible(chromedp.ID("btn-drain")))
	do("drain h1", chromedp.Click(chromedp.ID("btn-drain")))
	waitFor("h1 draining", "#host-state.host-draining", 10*time.Second)
	if st, _ := r.hostState("h1"); st != "draining" {
		t.Fatalf("h1 is %q after the drain button, want draining", st)
	}
	shot("host")

	// Jobs queued now wait; the Jobs page shows them appear, queued.
	const mark = `window.tandemMarker = "no reload"`
	do("open jobs", chromedp.Navigate(base+"/jobs"), chromedp.WaitVisible(chromedp.CSS("table")))
	eval(mark)
	acme := r.queue("acme/app", "tandem-2cpu-1gb", "echo acme")
	globex := r.queue("globex/web", "tandem-arm64-2cpu-1gb", "echo globex")
	acmeRow, globexRow := fmt.Sprintf(`tr[data-job="%d"]`, acme), fmt.Sprintf(`tr[data-job="%d"]`, globex)
	waitFor("acme's job queued on the Jobs page", acmeRow+".state-queued", 15*time.Second)
	waitFor("globex's job queued on the Jobs page", globexRow+".state-queued", 15*time.Second)
	shot("jobs-queued")

	// The queue says why they wait, once a placement pass has looked at
	// them (until then, "waiting for a host"; a pass may come a little
	// after the job shows queued, under qemu-user).
	for deadline := time.Now().Add(20 * time.Second); ; {
		do("open queue", chromedp.Navigate(base+"/queue"))
		waitFor("acme's job in the queue", acmeRow, 10*time.Second)
		q := text("main")
		if strings.Contains(q, "acme/app") && strings.Contains(strings.ToLower(q), "drain") {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("the queue does not say the job waits for a draining host:\n%s", q)
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	shot("queue")

	// Back on the Jobs page, uncordon through the API: the jobs complete
	// on the page without a reload.
	do("open jobs", chromedp.Navigate(base+"/jobs"), chromedp.WaitVisible(chromedp.CSS(acmeRow)))
	eval(mark)
	if code := r.call("POST", "/api/v1/hosts/h1/uncordon", rigAdminToken, nil); code != 200 {
		t.Fatalf("uncordon: %d", code)
	}
	waitFor("acme's job completed on the Jobs page", acmeRow+".state-completed", 30*time.Second)
	waitFor("globex's job completed on the Jobs page", globexRow+".state-completed", 30*time.Second)
	if m := eval(`window.tandemMarker || "reloaded"`); m != "no reload" {
		t.Errorf("the Jobs page reloaded (marker %q): it should update in place", m)
	}
	shot("jobs")

	// The job's page: transitions, and the link to GitHub.
	do("open the job", chromedp.Navigate(fmt.Sprintf("%s/jobs/%d", base, acme)))
	waitFor("the job's state", "#job-state.state-completed", 10*time.Second)
	timeline := text(".timeline")
	// "running" may be missing: a lost or late in_progress webhook lets
	// the reconciler learn the job's end straight from GitHub (a CI run
	// saw launching → completed).
	for _, want := range []string{"queued", "scheduled", "completed"} {
		if !strings.Contains(timeline, want) {
			t.Errorf("the timeline lacks %q:\n%s", want, timeline)
		}
	}
	if j, _ := r.job(acme); j.HTMLURL != "" {
		if href := eval(`(document.querySelector('dl.facts a[target="_blank"]') || {}).href || ""`); href != j.HTMLURL {
			t.Errorf("GitHub link %q, want %q", href, j.HTMLURL)
		}
	}
	shot("job")

	// A job that runs a while, with a history of runs of its logical job:
	// its page shows the right-size note, its resource profile live (the
	// samples an agent sends, charted), and its log tail growing, kept
	// scrolled to the end, without a reload.
	long := r.queue("acme/app", "tandem-4cpu-4gb", "sleep 30")
	r.waitStates([]int64{long}, 20*time.Second, store.JobRunning)
	lj, _ := r.job(long)
	if lj.Workflow != historyJob.Workflow || lj.Name != historyJob.Name || lj.Arch != historyJob.Arch {
		t.Fatalf("the job runs as %s / %s / %s, but its history was stored as %s / %s / %s",
			lj.Workflow, lj.Name, lj.Arch, historyJob.Workflow, historyJob.Name, historyJob.Arch)
	}
	r.cp.HostSamples("h1", []agentapi.RunnerSamples{{Runner: lj.RunnerName, Samples: demoSamples(time.Now())}})
	logPath := filepath.Join(logDir, lj.RunnerName+".log")
	appendLog := func(from, to int, last string) {
		t.Helper()
		f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for i := from; i < to; i++ {
			fmt.Fprintf(f, "2026-01-02T03:%02d:%02dZ [build] step %d: compiling package %d of %d <ok>\n", i/60%60, i%60, i, i, to)
		}
		fmt.Fprintln(f, last)
	}
	appendLog(0, 120, "checkout done")
	jobURL := fmt.Sprintf("%s/jobs/%d", base, long)
	do("open the running job", chromedp.Navigate(jobURL), chromedp.WaitVisible(chromedp.ID("log")))
	eval(mark)
	waitFor("the CPU chart", "#chart-cpu svg polyline", 15*time.Second)
	waitFor("the profile marked live", "#profile-live", 5*time.Second)
	waitFor("the right-size note", "#rightsize-note", 5*time.Second)
	if note := text("#rightsize-note"); !strings.Contains(note, "2cpu-1gb would do") {
		t.Errorf("right-size note %q, want a suggestion of 2cpu-1gb", note)
	}
	if sum := text("#profile-summary"); !strings.Contains(sum, "vCPU") || !strings.Contains(sum, "MiB") {
		t.Errorf("profile summary:\n%s", sum)
	}
	for _, id := range []string{"chart-mem", "chart-io", "chart-net"} {
		if n := eval(fmt.Sprintf(`String(document.querySelectorAll('#%s svg polyline').length)`, id)); n != "2" {
			t.Errorf("%s has %s lines, want 2", id, n)
		}
	}
	atEnd := `(function () { var l = document.getElementById("log");
		return String(l.scrollHeight > l.clientHeight && l.scrollTop + l.clientHeight >= l.scrollHeight - 4); })()`
	if v := eval(atEnd); v != "true" {
		t.Errorf("the log tail is not scrolled to its end on load (%s)", v)
	}
	appendLog(120, 160, "FOLLOW-MARK: tests passed")
	r.waitFor("the new log lines on the page", 10*time.Second, func() bool {
		return strings.Contains(eval(`document.getElementById("log").textContent`), "FOLLOW-MARK")
	})
	if v := eval(atEnd); v != "true" {
		t.Errorf("the log tail did not follow its new lines (%s)", v)
	}
	if m := eval(`window.tandemMarker || "reloaded"`); m != "no reload" {
		t.Errorf("the job page reloaded (marker %q): it should update in place", m)
	}
	do("scroll to the profile", chromedp.ScrollIntoView(chromedp.ID("rightsize-note")))
	shot("job-profile")

	// The Right-sizing page: the advice for acme's and globex's jobs.
	do("open right-sizing", chromedp.Navigate(base+"/rightsize"), chromedp.WaitVisible(chromedp.ID("rightsize")))
	if rs := text("#rightsize"); !strings.Contains(rs, "acme/app") || !strings.Contains(rs, "globex/web") || !strings.Contains(rs, "tandem-amd64-2cpu-1gb") {
		t.Errorf("right-sizing page:\n%s", rs)
	}
	shot("rightsize")

	// Insights over the made-up fortnight: a row per repository beside the
	// week before, etcd's integration job slower this week, the longest
	// runs linking to their jobs.
	do("open insights", chromedp.Navigate(base+"/insights"), chromedp.WaitVisible(chromedp.CSS(`#insights tr[data-group="etcd-io/etcd"]`)))
	if inc := text("#increases"); !strings.Contains(inc, "etcd-io/etcd") || !strings.Contains(inc, "integration") {
		t.Errorf("jobs slower this week:\n%s", inc)
	}
	shot("insights")
	do("open the longest run", chromedp.Click(chromedp.CSS(`#slowest tbody tr:first-child a[href^="/jobs/"]`)))
	waitFor("the longest run's page", "#job-state", 10*time.Second)

	// The host's load over the last day, from the records taken every
	// 200 ms.
	do("open h1's load", chromedp.Navigate(base+"/hosts/h1"), chromedp.WaitVisible(chromedp.ID("host-load")))
	waitFor("h1's vCPU chart", "#chart-host-cpu svg polyline", 10*time.Second)
	waitFor("h1's VMs chart", "#chart-host-vms svg polyline", 5*time.Second)
	if note := text("#host-load-note"); !strings.Contains(note, "load records") {
		t.Errorf("host load note %q", note)
	}
	do("scroll to the load charts", chromedp.ScrollIntoView(chromedp.ID("host-load")))
	shot("host-load")

	do("open hosts", chromedp.Navigate(base+"/hosts"), chromedp.WaitVisible(chromedp.CSS(`tr[data-host="h1"]`)))
	shot("hosts")
	do("open audit", chromedp.Navigate(base+"/audit"), chromedp.WaitVisible(chromedp.CSS("table")))
	if a := text("main"); !strings.Contains(a, "host.drain") || !strings.Contains(a, "dashboard") || !strings.Contains(a, "host.uncordon") ||
		!strings.Contains(a, controlplane.TokenLabel(rigAdminToken)) || strings.Contains(a, rigAdminToken) {
		t.Errorf("audit page:\n%s", a)
	}
	shot("audit")

	// On a phone.
	do("phone", chromedp.EmulateViewport(390, 844), chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.ID("queue-depth")))
	shot("overview-phone")
	do("desktop", chromedp.EmulateViewport(1280, 900))

	// Log out; a read:acme token sees acme's job and not globex's.
	do("log out", chromedp.Click(chromedp.CSS("header .logout button")), chromedp.WaitVisible(chromedp.ID("token")))
	login(acmeReader)
	do("acme's jobs", chromedp.Navigate(base+"/jobs"), chromedp.WaitVisible(chromedp.CSS(acmeRow)))
	if n := eval(fmt.Sprintf(`String(document.querySelectorAll('%s').length)`, globexRow)); n != "0" {
		t.Errorf("a read:acme token sees globex's job in the list (%s rows)", n)
	}
	if list := text("main"); strings.Contains(list, "globex") {
		t.Errorf("a read:acme token sees globex in the list:\n%s", list)
	}
	shot("jobs-scoped")
	do("acme's right-sizing", chromedp.Navigate(base+"/rightsize?repo=globex/web"), chromedp.WaitVisible(chromedp.ID("rightsize")))
	if rs := text("#rightsize"); strings.Contains(rs, "globex") {
		t.Errorf("a read:acme token sees globex's advice:\n%s", rs)
	}
	do("acme's right-sizing", chromedp.Navigate(base+"/rightsize"), chromedp.WaitVisible(chromedp.CSS(`#rightsize tr[data-repo="acme/app"]`)))
	do("acme's insights", chromedp.Navigate(base+"/insights?days=28&by=job"), chromedp.WaitVisible(chromedp.CSS(`#insights tr[data-group="acme/app"]`)))
	if in := text("main"); strings.Contains(in, "etcd-io/") || strings.Contains(in, "globex/") {
		t.Errorf("a read:acme token sees other orgs' insights:\n%s", in)
	}
	do("globex's job by URL", chromedp.Navigate(fmt.Sprintf("%s/jobs/%d", base, globex)), chromedp.WaitVisible(chromedp.CSS("main h1")))
	if title, body := text("main h1"), text("main"); title != "Not found" || strings.Contains(body, "globex") {
		t.Errorf("a read:acme token opening globex's job: %q\n%s", title, body)
	}
	r.waitStates([]int64{acme, globex}, 5*time.Second, store.JobCompleted)
}

// chrome is headless Chromium on the dashboard at base, with the steps
// the browser tests share; a step that fails ends the test, saying where
// the browser was. A screenshot of each page goes to $TANDEM_SCREENSHOTS,
// or a temporary directory the log names.
type chrome struct {
	t     *testing.T
	ctx   context.Context // the browser's: no timeout
	base  string
	shots string
}

// newChrome starts Chromium for the dashboard at base, or skips the test
// when there is none; the browser stops with the test.
func newChrome(t *testing.T, base string) *chrome {
	t.Helper()
	exe := chromium(t)
	shots := os.Getenv("TANDEM_SCREENSHOTS")
	if shots == "" {
		var err error
		if shots, err = os.MkdirTemp("", "tandem-dashboard-"); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("screenshots in %s", shots)
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe), chromedp.NoSandbox,
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.WindowSize(1280, 900))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil { // starts the browser: no timeout on this context
		t.Fatalf("starting %s: %v", exe, err)
	}
	return &chrome{t: t, ctx: ctx, base: base, shots: shots}
}

// page describes where the browser is, for a failure's message.
func (c *chrome) page() string {
	pctx, pcancel := context.WithTimeout(c.ctx, 5*time.Second)
	defer pcancel()
	loc, _ := chromedp.Run(pctx, chromedp.Location())
	html, _ := chromedp.Run(pctx, chromedp.OuterHTML(chromedp.CSS("main")))
	return loc + ":\n" + html
}

func (c *chrome) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	c.t.Helper()
	sctx, scancel := context.WithTimeout(c.ctx, 30*time.Second)
	defer scancel()
	if err := chromedp.Do(sctx, steps...); err != nil {
		c.t.Fatalf("%s: %v\nat %s", what, err, c.page())
	}
}

// text is the rendered text of the first element sel selects.
func (c *chrome) text(sel string) string {
	c.t.Helper()
	sctx, scancel := context.WithTimeout(c.ctx, 10*time.Second)
	defer scancel()
	s, err := chromedp.Run(sctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		c.t.Fatalf("text of %s: %v\nat %s", sel, err, c.page())
	}
	return s
}

func (c *chrome) eval(expr string) string {
	c.t.Helper()
	v, err := chromedp.Run(c.ctx, chromedp.Evaluate[string](expr))
	if err != nil {
		c.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// waitFor waits for a selector with its own deadline, so that a failure
// says which.
func (c *chrome) waitFor(what, sel string, d time.Duration) {
	c.t.Helper()
	wctx, wcancel := context.WithTimeout(c.ctx, d)
	defer wcancel()
	if err := chromedp.Do(wctx, chromedp.WaitVisible(chromedp.CSS(sel))); err != nil {
		c.t.Fatalf("waiting for %s (%s): %v\nat %s", what, sel, err, c.page())
	}
}

func (c *chrome) shot(name string) {
	c.t.Helper()
	png, err := chromedp.Run(c.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		c.t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(c.shots, name+".png"), png, 0o644); err != nil {
		c.t.Fatal(err)
	}
}

// login logs in with token through the login form.
func (c *chrome) login(token string) {
	c.t.Helper()
	c.do("open the login page", chromedp.Navigate(c.base+"/"), chromedp.WaitVisible(chromedp.ID("token")))
	c.shot("login")
	c.do("log in", chromedp.SendKeys(chromedp.ID("token"), token), chromedp.Click(chromedp.ID("login")))
	c.waitFor("the overview after login", "#queue-depth", 10*time.Second)
}

// historyJob is the logical job of a job ghfake queues in acme/app with
// runs-on: tandem-4cpu-4gb.
var historyJob = store.Job{Org: "acme", Repo: "acme/app", Workflow: "CI", Name: "build", Labels: []string{"tandem-4cpu-4gb"},
	Arch: "amd64", VCPUs: 4, MemoryMiB: 4096}

// putRightsizeHistory stores six profiled runs of historyJob (at most
// 1.55 vCPU and 800 MiB at their peaks: a 2-vCPU, 1-GiB VM would do) and
// six of a globex job, as ended runs leave them.
func putRightsizeHistory(t *testing.T, r *rig) {
	t.Helper()
	j := historyJob
	now := time.Now()
	err := r.st.Update(t.Context(), func(tx store.Tx) error {
		for i := range 6 {
			for k, h := range []store.Job{
				{Org: j.Org, Repo: j.Repo, Workflow: j.Workflow, Name: j.Name, Labels: j.Labels, Arch: j.Arch, VCPUs: j.VCPUs, MemoryMiB: j.MemoryMiB},
				{Org: "globex", Repo: "globex/web", Workflow: "CI", Name: "e2e", Labels: []string{"tandem-arm64-8cpu-16gb"}, Arch: "arm64", VCPUs: 8, MemoryMiB: 16384},
			} {
				h.ID = int64(900000 + 10*i + k)
				h.State, h.UpdatedAt, h.QueuedAt = store.JobCompleted, now, now.Add(-time.Hour)
				if err := tx.CreateJob(h, store.Event{}); err != nil {
					return err
				}
				sum := profile.Summary{Samples: 300, Seconds: 300, VCPUs: h.VCPUs, MemoryBytes: int64(h.MemoryMiB) << 20,
					CPUPeak: 1.3 + 0.05*float64(i), CPUAvg: 0.9, MemPeak: (700 + 20*int64(i)) << 20, MemAvg: 450 << 20}
				if err := tx.PutProfile(store.Profile{Runner: fmt.Sprintf("hist-%d", h.ID), JobID: h.ID, EndedAt: now.Add(-time.Duration(i) * time.Hour),
					Profile: profile.Profile{Summary: sum}}); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// demoSamples is nine minutes of a 4-vCPU, 4-GiB VM building and testing
// some code, one sample a second ending at end, as an agent sends them:
// checkout (network), a build (CPU, disk writes), tests (memory), upload.
func demoSamples(end time.Time) []profile.Sample {
	const n = 540
	var out []profile.Sample
	var cpu, read, write, rx, tx float64
	for i := range n {
		f := float64(i) / n
		var c, mem, r, w, in, o float64
		switch {
		case f < 0.12: // checkout and dependencies
			c, mem, in, w = 0.3+0.2*math.Sin(float64(i)), 180+600*f, 9e6+3e6*math.Sin(float64(i)/3), 4e6
		case f < 0.55: // build
			c, mem, r, w = 1.75+0.2*math.Sin(float64(i)/5), 300+200*math.Sin(f*9), 2e6, 6e6+4e6*math.Sin(float64(i)/7)
		case f < 0.9: // tests
			c, mem, r, w = 1.1+0.5*math.Sin(float64(i)/4), 420+360*(f-0.55)/0.35, 1e6, 1e6
		default: // upload
			c, mem, o = 0.2, 350, 5e6
		}
		cpu += c
		read, write, rx, tx = read+r, write+w, rx+in+2e3, tx+o+1e3
		mib := int64(mem) << 20
		out = append(out, profile.Sample{At: end.Add(time.Duration(i-n) * time.Second),
			CPUSeconds: cpu * 1.08, RSS: mib + 180<<20, DiskAlloc: int64(write) / 2, DiskRead: int64(read), DiskWrite: int64(write),
			NetRx: int64(rx), NetTx: int64(tx), GuestOK: true, GuestCPUSeconds: cpu, Load1: c * 1.2,
			MemTotal: 4 << 30, MemAvailable: 4<<30 - mib, DiskUsed: 2<<30 + int64(write)/3, DiskTotal: 20 << 30, Procs: 40 + int(c*30)})
	}
	return out
}
