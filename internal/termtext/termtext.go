// Package termtext writes what the operator commands print: tables and
// short forms of sizes, ages and reasons. Text from a server or a job is
// untrusted, so a Table cleans every cell of control characters (newlines,
// tabs, terminal escapes) before it reaches the terminal.
package termtext

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
)

// Table writes aligned columns.
type Table struct {
	tw *tabwriter.Writer
}

// NewTable starts a table on w with a header row (written as given).
func NewTable(w io.Writer, header ...string) *Table {
	t := &Table{tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)}
	if len(header) > 0 {
		fmt.Fprintln(t.tw, strings.Join(header, "\t"))
	}
	return t
}

// Row writes one row; each cell is cleaned, and an empty cell shows "-".
func (t *Table) Row(cells ...string) {
	for i, c := range cells {
		cells[i] = OrDash(Clean(c))
	}
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

// Flush writes the table out.
func (t *Table) Flush() error { return t.tw.Flush() }

// Clean makes untrusted text safe for a terminal: control characters
// become spaces.
func Clean(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
}

// Cut shortens s to n runes, marking the cut with "…".
func Cut(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

// OrDash is s, or "-" when s is empty.
func OrDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Ago is a coarse age: 42s, 5m, 3h, 2d; "-" for the zero time.
func Ago(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return strconv.Itoa(int(d/time.Second)) + "s"
	case d < time.Hour:
		return strconv.Itoa(int(d/time.Minute)) + "m"
	case d < 48*time.Hour:
		return strconv.Itoa(int(d/time.Hour)) + "h"
	}
	return strconv.Itoa(int(d/(24*time.Hour))) + "d"
}

// GiB writes MiB as GiB with one decimal.
func GiB(mib int) string { return strconv.FormatFloat(float64(mib)/1024, 'f', 1, 64) }

// Size writes a VM size as runs-on labels do: 2cpu-8gb, 0.5cpu-512mb; "-"
// when there is none.
func Size(vcpus float64, mib int) string {
	if vcpus <= 0 && mib <= 0 {
		return "-"
	}
	mem := strconv.Itoa(mib) + "mb"
	if mib%1024 == 0 {
		mem = strconv.Itoa(mib/1024) + "gb"
	}
	return strconv.FormatFloat(vcpus, 'f', -1, 64) + "cpu-" + mem
}
