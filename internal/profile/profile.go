// Package profile is a job's resource profile: what its VM used, second by
// second, as the agent samples it with no step in the workflow, and the
// summary and chart points made from those samples.
//
// A Sample carries cumulative counters (CPU time, bytes read and written,
// bytes sent and received) and instantaneous gauges (memory, disk, load,
// processes). Counters make a lost or late sample harmless: the next one
// still accounts for the time in between. Build turns the samples of one
// VM into a Profile: a Summary (peaks, averages, time spent above 90% of the
// VM's CPU or memory, OOM kills, totals) computed from every sample, and at
// most MaxPoints chart points, each covering an equal slice of the run, so
// that a six-hour job fits as well as a one-minute one.
//
// Invariants, checked by the tests:
//   - the summary does not depend on how many points the chart has;
//   - a point's peak is the largest value of its slice, so no peak is lost
//     to downsampling, and its averages weigh each interval by its length;
//   - a counter that goes backwards (a restarted hypervisor) adds nothing
//     rather than a negative amount;
//   - Build never panics, whatever the samples: unsorted, duplicated,
//     empty, or with zero or negative sizes.
package profile

import (
	"math"
	"slices"
	"time"
)

// MaxPoints bounds a profile's chart points.
const MaxPoints = 600

// Sample is one reading of a VM. Host fields come from the hypervisor's
// cgroup and process; guest fields from tandem-guest (zero when the guest
// sent none, as an older guest does: GuestOK says whether it did).
type Sample struct {
	At time.Time `json:"t"`

	// Host side. CPUSeconds, DiskRead, DiskWrite, NetRx and NetTx are
	// cumulative since the VM started.
	CPUSeconds float64 `json:"cpu_s"`
	RSS        int64   `json:"rss"`        // the hypervisor's resident memory, bytes
	DiskAlloc  int64   `json:"disk_alloc"` // bytes the VM's writable disk holds on the host
	DiskRead   int64   `json:"disk_read"`
	DiskWrite  int64   `json:"disk_write"`
	NetRx      int64   `json:"net_rx"` // bytes the guest received
	NetTx      int64   `json:"net_tx"` // bytes the guest sent

	// Guest side.
	GuestOK bool `json:"guest,omitempty"`
	// GuestCPUSeconds is cumulative busy time by the guest's accounting:
	// what the job asked of its vCPUs, even when a busy host gave it less
	// (which the host side's CPUSeconds shows).
	GuestCPUSeconds float64 `json:"guest_cpu_s,omitempty"`
	// GuestCPUTotal is all the time the guest's CPUs accounted, busy or
	// not (guest.Stats.CPUTotalSeconds); zero from an older guest.
	GuestCPUTotal float64 `json:"guest_cpu_total_s,omitempty"`
	// GuestAt is when the guest's side was read (its heartbeat's arrival),
	// which the host's clock need not match: guest rates are taken over
	// GuestAt's intervals. Zero: At.
	GuestAt      time.Time `json:"guest_t,omitzero"`
	Load1        float64   `json:"load1,omitempty"`
	MemTotal     int64     `json:"mem_total,omitempty"`
	MemAvailable int64     `json:"mem_avail,omitempty"`
	OOMKills     int64     `json:"oom_kills,omitempty"` // since the guest booted
	DiskUsed     int64     `json:"disk_used,omitempty"` // of the guest's root filesystem
	DiskTotal    int64     `json:"disk_total,omitempty"`
	Procs        int       `json:"procs,omitempty"`
}

func (s Sample) guestAt() time.Time {
	if s.GuestAt.IsZero() {
		return s.At
	}
	return s.GuestAt
}

// MemUsed is the guest's memory in use (total less available), 0 when the
// guest did not say.
func (s Sample) MemUsed() int64 {
	if !s.GuestOK || s.MemTotal <= 0 {
		return 0
	}
	return max(s.MemTotal-s.MemAvailable, 0)
}

// Point is one slice of the run on a chart: averages weighted by time,
// peaks the slice's largest value.
type Point struct {
	At      time.Time `json:"t"`
	Seconds float64   `json:"s"`        // the slice's length covered by samples
	CPU     float64   `json:"cpu"`      // vCPUs busy, on average (the guest's view, when it reports)
	CPUPeak float64   `json:"cpu_peak"` // vCPUs busy, in the busiest interval
	HostCPU float64   `json:"host_cpu"` // host CPUs the hypervisor took, on average
	Mem     int64     `json:"mem"`      // guest memory in use, peak (bytes)
	RSS     int64     `json:"rss"`      // hypervisor resident memory, peak
	Disk    int64     `json:"disk"`     // guest root filesystem in use, peak
	Alloc   int64     `json:"alloc"`    // writable disk on the host, peak
	Read    float64   `json:"read"`     // disk bytes read per second, average
	Write   float64   `json:"write"`
	Rx      float64   `json:"rx"` // network bytes received per second, average
	Tx      float64   `json:"tx"`
	Load1   float64   `json:"load1"` // peak
	Procs   int       `json:"procs"` // peak
}

