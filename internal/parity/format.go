package parity

import (
	"encoding/csv"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tandem-ci/tandem/internal/store"
)

// View is the parity of a period: the matrix, each repository's tier and
// each organisation's (GET /api/v1/parity).
type View struct {
	Days   int        `json:"days"`
	Since  time.Time  `json:"since"`
	Until  time.Time  `json:"until"`
	Tiers  []Tier     `json:"tiers"` // the policy's, best first
	Rows   []Row      `json:"rows"`
	Repos  []RepoTier `json:"repos"`
	Orgs   []OrgTier  `json:"orgs"`
	Recent []Move     `json:"moves"` // tier moves in the period, newest first
}

// Move is a repository changing tier.
type Move struct {
	At     time.Time `json:"at"`
	Org    string    `json:"org"`
	Repo   string    `json:"repo"`
	From   string    `json:"from"` // "" for a first tier
	To     string    `json:"to"`
	Up     bool      `json:"up"` // to a better tier
	Reason string    `json:"reason"`
}

// Moves turns the store's tier changes into moves, newest first.
func (p *Policy) Moves(changes []store.TierChange) []Move {
	out := make([]Move, 0, len(changes))
	for _, c := range changes {
		out = append(out, Move{At: c.At, Org: c.Org, Repo: c.Repo, From: c.From, To: c.To, Reason: c.Reason,
			Up: c.From == "" || p.Rank(c.To) < p.Rank(c.From)})
	}
	slices.Reverse(out)
	return out
}

// csvSafe keeps a spreadsheet from reading a cell that a stranger named
// (a job, a workflow) as a formula.
func csvSafe(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}

func num(x float64) string { return strconv.FormatFloat(x, 'f', -1, 64) }

