package termtext

import (
	"strings"
	"testing"
	"time"
)

func TestFormats(t *testing.T) {
	for _, c := range []struct {
		vcpus float64
		mib   int
		want  string
	}{{2, 8192, "2cpu-8gb"}, {0.5, 512, "0.5cpu-512mb"}, {0, 0, "-"}} {
		if got := Size(c.vcpus, c.mib); got != c.want {
			t.Errorf("Size(%g, %d) = %q, want %q", c.vcpus, c.mib, got, c.want)
		}
	}
	now := time.Date(2025, 1, 10, 12, 0, 0, 0, time.UTC)
	for d, want := range map[time.Duration]string{5 * time.Second: "5s", 3 * time.Minute: "3m",
		5 * time.Hour: "5h", 72 * time.Hour: "3d", -time.Second: "0s"} {
		if got := Ago(now, now.Add(-d)); got != want {
			t.Errorf("Ago(%v) = %q, want %q", d, got, want)
		}
	}
	if Ago(now, time.Time{}) != "-" {
		t.Error("a zero time is not -")
	}
	if got := Cut("héllo wörld", 6); got != "héllo…" {
		t.Errorf("Cut: %q", got)
	}
	if got := Cut("short", 60); got != "short" {
		t.Errorf("Cut: %q", got)
	}
	if got := Clean("a\tb\nc\x1b[31m"); got != "a b c [31m" {
		t.Errorf("Clean: %q", got)
	}
	if GiB(1536) != "1.5" {
		t.Errorf("GiB(1536) = %q", GiB(1536))
	}
}

// A cell cannot break the table or reach the terminal as an escape.
func TestTableCleansCells(t *testing.T) {
	var b strings.Builder
	tb := NewTable(&b, "ID", "NAME", "NOTE")
	tb.Row("1", "evil\n2\tforged\x1b[2J", "")
	tb.Row("22", "ok", "fine")
	if err := tb.Flush(); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	if len(lines) != 3 || strings.ContainsRune(b.String(), 0x1b) {
		t.Fatalf("table:\n%s", b.String())
	}
	if f := strings.Fields(lines[1]); f[0] != "1" || f[len(f)-1] != "-" {
		t.Errorf("row %q: want id 1 and an empty note shown as -", lines[1])
	}
}
