package controlplane_test

import (
	"fmt"
	"math"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/store"
)

// The Parity page in Chromium on a real control plane and store: a week
// of acme/app's CI, build on both architectures ("build (amd64)" and
// "build (arm64)" matched into one logical job), lint and a job named
// like a script on amd64 only. After the tier loop has recorded the
// repository once, the page shows build as on both with its numbers and
// the names matched, acme/app in tier-2 since today and why, the org's
// tier, the move that put it there, and lint's nudge once opened; the
// stranger's job name is text, not a script. Bad filters answer 400, and
// a read:globex token sees none of it.
func TestDashboardParityInBrowser(t *testing.T) {
	chromium(t) // skips the test, before anything starts, when there is none
	const globexReader = "globex-read-token-0123456789"
	r := newRig(t, rigOptions{noHosts: true, configure: func(c *controlplane.Config) {
		c.APITokens = append(c.APITokens, controlplane.APIToken{Secret: globexReader, Orgs: []string{"globex"}})
		c.ParityEvery = -1 // the test records tiers itself
	}})
	const evil = `<script>window.pwned = 1</script>`
	now := time.Now()
	id := int64(8000)
	err := r.st.Update(t.Context(), func(tx store.Tx) error {
		add := func(name string, a arch.Arch, run int, took time.Duration) error {
			id++
			end := now.Add(-time.Duration(run) * 6 * time.Hour)
			label := "tandem-" + string(a) + "-2cpu-2gb"
			return tx.CreateJob(store.Job{ID: id, Org: "acme", Repo: "acme/app", Workflow: "CI", Name: name, Arch: a, VCPUs: 2, MemoryMiB: 2048,
				Labels: []string{label}, LabelKey: label, State: store.JobCompleted, Conclusion: "success",
				CreatedAt: end.Add(-took - time.Minute), QueuedAt: end.Add(-took - time.Minute), StartedAt: end.Add(-took), CompletedAt: end,
				UpdatedAt: end, HeadSHA: fmt.Sprintf("%040x", run)}, store.Event{})
		}
		for run := range 4 {
			for _, j := range []struct {
				name string
				a    arch.Arch
				took time.Duration
			}{{"build (amd64)", arch.AMD64, 4 * time.Minute}, {"build (arm64)", arch.ARM64, 5 * time.Minute},
				{"lint", arch.AMD64, time.Minute}, {evil, arch.AMD64, time.Minute}} {
				if err := add(j.name, j.a, run, j.took); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.cp.RecordParityTiers(t.Context()); err != nil {
		t.Fatal(err)
	}

	b := newBrowser(t, r.web.URL)
	b.login(rigAdminToken)
	for _, q := range []string{"days=0", "days=91", "days=x", "repo=app", "org=a%2Fb"} {
		if code, page := b.do("GET", "/parity?"+q, nil); code != http.StatusBadRequest || !strings.Contains(page, "Bad request") {
			t.Errorf("/parity?%s: %d, want 400:\n%s", q, code, page)
		}
	}

	g := newBrowser(t, r.web.URL)
	g.login(globexReader)
	if code, page := g.do("GET", "/parity?org=acme", nil); code != http.StatusOK || strings.Contains(page, "acme/app") || strings.Contains(page, "build") {
		t.Errorf("a read:globex token sees acme's parity (%d):\n%s", code, page)
	}

	c := newChrome(t, r.web.URL)
	c.login(rigAdminToken)
	build := `#parity-matrix tr[data-job="build"]`
	c.do("open the Parity page from the menu", chromedp.Click(chromedp.CSS(`header nav a[href="/parity"]`)),
		chromedp.WaitVisible(chromedp.CSS(build)))
	today := now.UTC().Format("2006-01-02")
	for _, tc := range []struct {
		what, sel string
		want      []string
	}{
		{"build's row", build, []string{"acme/app", "CI / build", "both", "4 runs", "success 100%", "median ",
			"amd64: build (amd64)", "arm64: build (arm64)"}},
		{"acme/app's tier", `#parity-repos tr[data-repo="acme/app"]`, []string{"arm64 parity", "tier-2 · 100%", today, "1 of 3", "100%",
			"not tier-1: CI / " + evil + " runs on amd64 only (tier-1 wants every job on both)"}},
		{"acme's tier", `#parity-orgs tr[data-org="acme"]`, []string{"acme", "tier-2", "tier-2: 1"}},
		{"the move", `#parity-moves tr[data-repo="acme/app"]`, []string{today, "(new) → ↑ tier-2"}},
		{"the stranger's job", `#parity-matrix tr[data-job="` + evil + `"]`, []string{evil, "amd64 only"}},
		{"the summary", "#parity-summary", []string{"amd64 only 2", "both 1"}},
	} {
		got := c.text(tc.sel)
		for _, w := range tc.want {
			if !strings.Contains(got, w) {
				t.Errorf("%s lacks %q:\n%s", tc.what, w, got)
			}
		}
	}
	// Medians are a histogram bucket's middle (within ~5%): 4 and 5 min.
	m := regexp.MustCompile(`median (\d+)m(\d\d)s\s+4 runs\s+success 100%\s+median (\d+)m(\d\d)s\s+(\d+\.\d\d)×`).FindStringSubmatch(c.text(build))
	if m == nil {
		t.Errorf("build's medians and ratio not found:\n%s", c.text(build))
	} else {
		secs := func(mins, s string) float64 {
			a, _ := strconv.Atoi(mins)
			b, _ := strconv.Atoi(s)
			return float64(60*a + b)
		}
		ratio, _ := strconv.ParseFloat(m[5], 64)
		if amd, arm := secs(m[1], m[2]), secs(m[3], m[4]); math.Abs(amd-240) > 15 || math.Abs(arm-300) > 15 || math.Abs(ratio-arm/amd) > 0.02 {
			t.Errorf("build's medians %s and %s, ratio %s: want about 4m00s, 5m00s and their ratio", m[1]+"m"+m[2], m[3]+"m"+m[4], m[5])
		}
	}
	if v := c.eval(`String(window.pwned)`); v != "undefined" {
		t.Errorf("a job's name ran as a script (window.pwned = %s)", v)
	}

	// lint's nudge: hidden until opened.
	lint := `#parity-matrix tr[data-job="lint"]`
	if got := c.text(lint); !strings.Contains(got, "amd64 only") || !strings.Contains(got, "Add arm64") || strings.Contains(got, "runs-on") {
		t.Errorf("lint's row, closed:\n%s", got)
	}
	c.do("open lint's nudge", chromedp.Click(chromedp.CSS(lint+" details summary")), chromedp.WaitVisible(chromedp.CSS(lint+" details pre")))
	if got := c.text(lint + " details pre"); got != "strategy:\n  matrix:\n    runner: [tandem-amd64-2cpu-2gb, tandem-arm64-2cpu-2gb]\nruns-on: ${{ matrix.runner }}" {
		t.Errorf("lint's nudge:\n%s", got)
	}
	c.shot("parity")
}
