package egress

import (
	"cmp"
	"slices"
	"strconv"
)

// Suggestion is one allowlist entry suggested from recorded flows, with
// its evidence: in how many of the jobs it was seen, how many connections
// (or refused queries) went there, and whether any was blocked.
type Suggestion struct {
	Entry       string `json:"entry"`
	Jobs        int    `json:"jobs"`
	Connections int64  `json:"connections"`
	Blocked     bool   `json:"blocked,omitempty"`
	// NoName: the VM reached the address without a DNS answer for it (so
	// the entry is the address and port).
	NoName bool `json:"no_name,omitempty"`
}

// Suggest turns the records of a repository's recent jobs into an
// allowlist that would have let every recorded flow through: the DNS name
// of each destination when the forwarder gave one, else its address and
// port, and every name an allowlist refused; Base's names are left out
// (an allowlist has them anyway). Most used first.
func Suggest(records []Record) []Suggestion {
	type acc struct {
		s    Suggestion
		jobs map[int]bool
	}
	byEntry := map[string]*acc{}
	add := func(job int, entry string, n int64, blocked, noName bool) {
		a := byEntry[entry]
		if a == nil {
			a = &acc{s: Suggestion{Entry: entry, NoName: noName}, jobs: map[int]bool{}}
			byEntry[entry] = a
		}
		a.jobs[job] = true
		a.s.Connections += n
		a.s.Blocked = a.s.Blocked || blocked
	}
	base := Policy{Mode: Allowlist, Names: Base}
	for i, r := range records {
		for _, f := range r.Flows {
			if f.Name != "" {
				if !base.AllowsName(f.Name) {
					add(i, f.Name, f.Count, !f.Allowed, false)
				}
				continue
			}
			add(i, f.Addr.String()+":"+strconv.Itoa(int(f.Port)), f.Count, !f.Allowed, true)
		}
		for name, n := range r.Refused {
			if !base.AllowsName(name) {
				add(i, name, int64(n), true, false)
			}
		}
	}
	out := make([]Suggestion, 0, len(byEntry))
	for _, a := range byEntry {
		a.s.Jobs = len(a.jobs)
		out = append(out, a.s)
	}
	slices.SortFunc(out, func(a, b Suggestion) int {
		if c := cmp.Compare(b.Jobs, a.Jobs); c != 0 {
			return c
		}
		if c := cmp.Compare(b.Connections, a.Connections); c != 0 {
			return c
		}
		return cmp.Compare(a.Entry, b.Entry)
	})
	return out
}
