// Package labels decides whether a GitHub Actions job asks for Tandem and,
// if so, for what: it parses the job's runs-on labels into a Request.
//
// A Tandem label has the form (compared case-insensitively, as GitHub does)
//
//	PREFIX[-ARCH][-<N>cpu-<M>gb]
//
// PREFIX is configurable (default "tandem"). ARCH is amd64 (also x86_64,
// x64), arm64 (also aarch64) or any; without ARCH the job gets amd64. N is
// the vCPU count and M the memory in GiB, both positive decimals that may be
// fractional ("0.5cpu", "1.5gb"); both are given or neither, in which case the
// parser's default size applies. Examples: tandem, tandem-arm64,
// tandem-4cpu-8gb, tandem-any-0.5cpu-1gb.
package labels

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/tandem-ci/tandem/internal/arch"
)

// Sentinel errors returned (wrapped) by Parse and NewParser.
var (
	// ErrMalformed: a label claims the prefix but does not follow the grammar.
	ErrMalformed = errors.New("malformed tandem label")
	// ErrOutOfBounds: a label parses but asks for a size Tandem refuses.
	ErrOutOfBounds = errors.New("size out of bounds")
	// ErrAmbiguous: a job carries two different Tandem labels.
	ErrAmbiguous = errors.New("ambiguous tandem labels")
	// ErrConfig: the Parser itself is misconfigured.
	ErrConfig = errors.New("invalid label parser config")
	// ErrLimits: a job for Tandem has more labels, or a longer one, than
	// GitHub takes for a runner (MaxLabels, MaxLabelLen).
	ErrLimits = errors.New("runs-on beyond GitHub's limits")
	// ErrConflict: GitHub's own labels ask for another architecture than
	// the Tandem label, or for two.
	ErrConflict = errors.New("conflicting architectures")
	// ErrUnsupported: GitHub's own labels ask for a machine Tandem does not
	// run (Windows, macOS, 32-bit ARM).
	ErrUnsupported = errors.New("not a machine Tandem runs")
)

// GitHub's bounds on a runner's labels: at most 100 (the JIT config API's
// limit), each at most MaxLabelLen characters (Tandem's bound; GitHub's
// own labels are a few dozen at most). A reason that quotes a label quotes
// at most quoteLen characters of it.
const (
	MaxLabels   = 100
	MaxLabelLen = 256
	quoteLen    = 100
)

// Defaults used when a Parser field is left zero.
const (
	DefaultPrefix    = "tandem"
	DefaultVCPUs     = 2.0
	DefaultMemoryMiB = 4096
)

// Bounds on a request. vCPUs come in steps of 0.25: the cgroup CPU quota
// could express far finer shares, but requests such as 0.3333cpu only make
// scheduling and accounting harder without helping anyone, so requests are
// kept to sane, exactly representable quarters.
const (
	MaxVCPUs     = 256.0
	MinMemoryMiB = 128
	MaxMemoryMiB = 1 << 20 // 1 TiB
)

// Request is what a job asks of Tandem.
type Request struct {
	Label     string // the label that matched, as written in the job
	Prefix    string // the (lower-case) prefix of the parser that matched it
	Arch      arch.Arch
	VCPUs     float64
	MemoryMiB int
}

// Canonical returns the canonical spelling of the request's label: lower
// case, architecture always written, numbers without trailing zeros, e.g.
// "tandem-arm64-0.5cpu-8gb". Parsing it yields the same request.
func (r Request) Canonical() string {
	prefix := r.Prefix
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return prefix + "-" + string(r.Arch) + "-" +
		strconv.FormatFloat(r.VCPUs, 'f', -1, 64) + "cpu-" + formatGB(r.MemoryMiB) + "gb"
}

// Fits reports whether the request fits in vcpus vCPUs and memMiB MiB of memory.
func (r Request) Fits(vcpus float64, memMiB int) bool {
	return r.VCPUs <= vcpus && r.MemoryMiB <= memMiB
}

