package labels

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/tandem-ci/tandem/internal/arch"
)

func mustParser(t testing.TB, prefix string, vcpus float64, mem int) *Parser {
	t.Helper()
	p, err := NewParser(prefix, vcpus, mem)
	if err != nil {
		t.Fatalf("NewParser(%q, %v, %d): %v", prefix, vcpus, mem, err)
	}
	return p
}

func req(label string, a arch.Arch, vcpus float64, mem int) Request {
	return Request{Label: label, Prefix: "tandem", Arch: a, VCPUs: vcpus, MemoryMiB: mem}
}

func TestParse(t *testing.T) {
	p := mustParser(t, "tandem", 0, 0)
	tests := []struct {
		name   string
		labels []string
		want   Request
		ok     bool
		err    error
	}{
		// Not for Tandem.
		{"nil", nil, Request{}, false, nil},
		{"github hosted", []string{"ubuntu-latest"}, Request{}, false, nil},
		{"other prefix sharing letters", []string{"tandemx-foo"}, Request{}, false, nil},
		{"prefix later in label", []string{"my-tandem-4cpu-8gb"}, Request{}, false, nil},
		{"self-hosted only", []string{"self-hosted", "linux", "arm64"}, Request{}, false, nil},
		{"leading space", []string{" tandem"}, Request{}, false, nil},
		{"unicode lookalike", []string{"T\u0430NDEM-arm64"}, Request{}, false, nil}, // Cyrillic a
		{"empty label", []string{""}, Request{}, false, nil},

		// Full labels.
		{"design example", []string{"tandem-arm64-4cpu-8gb"}, req("tandem-arm64-4cpu-8gb", arch.ARM64, 4, 8192), true, nil},
		{"no arch is amd64", []string{"tandem-4cpu-8gb"}, req("tandem-4cpu-8gb", arch.AMD64, 4, 8192), true, nil},
		{"any", []string{"tandem-any-2cpu-4gb"}, req("tandem-any-2cpu-4gb", arch.Any, 2, 4096), true, nil},
		{"x86_64", []string{"tandem-x86_64-1cpu-1gb"}, req("tandem-x86_64-1cpu-1gb", arch.AMD64, 1, 1024), true, nil},
		{"x64", []string{"tandem-x64-1cpu-1gb"}, req("tandem-x64-1cpu-1gb", arch.AMD64, 1, 1024), true, nil},
		{"amd64", []string{"tandem-amd64-1cpu-1gb"}, req("tandem-amd64-1cpu-1gb", arch.AMD64, 1, 1024), true, nil},
		{"aarch64", []string{"tandem-aarch64-1cpu-1gb"}, req("tandem-aarch64-1cpu-1gb", arch.ARM64, 1, 1024), true, nil},

		// Case-insensitivity: Label keeps what was written.
		{"upper case", []string{"TANDEM-ARM64-4CPU-8GB"}, req("TANDEM-ARM64-4CPU-8GB", arch.ARM64, 4, 8192), true, nil},
		{"mixed case", []string{"Tandem-AArch64-2Cpu-4Gb"}, req("Tandem-AArch64-2Cpu-4Gb", arch.ARM64, 2, 4096), true, nil},

		// Fractional values and odd but valid spellings.
		{"half cpu", []string{"tandem-arm64-0.5cpu-8gb"}, req("tandem-arm64-0.5cpu-8gb", arch.ARM64, 0.5, 8192), true, nil},
		{"quarter cpu", []string{"tandem-0.25cpu-0.125gb"}, req("tandem-0.25cpu-0.125gb", arch.AMD64, 0.25, 128), true, nil},
		{"fractional both", []string{"tandem-1.5cpu-1.5gb"}, req("tandem-1.5cpu-1.5gb", arch.AMD64, 1.5, 1536), true, nil},
		{"trailing zeros", []string{"tandem-2.50cpu-4.000gb"}, req("tandem-2.50cpu-4.000gb", arch.AMD64, 2.5, 4096), true, nil},
		{"leading zeros", []string{"tandem-02cpu-004gb"}, req("tandem-02cpu-004gb", arch.AMD64, 2, 4096), true, nil},
		{"one MiB granularity", []string{"tandem-1cpu-0.1259765625gb"}, req("tandem-1cpu-0.1259765625gb", arch.AMD64, 1, 129), true, nil},
		{"max", []string{"tandem-256cpu-1024gb"}, req("tandem-256cpu-1024gb", arch.AMD64, 256, 1<<20), true, nil},

		// Defaults.
		{"bare prefix", []string{"tandem"}, req("tandem", arch.AMD64, 2, 4096), true, nil},
		{"arch only", []string{"tandem-arm64"}, req("tandem-arm64", arch.ARM64, 2, 4096), true, nil},
		{"any only", []string{"TANDEM-ANY"}, req("TANDEM-ANY", arch.Any, 2, 4096), true, nil},

		// GitHub's own labels, read beside Tandem's, without case.
		{"self-hosted companions", []string{"self-hosted", "linux", "tandem-2cpu-4gb"}, req("tandem-2cpu-4gb", arch.AMD64, 2, 4096), true, nil},
		{"arch companions agree", []string{"tandem-arm64", "arm64", "ARM64", "ubuntu-latest"}, req("tandem-arm64", arch.ARM64, 2, 4096), true, nil},
		{"GitHub's arch chooses", []string{"self-hosted", "linux", "ARM64", "tandem"}, req("tandem", arch.ARM64, 2, 4096), true, nil},
		{"GitHub's arch narrows any", []string{"X64", "tandem-any-1cpu-1gb"}, req("tandem-any-1cpu-1gb", arch.AMD64, 1, 1024), true, nil},
		{"GitHub's x64 and tandem amd64", []string{"x64", "tandem-amd64"}, req("tandem-amd64", arch.AMD64, 2, 4096), true, nil},
		{"not for Tandem: windows alone", []string{"self-hosted", "windows"}, Request{}, false, nil},
		{"X64 against tandem-arm64", []string{"X64", "tandem-arm64"}, Request{}, false, ErrConflict},
		{"x64 and arm64", []string{"tandem", "x64", "arm64"}, Request{}, false, ErrConflict},
		{"windows", []string{"tandem", "Windows"}, Request{}, false, ErrUnsupported},
		{"macOS", []string{"tandem-arm64", "macOS"}, Request{}, false, ErrUnsupported},
		{"32-bit ARM", []string{"tandem", "ARM"}, Request{}, false, ErrUnsupported},
		{"same label twice", []string{"tandem-arm64-4cpu-8gb", "TANDEM-arm64-4CPU-8gb"}, req("tandem-arm64-4cpu-8gb", arch.ARM64, 4, 8192), true, nil},

		// Malformed.
		{"trailing dash", []string{"tandem-"}, Request{}, false, ErrMalformed},
		{"double dash", []string{"tandem--4cpu-8gb"}, Request{}, false, ErrMalformed},
		{"cpu without gb", []string{"tandem-arm64-4cpu"}, Request{}, false, ErrMalformed},
		{"gb without cpu", []string{"tandem-8gb"}, Request{}, false, ErrMalformed},
		{"swapped order", []string{"tandem-8gb-4cpu"}, Request{}, false, ErrMalformed},
		{"arch after size", []string{"tandem-4cpu-8gb-arm64"}, Request{}, false, ErrMalformed},
		{"unknown arch", []string{"tandem-riscv64-4cpu-8gb"}, Request{}, false, ErrMalformed},
		{"unknown word", []string{"tandem-foo"}, Request{}, false, ErrMalformed},
		{"two archs", []string{"tandem-arm64-amd64"}, Request{}, false, ErrMalformed},
		{"gib unit", []string{"tandem-4cpu-8gib"}, Request{}, false, ErrMalformed},
		{"vcpu unit", []string{"tandem-4vcpu-8gb"}, Request{}, false, ErrMalformed},
		{"no number", []string{"tandem-cpu-gb"}, Request{}, false, ErrMalformed},
		{"leading dot", []string{"tandem-.5cpu-1gb"}, Request{}, false, ErrMalformed},
		{"trailing dot", []string{"tandem-1.cpu-1gb"}, Request{}, false, ErrMalformed},
		{"exponent", []string{"tandem-1e1cpu-1gb"}, Request{}, false, ErrMalformed},
		{"sign", []string{"tandem-+1cpu-1gb"}, Request{}, false, ErrMalformed},
		{"negative", []string{"tandem-arm64--1cpu-1gb"}, Request{}, false, ErrMalformed},
		{"inf", []string{"tandem-infcpu-1gb"}, Request{}, false, ErrMalformed},
		{"underscore digits", []string{"tandem-1_0cpu-1gb"}, Request{}, false, ErrMalformed},
		{"space", []string{"tandem-4 cpu-8gb"}, Request{}, false, ErrMalformed},
		{"extra token", []string{"tandem-arm64-4cpu-8gb-ssd"}, Request{}, false, ErrMalformed},
		{"bad after good", []string{"tandem-arm64", "tandem-x"}, Request{}, false, ErrMalformed},

		// Out of bounds.
		{"zero cpu", []string{"tandem-0cpu-8gb"}, Request{}, false, ErrOutOfBounds},
		{"zero point zero cpu", []string{"tandem-0.0cpu-8gb"}, Request{}, false, ErrOutOfBounds},
		{"too many cpus", []string{"tandem-257cpu-8gb"}, Request{}, false, ErrOutOfBounds},
		{"way too many cpus", []string{"tandem-99999999999999999999999cpu-8gb"}, Request{}, false, ErrOutOfBounds},
		{"256.25 cpus", []string{"tandem-256.25cpu-8gb"}, Request{}, false, ErrOutOfBounds},
		{"not a quarter", []string{"tandem-0.3cpu-8gb"}, Request{}, false, ErrOutOfBounds},
		{"three decimals", []string{"tandem-0.125cpu-8gb"}, Request{}, false, ErrOutOfBounds},
		{"zero memory", []string{"tandem-1cpu-0gb"}, Request{}, false, ErrOutOfBounds},
		{"too little memory", []string{"tandem-1cpu-0.1gb"}, Request{}, false, ErrOutOfBounds},
		{"127 MiB", []string{"tandem-1cpu-0.1240234375gb"}, Request{}, false, ErrOutOfBounds},
		{"not whole MiB", []string{"tandem-1cpu-1.3gb"}, Request{}, false, ErrOutOfBounds},
		{"too much memory", []string{"tandem-1cpu-1025gb"}, Request{}, false, ErrOutOfBounds},
		{"1 TiB plus 1 MiB", []string{"tandem-1cpu-1024.0009765625gb"}, Request{}, false, ErrOutOfBounds},
		{"long fraction", []string{"tandem-1cpu-1.00000000001gb"}, Request{}, false, ErrOutOfBounds},

		// Ambiguous.
		{"two sizes", []string{"tandem-2cpu-4gb", "tandem-4cpu-8gb"}, Request{}, false, ErrAmbiguous},
		{"two archs as labels", []string{"tandem-arm64", "tandem-amd64"}, Request{}, false, ErrAmbiguous},
		{"same meaning different spelling", []string{"tandem-arm64", "tandem-aarch64"}, Request{}, false, ErrAmbiguous},
		{"default and explicit", []string{"tandem", "tandem-amd64-2cpu-4gb"}, Request{}, false, ErrAmbiguous},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok, err := p.Parse(tt.labels)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("Parse(%q) error = %v, want %v", tt.labels, err, tt.err)
				}
				if ok || got != (Request{}) {
					t.Errorf("Parse(%q) = %+v, %v alongside error", tt.labels, got, ok)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.labels, err)
			}
			if ok != tt.ok || got != tt.want {
				t.Errorf("Parse(%q) = %+v, %v; want %+v, %v", tt.labels, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestErrorMessages(t *testing.T) {
	p := mustParser(t, "tandem", 0, 0)
	tests := []struct {
		labels []string
		want   []string
	}{
		{[]string{"tandem-arm64-4cpu"}, []string{`label "tandem-arm64-4cpu"`, "want tandem[-ARCH][-<N>cpu-<M>gb]", "e.g. tandem-arm64-4cpu-8gb"}},
		{[]string{"tandem-300cpu-8gb"}, []string{`label "tandem-300cpu-8gb"`, `"300cpu"`, "(0, 256]"}},
		{[]string{"tandem-1cpu-0.1gb"}, []string{`"0.1gb"`, "128 MiB"}},
		{[]string{"tandem-2cpu-4gb", "Tandem-ARM64"}, []string{`"tandem-2cpu-4gb"`, `"Tandem-ARM64"`}},
	}
	for _, tt := range tests {
		_, _, err := p.Parse(tt.labels)
		if err == nil {
			t.Fatalf("Parse(%q): no error", tt.labels)
		}
		for _, w := range tt.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("Parse(%q) error %q does not contain %q", tt.labels, err, w)
			}
		}
	}
	// A custom prefix appears in the expected form.
	_, _, err := mustParser(t, "ci-vm", 0, 0).Parse([]string{"ci-vm-x"})
	if err == nil || !strings.Contains(err.Error(), "want ci-vm[-ARCH]") {
		t.Errorf("custom prefix error = %v", err)
	}
}

