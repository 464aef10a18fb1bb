package archname

import "testing"

func TestLogical(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"build (arm64)", "build"},
		{"build (amd64)", "build"},
		{"test (ubuntu, x64)", "test (ubuntu)"},
		{"test (ubuntu, arm64)", "test (ubuntu)"},
		{"test (x64, ubuntu)", "test (ubuntu)"},
		{"test (linux/arm64, 1.22)", "test (linux, 1.22)"},
		{"test (linux/amd64, 1.22)", "test (linux, 1.22)"},
		{"build-arm64", "build"},
		{"build_x86_64", "build"},
		{"build-x86-64", "build"},
		{"aarch64-build", "build"},
		{"Build on AArch64", "Build on"},
		{"Build on x86_64", "Build on"},
		{"e2e (tandem-arm64-4cpu-8gb)", "e2e (tandem-4cpu-8gb)"},
		{"e2e (tandem-amd64-4cpu-8gb)", "e2e (tandem-4cpu-8gb)"},
		{"test (ubuntu-24.04-arm)", "test (ubuntu-24.04)"},
		{"test (ubuntu-24.04)", "test (ubuntu-24.04)"},
		{"unit (arm64)", "unit"},
		{"integration [armv8]", "integration"},
		{"lint", "lint"},
		{"alarm (farm)", "alarm (farm)"}, // words, not substrings
		{"arm64", "*"},
		{"(x64)", "*"},
		{"", ""},
		{"build (arm64, amd64)", "build"},
	} {
		if got := Logical(c.in); got != c.want {
			t.Errorf("Logical(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func FuzzLogical(f *testing.F) {
	for _, s := range []string{"build (arm64)", "test (ubuntu, x64)", "x86_64", "a-x86-", "((arm))", "é arm64 ü"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := Logical(s)
		if len(out) > len(s) && out != "*" {
			t.Fatalf("Logical(%q) = %q grew", s, out)
		}
		if again := Logical(out); out != "*" && again != out {
			t.Fatalf("Logical not stable on %q: %q → %q", s, out, again)
		}
	})
}
