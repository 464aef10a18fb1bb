// Package doctor checks whether this host, and with a config its GitHub App
// and control plane, can run Tandem's jobs, and says how to fix what stands
// in the way.
//
// Each check is a small function of an Env that returns one Result: ok,
// warn (jobs run, but worse than they could: under TCG, without I/O caps)
// or fail (jobs cannot run until it is fixed). A check never changes the
// host, with one exception it shares with the agent: the KVM probe boot
// caches its verdict in the data directory's state, as the QEMU driver
// always does. Where a check needs root and does not have it, it says so
// (warn) rather than guess.
//
// The checks reuse the detection of the parts that depend on the answer —
// the QEMU driver's probe boot and cgroup discovery, hostnet's host
// firewall detection, hostdeps' tables — so that doctor and the agent
// cannot disagree.
package doctor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/config"
	"github.com/tandem-ci/tandem/internal/github"
)

// Status is a check's verdict.
type Status string

// The statuses, from best to worst.
const (
	OK   Status = "ok"
	Warn Status = "warn"
	Fail Status = "fail"
)

// Result is one check's verdict: the JSON schema of `tandem doctor --json`
// is a list of these, stable: {check, status, detail, fix}.
type Result struct {
	Check  string `json:"check"`
	Status Status `json:"status"`
	// Detail says what was found, Fix what to do about it ("" when ok).
	Detail string `json:"detail"`
	Fix    string `json:"fix"`
}

// Env is what the checks look at.
type Env struct {
	// DataDir is Tandem's data directory: images, VM state.
	DataDir string
	// Config is the config file's content; nil when none was given, and
	// then the checks that need one (GitHub, the App, its webhooks) are
	// not run.
	Config *config.Config
	// Emulate are the foreign architectures this host offers, beside the
	// config's agent.emulate.
	Emulate []string
	// CredentialsFile is an agent's enrolled credentials
	// (<data-dir>/agent/credentials.json); Servers are the control
	// plane's agent addresses (tandem agent --server). Neither: no
	// control-plane check unless Config names a listener.
	CredentialsFile string
	Servers         []string
	// Bridge and HostFirewall are the VM network's bridge and
	// host-firewall mode (hostnet.FirewallAdd or FirewallRefuse) when
	// there is no config: tandem agent's flags. "": the defaults.
	Bridge, HostFirewall string
	// MemAvailableMiB and MemTotalMiB read the host's memory (the
	// agent's own helpers).
	MemAvailableMiB func() int
	MemTotalMiB     func() int
	// Root: running as root (some checks need it).
	Root bool
	// Logger receives the checks' debug logs.
	Logger *slog.Logger

	gh    *github.Client // made by client, once
	ghErr error
}

// Check is one named check.
type Check struct {
	Name string
	// Quick checks are cheap and local: no probe boot, no network. The
	// summary `tandem up` and `tandem agent` log at start runs only these.
	Quick bool
	Run   func(ctx context.Context, e *Env) Result
}

// Checks returns every check, in the order they are reported.
func Checks() []Check {
	return []Check{
		{"kvm", false, checkKVM},
		{"cgroups", true, checkCgroups},
		{"qemu", true, checkQEMU},
		{"images", true, checkImages},
		{"disk", true, checkDisk},
		{"memory", true, checkMemory},
		{"tun", true, checkTUN},
		{"bridge", true, checkBridge},
		{"nftables", true, checkNftables},
		{"ip_forward", true, checkIPForward},
		{"host_firewall", true, checkHostFirewall},
		{"control_plane", false, checkControlPlane},
		{"github", false, checkGitHub},
		{"github_app", false, checkGitHubApp},
		{"webhook_deliveries", false, checkDeliveries},
	}
}

// Names lists the checks' names.
func Names() []string {
	var out []string
	for _, c := range Checks() {
		out = append(out, c.Name)
	}
	return out
}

// Run runs the checks named in only (every one if empty; only the quick
// ones if quick) and returns their results; a check that does not apply
// (no config for the GitHub checks) returns no result.
func Run(ctx context.Context, e *Env, only []string, quick bool) ([]Result, error) {
	for _, n := range only {
		if !slices.Contains(Names(), n) {
			return nil, fmt.Errorf("no check %q (the checks: %s)", n, strings.Join(Names(), ", "))
		}
	}
	if e.Logger == nil {
		e.Logger = slog.New(slog.DiscardHandler)
	}
	var out []Result
	for _, c := range Checks() {
		if (len(only) > 0 && !slices.Contains(only, c.Name)) || (quick && !c.Quick) {
			continue
		}
		r := c.Run(ctx, e)
		if r.Status == "" { // does not apply here
			continue
		}
		r.Check = c.Name
		out = append(out, r)
	}
	return out, nil
}

// Failed reports whether any result fails: something blocks running jobs.
func Failed(rs []Result) bool {
	return slices.ContainsFunc(rs, func(r Result) bool { return r.Status == Fail })
}

var marks = map[Status]string{OK: "✓", Warn: "!", Fail: "✗"}

// WriteText writes the readable report: one line per check, ✓, ! or ✗,
// then for each problem its fix, indented.
func WriteText(w io.Writer, rs []Result) {
	width := 0
	for _, r := range rs {
		width = max(width, len(r.Check))
	}
	var warns, fails int
	for _, r := range rs {
		fmt.Fprintf(w, "%s %-*s  %s\n", marks[r.Status], width, r.Check, r.Detail)
		if r.Fix != "" && r.Status != OK {
			fmt.Fprintf(w, "  %*s  fix: %s\n", width, "", r.Fix)
		}
		switch r.Status {
		case Warn:
			warns++
		case Fail:
			fails++
		}
	}
	switch {
	case fails > 0:
		fmt.Fprintf(w, "\n%d problem(s) stop jobs from running here, %d warning(s).\n", fails, warns)
	case warns > 0:
		fmt.Fprintf(w, "\nJobs can run here; %d warning(s).\n", warns)
	default:
		fmt.Fprintln(w, "\nEverything checked is fine.")
	}
}

// WriteJSON writes the results as a JSON list (never null).
func WriteJSON(w io.Writer, rs []Result) error {
	if rs == nil {
		rs = []Result{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rs)
}

// Log logs one line per result that is not ok, at warn or error: the
// summary `tandem up` and `tandem agent` give at start.
func Log(log *slog.Logger, rs []Result) {
	for _, r := range rs {
		lvl := slog.LevelWarn
		if r.Status == Fail {
			lvl = slog.LevelError
		}
		if r.Status != OK {
			log.Log(context.Background(), lvl, "doctor: "+r.Check+": "+r.Detail, "fix", r.Fix)
		}
	}
}

// arches returns the architectures this host offers: its own, then the
// emulated ones.
func (e *Env) arches() []arch.Arch {
	out := []arch.Arch{arch.Host()}
	emu := slices.Clone(e.Emulate)
	if e.Config != nil {
		emu = append(emu, e.Config.Agent.Emulate...)
	}
	for _, name := range emu {
		if a := arch.Arch(name); a.IsMachine() && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

func ok(detail string) Result { return Result{Status: OK, Detail: detail} }
func warn(detail, fix string) Result {
	return Result{Status: Warn, Detail: detail, Fix: fix}
}
func fail(detail, fix string) Result {
	return Result{Status: Fail, Detail: detail, Fix: fix}
}

// needsRoot is the result of a check that cannot look without root.
func needsRoot(what string) Result {
	return warn("not checked: "+what+" needs root", "run `sudo tandem doctor`")
}
