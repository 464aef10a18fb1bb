package scheduler

import (
	"cmp"
	"math"
	"slices"
	"sort"
	"strings"

	"github.com/tandem-ci/tandem/internal/arch"
)

// vCPUs are accounted in quarters (labels only allow multiples of 0.25).
const (
	quartersPerVCPU = 4
	// quarterEps absorbs float noise such as 0.1+0.2 before rounding.
	quarterEps = 1e-6
	// maxQuarters caps conversions so absurd inputs cannot overflow int64.
	maxQuarters = int64(1) << 40
)

// quartersCeil converts a request or usage to quarter vCPUs, rounding up.
// Negative and non-finite values give 0; callers validate first where it matters.
func quartersCeil(v float64) int64 {
	if !(v > 0) {
		return 0
	}
	q := math.Ceil(v*quartersPerVCPU - quarterEps)
	if q >= float64(maxQuarters) {
		return maxQuarters
	}
	return int64(q)
}

// quartersFloor converts a capacity or limit to quarter vCPUs, rounding down.
func quartersFloor(v float64) int64 {
	if !(v > 0) {
		return 0
	}
	q := math.Floor(v*quartersPerVCPU + quarterEps)
	if q >= float64(maxQuarters) {
		return maxQuarters
	}
	return int64(q)
}

func finiteNonNeg(v float64) bool { return v >= 0 && !math.IsInf(v, 1) }

// archIdx maps the two concrete architectures to 0 and 1.
func archIdx(a arch.Arch) (int, bool) {
	switch a {
	case arch.AMD64:
		return 0, true
	case arch.ARM64:
		return 1, true
	}
	return 0, false
}

var concreteArches = [2]arch.Arch{arch.AMD64, arch.ARM64}

type host struct {
	id          string
	ord         int // position in ID order; the tie-breaker
	schedulable bool
	totalCPU    int64 // quarters
	totalMem    int64 // MiB
	totalDisk   int64 // MiB; noDiskLimit when the host does not count disk
	freeCPU     int64
	freeMem     int64
	freeDisk    int64
	src         *Host
	classes     []*class // schedulable hosts only
}

// class is every schedulable host that runs one architecture, natively or
// emulated, indexed by free capacity.
type class struct {
	arch     arch.Arch
	emulated bool
	all      []*host // schedulable members in ID order
	// free holds the members with some room left, sorted by (freeCPU,
	// freeMem, ord). The first entry with enough of both is the best fit.
	free []*host
	// full holds request sizes known not to fit any member; only minimal
	// ones are kept. Within one call room only shrinks, so a size that did
	// not fit, or anything at least as large, never will.
	full []size
}

type size struct{ cpu, mem, disk int64 }

// noDiskLimit is the disk of a host that does not count disk.
const noDiskLimit = int64(1) << 50

func (j *job) size() size { return size{j.cpu, j.mem, j.disk} }

// fits reports whether a holds b.
func (a size) fits(b size) bool { return a.cpu >= b.cpu && a.mem >= b.mem && a.disk >= b.disk }

func freeLess(a, b *host) bool {
	if a.freeCPU != b.freeCPU {
		return a.freeCPU < b.freeCPU
	}
	if a.freeMem != b.freeMem {
		return a.freeMem < b.freeMem
	}
	return a.ord < b.ord
}

func (c *class) knownFull(z size) bool {
	for _, f := range c.full {
		if z.fits(f) {
			return true
		}
	}
	return false
}

func (c *class) markFull(z size) {
	c.full = slices.DeleteFunc(c.full, func(f size) bool { return f.fits(z) })
	c.full = append(c.full, z)
}

func (c *class) insert(h *host) {
	i := sort.Search(len(c.free), func(i int) bool { return !freeLess(c.free[i], h) })
	c.free = slices.Insert(c.free, i, h)
}