func TestPrefixConfiguration(t *testing.T) {
	p := mustParser(t, "ci-vm", 1, 2048)
	cr := func(label string, a arch.Arch, vcpus float64, mem int) Request {
		return Request{Label: label, Prefix: "ci-vm", Arch: a, VCPUs: vcpus, MemoryMiB: mem}
	}
	tests := []struct {
		labels []string
		want   Request
		ok     bool
		err    error
	}{
		{[]string{"ci-vm"}, cr("ci-vm", arch.AMD64, 1, 2048), true, nil},
		{[]string{"CI-VM-arm64"}, cr("CI-VM-arm64", arch.ARM64, 1, 2048), true, nil},
		{[]string{"ci-vm-any-8cpu-16gb"}, cr("ci-vm-any-8cpu-16gb", arch.Any, 8, 16384), true, nil},
		{[]string{"tandem-arm64-4cpu-8gb"}, Request{}, false, nil}, // the default prefix no longer applies
		{[]string{"ci-vmx"}, Request{}, false, nil},
		{[]string{"ci"}, Request{}, false, nil},
		{[]string{"ci-vm-bad"}, Request{}, false, ErrMalformed},
	}
	for _, tt := range tests {
		got, ok, err := p.Parse(tt.labels)
		if !errors.Is(err, tt.err) || ok != tt.ok || got != tt.want {
			t.Errorf("Parse(%q) = %+v, %v, %v; want %+v, %v, %v", tt.labels, got, ok, err, tt.want, tt.ok, tt.err)
		}
	}

	// Upper-case prefixes are accepted and normalised.
	if p := mustParser(t, "CI-VM", 0, 0); p.Prefix != "ci-vm" {
		t.Errorf("NewParser(CI-VM).Prefix = %q", p.Prefix)
	}
	// Only ASCII case folds: the Kelvin sign does not stand in for 'k'.
	if _, ok, err := mustParser(t, "k8s", 0, 0).Parse([]string{"\u212a8s-arm64"}); ok || err != nil {
		t.Errorf("k8s prefix with Kelvin sign lookalike: %v, %v", ok, err)
	}
	// The zero Parser uses the defaults.
	got, ok, err := (&Parser{}).Parse([]string{"tandem"})
	if err != nil || !ok || got != req("tandem", arch.AMD64, DefaultVCPUs, DefaultMemoryMiB) {
		t.Errorf("zero Parser: %+v, %v, %v", got, ok, err)
	}
	// A Parser misconfigured by hand reports it instead of guessing.
	if _, _, err := (&Parser{Prefix: "bad prefix"}).Parse([]string{"x"}); !errors.Is(err, ErrConfig) {
		t.Errorf("bad hand-made Parser: err = %v", err)
	}
}

