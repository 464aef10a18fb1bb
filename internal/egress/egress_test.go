package egress

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestParseNet(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Net
		err  string
	}{
		{"10.1.2.0/24", Net{Prefix: netip.MustParsePrefix("10.1.2.0/24")}, ""},
		{"10.1.2.3", Net{Prefix: netip.MustParsePrefix("10.1.2.3/32")}, ""},
		{"10.1.2.0/24:8080", Net{Prefix: netip.MustParsePrefix("10.1.2.0/24"), Port: 8080}, ""},
		{" 203.0.113.7:443 ", Net{Prefix: netip.MustParsePrefix("203.0.113.7/32"), Port: 443}, ""},
		{"10.1.2.3/24", Net{}, "host bits"},
		{"10.1.2.0/24:0", Net{}, "bad port"},
		{"10.1.2.0/24:70000", Net{}, "bad port"},
		{"10.1.2.0/24:http", Net{}, "bad port"},
		{"2001:db8::/32", Net{}, ""}, // parsed as address "2001:db8:" + port: refused below
		{"[2001:db8::1]:443", Net{}, "not an address"},
		{"example.com", Net{}, "not an address"},
		{"", Net{}, "not an address"},
	} {
		got, err := ParseNet(tc.in)
		if tc.in == "2001:db8::/32" {
			if err == nil {
				t.Errorf("ParseNet(%q) = %v, want an error", tc.in, got)
			}
			continue
		}
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseNet(%q) = %v, %v; want error containing %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseNet(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
		if back, err := ParseNet(got.String()); err != nil || back != got {
			t.Errorf("ParseNet(%q.String() = %q) = %v, %v", tc.in, got.String(), back, err)
		}
	}
}

func TestCompile(t *testing.T) {
	f := false
	p, err := Rule{Mode: "Allowlist", Allow: []string{"Registry.NPMjs.org.", "*.Example.com", "10.0.0.0/8:443", "198.51.100.7"}, Base: &f}.Compile()
	if err != nil {
		t.Fatal(err)
	}
	if p.Mode != Allowlist || !slices.Equal(p.Names, []string{"*.example.com", "registry.npmjs.org"}) ||
		len(p.Nets) != 2 || p.Nets[0].String() != "10.0.0.0/8:443" || p.Nets[1].String() != "198.51.100.7" {
		t.Errorf("compiled %+v", p)
	}
	withBase, err := Rule{Mode: "allowlist", Allow: []string{"example.org"}}.Compile()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range append([]string{"example.org"}, Base...) {
		if !slices.Contains(withBase.Names, n) {
			t.Errorf("allowlist with the base lacks %s", n)
		}
	}
	for _, tc := range []struct {
		r   Rule
		err string
	}{
		{Rule{Mode: "closed"}, "want open, audit or allowlist"},
		{Rule{Mode: "open", Allow: []string{"example.com"}}, "for mode allowlist"},
		{Rule{Mode: "audit", Base: &f}, "for mode allowlist"},
		{Rule{Mode: "allowlist", Allow: []string{"exa mple.com"}}, "bad character"},
		{Rule{Mode: "allowlist", Allow: []string{"foo.*.com"}}, "bad character"},
		{Rule{Mode: "allowlist", Allow: []string{"*"}}, "bad character"},
		{Rule{Mode: "allowlist", Allow: []string{"localhost"}}, "not a domain name"},
		{Rule{Mode: "allowlist", Allow: []string{"-a.example.com"}}, "bad label"},
		{Rule{Mode: "allowlist", Allow: []string{strings.Repeat("a", 64) + ".com"}}, "bad label"},
		{Rule{Mode: "allowlist", Allow: []string{"10.0.0.1/8"}}, "host bits"},
	} {
		if _, err := tc.r.Compile(); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("Compile(%+v) = %v, want error containing %q", tc.r, err, tc.err)
		}
	}
}

func TestAllowsName(t *testing.T) {
	f := false
	p, err := Rule{Mode: "allowlist", Allow: []string{"example.com", "*.pkg.example.org"}, Base: &f}.Compile()
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]bool{
		"example.com":             true,
		"EXAMPLE.com.":            true,
		"www.example.com":         false, // no wildcard for it
		"notexample.com":          false,
		"pkg.example.org":         false, // "*." needs a label before
		"a.pkg.example.org":       true,
		"a.b.pkg.example.org":     true,
		"apkg.example.org":        false,
		"a.pkg.example.org.evil":  false,
		"":                        false,
		"pkg.example.org.":        false,
		"x.pkg.example.org.":      true,
		"github.com":              false, // base turned off
		"example.com.example.net": false,
	} {
		if got := p.AllowsName(name); got != want {
			t.Errorf("AllowsName(%q) = %v, want %v", name, got, want)
		}
	}
	for _, m := range []Mode{Open, Audit} {
		if !(Policy{Mode: m}).AllowsName("anything.invalid") {
			t.Errorf("mode %s refused a name", m)
		}
	}
}

