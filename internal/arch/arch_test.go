package arch

import (
	"errors"
	"testing"
)

func TestParse(t *testing.T) {
	for in, want := range map[string]Arch{"amd64": AMD64, "x86_64": AMD64, "X64": AMD64, "ARM64": ARM64, "aarch64": ARM64} {
		if got, err := Parse(in); err != nil || got != want {
			t.Errorf("Parse(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"riscv64", "", "any", " amd64", "amd64\n"} {
		if got, err := Parse(bad); !errors.Is(err, ErrUnknown) {
			t.Errorf("Parse(%q) = %q, %v; want ErrUnknown", bad, got, err)
		}
	}
	if got, err := ParseRequest("ANY"); err != nil || got != Any {
		t.Errorf("ParseRequest(ANY) = %q, %v", got, err)
	}
	if got, err := ParseRequest("aarch64"); err != nil || got != ARM64 {
		t.Errorf("ParseRequest(aarch64) = %q, %v", got, err)
	}
	if _, err := ParseRequest("s390x"); !errors.Is(err, ErrUnknown) {
		t.Errorf("ParseRequest(s390x): %v, want ErrUnknown", err)
	}
}

func TestMatches(t *testing.T) {
	for _, c := range []struct {
		req, host Arch
		want      bool
	}{
		{AMD64, AMD64, true}, {AMD64, ARM64, false}, {ARM64, ARM64, true}, {ARM64, AMD64, false},
		{Any, AMD64, true}, {Any, ARM64, true},
		{Any, Any, false}, // "any" is no machine
		{AMD64, "riscv64", false}, {Any, "", false},
	} {
		if got := c.req.Matches(c.host); got != c.want {
			t.Errorf("%q.Matches(%q) = %v, want %v", c.req, c.host, got, c.want)
		}
	}
	for _, a := range Machines {
		if !a.IsMachine() || a.UnameMachine() == string(a) {
			t.Errorf("%q: IsMachine %v, uname -m %q", a, a.IsMachine(), a.UnameMachine())
		}
	}
}
