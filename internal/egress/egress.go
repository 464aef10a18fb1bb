// Package egress decides where a job's VM may send traffic beyond the
// host's own isolation (which internal/hostnet enforces for every VM: no
// host ports but the mirror and the DNS forwarder, no other VM, no private,
// link-local, loopback, multicast or reserved range, no forged source, no
// DNS but the forwarder). It is pure: it parses and checks policies, picks
// a job's policy from the configuration, matches DNS names against an
// allowlist and turns recorded flows into a suggested allowlist. The agent
// carries a decision out: hostnet's per-VM nftables chain and sets, and the
// DNS forwarder (internal/vmdns).
//
// # Modes
//
//   - open: anything the host's isolation leaves open.
//   - audit: as open, and every new TCP or UDP flow is recorded: its
//     destination address, protocol and port, the DNS name it was resolved
//     from when the forwarder saw it, and how many connections went there.
//   - allowlist: only destinations the policy allows: DNS names (the
//     forwarder answers only allowed names, and their answers are let
//     through for the record's TTL) and CIDR[:port] entries; every flow,
//     allowed or blocked, is recorded as in audit.
//
// # Invariants
//
//   - A policy never opens what the host's isolation closes: an allowlist
//     entry inside a denied range does not reach it; only the operator's
//     host-wide holes (hostnet.Config.Allow) do.
//   - Names compare without case and without a trailing dot. An entry
//     "*.example.com" allows every name below example.com (one or more
//     labels), not example.com itself.
//   - An allowlist always includes Base, what GitHub's runner needs to take
//     and report a job, unless the policy says base: false.
//   - A job's policy is its repository's override if there is one, else
//     its organisation's, else the default; an override replaces the
//     default whole, it does not merge with it. Keys compare without case.
package egress

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Mode is how a VM's traffic is treated.
type Mode string

const (
	Open      Mode = "open"
	Audit     Mode = "audit"
	Allowlist Mode = "allowlist"
)

// ParseMode checks a mode's name; "" is Open.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(strings.ToLower(strings.TrimSpace(s))); m {
	case "":
		return Open, nil
	case Open, Audit, Allowlist:
		return m, nil
	}
	return "", fmt.Errorf("egress mode %q: want open, audit or allowlist", s)
}

// Records reports whether flows are recorded in mode m.
func (m Mode) Records() bool { return m == Audit || m == Allowlist }

// Net is a CIDR, optionally with one port (TCP and UDP alike); Port 0 is
// every port.
type Net struct {
	Prefix netip.Prefix
	Port   uint16
}

// ParseNet parses "10.1.2.0/24", "10.1.2.3", "10.1.2.0/24:8080" or
// "10.1.2.3:443". IPv4 only: VMs have no IPv6.
func ParseNet(s string) (Net, error) {
	s = strings.TrimSpace(s)
	addr, port := s, ""
	if i := strings.LastIndexByte(s, ':'); i >= 0 {
		addr, port = s[:i], s[i+1:]
	}
	var n Net
	if strings.Contains(addr, "/") {
		p, err := netip.ParsePrefix(addr)
		if err != nil {
			return Net{}, fmt.Errorf("network %q: %v", s, err)
		}
		if p.Masked() != p {
			return Net{}, fmt.Errorf("network %q has host bits set (did you mean %s?)", s, p.Masked())
		}
		n.Prefix = p
	} else {
		a, err := netip.ParseAddr(addr)
		if err != nil {
			return Net{}, fmt.Errorf("network %q: not an address or CIDR", s)
		}
		n.Prefix = netip.PrefixFrom(a, a.BitLen())
	}
	if !n.Prefix.Addr().Is4() {
		return Net{}, fmt.Errorf("network %q: IPv4 only (VMs have no IPv6)", s)
	}
	if port != "" {
		p, err := strconv.ParseUint(port, 10, 16)
		if err != nil || p == 0 {
			return Net{}, fmt.Errorf("network %q: bad port %q", s, port)
		}
		n.Port = uint16(p)
	}
	return n, nil
}