// WriteCSV writes the matrix, one row per logical job.
func WriteCSV(w io.Writer, rows []Row) error {
	cw := csv.NewWriter(w)
	head := []string{"org", "repo", "workflow", "job", "status"}
	for _, a := range []string{"amd64", "arm64"} {
		head = append(head, a+"_runs", a+"_success_rate", a+"_run_p50_s", a+"_run_p95_s", a+"_queue_p50_s", a+"_emulated_runs", a+"_names")
	}
	head = append(head, "arm64_amd64_ratio", "commits_compared", "commits_arm64_failed")
	if err := cw.Write(head); err != nil {
		return err
	}
	for _, r := range rows {
		rec := []string{csvSafe(r.Org), csvSafe(r.Repo), csvSafe(r.Workflow), csvSafe(r.Job), string(r.Status)}
		for _, s := range []*ArchStats{r.AMD64, r.ARM64} {
			if s == nil {
				rec = append(rec, "0", "", "", "", "", "", "")
				continue
			}
			sr := ""
			if s.SuccessRate >= 0 {
				sr = num(s.SuccessRate)
			}
			rec = append(rec, strconv.Itoa(s.Runs), sr, num(s.RunP50), num(s.RunP95), num(s.QueueP50), strconv.Itoa(s.Emulated),
				csvSafe(strings.Join(s.Names, "; ")))
		}
		rec = append(rec, num(r.Ratio), strconv.Itoa(r.Compared), strconv.Itoa(r.ARM64Failed))
		if err := cw.Write(rec); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

// md escapes text for a Markdown table cell: names come from strangers.
func md(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch r {
		case '\n', '\r':
			b.WriteByte(' ')
		case '\\', '|', '*', '_', '[', ']', '<', '>', '`', '#', '~', '!':
			b.WriteByte('\\')
			b.WriteRune(r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

func secs(s float64) string {
	switch {
	case s <= 0:
		return "–"
	case s < 60:
		return fmt.Sprintf("%.0fs", s)
	case s < 3600:
		return fmt.Sprintf("%.1fm", s/60)
	}
	return fmt.Sprintf("%.1fh", s/3600)
}

func archCell(s *ArchStats) string {
	if s == nil {
		return "–"
	}
	c := fmt.Sprintf("%d runs, %s, p50 %s", s.Runs, pctOrNone(s.SuccessRate), secs(s.RunP50))
	if s.Emulated > 0 {
		c += fmt.Sprintf(", emulated %d", s.Emulated)
	}
	return c
}

// WriteMarkdown writes the matrix as a Markdown table.
func WriteMarkdown(w io.Writer, rows []Row) error {
	var b strings.Builder
	b.WriteString("| Repository | Workflow | Job | Status | amd64 | arm64 | arm64/amd64 | Matched names |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		ratio := "–"
		if r.Ratio > 0 {
			ratio = fmt.Sprintf("%.2f×", r.Ratio)
		}
		var names []string
		for _, s := range []*ArchStats{r.AMD64, r.ARM64} {
			if s != nil {
				names = append(names, s.Names...)
			}
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", md(r.Repo), md(r.Workflow), md(r.Job), r.Status,
			archCell(r.AMD64), archCell(r.ARM64), ratio, md(strings.Join(names, ", ")))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// Report is the weekly report for product managers: where every
// repository stands, what moved between tiers and why, and what to fix.
type Report struct {
	Since   time.Time  `json:"since"`
	Until   time.Time  `json:"until"`
	Tiers   []Tier     `json:"tiers"`
	Orgs    []OrgTier  `json:"orgs"`
	Repos   []RepoTier `json:"repos"`
	Moves   []Move     `json:"moves"`
	Failing []Row      `json:"failing"`    // arm64 failing
	Flaky   []Row      `json:"flaky"`      // arm64 flaky
	AMD64   []Row      `json:"amd64_only"` // with their nudges
}

// NewReport picks the report's parts out of a view of its period.
func NewReport(v View, moves []Move) Report {
	r := Report{Since: v.Since, Until: v.Until, Tiers: v.Tiers, Orgs: v.Orgs, Repos: v.Repos, Moves: moves,
		Failing: []Row{}, Flaky: []Row{}, AMD64: []Row{}}
	for _, row := range v.Rows {
		switch row.Status {
		case ARM64Failing:
			r.Failing = append(r.Failing, row)
		case ARM64Flaky:
			r.Flaky = append(r.Flaky, row)
		case AMD64Only:
			r.AMD64 = append(r.AMD64, row)
		}
	}
	return r
}

// WriteMarkdown writes the report.
func (r Report) WriteMarkdown(w io.Writer) error {
	var b strings.Builder
	day := func(t time.Time) string { return t.UTC().Format("2006-01-02") }
	fmt.Fprintf(&b, "# Arm64 parity: %s to %s\n\n", day(r.Since), day(r.Until))
	counts := map[string]int{}
	for _, rt := range r.Repos {
		counts[rt.Tier]++
	}
	var parts []string
	for _, t := range r.Tiers {
		parts = append(parts, fmt.Sprintf("%d in %s", counts[t.Name], md(t.Name)))
	}
	fmt.Fprintf(&b, "%d repositories: %s.\n\n", len(r.Repos), strings.Join(parts, ", "))
	b.WriteString("## Organisations\n\n| Organisation | Every repository at least | Repositories by tier |\n|---|---|---|\n")
	for _, o := range r.Orgs {
		var by []string
		for _, t := range r.Tiers {
			if n := o.Repos[t.Name]; n > 0 {
				by = append(by, fmt.Sprintf("%s: %d", md(t.Name), n))
			}
		}
		fmt.Fprintf(&b, "| %s | %s | %s |\n", md(o.Org), md(o.Tier), strings.Join(by, ", "))
	}
	b.WriteString("\n## What moved\n\n")
	if len(r.Moves) == 0 {
		b.WriteString("No repository changed tier.\n")
	} else {
		b.WriteString("| When | Repository | From | To | Why |\n|---|---|---|---|---|\n")
		for _, m := range r.Moves {
			from := m.From
			if from == "" {
				from = "(new)"
			}
			arrow := "↓"
			if m.Up {
				arrow = "↑"
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s %s | %s |\n", day(m.At), md(m.Repo), md(from), arrow, md(m.To), md(m.Reason))
		}
	}
	section := func(title, empty string, rows []Row) {
		fmt.Fprintf(&b, "\n## %s\n\n", title)
		if len(rows) == 0 {
			b.WriteString(empty + "\n")
			return
		}
		if err := WriteMarkdown(&b, rows); err != nil {
			panic(err) // a strings.Builder does not fail
		}
	}
	section("Failing on arm64 where amd64 passes", "None.", r.Failing)
	section("Flaky on arm64", "None.", r.Flaky)
	fmt.Fprintf(&b, "\n## x86_64 only\n\n")
	if len(r.AMD64) == 0 {
		b.WriteString("None: every job runs on Arm64.\n")
	} else {
		fmt.Fprintf(&b, "%d jobs run on amd64 only.", len(r.AMD64))
		if i := slices.IndexFunc(r.AMD64, func(row Row) bool { return row.Nudge != "" }); i >= 0 {
			fmt.Fprintf(&b, " To add Arm64, give each a matrix over both sizes; for %s / %s:\n\n```yaml\n%s\n```",
				md(r.AMD64[i].Repo), md(r.AMD64[i].Job), r.AMD64[i].Nudge)
		}
		b.WriteString("\n\n")
		b.WriteString("| Repository | Workflow | Job |\n|---|---|---|\n")
		for _, row := range r.AMD64 {
			fmt.Fprintf(&b, "| %s | %s | %s |\n", md(row.Repo), md(row.Workflow), md(row.Job))
		}
	}
	b.WriteString("\n## Repositories\n\n| Repository | Tier | Jobs on both | arm64 pass rate | Why |\n|---|---|---|---|---|\n")
	for _, rt := range r.Repos {
		fmt.Fprintf(&b, "| %s | %s | %d of %d | %s | %s |\n", md(rt.Repo), md(rt.Tier), rt.OnBoth, rt.Jobs,
			pctOrNone(rt.ARM64SuccessRate), md(rt.Reason))
	}
	_, err := io.WriteString(w, b.String())
	return err
}