func TestNewParserValidation(t *testing.T) {
	tests := []struct {
		prefix string
		vcpus  float64
		mem    int
		ok     bool
	}{
		{"tandem", 0, 0, true},
		{"t", 0.25, 128, true},
		{"0x", 256, 1 << 20, true},
		{"a-b-c", 2, 4096, true},
		{"ci--vm", 2, 4096, true},
		{"", 2, 4096, false},
		{"-tandem", 2, 4096, false},
		{"tandem-", 2, 4096, false},
		{"tan dem", 2, 4096, false},
		{"tan_dem", 2, 4096, false},
		{"tandém", 2, 4096, false},
		{"tandem", -1, 4096, false},
		{"tandem", 0.3, 4096, false},
		{"tandem", 257, 4096, false},
		{"tandem", 2, 127, false},
		{"tandem", 2, -1, false},
		{"tandem", 2, 1<<20 + 1, false},
	}
	for _, tt := range tests {
		_, err := NewParser(tt.prefix, tt.vcpus, tt.mem)
		if (err == nil) != tt.ok {
			t.Errorf("NewParser(%q, %v, %d) error = %v, want ok=%v", tt.prefix, tt.vcpus, tt.mem, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrConfig) {
			t.Errorf("NewParser(%q, %v, %d) error %v does not wrap ErrConfig", tt.prefix, tt.vcpus, tt.mem, err)
		}
	}
}

func TestCanonical(t *testing.T) {
	p := mustParser(t, "tandem", 0, 0)
	tests := []struct{ label, want string }{
		{"tandem", "tandem-amd64-2cpu-4gb"},
		{"TANDEM-AARCH64", "tandem-arm64-2cpu-4gb"},
		{"tandem-arm64-0.50cpu-8.0gb", "tandem-arm64-0.5cpu-8gb"},
		{"tandem-x86_64-1.25cpu-1.5gb", "tandem-amd64-1.25cpu-1.5gb"},
		{"tandem-any-0.75cpu-0.1259765625gb", "tandem-any-0.75cpu-0.1259765625gb"},
		{"tandem-x64-256cpu-1024gb", "tandem-amd64-256cpu-1024gb"},
		{"tandem-007cpu-0.125gb", "tandem-amd64-7cpu-0.125gb"},
	}
	for _, tt := range tests {
		r, ok, err := p.Parse([]string{tt.label})
		if err != nil || !ok {
			t.Fatalf("Parse(%q) = %v, %v", tt.label, ok, err)
		}
		c := r.Canonical()
		if c != tt.want {
			t.Errorf("Canonical(%q) = %q, want %q", tt.label, c, tt.want)
		}
		checkRoundTrip(t, p, r)
	}
	// A custom prefix is kept.
	r, _, _ := mustParser(t, "ci-vm", 0, 0).Parse([]string{"CI-VM"})
	if c := r.Canonical(); c != "ci-vm-amd64-2cpu-4gb" {
		t.Errorf("custom prefix Canonical = %q", c)
	}
	// A hand-built Request without Prefix uses the default prefix.
	if c := (Request{Arch: arch.ARM64, VCPUs: 4, MemoryMiB: 8192}).Canonical(); c != "tandem-arm64-4cpu-8gb" {
		t.Errorf("hand-built Canonical = %q", c)
	}
}

// checkRoundTrip checks that Parse(Canonical()) returns the same request.
func checkRoundTrip(t testing.TB, p *Parser, r Request) {
	t.Helper()
	c := r.Canonical()
	back, ok, err := p.Parse([]string{c})
	if err != nil || !ok {
		t.Fatalf("Parse(Canonical %q) = %v, %v", c, ok, err)
	}
	if back.Label != c {
		t.Errorf("Parse(%q).Label = %q", c, back.Label)
	}
	back.Label = r.Label
	if back != r {
		t.Errorf("round trip of %+v via %q = %+v", r, c, back)
	}
	if c2 := back.Canonical(); c2 != c {
		t.Errorf("Canonical not stable: %q then %q", c, c2)
	}
}

func TestCanonicalRoundTripAllSizes(t *testing.T) {
	p := mustParser(t, "tandem", 0, 0)
	for _, a := range []arch.Arch{arch.AMD64, arch.ARM64, arch.Any} {
		for q := 1; q <= 256*4; q += 7 {
			for _, mem := range []int{128, 129, 1000, 1023, 1024, 1536, 4096, 8191, 1<<20 - 1, 1 << 20} {
				checkRoundTrip(t, p, Request{Prefix: "tandem", Arch: a, VCPUs: float64(q) / 4, MemoryMiB: mem})
			}
		}
	}
}

func TestFits(t *testing.T) {
	r := req("tandem-arm64-2.5cpu-4gb", arch.ARM64, 2.5, 4096)
	tests := []struct {
		vcpus float64
		mem   int
		want  bool
	}{
		{2.5, 4096, true},
		{64, 1 << 20, true},
		{2.25, 4096, false},
		{2.5, 4095, false},
		{0, 0, false},
	}
	for _, tt := range tests {
		if got := r.Fits(tt.vcpus, tt.mem); got != tt.want {
			t.Errorf("Fits(%v, %d) = %v, want %v", tt.vcpus, tt.mem, got, tt.want)
		}
	}
}

func FuzzParse(f *testing.F) {
	seeds := [][2]string{
		{"tandem-arm64-4cpu-8gb", ""},
		{"self-hosted", "tandem-2cpu-4gb"},
		{"ubuntu-latest", "x64"},
		{"TANDEM-ANY-0.5CPU-0.125GB", "tandem-any-0.5cpu-0.125gb"},
		{"tandem-arm64-4cpu", ""},
		{"tandem-1cpu-1024.0009765625gb", ""},
		{"tandem-99999999999999999999cpu-8gb", ""},
		{"tandem--", "tandem-"},
		{"tandem-x86_64", "tandem-aarch64"},
		{"tandem\u212a", "TANDEM\xff"},
	}
	for _, s := range seeds {
		f.Add(s[0], s[1])
	}
	p := mustParser(f, "tandem", 0, 0)
	f.Fuzz(func(t *testing.T, a, b string) {
		r, ok, err := p.Parse([]string{a, b})
		if err != nil {
			if ok || r != (Request{}) {
				t.Fatalf("result alongside error %v: %+v, %v", err, r, ok)
			}
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrOutOfBounds) && !errors.Is(err, ErrAmbiguous) {
				t.Fatalf("error wraps no sentinel: %v", err)
			}
			return
		}
		if !ok {
			return
		}
		if r.Label != a && r.Label != b {
			t.Fatalf("Label %q is neither input", r.Label)
		}
		if r.Arch != arch.AMD64 && r.Arch != arch.ARM64 && r.Arch != arch.Any {
			t.Fatalf("bad arch %q", r.Arch)
		}
		if !(r.VCPUs > 0 && r.VCPUs <= MaxVCPUs) || r.VCPUs*4 != float64(int(r.VCPUs*4)) {
			t.Fatalf("bad vCPUs %v from %q", r.VCPUs, r.Label)
		}
		if r.MemoryMiB < MinMemoryMiB || r.MemoryMiB > MaxMemoryMiB {
			t.Fatalf("bad memory %d from %q", r.MemoryMiB, r.Label)
		}
		checkRoundTrip(t, p, r)
	})
}

