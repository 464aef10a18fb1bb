package sqlstore

import "testing"

func TestRebind(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"SELECT 1", "SELECT 1"},
		{"SELECT a FROM t WHERE b = ? AND c IN (?, ?)", "SELECT a FROM t WHERE b = $1 AND c IN ($2, $3)"},
		{"UPDATE t SET a = ? WHERE name = 'ünï' AND id = ?", "UPDATE t SET a = $1 WHERE name = 'ünï' AND id = $2"},
	} {
		if got := Postgres.Rebind(tc.in); got != tc.want {
			t.Errorf("Rebind(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if got := Postgres.Rebind(tc.in); got != tc.want { // cached
			t.Errorf("Rebind(%q) again = %q", tc.in, got)
		}
		if got := SQLite.Rebind(tc.in); got != tc.in {
			t.Errorf("SQLite's Rebind(%q) = %q", tc.in, got)
		}
	}
}

func TestUpsert(t *testing.T) {
	got := upsert("t", "a, b,\n\tc", "a, b")
	want := "INSERT INTO t (a, b,\n\tc) VALUES (?, ?, ?) ON CONFLICT (a, b) DO UPDATE SET c = excluded.c"
	if got != want {
		t.Errorf("upsert:\n got %q\nwant %q", got, want)
	}
}
