package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/tandem-ci/tandem/internal/github/ghfake"
)

// The dashboard of a real `tandem up`, in headless Chromium: log in with
// the admin token tandem up made; watch a job appear on the Jobs page,
// run in its own VM and complete, without a reload; open its page and see
// the resource profile its VM sent (charts drawn from real samples).
func TestDashboardWithRealVMs(t *testing.T) {
	exe := ""
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			exe = p
			break
		}
	}
	if exe == "" {
		t.Skip("SKIPPED: no Chromium on PATH (scripts/install-deps.sh installs Debian's chromium)")
	}
	s := newSystem(t, options{})
	s.install("acme", "app")
	tok, err := os.ReadFile(filepath.Join(s.data, "api-admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe), chromedp.NoSandbox,
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.WindowSize(1280, 1000))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting %s: %v", exe, err)
	}
	do := func(what string, d time.Duration, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, scancel := context.WithTimeout(ctx, d)
		defer scancel()
		if err := chromedp.Do(sctx, steps...); err != nil {
			loc, _ := chromedp.Run(ctx, chromedp.Location())
			t.Fatalf("%s: %v (at %s)", what, err, loc)
		}
	}
	eval := func(expr string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr))
		if err != nil {
			t.Fatalf("evaluate %s: %v", expr, err)
		}
		return v
	}
	shot := func(name string) {
		dir := os.Getenv("TANDEM_SCREENSHOTS")
		if dir == "" {
			return
		}
		if png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)); err == nil {
			os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644)
		}
	}

	do("log in", 30*time.Second, chromedp.Navigate(s.apiURL+"/"), chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SendKeys(chromedp.ID("token"), strings.TrimSpace(string(tok))), chromedp.Click(chromedp.ID("login")),
		chromedp.WaitVisible(chromedp.ID("queue-depth")))
	do("open the jobs", 30*time.Second, chromedp.Navigate(s.apiURL+"/jobs"), chromedp.WaitVisible(chromedp.CSS("table")))
	eval(`window.tandemNoReload = "yes"; "ok"`) // gone if the page reloads

	id, _ := s.gh.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"tandem-1cpu-0.25gb"},
		Script: "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 6; echo done"})
	var seen []string
	deadline := time.Now().Add(4 * time.Minute)
	for {
		st := eval(fmt.Sprintf(`(document.querySelector('tr[data-job="%d"] .state') || {}).textContent || ""`, id))
		if st != "" && (len(seen) == 0 || seen[len(seen)-1] != st) {
			seen = append(seen, st)
			if st == "running" {
				shot("e2e-jobs-running")
			}
		}
		if st == "completed" || time.Now().After(deadline) {
			break
		}
		time.Sleep(300 * time.Millisecond)
	}
	if !slices.Contains(seen, "running") || seen[len(seen)-1] != "completed" {
		t.Fatalf("the job's states on the Jobs page: %v; want it running, then completed", seen)
	}
	if got := eval(`window.tandemNoReload || "reloaded"`); got != "yes" {
		t.Errorf("the page reloaded (%s)", got)
	}
	// Its page: the resource profile its VM sent while it ran.
	do("open the job", 30*time.Second, chromedp.Navigate(fmt.Sprintf("%s/jobs/%d", s.apiURL, id)),
		chromedp.WaitVisible(chromedp.ID("job-state")))
	var charts string
	for range 20 { // the profile is made when the VM's end has been applied
		charts = eval(`String(document.querySelectorAll('.charts svg').length) + " " + String(!!document.getElementById('profile-summary'))`)
		if charts != "0 false" {
			break
		}
		time.Sleep(500 * time.Millisecond)
		chromedp.Do(ctx, chromedp.Reload())
	}
	shot("e2e-job")
	if !strings.HasSuffix(charts, " true") || strings.HasPrefix(charts, "0 ") {
		t.Errorf("the job's page: %s charts and summary; want its profile", charts)
	}
	if v, _ := s.job(id); v.State != "completed" {
		t.Errorf("tandem's view: %+v", v)
	}
}
