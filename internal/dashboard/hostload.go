package dashboard

import (
	"math"
	"strconv"
	"time"

	"github.com/tandem-ci/tandem/internal/store"
)

// A host's load over the last day, charted on its page from the records
// the control plane keeps once a minute (store.HostLoad): what is
// allocated against what the host offers (vCPU, memory, disk when it is
// counted), its VMs, its load average, the memory its agent says is
// available. A day is 1,440 records; the charts show hostLoadSlots points,
// each the largest value of its records (the smallest, for memory
// available), so that a short peak is not lost between two points.

const (
	hostLoadWindow = 24 * time.Hour
	hostLoadSlots  = 288 // five minutes each
)

// hostLoadView is what the host page shows of its load history.
type hostLoadView struct {
	Charts  []chart
	Records int
	MaxBeat string // the oldest the agent's heartbeat was at a record, "" if never late
}

// loadPoint is a slot of the history, in the charts' units.
type loadPoint struct {
	at                              time.Time
	cpu, cpuCap, mem, memCap, avail float64
	disk, diskCap, vms, load        float64
	hasAvail                        bool
}

// makeHostLoadView charts loads (oldest first) over the window ending at
// end.
func makeHostLoadView(loads []store.HostLoad, end time.Time) hostLoadView {
	start := end.Add(-hostLoadWindow)
	v := hostLoadView{Records: len(loads)}
	pts := downsampleLoad(loads, start, hostLoadWindow, hostLoadSlots)
	beat, anyAvail, anyDisk := 0.0, false, false
	for _, l := range loads {
		beat = max(beat, clean(l.HeartbeatAge))
		anyDisk = anyDisk || l.DiskMiB > 0
	}
	for _, p := range pts {
		anyAvail = anyAvail || p.hasAvail
	}
	if beat >= 1 {
		v.MaxBeat = fmtSeconds(beat)
	}
	ts := make([]time.Time, len(pts))
	for i, p := range pts {
		ts[i] = p.at
	}
	col := func(f func(loadPoint) float64) []float64 {
		out := make([]float64, len(pts))
		for i, p := range pts {
			out[i] = f(p)
		}
		return out
	}
	const mib = 1 << 20
	chartOf := func(id, title string, top float64, yfmt func(float64) string, in ...seriesIn) chart {
		c := timeChart(id, title, start, hostLoadWindow, ts, top, yfmt, in...)
		c.EmptyText = "nothing recorded yet: the control plane records each host's load once a minute"
		return c
	}
	capacity := func(f func(loadPoint) float64) seriesIn {
		return seriesIn{name: "capacity", class: "s-cap", values: col(f)}
	}
	v.Charts = []chart{
		chartOf("chart-host-cpu", "vCPU allocated", 0, fmtCPU,
			seriesIn{name: "allocated", class: "s-cpu", values: col(func(p loadPoint) float64 { return p.cpu }), area: true},
			capacity(func(p loadPoint) float64 { return p.cpuCap })),
	}
	memSeries := []seriesIn{
		{name: "allocated", class: "s-mem", values: col(func(p loadPoint) float64 { return p.mem * mib }), area: true},
		capacity(func(p loadPoint) float64 { return p.memCap * mib }),
	}
	if anyAvail {
		memSeries = append(memSeries, seriesIn{name: "available on the machine (lowest)", class: "s-avail",
			values: col(func(p loadPoint) float64 { return p.avail * mib })})
	}
	memTop := 0.0
	for _, s := range memSeries {
		for _, x := range s.values {
			memTop = max(memTop, clean(x))
		}
	}
	v.Charts = append(v.Charts, chartOf("chart-host-mem", "Memory", niceBytes(memTop), fmtBytes, memSeries...))
	if anyDisk {
		diskTop := 0.0
		for _, p := range pts {
			diskTop = max(diskTop, clean(p.disk), clean(p.diskCap))
		}
		v.Charts = append(v.Charts, chartOf("chart-host-disk", "Disk allocated", niceBytes(diskTop*mib), fmtBytes,
			seriesIn{name: "allocated", class: "s-read", values: col(func(p loadPoint) float64 { return p.disk * mib }), area: true},
			capacity(func(p loadPoint) float64 { return p.diskCap * mib })))
	}
	v.Charts = append(v.Charts,
		chartOf("chart-host-vms", "VMs", 0, fmtCount,
			seriesIn{name: "VMs", class: "s-vms", values: col(func(p loadPoint) float64 { return p.vms }), area: true}),
		chartOf("chart-host-load", "Load average (1 min)", 0, fmtLoad,
			seriesIn{name: "load", class: "s-load", values: col(func(p loadPoint) float64 { return p.load }), area: true},
			seriesIn{name: "vCPUs offered", class: "s-cap", values: col(func(p loadPoint) float64 { return p.cpuCap })}))
	return v
}

// downsampleLoad puts loads into n slots of span from start (records
// outside it are left out) and returns the slots that have any, in
// order: each at its first record's time, with the largest of its
// records' values, and the smallest memory available that was known.
func downsampleLoad(loads []store.HostLoad, start time.Time, span time.Duration, n int) []loadPoint {
	var out []loadPoint
	slot := -1
	for _, l := range loads {
		off := l.At.Sub(start)
		if off < 0 || off > span {
			continue
		}
		s := min(int(float64(off)/float64(span)*float64(n)), n-1)
		if s != slot || len(out) == 0 {
			out = append(out, loadPoint{at: l.At})
			slot = s
		}
		p := &out[len(out)-1]
		p.cpu, p.cpuCap = max(p.cpu, l.AllocVCPUs), max(p.cpuCap, l.VCPUs)
		p.mem, p.memCap = max(p.mem, float64(l.AllocMemoryMiB)), max(p.memCap, float64(l.MemoryMiB))
		p.disk, p.diskCap = max(p.disk, float64(l.AllocDiskMiB)), max(p.diskCap, float64(l.DiskMiB))
		p.vms, p.load = max(p.vms, float64(l.VMs)), max(p.load, l.Load1)
		if l.MemAvailableMiB > 0 {
			if !p.hasAvail || float64(l.MemAvailableMiB) < p.avail {
				p.avail = float64(l.MemAvailableMiB)
			}
			p.hasAvail = true
		}
	}
	return out
}

func fmtCount(v float64) string { return strconv.FormatFloat(math.Round(clean(v)*10)/10, 'f', -1, 64) }

func fmtLoad(v float64) string { return strconv.FormatFloat(clean(v), 'f', 2, 64) }
