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
	"strconv"
	"strings"

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
// prefix followed by the end of the label or '-'); other labels such as
// self-hosted, linux or arm64 are ignored. It returns an error wrapping
// ErrMalformed or ErrOutOfBounds for the first Tandem label that is bad, and
// ErrAmbiguous when two different Tandem labels (compared case-insensitively)
// appear, even if they mean the same size. The returned Request carries the
// first Tandem label as written.
func (p *Parser) Parse(labels []string) (Request, bool, error) {
	s, err := p.settings()
	if err != nil {
		return Request{}, false, err
	}
	var (
		found Request
		ok    bool
	)
	for _, label := range labels {
		lower := asciiLower(label)
		rest, claimed := strings.CutPrefix(lower, s.prefix)
		if !claimed || (rest != "" && rest[0] != '-') {
			continue
		}
		r, err := s.parse(label, rest)
		if err != nil {
			return Request{}, false, err
		}
		if ok {
			if asciiLower(found.Label) != lower {
				return Request{}, false, fmt.Errorf("%w: %q and %q: a job may carry only one %s label",
					ErrAmbiguous, found.Label, label, s.prefix)
			}
			continue
		}
		found, ok = r, true
	}
	return found, ok, nil
}

// parse parses rest, the lower-cased label after the prefix ("" or "-...").
func (s settings) parse(label, rest string) (Request, error) {
	r := Request{Label: label, Prefix: s.prefix, Arch: arch.AMD64, VCPUs: s.vcpus, MemoryMiB: s.mem}
	if rest == "" {
		return r, nil
	}
	toks := strings.Split(rest[1:], "-")
	if a, err := arch.ParseRequest(toks[0]); err == nil {
		r.Arch = a
		toks = toks[1:]
	}
	switch {
	case len(toks) == 0:
		return r, nil
	case len(toks) != 2:
		return r, s.malformed(label, "")
	}
	cpuText, okCPU := strings.CutSuffix(toks[0], "cpu")
	gbText, okGB := strings.CutSuffix(toks[1], "gb")
	if !okCPU || !okGB {
		return r, s.malformed(label, "")
	}
	cpuInt, cpuFrac, okCPU := splitDecimal(cpuText)
	gbInt, gbFrac, okGB := splitDecimal(gbText)
	if !okCPU || !okGB {
		return r, s.malformed(label, "sizes are plain decimals such as 2, 0.5 or 1.5")
	}
	var err error
	if r.VCPUs, err = vcpus(cpuInt, cpuFrac); err != nil {
		return r, fmt.Errorf("label %q: %w: %q: %v", label, ErrOutOfBounds, toks[0], err)
	}
	if r.MemoryMiB, err = memoryMiB(gbInt, gbFrac); err != nil {
		return r, fmt.Errorf("label %q: %w: %q: %v", label, ErrOutOfBounds, toks[1], err)
	}
	return r, nil
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