// GitHub registers a runner with at most 100 labels: a job for Tandem with
// more, or with an absurdly long one, is refused at once, and the reason
// quotes no more than 100 characters of what it was given.
func TestParseLimits(t *testing.T) {
	p, _ := NewParser("tandem", 0, 0)
	many := []string{"tandem"}
	for i := range MaxLabels {
		many = append(many, fmt.Sprintf("l%d", i))
	}
	if _, _, err := p.Parse(many); !errors.Is(err, ErrLimits) || !strings.Contains(err.Error(), "101 labels") {
		t.Errorf("101 labels: %v", err)
	}
	if _, ok, err := p.Parse(many[1:]); ok || err != nil {
		t.Errorf("100 labels none of them Tandem's: %v, %v", ok, err)
	}
	huge := "tandem-" + strings.Repeat("x", 500_000)
	for _, ls := range [][]string{{huge}, {"tandem", strings.Repeat("é", 300)}} {
		_, _, err := p.Parse(ls)
		if !errors.Is(err, ErrLimits) || len(err.Error()) > 250 {
			t.Errorf("a label of %d bytes: %.300v (%d bytes)", len(ls[len(ls)-1]), err, len(err.Error()))
		}
		if err != nil && !utf8.ValidString(err.Error()) {
			t.Errorf("the quote cut a character in two: %q", err.Error())
		}
	}
	if _, ok, err := p.Parse([]string{"tandem", strings.Repeat("y", MaxLabelLen)}); !ok || err != nil {
		t.Errorf("a label of exactly %d characters: %v, %v", MaxLabelLen, ok, err)
	}
}