func (n Net) String() string {
	s := n.Prefix.String()
	if n.Prefix.IsSingleIP() {
		s = n.Prefix.Addr().String()
	}
	if n.Port != 0 {
		s += ":" + strconv.Itoa(int(n.Port))
	}
	return s
}

// Policy is one job's egress policy, checked.
type Policy struct {
	Mode Mode `json:"mode"`
	// Names are the DNS names an allowlist allows, normalised ("*.x.y"
	// for every name below x.y); Base's names are included unless the
	// policy turned them off.
	Names []string `json:"names,omitempty"`
	Nets  []Net    `json:"nets,omitempty"`
}

// Rule is a policy as the configuration writes it.
type Rule struct {
	Mode string `yaml:"mode" json:"mode"`
	// Allow lists DNS names (wildcards "*.example.com") and CIDR[:port].
	Allow []string `yaml:"allow" json:"allow,omitempty"`
	// Base, for an allowlist, adds what GitHub's runner needs (default
	// true).
	Base *bool `yaml:"base" json:"base,omitempty"`
}

// Compile checks r and returns its policy.
func (r Rule) Compile() (Policy, error) {
	m, err := ParseMode(r.Mode)
	if err != nil {
		return Policy{}, err
	}
	p := Policy{Mode: m}
	if m != Allowlist {
		if len(r.Allow) > 0 || r.Base != nil {
			return Policy{}, fmt.Errorf("allow and base are for mode allowlist, not %s", m)
		}
		return p, nil
	}
	var errs []error
	for _, a := range r.Allow {
		if looksLikeNet(a) {
			n, err := ParseNet(a)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			p.Nets = append(p.Nets, n)
			continue
		}
		name, err := normaliseEntry(a)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		p.Names = append(p.Names, name)
	}
	if r.Base == nil || *r.Base {
		p.Names = append(p.Names, Base...)
	}
	if len(errs) > 0 {
		return Policy{}, errors.Join(errs...)
	}
	slices.Sort(p.Names)
	p.Names = slices.Compact(p.Names)
	return p, nil
}

// looksLikeNet tells a CIDR or address from a name: names have a letter in
// their last label.
func looksLikeNet(s string) bool {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "/") {
		return true
	}
	host := s
	if i := strings.LastIndexByte(s, ':'); i >= 0 {
		host = s[:i]
	}
	_, err := netip.ParseAddr(host)
	return err == nil
}

// NormaliseName lowercases a DNS name and drops its trailing dot.
func NormaliseName(s string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(s)), ".")
}

// normaliseEntry checks an allowlist name: labels of letters, digits and
// hyphens (underscores too, as some services use them), a leading "*."
// for a wildcard, at most 253 characters.
func normaliseEntry(s string) (string, error) {
	n := NormaliseName(s)
	rest, wild := strings.CutPrefix(n, "*.")
	if rest == "" || len(n) > 253 {
		return "", fmt.Errorf("allowlist name %q: empty or too long", s)
	}
	for _, l := range strings.Split(rest, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return "", fmt.Errorf("allowlist name %q: bad label %q", s, l)
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", fmt.Errorf("allowlist name %q: bad character %q (wildcards only as a leading *.)", s, c)
			}
		}
	}
	if !wild && !strings.Contains(rest, ".") {
		return "", fmt.Errorf("allowlist name %q: not a domain name (want e.g. example.com or *.example.com)", s)
	}
	if wild {
		return "*." + rest, nil
	}
	return rest, nil
}

// AllowsName reports whether the policy lets the VM resolve name: always
// outside allowlist mode; in it, when an entry matches (see the package
// comment).
func (p Policy) AllowsName(name string) bool {
	if p.Mode != Allowlist {
		return true
	}
	n := NormaliseName(name)
	for _, e := range p.Names {
		if suffix, ok := strings.CutPrefix(e, "*"); ok {
			if strings.HasSuffix(n, suffix) && len(n) > len(suffix) {
				return true
			}
		} else if n == e {
			return true
		}
	}
	return false
}

