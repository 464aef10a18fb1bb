package e2e

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/egress"
	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/testenv"
)

// TestEgressPolicyPerOrg: the config's egress overrides apply to their own
// organisation's jobs only. Each job tries a server on the internet that
// no policy names: the audited org's job reaches it and its flows are
// recorded, the allowlisted org's job is refused it (though its runner,
// allowed GitHub's address, works), and the default org's job runs open,
// with nothing recorded.
func TestEgressPolicyPerOrg(t *testing.T) {
	testenv.RequireVM(t)
	target := netip.AddrPortFrom(testenv.InternetAddr2, 8089)
	ln := testenv.Internet(t).ListenOn(t, target)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	s := newSystem(t, options{extra: fmt.Sprintf(`egress:
  default: {mode: open}
  overrides:
    audited: {mode: audit}
    fenced: {mode: allowlist, base: false, allow: ["%s/32"]}
`, testenv.InternetAddr)})
	script := fmt.Sprintf(`if nc -w 3 %s %d </dev/null; then echo "target reached"; else echo "target blocked"; fi`,
		target.Addr(), target.Port())
	want := map[string]string{"audited": "reached", "fenced": "blocked", "plain": "reached"}
	ids := map[string]int64{}
	var all []int64
	for org := range want {
		s.install(org, "app")
		id, _ := s.gh.QueueJob(ghfake.JobSpec{Repo: org + "/app", Labels: []string{"tandem-1cpu-0.25gb"}, Script: script})
		ids[org] = id
		all = append(all, id)
	}
	s.waitGitHubDone(all, 4*time.Minute)
	s.waitTandemState(all, time.Minute, "completed")
	for org, id := range ids {
		j, _ := s.gh.Job(id)
		if j.Conclusion != "success" || !strings.Contains(j.Output, "target "+want[org]) {
			t.Errorf("%s's job: conclusion %q, output %q; want the target %s", org, j.Conclusion, j.Output, want[org])
		}
		// The record comes with the runner's end, which may follow the
		// job's completion on GitHub.
		var v controlplane.EgressView
		s.waitFor(org+"'s egress record", time.Minute, func() bool {
			v = controlplane.EgressView{}
			s.getJSON(fmt.Sprintf("/api/v1/jobs/%d/egress", id), &v)
			return org == "plain" || v.Record != nil
		})
		var flows []string
		if v.Record != nil {
			for _, f := range v.Record.Flows {
				flows = append(flows, fmt.Sprintf("%s:%d allowed=%v", f.Addr, f.Port, f.Allowed))
			}
		}
		t.Logf("%s: policy %s, flows %v", org, v.Policy.Mode, flows)
		switch org {
		case "audited":
			if v.Policy.Mode != egress.Audit || !hasFlow(v.Record, target, true) {
				t.Errorf("%s: %+v; want audit, with the flow to %s allowed", org, v, target)
			}
		case "fenced":
			if v.Policy.Mode != egress.Allowlist || !hasFlow(v.Record, target, false) {
				t.Errorf("%s: %+v; want allowlist, with the flow to %s blocked", org, v, target)
			}
		case "plain":
			if v.Policy.Mode != egress.Open || v.Record != nil && len(v.Record.Flows) > 0 {
				t.Errorf("%s: %+v; want open, nothing recorded", org, v)
			}
		}
	}
}

func hasFlow(r *egress.Record, to netip.AddrPort, allowed bool) bool {
	if r == nil {
		return false
	}
	for _, f := range r.Flows {
		if f.Addr == to.Addr() && f.Port == to.Port() && f.Allowed == allowed {
			return true
		}
	}
	return false
}