// formatGB writes mib/1024 exactly, without trailing zeros. Every whole
// number of MiB is a decimal with at most 10 fractional GiB digits, since
// 1024 divides 10^10.
func formatGB(mib int) string {
	neg := mib < 0
	if neg {
		mib = -mib
	}
	s := strconv.Itoa(mib / 1024)
	if rem := mib % 1024; rem != 0 {
		frac := fmt.Sprintf("%010d", int64(rem)*(10_000_000_000/1024))
		s += "." + strings.TrimRight(frac, "0")
	}
	if neg {
		s = "-" + s
	}
	return s
}

// Parser recognises Tandem labels. Zero fields take the package defaults, so
// the zero Parser parses "tandem" labels with a 2 vCPU / 4 GiB default size.
type Parser struct {
	Prefix           string  // case-insensitive; [a-z0-9][a-z0-9-]*, not ending in '-'
	DefaultVCPUs     float64 // size for labels without -<N>cpu-<M>gb
	DefaultMemoryMiB int
}

// NewParser returns a validated Parser. An empty prefix is an error; zero
// defaults select DefaultVCPUs and DefaultMemoryMiB.
func NewParser(prefix string, defVCPUs float64, defMemMiB int) (*Parser, error) {
	if prefix == "" {
		return nil, fmt.Errorf("%w: empty prefix", ErrConfig)
	}
	p := &Parser{Prefix: asciiLower(prefix), DefaultVCPUs: defVCPUs, DefaultMemoryMiB: defMemMiB}
	if _, err := p.settings(); err != nil {
		return nil, err
	}
	return p, nil
}

// LabelPrefix is the prefix in effect, lower case.
func (p *Parser) LabelPrefix() string {
	s, _ := p.settings()
	return s.prefix
}

type settings struct {
	prefix string
	vcpus  float64
	mem    int
}

// settings returns the effective, validated configuration.
func (p *Parser) settings() (settings, error) {
	s := settings{prefix: asciiLower(p.Prefix), vcpus: p.DefaultVCPUs, mem: p.DefaultMemoryMiB}
	if s.prefix == "" {
		s.prefix = DefaultPrefix
	}
	if s.vcpus == 0 {
		s.vcpus = DefaultVCPUs
	}
	if s.mem == 0 {
		s.mem = DefaultMemoryMiB
	}
	if !validPrefix(s.prefix) {
		return s, fmt.Errorf("%w: prefix %q: want [a-z0-9][a-z0-9-]* not ending in '-'", ErrConfig, p.Prefix)
	}
	if q := s.vcpus * 4; !(s.vcpus > 0 && s.vcpus <= MaxVCPUs) || q != float64(int(q)) {
		return s, fmt.Errorf("%w: default vCPUs %v: want a multiple of 0.25 in (0, %v]", ErrConfig, s.vcpus, MaxVCPUs)
	}
	if s.mem < MinMemoryMiB || s.mem > MaxMemoryMiB {
		return s, fmt.Errorf("%w: default memory %d MiB: want %d to %d MiB", ErrConfig, s.mem, MinMemoryMiB, MaxMemoryMiB)
	}
	return s, nil
}