// Config is the egress part of the control plane's configuration: a
// default and overrides keyed by "org" or "org/repo".
type Config struct {
	Default   Rule            `yaml:"default"`
	Overrides map[string]Rule `yaml:"overrides"`
}

// Policies is a compiled Config.
type Policies struct {
	def       Policy
	overrides map[string]Policy // keys lowercased
}

// Compile checks every rule of c.
func (c Config) Compile() (*Policies, error) {
	def, err := c.Default.Compile()
	if err != nil {
		return nil, fmt.Errorf("egress.default: %w", err)
	}
	ps := &Policies{def: def, overrides: map[string]Policy{}}
	var errs []error
	for k, r := range c.Overrides {
		key := strings.ToLower(strings.TrimSpace(k))
		if org, repo, ok := strings.Cut(key, "/"); org == "" || ok && (repo == "" || strings.Contains(repo, "/")) {
			errs = append(errs, fmt.Errorf("egress.overrides: key %q: want ORG or ORG/REPO", k))
			continue
		}
		if _, dup := ps.overrides[key]; dup {
			errs = append(errs, fmt.Errorf("egress.overrides: %q given twice (keys compare without case)", k))
			continue
		}
		p, err := r.Compile()
		if err != nil {
			errs = append(errs, fmt.Errorf("egress.overrides.%s: %w", k, err))
			continue
		}
		ps.overrides[key] = p
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return ps, nil
}

// For returns the policy of a job of repo ("owner/name") in org.
func (ps *Policies) For(org, repo string) Policy {
	if ps == nil {
		return Policy{Mode: Open}
	}
	if p, ok := ps.overrides[strings.ToLower(repo)]; ok && strings.Contains(repo, "/") {
		return p
	}
	if p, ok := ps.overrides[strings.ToLower(org)]; ok {
		return p
	}
	return ps.def
}

// Flow is one destination a VM opened connections to, as its policy
// recorded it (audit and allowlist modes).
type Flow struct {
	Addr  netip.Addr `json:"addr"`
	Proto string     `json:"proto"` // tcp or udp
	Port  uint16     `json:"port"`
	// Name is the DNS name Addr was an answer for, when the host's
	// forwarder gave it.
	Name    string `json:"name,omitempty"`
	Allowed bool   `json:"allowed"`
	// Count is the number of connections: first packets seen.
	Count int64 `json:"count"`
}

// Record is what one job's VM did under its policy.
type Record struct {
	Mode  Mode   `json:"mode"`
	Flows []Flow `json:"flows,omitempty"`
	// Refused counts the DNS names an allowlist would not resolve.
	Refused map[string]int `json:"refused_names,omitempty"`
	// Dropped counts the flows and names Bound left out.
	Dropped int `json:"dropped,omitempty"`
}

// Bounds of a Record (Bound).
const (
	MaxFlows   = 1000
	MaxRefused = 200
)

// Bound keeps at most MaxFlows flows and MaxRefused names, those with the
// most connections (queries), in their order; Dropped counts the rest.
func (r *Record) Bound() {
	if len(r.Flows) > MaxFlows {
		idx := make([]int, len(r.Flows))
		for i := range idx {
			idx[i] = i
		}
		slices.SortStableFunc(idx, func(a, b int) int { return cmp.Compare(r.Flows[b].Count, r.Flows[a].Count) })
		keep := idx[:MaxFlows]
		slices.Sort(keep)
		kept := make([]Flow, 0, MaxFlows)
		for _, i := range keep {
			kept = append(kept, r.Flows[i])
		}
		r.Dropped += len(r.Flows) - MaxFlows
		r.Flows = kept
	}
	if len(r.Refused) > MaxRefused {
		names := slices.Collect(maps.Keys(r.Refused))
		slices.SortFunc(names, func(a, b string) int {
			if c := cmp.Compare(r.Refused[b], r.Refused[a]); c != 0 {
				return c
			}
			return strings.Compare(a, b)
		})
		for _, n := range names[MaxRefused:] {
			delete(r.Refused, n)
			r.Dropped++
		}
	}
}
