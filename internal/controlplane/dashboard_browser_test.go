package controlplane_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/github/ghfake"
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
// without a reload; and a read:acme token sees neither globex's job in the
// list nor its page by URL. A screenshot of each page goes to
// $TANDEM_SCREENSHOTS, or a temporary directory the log names.
func TestDashboardInBrowser(t *testing.T) {
	exe := chromium(t)
	shots := os.Getenv("TANDEM_SCREENSHOTS")
	if shots == "" {
		var err error
		if shots, err = os.MkdirTemp("", "tandem-dashboard-"); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("screenshots in %s", shots)

	r := newRig(t, rigOptions{configure: func(c *controlplane.Config) {
		c.APITokens = append(c.APITokens, controlplane.APIToken{Secret: acmeReader, Orgs: []string{"acme"}})
	}})
	r.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	r.gh.AddInstallation("globex", ghfake.AccountOrganization, "globex/web")

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe), chromedp.NoSandbox,
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.WindowSize(1280, 900))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	if err := chromedp.Do(ctx); err != nil { // starts the browser: no timeout on this context
		t.Fatalf("starting %s: %v", exe, err)
	}

	base := r.web.URL
	// page describes where the browser is, for a failure's message.
	page := func() string {
		pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
		defer pcancel()
		loc, _ := chromedp.Run(pctx, chromedp.Location())
		html, _ := chromedp.Run(pctx, chromedp.OuterHTML(chromedp.CSS("main")))
		return loc + ":\n" + html
	}
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
		defer scancel()
		if err := chromedp.Do(sctx, steps...); err != nil {
			t.Fatalf("%s: %v\nat %s", what, err, page())
		}
	}
	text := func(sel string) string {
		t.Helper()
		sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
		defer scancel()
		s, err := chromedp.Run(sctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v\nat %s", sel, err, page())
		}
		return s
	}
	eval := func(expr string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr))
		if err != nil {
			t.Fatalf("evaluate %s: %v", expr, err)
		}
		return v
	}
	// waitFor waits for a selector with its own deadline, so that a
	// failure says which.
	waitFor := func(what, sel string, d time.Duration) {
		t.Helper()
		wctx, wcancel := context.WithTimeout(ctx, d)
		defer wcancel()
		if err := chromedp.Do(wctx, chromedp.WaitVisible(chromedp.CSS(sel))); err != nil {
			t.Fatalf("waiting for %s (%s): %v\nat %s", what, sel, err, page())
		}
	}
	shot := func(name string) {
		t.Helper()
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		if err := os.WriteFile(filepath.Join(shots, name+".png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	login := func(token string) {
		t.Helper()
		do("open the login page", chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.ID("token")))
		shot("login")
		do("log in", chromedp.SendKeys(chromedp.ID("token"), token), chromedp.Click(chromedp.ID("login")))
		waitFor("the overview after login", "#queue-depth", 10*time.Second)
	}

	// An admin logs in, with a pasted token.
	login(rigAdminToken)
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

	// The queue says why they wait.
	do("open queue", chromedp.Navigate(base+"/queue"))
	waitFor("acme's job in the queue", acmeRow, 10*time.Second)
	if q := text("main"); !strings.Contains(q, "acme/app") || !strings.Contains(strings.ToLower(q), "drain") {
		t.Errorf("the queue does not say the job waits for a draining host:\n%s", q)
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
	for _, want := range []string{"queued", "scheduled", "running", "completed"} {
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
	do("globex's job by URL", chromedp.Navigate(fmt.Sprintf("%s/jobs/%d", base, globex)), chromedp.WaitVisible(chromedp.CSS("main h1")))
	if title, body := text("main h1"), text("main"); title != "Not found" || strings.Contains(body, "globex") {
		t.Errorf("a read:acme token opening globex's job: %q\n%s", title, body)
	}
	r.waitStates([]int64{acme, globex}, 5*time.Second, store.JobCompleted)
}
