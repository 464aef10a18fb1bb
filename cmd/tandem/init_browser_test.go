package main

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// chromium finds Debian's chromium (scripts/install-deps.sh installs it).
func chromium(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("SKIPPED: tandem init's browser test needs Chromium and there is none on PATH " +
		"(apt-get install --no-install-recommends chromium; scripts/install-deps.sh does)")
	return ""
}

// TestInitInBrowser runs tandem init's App-manifest flow end to end in
// headless Chromium against ghfake: open the printed page, press its one
// button; the form goes to ghfake's "GitHub", which makes the App and
// sends the browser back to tandem init's callback; tandem init exchanges
// the code, writes the files, shows the install link and exits. The files
// are then checked as TestInitFlow checks them: modes 0600, a config that
// loads, the App's own key and webhook secret.
func TestInitInBrowser(t *testing.T) {
	exe := chromium(t)
	r := newInitRig(t, "acme")

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe), chromedp.NoSandbox,
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.WindowSize(1024, 768))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil { // starts the browser: no timeout on this context
		t.Fatalf("starting %s: %v", exe, err)
	}
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, scancel := context.WithTimeout(ctx, time.Minute)
		defer scancel()
		if err := chromedp.Do(sctx, steps...); err != nil {
			loc, _ := chromedp.Run(ctx, chromedp.Location())
			t.Fatalf("%s: %v (at %s)", what, err, loc)
		}
	}
	text := func(sel string) string {
		t.Helper()
		sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
		defer scancel()
		s, err := chromedp.Run(sctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return s
	}

	do("open the page", chromedp.Navigate(r.page), chromedp.WaitVisible(chromedp.ID("create")))
	if name, hook := text("#app-name"), text("#webhook-url"); name != "tandem-test" || hook != r.hooks.URL+"/webhook" {
		t.Errorf("the page shows the App %q with webhooks to %q", name, hook)
	}
	do("create the App", chromedp.Click(chromedp.ID("create")), chromedp.WaitVisible(chromedp.ID("done")))
	if done := text("#done"); !strings.Contains(done, "tandem-test") || !strings.Contains(done, "runs-on: tandem-arm64-4cpu-8gb") {
		t.Errorf("the success page says:\n%s", done)
	}
	href, err := chromedp.Run(ctx, chromedp.AttributeValue(chromedp.ID("install"), "href"))
	if err != nil || !strings.HasSuffix(href.Value, "/apps/tandem-test/installations/new") {
		t.Errorf("the install link is %q (%v)", href.Value, err)
	}
	loc, _ := chromedp.Run(ctx, chromedp.Location())
	if !strings.Contains(loc, "/callback?") {
		t.Errorf("the browser ended at %s, not tandem init's callback", loc)
	}
	if err := r.wait(); err != nil {
		t.Fatalf("tandem init: %v", err)
	}
	r.check("acme")
}