func (c *class) remove(h *host) {
	i := sort.Search(len(c.free), func(i int) bool { return !freeLess(c.free[i], h) })
	if i < len(c.free) && c.free[i] == h {
		c.free = slices.Delete(c.free, i, i+1)
	}
}

// find returns the best-fitting member not in avoid or excluded, and the
// best-fitting member in avoid (not excluded) as a fallback. sawExcluded
// reports whether an excluded member would have fit.
func (c *class) find(z size, avoid []int, excluded *host) (best, fallback *host, sawExcluded bool) {
	if len(c.free) == 0 || c.knownFull(z) {
		return nil, nil, false
	}
	i := sort.Search(len(c.free), func(i int) bool { return c.free[i].freeCPU >= z.cpu })
	for ; i < len(c.free); i++ {
		h := c.free[i]
		if h.freeMem < z.mem || h.freeDisk < z.disk {
			continue
		}
		switch {
		case h == excluded:
			sawExcluded = true
		case slices.Contains(avoid, h.ord):
			if fallback == nil {
				fallback = h
			}
		default:
			return h, fallback, sawExcluded
		}
	}
	if fallback == nil && !sawExcluded {
		c.markFull(z)
	}
	return nil, fallback, sawExcluded
}

// roomiest returns the member with the most free vCPUs, then memory.
func (c *class) roomiest() *host {
	if len(c.free) == 0 {
		return nil
	}
	return c.free[len(c.free)-1]
}

// capacity summarises the hosts that support one architecture.
type capacity struct {
	all, sched []size // Pareto-maximal totals: of every host, of schedulable ones
	largest    *host  // most total vCPUs, then memory, then lowest ID
	count      int
	unsched    int // hosts that are not schedulable
}

// holds reports whether some size in sizes holds z.
func holds(sizes []size, z size) bool {
	for _, s := range sizes {
		if s.fits(z) {
			return true
		}
	}
	return false
}

