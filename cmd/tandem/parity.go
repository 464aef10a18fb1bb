package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-ci/tandem/internal/apiclient"
	"github.com/tandem-ci/tandem/internal/parity"
	"github.com/tandem-ci/tandem/internal/termtext"
)

// Exit codes of `tandem parity check`, for release pipelines.
const (
	exitGatePass    = 0
	exitGateFail    = 1
	exitGatePending = 2 // a job is still to end (or none is known yet) when --wait runs out
)

func parityCmd(g *globals) *cobra.Command {
	o := &apiOptions{}
	var org, repo string
	var days int
	var csvOut, mdOut bool
	cmd := &cobra.Command{
		Use:   "parity [--org ORG | --repo OWNER/NAME] [--days N] [--json | --csv | --markdown]",
		Short: "Arm64 beside x86_64: every logical job on both architectures, its status, and each repository's support tier",
		Long: `parity shows, for each logical job (a job name without its architecture words: "build (arm64)" and
"build (amd64)" are one), its runs, success rate, run and queue times on each architecture, whether
arm64 ran emulated, the arm64/amd64 run-time ratio and a status: both, amd64 only, arm64 only,
arm64 failing (the latest commit failed on arm64 and passed on amd64) or arm64 flaky. Repositories
get the support tier of the config's parity policy; amd64-only jobs get the runs-on change that
adds arm64.`,
		Args: cobra.NoArgs,
	}
	cmd.RunE = opsRun(g, o, func(cmd *cobra.Command, c *apiclient.Client, args []string) error {
		if org != "" && repo != "" {
			return errors.New("give --org or --repo, not both")
		}
		if n := btoi(o.json) + btoi(csvOut) + btoi(mdOut); n > 1 {
			return errors.New("give one of --json, --csv and --markdown")
		}
		q := url.Values{}
		for k, v := range map[string]string{"org": org, "repo": repo} {
			if v != "" {
				q.Set(k, v)
			}
		}
		if days > 0 {
			q.Set("days", strconv.Itoa(days))
		}
		var v parity.View
		if printed, err := o.call(cmd, c, http.MethodGet, "/api/v1/parity", q, nil, &v); printed || err != nil {
			return err
		}
		w := cmd.OutOrStdout()
		switch {
		case csvOut:
			return parity.WriteCSV(w, v.Rows)
		case mdOut:
			return parity.WriteMarkdown(w, v.Rows)
		}
		return printParity(w, v)
	})
	o.register(cmd, true)
	f := cmd.Flags()
	f.StringVar(&org, "org", "", "only this organisation's jobs")
	f.StringVar(&repo, "repo", "", "only this repository's jobs (owner/name)")
	f.IntVar(&days, "days", 0, "the period in days, today's included (default: the policy's, 14)")
	f.BoolVar(&csvOut, "csv", false, "print the matrix as CSV")
	f.BoolVar(&mdOut, "markdown", false, "print the matrix as a Markdown table")
	cmd.AddCommand(parityCheckCmd(g), parityReportCmd(g))
	return cmd
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func pctText(x float64) string {
	if x < 0 {
		return "-"
	}
	return strconv.FormatFloat(100*x, 'f', 0, 64) + "%"
}

func archText(s *parity.ArchStats) string {
	if s == nil {
		return "-"
	}
	t := fmt.Sprintf("%d %s %s", s.Runs, pctText(s.SuccessRate), dur(s.RunP50))
	if s.Emulated > 0 {
		t += " emu"
	}
	return t
}

func printParity(w io.Writer, v parity.View) error {
	fmt.Fprintf(w, "the last %d days (%s to today): runs, success, median run time per architecture (emu: emulated)\n\n",
		v.Days, v.Since.Format("2006-01-02"))
	tb := termtext.NewTable(w, "REPO", "WORKFLOW", "JOB", "STATUS", "AMD64", "ARM64", "RATIO", "MATCHED")
	for _, r := range v.Rows {
		ratio := "-"
		if r.Ratio > 0 {
			ratio = strconv.FormatFloat(r.Ratio, 'f', 2, 64) + "x"
		}
		var names []string
		for _, s := range []*parity.ArchStats{r.AMD64, r.ARM64} {
			if s != nil {
				names = append(names, s.Names...)
			}
		}
		tb.Row(r.Repo, r.Workflow, r.Job, string(r.Status), archText(r.AMD64), archText(r.ARM64), ratio, strings.Join(names, ", "))
	}
	if err := tb.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tb = termtext.NewTable(w, "REPO", "TIER", "SINCE", "JOBS ON BOTH", "ARM64 PASS", "WHY")
	for _, r := range v.Repos {
		since := "-"
		if !r.Since.IsZero() {
			since = r.Since.Local().Format("2006-01-02")
		}
		tb.Row(r.Repo, r.Tier, since, fmt.Sprintf("%d/%d", r.OnBoth, r.Jobs), pctText(r.ARM64SuccessRate), r.Reason)
	}
	if err := tb.Flush(); err != nil {
		return err
	}
	for _, o := range v.Orgs {
		fmt.Fprintf(w, "\norganisation %s: every repository at least %s", o.Org, o.Tier)
	}
	if len(v.Orgs) > 0 {
		fmt.Fprintln(w)
	}
	shown := 0
	for _, r := range v.Rows {
		if r.Nudge == "" || shown == 3 {
			continue
		}
		if shown == 0 {
			fmt.Fprintln(w, "\nto run an amd64-only job on arm64 too, give it a matrix over both sizes:")
		}
		shown++
		fmt.Fprintf(w, "\n  %s / %s / %s:\n    %s\n", r.Repo, r.Workflow, r.Job, strings.ReplaceAll(r.Nudge, "\n", "\n    "))
	}
	return nil
}

func parityCheckCmd(g *globals) *cobra.Command {
	o := &apiOptions{}
	var repo, sha, require string
	var wait, every time.Duration
	cmd := &cobra.Command{
		Use:   "check --repo OWNER/NAME --sha SHA [--require both|arm64|amd64] [--wait 30m]",
		Short: "The release gate: exit 0 only if every logical job of the commit passed on the architectures required",
		Long: `check decides whether a commit may be released: every logical job of the commit must have passed
(its latest attempt) on each architecture required. Exit status: 0 passed, 1 failed (a job failed,
or did not run on an architecture required), 2 still pending (a job has not ended, or none is known
for the commit) when --wait runs out. A failure to ask the control plane exits 1 too.`,
		Args: cobra.NoArgs,
	}
	cmd.RunE = opsRun(g, o, func(cmd *cobra.Command, c *apiclient.Client, args []string) error {
		if repo == "" || sha == "" {
			return errors.New("--repo and --sha are required")
		}
		if _, err := parity.ParseRequire(require); err != nil {
			return err
		}
		q := url.Values{"repo": {repo}, "sha": {sha}, "require": {require}}
		deadline := time.Now().Add(wait)
		for {
			var res parity.CheckResult
			raw, err := c.Call(cmd.Context(), http.MethodGet, "/api/v1/parity/check", q, nil, &res)
			if err != nil {
				return err
			}
			if res.Verdict != parity.Pending || !time.Now().Add(every).Before(deadline) {
				if !o.json {
					raw = nil
				}
				return gateExit(cmd.OutOrStdout(), raw, res)
			}
			select {
			case <-cmd.Context().Done():
				return cmd.Context().Err()
			case <-time.After(every):
			}
		}
	})
	o.register(cmd, true)
	f := cmd.Flags()
	f.StringVar(&repo, "repo", "", "the repository (owner/name)")
	f.StringVar(&sha, "sha", "", "the commit (full id)")
	f.StringVar(&require, "require", "both", "the architectures every job must pass on: both, arm64 or amd64")
	f.DurationVar(&wait, "wait", 0, "while jobs are pending, ask again until this has passed")
	f.DurationVar(&every, "every", 15*time.Second, "how often to ask again while waiting")
	return cmd
}

// gateExit prints a gate's answer (raw: the server's JSON, for --json)
// and turns its verdict into the exit status.
func gateExit(w io.Writer, raw []byte, res parity.CheckResult) error {
	if raw != nil {
		if err := printJSON(w, raw); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(w, "%s %s: %s\n", res.Repo, res.SHA, res.Summary)
		for _, j := range res.Jobs {
			line := fmt.Sprintf("  %-7s %s / %s", j.Verdict, j.Workflow, j.Job)
			if j.Why != "" {
				line += ": " + j.Why
			}
			fmt.Fprintln(w, line)
		}
	}
	switch res.Verdict {
	case parity.Pass:
		return nil
	case parity.Pending:
		return &exitError{code: exitGatePending}
	}
	return &exitError{code: exitGateFail}
}

func parityReportCmd(g *globals) *cobra.Command {
	o := &apiOptions{}
	var since time.Duration
	var org string
	var mdOut bool
	cmd := &cobra.Command{
		Use:   "report [--since 7d] [--org ORG] [--markdown | --json]",
		Short: "A report for product managers: tiers now, what moved between tiers and why, what to fix",
		Args:  cobra.NoArgs,
	}
	cmd.RunE = opsRun(g, o, func(cmd *cobra.Command, c *apiclient.Client, args []string) error {
		days := int(since / (24 * time.Hour))
		if since%(24*time.Hour) != 0 || days < 1 || days > 90 {
			return fmt.Errorf("--since %s: want whole days, 1d to 90d", since)
		}
		q := url.Values{"days": {strconv.Itoa(days)}}
		if org != "" {
			q.Set("org", org)
		}
		var rep parity.Report
		if printed, err := o.call(cmd, c, http.MethodGet, "/api/v1/parity/report", q, nil, &rep); printed || err != nil {
			return err
		}
		if mdOut {
			return rep.WriteMarkdown(cmd.OutOrStdout())
		}
		return printReport(cmd.OutOrStdout(), rep)
	})
	o.register(cmd, true)
	f := cmd.Flags()
	f.Var((*dayDuration)(&since), "since", "the report's period: moves in the last N days (7d)")
	since = 7 * 24 * time.Hour
	f.StringVar(&org, "org", "", "only this organisation")
	f.BoolVar(&mdOut, "markdown", false, "print the report as Markdown")
	return cmd
}

func printReport(w io.Writer, rep parity.Report) error {
	fmt.Fprintf(w, "parity from %s to %s\n\n", rep.Since.Format("2006-01-02"), rep.Until.Format("2006-01-02"))
	if len(rep.Moves) == 0 {
		fmt.Fprintln(w, "no repository changed tier")
	}
	tb := termtext.NewTable(w, "WHEN", "REPO", "FROM", "TO", "WHY")
	for _, m := range rep.Moves {
		from := m.From
		if from == "" {
			from = "(new)"
		}
		tb.Row(m.At.Local().Format("2006-01-02 15:04"), m.Repo, from, m.To, m.Reason)
	}
	if len(rep.Moves) > 0 {
		if err := tb.Flush(); err != nil {
			return err
		}
	}
	fmt.Fprintf(w, "\n%d repositories; %d jobs failing on arm64, %d flaky on arm64, %d on amd64 only\n",
		len(rep.Repos), len(rep.Failing), len(rep.Flaky), len(rep.AMD64))
	tb = termtext.NewTable(w, "REPO", "TIER", "WHY")
	for _, r := range rep.Repos {
		tb.Row(r.Repo, r.Tier, r.Reason)
	}
	return tb.Flush()
}

// dayDuration is a duration flag that also takes days ("7d").
type dayDuration time.Duration

func (d *dayDuration) String() string { return time.Duration(*d).String() }
func (d *dayDuration) Type() string   { return "duration" }
func (d *dayDuration) Set(s string) error {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.Atoi(n)
		if err != nil || days < 0 {
			return fmt.Errorf("%q: want a number of days such as 7d", s)
		}
		*d = dayDuration(time.Duration(days) * 24 * time.Hour)
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = dayDuration(v)
	return nil
}