// Summary is the whole run in numbers.
type Summary struct {
	Samples int     `json:"samples"`
	Seconds float64 `json:"seconds"` // covered by samples
	// VCPUs and MemoryBytes are the VM's size: what "90%" is of.
	VCPUs       float64 `json:"vcpus"`
	MemoryBytes int64   `json:"memory_bytes"`

	// CPUAvg and CPUPeak are vCPUs busy, by the guest's accounting when it
	// reports (what the job asked for), else the host's; HostCPUAvg is
	// what the hypervisor took of the host (its emulation included).
	CPUAvg     float64 `json:"cpu_avg"`
	CPUPeak    float64 `json:"cpu_peak"`
	HostCPUAvg float64 `json:"host_cpu_avg"`
	MemAvg     int64   `json:"mem_avg"`
	MemPeak    int64   `json:"mem_peak"`
	RSSPeak    int64   `json:"rss_peak"`
	// CPUHighSeconds and MemHighSeconds are the time spent at or above 90%
	// of the VM's vCPUs and memory.
	CPUHighSeconds float64 `json:"cpu_high_seconds"`
	MemHighSeconds float64 `json:"mem_high_seconds"`
	OOMKills       int64   `json:"oom_kills"`
	DiskPeak       int64   `json:"disk_peak"`
	AllocPeak      int64   `json:"alloc_peak"`
	ReadBytes      int64   `json:"read_bytes"`
	WriteBytes     int64   `json:"write_bytes"`
	RxBytes        int64   `json:"rx_bytes"`
	TxBytes        int64   `json:"tx_bytes"`
	LoadPeak       float64 `json:"load_peak"`
	ProcsPeak      int     `json:"procs_peak"`
	// Guest says whether the guest reported its side at all.
	Guest bool `json:"guest"`
}

// Profile is a VM's summary and chart.
type Profile struct {
	Summary Summary `json:"summary"`
	Points  []Point `json:"points"`
}

// High is the share of the VM's CPU or memory above which time counts as
// "high" in a summary.
const High = 0.9

// interval is one stretch between two samples, as rates and levels.
type interval struct {
	at                   time.Time
	secs                 float64
	cpu, host            float64 // vCPUs busy; host CPUs taken
	read, write, rx, tx  int64   // bytes in the interval
	mem, rss, disk, allo int64
	load                 float64
	procs                int
}

// Build makes the profile of a VM of vcpus and memBytes from its samples,
// with at most maxPoints chart points (MaxPoints when <= 0).
func Build(samples []Sample, vcpus float64, memBytes int64, maxPoints int) Profile {
	if maxPoints <= 0 {
		maxPoints = MaxPoints
	}
	ss := slices.Clone(samples)
	slices.SortStableFunc(ss, func(a, b Sample) int { return a.At.Compare(b.At) })
	ss = slices.CompactFunc(ss, func(a, b Sample) bool { return a.At.Equal(b.At) })
	p := Profile{Summary: Summary{Samples: len(ss), VCPUs: max(vcpus, 0), MemoryBytes: max(memBytes, 0)}, Points: []Point{}}
	var ivs []interval
	for i := 1; i < len(ss); i++ {
		a, b := ss[i-1], ss[i]
		secs := b.At.Sub(a.At).Seconds()
		iv := interval{at: a.At, secs: secs,
			host:  max(b.CPUSeconds-a.CPUSeconds, 0) / secs,
			read:  growth(a.DiskRead, b.DiskRead),
			write: growth(a.DiskWrite, b.DiskWrite),
			rx:    growth(a.NetRx, b.NetRx), tx: growth(a.NetTx, b.NetTx),
			mem: b.MemUsed(), rss: b.RSS, disk: b.DiskUsed, allo: b.DiskAlloc, load: b.Load1, procs: b.Procs}
		iv.cpu = iv.host
		if a.GuestOK && b.GuestOK {
			busy := max(b.GuestCPUSeconds-a.GuestCPUSeconds, 0)
			if total := b.GuestCPUTotal - a.GuestCPUTotal; total > 0 && p.Summary.VCPUs > 0 {
				// The share of the guest's accounted time that was busy:
				// no clock in it, so a late heartbeat cannot skew it.
				iv.cpu = p.Summary.VCPUs * min(busy/total, 1)
			} else if gs := b.guestAt().Sub(a.guestAt()).Seconds(); gs > 0 {
				// An older guest: over the interval between the two
				// readings' arrivals, which a late one stretches or
				// squeezes; never more than the VM's vCPUs. A sample that
				// repeats the last reading says nothing new.
				iv.cpu = busy / gs
				if p.Summary.VCPUs > 0 {
					iv.cpu = min(iv.cpu, p.Summary.VCPUs)
				}
			}
		}
		iv.cpu, iv.host = finite(iv.cpu), finite(iv.host)
		ivs = append(ivs, iv)
	}
	p.Summary.add(ss, ivs)
	p.Points = points(ivs, maxPoints)
	return p
}