func TestPoliciesFor(t *testing.T) {
	ps, err := Config{
		Default: Rule{Mode: "audit"},
		Overrides: map[string]Rule{
			"Acme":        {Mode: "allowlist", Allow: []string{"acme.example"}},
			"acme/Public": {Mode: "open"},
		},
	}.Compile()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		org, repo string
		want      Mode
	}{
		{"acme", "acme/app", Allowlist},
		{"ACME", "ACME/app", Allowlist},
		{"acme", "acme/public", Open},
		{"Acme", "Acme/PUBLIC", Open},
		{"other", "other/app", Audit},
		{"acme", "other/public", Allowlist}, // the repo key is org/repo, not the repo's name alone
	} {
		if got := ps.For(tc.org, tc.repo).Mode; got != tc.want {
			t.Errorf("For(%s, %s) = %s, want %s", tc.org, tc.repo, got, tc.want)
		}
	}
	if got := (*Policies)(nil).For("a", "a/b").Mode; got != Open {
		t.Errorf("nil policies: %s", got)
	}
	for _, c := range []Config{
		{Overrides: map[string]Rule{"acme": {}, "ACME": {}}},
		{Overrides: map[string]Rule{"acme/": {}}},
		{Overrides: map[string]Rule{"a/b/c": {}}},
		{Overrides: map[string]Rule{"": {}}},
		{Default: Rule{Mode: "nope"}},
		{Overrides: map[string]Rule{"acme": {Mode: "allowlist", Allow: []string{"bad name!"}}}},
	} {
		if _, err := c.Compile(); err == nil {
			t.Errorf("Compile(%+v) succeeded", c)
		}
	}
}

func TestBaseEntriesAreValid(t *testing.T) {
	for _, b := range Base {
		if n, err := normaliseEntry(b); err != nil || n != b {
			t.Errorf("base entry %q: %q, %v", b, n, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"10.0.0.0/8:443", "1.2.3.4", "*.example.com", "a..b", "::1", "1.2.3.4:", "x:1:2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if n, err := ParseNet(s); err == nil {
			if back, err := ParseNet(n.String()); err != nil || back != n {
				t.Errorf("ParseNet(%q) = %v; its String %q parses as %v, %v", s, n, n.String(), back, err)
			}
		}
		if e, err := normaliseEntry(s); err == nil {
			if again, err := normaliseEntry(e); err != nil || again != e {
				t.Errorf("normaliseEntry(%q) = %q, not a fixed point (%q, %v)", s, e, again, err)
			}
		}
	})
}

func TestBound(t *testing.T) {
	r := Record{Refused: map[string]int{}}
	for i := range MaxFlows + 10 {
		r.Flows = append(r.Flows, Flow{Addr: netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)}), Proto: "tcp", Port: 443, Count: int64(i % 7)})
	}
	for i := range MaxRefused + 3 {
		r.Refused[strings.Repeat("x", i%5+1)+".example"+string(rune('a'+i%26))+strconv.Itoa(i)] = i
	}
	r.Bound()
	if len(r.Flows) != MaxFlows || len(r.Refused) != MaxRefused || r.Dropped != 13 {
		t.Fatalf("bounded to %d flows, %d names, %d dropped", len(r.Flows), len(r.Refused), r.Dropped)
	}
	// The busiest are kept, in their order.
	zeros := 0
	for i, f := range r.Flows {
		if f.Count == 0 {
			zeros++
		}
		if i > 0 && r.Flows[i-1].Addr.Compare(f.Addr) >= 0 {
			t.Fatal("order lost")
		}
	}
	if zeros != (MaxFlows+10+6)/7-10 {
		t.Errorf("%d flows of count 0 kept", zeros)
	}
	for n, c := range r.Refused {
		if c < 3 {
			t.Errorf("kept %s (%d) over busier names", n, c)
		}
	}
}

func TestSuggest(t *testing.T) {
	a := netip.MustParseAddr("198.51.100.7")
	recs := []Record{
		{Mode: Audit, Flows: []Flow{
			{Addr: a, Proto: "tcp", Port: 443, Name: "registry.npmjs.org", Allowed: true, Count: 10},
			{Addr: netip.MustParseAddr("140.82.112.3"), Proto: "tcp", Port: 443, Name: "github.com", Allowed: true, Count: 3},
			{Addr: netip.MustParseAddr("203.0.113.9"), Proto: "udp", Port: 123, Allowed: true, Count: 1},
		}},
		{Mode: Allowlist, Flows: []Flow{
			{Addr: a, Proto: "tcp", Port: 443, Name: "registry.npmjs.org", Allowed: true, Count: 5},
		}, Refused: map[string]int{"telemetry.example": 4, "api.github.com": 1}},
	}
	got := Suggest(recs)
	want := []Suggestion{
		{Entry: "registry.npmjs.org", Jobs: 2, Connections: 15},
		{Entry: "telemetry.example", Jobs: 1, Connections: 4, Blocked: true},
		{Entry: "203.0.113.9:123", Jobs: 1, Connections: 1, NoName: true},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Suggest:\n got %v\nwant %v", got, want)
	}
	// What it suggests allows what was seen.
	var allow []string
	for _, s := range got {
		allow = append(allow, s.Entry)
	}
	p, err := Rule{Mode: "allowlist", Allow: allow}.Compile()
	if err != nil {
		t.Fatalf("the suggestion does not compile: %v", err)
	}
	for _, n := range []string{"registry.npmjs.org", "telemetry.example", "github.com"} {
		if !p.AllowsName(n) {
			t.Errorf("the suggested allowlist refuses %s", n)
		}
	}
}