// pareto reduces sizes to those no other size dominates: largest vCPUs
// first, each kept only if no size kept before holds it.
func pareto(sizes []size) []size {
	slices.SortFunc(sizes, func(a, b size) int {
		if a.cpu != b.cpu {
			return cmp.Compare(b.cpu, a.cpu)
		}
		if a.mem != b.mem {
			return cmp.Compare(b.mem, a.mem)
		}
		return cmp.Compare(b.disk, a.disk)
	})
	out := sizes[:0]
	for _, s := range sizes {
		if !holds(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// state is the scheduler's working copy of the fleet for one call.
type state struct {
	hosts   []*host // valid hosts in ID order
	byID    map[string]*host
	ignored int // hosts dropped as invalid or duplicate
	// classes[archIdx][0] is native, [1] emulated.
	classes [2][2]*class
	caps    [2]capacity
	// warm holds the warm VMs that may be taken, by key, in Input order.
	warm map[string][]*warmVM
}

type warmVM struct {
	src   *Warm
	host  *host
	taken bool
}

func newState(in Input) *state {
	s := &state{byID: make(map[string]*host, len(in.Hosts))}
	for a, m := range concreteArches {
		s.classes[a][0] = &class{arch: m}
		s.classes[a][1] = &class{arch: m, emulated: true}
	}
	for i := range in.Hosts {
		h := &in.Hosts[i]
		if _, dup := s.byID[h.ID]; dup || !validHost(h) {
			s.ignored++
			continue
		}
		nh := &host{
			id:          h.ID,
			src:         h,
			schedulable: h.Schedulable,
			totalCPU:    quartersFloor(h.VCPUs),
			totalMem:    int64(h.MemoryMiB),
			totalDisk:   noDiskLimit,
		}
		nh.freeCPU = max(nh.totalCPU-quartersCeil(h.UsedVCPUs), 0)
		nh.freeMem = max(nh.totalMem-int64(h.UsedMemoryMiB), 0)
		nh.freeDisk = noDiskLimit
		if h.DiskMiB > 0 {
			nh.totalDisk = int64(h.DiskMiB)
			nh.freeDisk = max(nh.totalDisk-int64(h.UsedDiskMiB), 0)
		}
		s.byID[h.ID] = nh
		s.hosts = append(s.hosts, nh)
	}
	slices.SortFunc(s.hosts, func(a, b *host) int { return strings.Compare(a.id, b.id) })
	seenWarm := map[string]bool{}
	for i := range in.Warm {
		w := &in.Warm[i]
		if seenWarm[w.ID] {
			continue // listed twice: still one VM
		}
		seenWarm[w.ID] = true
		if h := s.byID[w.HostID]; h != nil && h.schedulable && w.Key != "" {
			if s.warm == nil {
				s.warm = map[string][]*warmVM{}
			}
			s.warm[w.Key] = append(s.warm[w.Key], &warmVM{src: w, host: h})
		}
	}

	var all, sched [2][]size
	for ord, nh := range s.hosts {
		nh.ord = ord
		var native, emulated [2]bool
		for _, as := range nh.src.Arches {
			a, ok := archIdx(as.Arch)
			if !ok {
				continue
			}
			if as.Emulated {
				emulated[a] = true
			} else {
				native[a] = true
			}
		}
		for a := range concreteArches {
			if !native[a] && !emulated[a] {
				continue
			}
			c := &s.caps[a]
			c.count++
			all[a] = append(all[a], size{nh.totalCPU, nh.totalMem, nh.totalDisk})
			if l := c.largest; l == nil || nh.totalCPU > l.totalCPU ||
				(nh.totalCPU == l.totalCPU && nh.totalMem > l.totalMem) {
				c.largest = nh
			}
			if !nh.schedulable {
				c.unsched++
				continue
			}
			sched[a] = append(sched[a], size{nh.totalCPU, nh.totalMem, nh.totalDisk})
			cl := s.classes[a][0]
			if !native[a] {
				cl = s.classes[a][1]
			}
			cl.all = append(cl.all, nh)
			nh.classes = append(nh.classes, cl)
			if nh.freeCPU > 0 && nh.freeMem > 0 && nh.freeDisk > 0 {
				cl.free = append(cl.free, nh)
			}
		}
	}
	for a := range concreteArches {
		s.caps[a].all = pareto(all[a])
		s.caps[a].sched = pareto(sched[a])
		for _, cl := range s.classes[a] {
			slices.SortFunc(cl.free, func(x, y *host) int {
				if freeLess(x, y) {
					return -1
				}
				return 1
			})
		}
	}
	return s
}

func validHost(h *Host) bool {
	return h.ID != "" && finiteNonNeg(h.VCPUs) && finiteNonNeg(h.UsedVCPUs) &&
		h.MemoryMiB >= 0 && h.UsedMemoryMiB >= 0 && h.DiskMiB >= 0 && h.UsedDiskMiB >= 0
}

func (s *state) resolveAvoid(ids []string) []int {
	var out []int
	for _, id := range ids {
		if h, ok := s.byID[id]; ok && !slices.Contains(out, h.ord) {
			out = append(out, h.ord)
		}
	}
	return out
}

// archesOf returns the archIdx values a job accepts.
func archesOf(a arch.Arch) []int {
	switch a {
	case arch.AMD64:
		return []int{0}
	case arch.ARM64:
		return []int{1}
	case arch.Any:
		return []int{0, 1}
	}
	return nil
}

// place finds a host for j, honouring r's reservation, and commits it.
// Without a host it returns why and may reserve a host for j.
func (s *state) place(j *job, r *repoQ) (Placement, string, bool) {
	arches := archesOf(j.src.Arch)
	var fallback [2]*host // per tier: native, emulated
	var fallbackCls [2]*class
	sawExcluded := false
	for tier := range 2 {
		var best *host
		var bestCls *class
		for _, a := range arches {
			cl := s.classes[a][tier]
			b, fb, se := cl.find(j.size(), j.avoid, r.reserved)
			sawExcluded = sawExcluded || se
			if b != nil && (best == nil || freeLess(b, best)) {
				best, bestCls = b, cl
			}
			if fb != nil && (fallback[tier] == nil || freeLess(fb, fallback[tier])) {
				fallback[tier], fallbackCls[tier] = fb, cl
			}
		}
		if best != nil {
			return s.commit(j, best, bestCls), "", true
		}
	}
	for tier := range 2 {
		if fallback[tier] != nil {
			return s.commit(j, fallback[tier], fallbackCls[tier]), "", true
		}
	}
	if sawExcluded {
		return Placement{}, "held back for older job " + itoa(r.reservedFor) + " of " + r.name +
			", which has " + r.reserved.id + " reserved", false
	}
	reason := s.noRoomReason(j, arches)
	if r.reserved == nil {
		if h := s.reservation(j, arches); h != nil {
			r.reserved, r.reservedFor = h, j.src.ID
		}
	}
	return Placement{}, reason, false
}

// takeWarm gives j the best warm VM of its key, if one is left (see the
// package documentation for the order).
func (s *state) takeWarm(j *job) (Placement, bool) {
	if j.src.Warm == "" {
		return Placement{}, false
	}
	var best *warmVM
	bestRank := 0
	for _, w := range s.warm[j.src.Warm] {
		if w.taken || !j.src.Arch.Matches(w.src.Arch) {
			continue
		}
		// Lower is better: avoided host, emulated, still booting.
		rank := 0
		if slices.Contains(j.avoid, w.host.ord) {
			rank += 4
		}
		if w.src.Emulated {
			rank += 2
		}
		if !w.src.Ready {
			rank++
		}
		if best == nil || rank < bestRank {
			best, bestRank = w, rank
		}
	}
	if best == nil {
		return Placement{}, false
	}
	best.taken = true
	return Placement{JobID: j.src.ID, HostID: best.host.id, Arch: best.src.Arch, Emulated: best.src.Emulated, Warm: best.src.ID}, true
}

func (s *state) commit(j *job, h *host, cl *class) Placement {
	for _, c := range h.classes {
		c.remove(h)
	}
	h.freeCPU -= j.cpu
	h.freeMem -= j.mem
	if h.freeDisk < noDiskLimit {
		h.freeDisk -= j.disk
	}
	if h.freeCPU > 0 && h.freeMem > 0 && h.freeDisk > 0 {
		for _, c := range h.classes {
			c.insert(h)
		}
	}
	return Placement{JobID: j.src.ID, HostID: h.id, Arch: cl.arch, Emulated: cl.emulated}
}

// reservation picks the host that j should drain towards: a schedulable host
// whose total holds j, closest to fitting it now.
func (s *state) reservation(j *job, arches []int) *host {
	for tier := range 2 {
		var best *host
		bestScore, bestAvoided := math.Inf(1), true
		for _, a := range arches {
			for _, h := range s.classes[a][tier].all {
				if !(size{h.totalCPU, h.totalMem, h.totalDisk}).fits(j.size()) {
					continue
				}
				avoided := slices.Contains(j.avoid, h.ord)
				score := float64(max(j.cpu-h.freeCPU, 0))/float64(j.cpu) +
					float64(max(j.mem-h.freeMem, 0))/float64(j.mem)
				if j.disk > 0 {
					score += float64(max(j.disk-h.freeDisk, 0)) / float64(j.disk)
				}
				better := best == nil ||
					(!avoided && bestAvoided) ||
					(avoided == bestAvoided && (score < bestScore || (score == bestScore && h.ord < best.ord)))
				if better {
					best, bestScore, bestAvoided = h, score, avoided
				}
			}
		}
		if best != nil {
			return best
		}
	}
	return nil
}