// round rounds f to 1/per.
func round(f, per float64) float64 { return math.Round(f*per) / per }

func finite(f float64) float64 {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return 0
	}
	return f
}

// growth is what a cumulative counter added from a to b; 0 when it went
// backwards (the counter started again).
func growth(a, b int64) int64 { return max(b-a, 0) }

// addSat adds two amounts that are not negative, stopping at the largest
// int64 rather than wrapping (counters from a confused host).
func addSat(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

func (s *Summary) add(ss []Sample, ivs []interval) {
	memSum := 0.0
	for _, x := range ss {
		s.Guest = s.Guest || x.GuestOK
		s.OOMKills = max(s.OOMKills, x.OOMKills)
	}
	for _, iv := range ivs {
		s.Seconds += iv.secs
		s.CPUAvg += iv.cpu * iv.secs
		s.HostCPUAvg += iv.host * iv.secs
		s.CPUPeak = max(s.CPUPeak, iv.cpu)
		memSum += float64(iv.mem) * iv.secs
		s.MemPeak = max(s.MemPeak, iv.mem)
		s.RSSPeak = max(s.RSSPeak, iv.rss)
		s.DiskPeak = max(s.DiskPeak, iv.disk)
		s.AllocPeak = max(s.AllocPeak, iv.allo)
		s.LoadPeak = max(s.LoadPeak, iv.load)
		s.ProcsPeak = max(s.ProcsPeak, iv.procs)
		s.ReadBytes = addSat(s.ReadBytes, iv.read)
		s.WriteBytes = addSat(s.WriteBytes, iv.write)
		s.RxBytes = addSat(s.RxBytes, iv.rx)
		s.TxBytes = addSat(s.TxBytes, iv.tx)
		if s.VCPUs > 0 && iv.cpu >= High*s.VCPUs {
			s.CPUHighSeconds += iv.secs
		}
		if s.MemoryBytes > 0 && float64(iv.mem) >= High*float64(s.MemoryBytes) {
			s.MemHighSeconds += iv.secs
		}
	}
	if s.Seconds > 0 {
		s.CPUAvg /= s.Seconds
		s.HostCPUAvg /= s.Seconds
		s.MemAvg = int64(memSum / s.Seconds)
	}
}

// points cuts the run into at most n slices of equal length and makes a
// point of each slice that holds an interval.
func points(ivs []interval, n int) []Point {
	out := []Point{}
	if len(ivs) == 0 {
		return out
	}
	start := ivs[0].at
	end := ivs[len(ivs)-1].at
	width := end.Sub(start) / time.Duration(n)
	if width <= 0 {
		width = time.Nanosecond
	}
	var cur *Point
	curSlot := -1
	flush := func() {
		if cur != nil && cur.Seconds > 0 {
			cur.CPU /= cur.Seconds
			cur.HostCPU /= cur.Seconds
			cur.Read /= cur.Seconds
			cur.Write /= cur.Seconds
			cur.Rx /= cur.Seconds
			cur.Tx /= cur.Seconds
			// A chart needs no more: rounding keeps a stored profile small.
			cur.Seconds, cur.CPU, cur.CPUPeak, cur.HostCPU = round(cur.Seconds, 1e3), round(cur.CPU, 1e3), round(cur.CPUPeak, 1e3), round(cur.HostCPU, 1e3)
			cur.Read, cur.Write, cur.Rx, cur.Tx = math.Round(cur.Read), math.Round(cur.Write), math.Round(cur.Rx), math.Round(cur.Tx)
			cur.Load1 = round(cur.Load1, 1e2)
			out = append(out, *cur)
		}
		cur = nil
	}
	for _, iv := range ivs {
		slot := min(int(iv.at.Sub(start)/width), n-1)
		if slot != curSlot {
			flush()
			curSlot = slot
			cur = &Point{At: start.Add(time.Duration(slot) * width)}
		}
		cur.Seconds += iv.secs
		cur.CPU += iv.cpu * iv.secs
		cur.HostCPU += iv.host * iv.secs
		cur.CPUPeak = max(cur.CPUPeak, iv.cpu)
		cur.Read += float64(iv.read)
		cur.Write += float64(iv.write)
		cur.Rx += float64(iv.rx)
		cur.Tx += float64(iv.tx)
		cur.Mem = max(cur.Mem, iv.mem)
		cur.RSS = max(cur.RSS, iv.rss)
		cur.Disk = max(cur.Disk, iv.disk)
		cur.Alloc = max(cur.Alloc, iv.allo)
		cur.Load1 = max(cur.Load1, iv.load)
		cur.Procs = max(cur.Procs, iv.procs)
	}
	flush()
	return out
}
