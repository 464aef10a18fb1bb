package lifecycle

import (
	"fmt"
	"strings"
)

// Markdown renders both tables for people: the README's "Job lifecycle"
// section is this text (a test keeps the two equal).
func Markdown() string {
	var b strings.Builder
	b.WriteString("| job in | on | when | goes to | then | why |\n|---|---|---|---|---|---|\n")
	for _, r := range Jobs {
		to := string(r.To)
		if r.To == Unchanged {
			to = "(stays)"
		}
		var fx []string
		for _, e := range r.Effects {
			fx = append(fx, string(e))
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", states(r.From), r.On, r.When.Name, to,
			strings.Join(fx, ", "), r.Why)
	}
	b.WriteString("\n| runner in | on | goes to | why |\n|---|---|---|---|\n")
	for _, r := range Runners {
		to := string(r.To)
		if r.To == RunnerUnchanged {
			to = "(stays)"
		}
		from := make([]string, len(r.From))
		for i, s := range r.From {
			from[i] = string(s)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", strings.Join(from, ", "), r.On, to, r.Why)
	}
	return b.String()
}

func states(ss []JobState) string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = string(s)
		if s == New {
			out[i] = "(new)"
		}
	}
	return strings.Join(out, ", ")
}