func validPrefix(s string) bool {
	if s == "" || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// Parse looks through a job's runs-on labels for a Tandem label.
//
// It returns ok=false and no error when no label claims the prefix (the
// prefix followed by the end of the label or '-'). For a job that has one:
//   - more than MaxLabels labels, or one longer than MaxLabelLen, is an
//     error wrapping ErrLimits (a runner could not be registered with them);
//   - the first bad Tandem label is an error wrapping ErrMalformed or
//     ErrOutOfBounds, and two different Tandem labels (compared without
//     case) one wrapping ErrAmbiguous, even if they mean the same size;
//   - GitHub's own labels are understood beside it (without case, as GitHub
//     compares): self-hosted and linux hold of every Tandem VM; x64 and arm64
//     ask for that architecture, which a Tandem label without one (or with
//     "any") then gets, and which must agree with one it names (else
//     ErrConflict); windows, macos and arm (32-bit) wrap ErrUnsupported.
//
// The returned Request carries the first Tandem label as written. A reason
// in an error quotes at most 100 characters of any label.
func (p *Parser) Parse(labels []string) (Request, bool, error) {
	s, err := p.settings()
	if err != nil {
		return Request{}, false, err
	}
	if !slices.ContainsFunc(labels, s.claims) {
		return Request{}, false, nil
	}
	if len(labels) > MaxLabels {
		return Request{}, false, fmt.Errorf("%w: %d labels; a runner takes at most %d", ErrLimits, len(labels), MaxLabels)
	}
	for _, label := range labels {
		if len(label) > MaxLabelLen {
			return Request{}, false, fmt.Errorf("%w: label %s is %d characters long; at most %d",
				ErrLimits, Quote(label), len(label), MaxLabelLen)
		}
	}
	var (
		found    Request
		ok       bool
		explicit bool // the Tandem label names an architecture
	)
	for _, label := range labels {
		lower := asciiLower(label)
		if !s.claims(label) {
			continue
		}
		rest := lower[len(s.prefix):]
		r, named, err := s.parse(label, rest)
		if err != nil {
			return Request{}, false, err
		}
		explicit = explicit || named
		if ok {
			if asciiLower(found.Label) != lower {
				return Request{}, false, fmt.Errorf("%w: %q and %q: a job may carry only one %s label",
					ErrAmbiguous, found.Label, label, s.prefix)
			}
			continue
		}
		found, ok = r, true
	}
	a, err := githubArch(labels, found, explicit)
	if err != nil {
		return Request{}, false, err
	}
	found.Arch = a
	return found, ok, nil
}

// claims reports whether label is one of this prefix's: the prefix, then
// the label's end or '-'.
func (s settings) claims(label string) bool {
	if len(label) < len(s.prefix) || asciiLower(label[:len(s.prefix)]) != s.prefix {
		return false
	}
	return len(label) == len(s.prefix) || label[len(s.prefix)] == '-'
}

// githubArch is the architecture a job gets once GitHub's own labels are
// read beside its Tandem label r (explicit: r names one).
func githubArch(labels []string, r Request, explicit bool) (arch.Arch, error) {
	var want arch.Arch
	var from string
	for _, label := range labels {
		var a arch.Arch
		switch asciiLower(label) {
		case "self-hosted", "linux":
			continue
		case "x64":
			a = arch.AMD64
		case "arm64":
			a = arch.ARM64
		case "windows", "macos", "arm":
			return "", fmt.Errorf("%w: runs-on %s: Tandem runs Linux VMs on amd64 and arm64", ErrUnsupported, Quote(label))
		default:
			continue
		}
		if want != "" && a != want {
			return "", fmt.Errorf("%w: runs-on has both %s and %s", ErrConflict, Quote(from), Quote(label))
		}
		want, from = a, label
	}
	switch {
	case want == "":
		return r.Arch, nil
	case explicit && r.Arch != arch.Any && r.Arch != want:
		return "", fmt.Errorf("%w: %s asks for %s, %s for %s", ErrConflict, Quote(r.Label), r.Arch, Quote(from), want)
	}
	return want, nil
}

// Quote quotes s for a reason shown to people, cut to its first 100
// characters (an ellipsis and the full length say so).
func Quote(s string) string {
	if len(s) <= quoteLen {
		return strconv.Quote(s)
	}
	return strconv.Quote(Truncate(s, quoteLen)) + fmt.Sprintf("… (%d characters)", len(s))
}

// Truncate is s cut to at most n bytes, on a character boundary.
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// parse parses rest, the lower-cased label after the prefix ("" or "-...").
// named reports whether it names an architecture.
func (s settings) parse(label, rest string) (r Request, named bool, err error) {
	r = Request{Label: label, Prefix: s.prefix, Arch: arch.AMD64, VCPUs: s.vcpus, MemoryMiB: s.mem}
	if rest == "" {
		return r, false, nil
	}
	toks := strings.Split(rest[1:], "-")
	if a, err := arch.ParseRequest(toks[0]); err == nil {
		r.Arch, named = a, true
		toks = toks[1:]
	}
	switch {
	case len(toks) == 0:
		return r, named, nil
	case len(toks) != 2:
		return r, named, s.malformed(label, "")
	}
	cpuText, okCPU := strings.CutSuffix(toks[0], "cpu")
	gbText, okGB := strings.CutSuffix(toks[1], "gb")
	if !okCPU || !okGB {
		return r, named, s.malformed(label, "")
	}
	cpuInt, cpuFrac, okCPU := splitDecimal(cpuText)
	gbInt, gbFrac, okGB := splitDecimal(gbText)
	if !okCPU || !okGB {
		return r, named, s.malformed(label, "sizes are plain decimals such as 2, 0.5 or 1.5")
	}
	if r.VCPUs, err = vcpus(cpuInt, cpuFrac); err != nil {
		return r, named, fmt.Errorf("label %q: %w: %q: %v", label, ErrOutOfBounds, toks[0], err)
	}
	if r.MemoryMiB, err = memoryMiB(gbInt, gbFrac); err != nil {
		return r, named, fmt.Errorf("label %q: %w: %q: %v", label, ErrOutOfBounds, toks[1], err)
	}
	return r, named, nil
}

func (s settings) malformed(label, hint string) error {
	err := fmt.Errorf("label %q: %w: want %s[-ARCH][-<N>cpu-<M>gb] with ARCH one of amd64, arm64, any (or x86_64, x64, aarch64), e.g. %s-arm64-4cpu-8gb",
		label, ErrMalformed, s.prefix, s.prefix)
	if hint != "" {
		err = fmt.Errorf("%w; %s", err, hint)
	}
	return err
}

// splitDecimal splits "[0-9]+(.[0-9]+)?" into its integer digits without
// leading zeros and its fractional digits without trailing zeros.
func splitDecimal(s string) (intDigits, fracDigits string, ok bool) {
	intDigits, fracDigits, hasDot := strings.Cut(s, ".")
	if !allDigits(intDigits) || (hasDot && !allDigits(fracDigits)) {
		return "", "", false
	}
	return strings.TrimLeft(intDigits, "0"), strings.TrimRight(fracDigits, "0"), true
}

func allDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// vcpus converts a split decimal to vCPUs, exactly, checking the bounds.
func vcpus(intDigits, fracDigits string) (float64, error) {
	const msg = "vCPUs must be a multiple of 0.25 in (0, 256]"
	if len(intDigits) > 3 || len(fracDigits) > 2 {
		return 0, errors.New(msg)
	}
	hundredths := atoi(intDigits)*100 + atoi((fracDigits + "00")[:2])
	if hundredths <= 0 || hundredths > MaxVCPUs*100 || hundredths%25 != 0 {
		return 0, errors.New(msg)
	}
	return float64(hundredths/25) / 4, nil // exact: quarters are binary fractions
}

// memoryMiB converts a split decimal number of GiB to MiB, exactly, checking
// the bounds. A whole number of MiB has at most 10 fractional GiB digits.
func memoryMiB(intDigits, fracDigits string) (int, error) {
	const msg = "memory must be a whole number of MiB from 128 MiB to 1 TiB (0.125gb to 1024gb)"
	if len(intDigits) > 4 || len(fracDigits) > 10 {
		return 0, errors.New(msg)
	}
	frac := atoi((fracDigits + "0000000000")[:10]) * 1024 // < 1.1e13
	if frac%10_000_000_000 != 0 {
		return 0, errors.New(msg)
	}
	mib := atoi(intDigits)*1024 + frac/10_000_000_000
	if mib < MinMemoryMiB || mib > MaxMemoryMiB {
		return 0, errors.New(msg)
	}
	return int(mib), nil
}

// atoi converts at most 10 ASCII digits ("" is 0).
func atoi(s string) int64 {
	var n int64
	for i := 0; i < len(s); i++ {
		n = n*10 + int64(s[i]-'0')
	}
	return n
}

// asciiLower lower-cases ASCII letters only, so that no Unicode case folding
// (such as the Kelvin sign to 'k') can make a label claim the prefix.
func asciiLower(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if c := b[j]; c >= 'A' && c <= 'Z' {
					b[j] = c + 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}
