package scheduler

import (
	"math"
	"strconv"

	"github.com/tandem-ci/tandem/internal/arch"
)

// validate checks j's request and fills in its size. The reason is for a
// request no fleet could ever run.
func validate(j *job) (string, bool) {
	src := j.src
	if archesOf(src.Arch) == nil {
		a := string(src.Arch)
		if len(a) > 32 {
			a = a[:32] + "..."
		}
		return "invalid request: unknown arch " + strconv.Quote(a), false
	}
	if math.IsNaN(src.VCPUs) || math.IsInf(src.VCPUs, 0) {
		return "invalid request: vCPUs must be a finite number (got " + fmtFloat(src.VCPUs) + ")", false
	}
	if src.VCPUs <= 0 {
		return "invalid request: vCPUs must be positive (got " + fmtFloat(src.VCPUs) + ")", false
	}
	if src.MemoryMiB <= 0 {
		return "invalid request: memory must be positive (got " + strconv.Itoa(src.MemoryMiB) + " MiB)", false
	}
	if src.DiskMiB < 0 {
		return "invalid request: disk must not be negative (got " + strconv.Itoa(src.DiskMiB) + " MiB)", false
	}
	j.cpu = quartersCeil(src.VCPUs)
	j.mem = int64(src.MemoryMiB)
	j.disk = int64(src.DiskMiB)
	return "", true
}

func (s *state) noHostsReason() string {
	if s.ignored > 0 {
		return "no hosts (" + plural(int64(s.ignored), "invalid host") + " ignored)"
	}
	return "no hosts"
}

// everFits reports whether any host, schedulable or not, could hold j.
func (s *state) everFits(j *job) (string, bool) {
	supported := false
	var largest *host
	for _, a := range archesOf(j.src.Arch) {
		c := &s.caps[a]
		if c.count == 0 {
			continue
		}
		supported = true
		if holds(c.all, j.size()) {
			return "", true
		}
		if l := c.largest; largest == nil || l.totalCPU > largest.totalCPU ||
			(l.totalCPU == largest.totalCPU && (l.totalMem > largest.totalMem ||
				(l.totalMem == largest.totalMem && l.ord < largest.ord))) {
			largest = l
		}
	}
	if !supported {
		if j.src.Arch == arch.Any {
			return "no host supports amd64 or arm64", false
		}
		return "no host supports " + string(j.src.Arch), false
	}
	on, kind := "", "host"
	if j.src.Arch != arch.Any {
		on, kind = " on "+string(j.src.Arch), string(j.src.Arch)+" host"
	}
	if holds(c2(s, j), size{j.cpu, j.mem, 0}) {
		return "needs " + fmtDisk(j.disk) + " of disk" + on + "; no " + kind + " has that much for its VMs", false
	}
	return "needs " + fmtSize(j.cpu, j.mem) + on + "; the largest " + kind + " has " +
		fmtSize(largest.totalCPU, largest.totalMem), false
}

// fitsSchedulable reports whether a schedulable host could hold j once it has room.
func (s *state) fitsSchedulable(j *job) (string, bool) {
	sched, unsched := 0, 0
	for _, a := range archesOf(j.src.Arch) {
		c := &s.caps[a]
		if holds(c.sched, j.size()) {
			return "", true
		}
		sched += c.count - c.unsched
		unsched += c.unsched
	}
	if sched == 0 {
		return "no schedulable " + hostKind(j.src.Arch) + " (" +
			plural(int64(unsched), "host") + " draining, cordoned or offline)", false
	}
	return "no schedulable " + hostKind(j.src.Arch) + " can hold " + j.fmt() +
		"; only draining, cordoned or offline ones can", false
}

// noRoomReason explains a job that fits some schedulable host in total but
// none now.
func (s *state) noRoomReason(j *job, arches []int) string {
	var best *host
	for _, a := range arches {
		for _, cl := range s.classes[a] {
			h := cl.roomiest()
			if h == nil {
				continue
			}
			if best == nil || h.freeCPU > best.freeCPU ||
				(h.freeCPU == best.freeCPU && (h.freeMem > best.freeMem ||
					(h.freeMem == best.freeMem && h.ord < best.ord))) {
				best = h
			}
		}
	}
	msg := "no " + hostKind(j.src.Arch) + " has " + j.fmt() + " free"
	if best == nil {
		return msg + " (all are full)"
	}
	free := fmtSize(best.freeCPU, best.freeMem)
	if j.disk > 0 && best.freeDisk < noDiskLimit {
		free += " / " + fmtDisk(best.freeDisk) + " of disk"
	}
	return msg + " (best: " + best.id + " with " + free + " free)"
}

func hostKind(a arch.Arch) string {
	if a == arch.Any {
		return "host"
	}
	return string(a) + " host"
}

func fmtSize(cpu, mem int64) string { return fmtCPU(cpu) + " / " + fmtMem(mem) }

// fmt formats what j needs: vCPUs, memory, and disk when it counts.
func (j *job) fmt() string {
	if j.disk > 0 {
		return fmtSize(j.cpu, j.mem) + " / " + fmtDisk(j.disk) + " of disk"
	}
	return fmtSize(j.cpu, j.mem)
}

func fmtDisk(mib int64) string { return fmtMem(mib) }

// c2 returns the totals of every host of j's architectures, disk left out.
func c2(s *state, j *job) []size {
	var out []size
	for _, a := range archesOf(j.src.Arch) {
		for _, z := range s.caps[a].all {
			out = append(out, size{z.cpu, z.mem, 0})
		}
	}
	return out
}

// fmtQuarters formats quarter vCPUs as a plain number: 6 -> "1.5".
func fmtQuarters(q int64) string {
	if q%quartersPerVCPU == 0 {
		return strconv.FormatInt(q/quartersPerVCPU, 10)
	}
	return strconv.FormatFloat(float64(q)/quartersPerVCPU, 'f', -1, 64)
}

func fmtCPU(q int64) string {
	if q == quartersPerVCPU {
		return "1 vCPU"
	}
	return fmtQuarters(q) + " vCPUs"
}

// fmtMem formats MiB as GiB when that is exact to two decimals.
func fmtMem(mib int64) string {
	if mib%1024 == 0 {
		return strconv.FormatInt(mib/1024, 10) + " GiB"
	}
	if g := float64(mib) / 1024; mib > 1024 && g*100 == math.Trunc(g*100) {
		return strconv.FormatFloat(g, 'f', -1, 64) + " GiB"
	}
	return strconv.FormatInt(mib, 10) + " MiB"
}

func fmtFloat(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }

func plural(n int64, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.FormatInt(n, 10) + " " + noun + "s"
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
