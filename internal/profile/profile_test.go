package profile

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)

// run makes n one-second samples of a VM whose CPU use and memory follow
// cpu(i) and mem(i).
func run(n int, cpu func(i int) float64, mem func(i int) int64) []Sample {
	var out []Sample
	total := 0.0
	for i := 0; i < n; i++ {
		if i > 0 {
			total += cpu(i)
		}
		// The guest counts what it asked for; the host gave it 90%.
		out = append(out, Sample{At: t0.Add(time.Duration(i) * time.Second), CPUSeconds: total * 0.9, GuestCPUSeconds: total,
			DiskRead: int64(i) * 1000, NetRx: int64(i) * 10, GuestOK: true, MemTotal: 1 << 30,
			MemAvailable: 1<<30 - mem(i), Procs: 10 + i%7, Load1: float64(i % 5)})
	}
	return out
}

func TestSummary(t *testing.T) {
	// 100 s: 2 vCPUs busy in seconds 41-60, 0.5 otherwise; memory 900 MiB
	// in seconds 71-80 (at or above 90% of 1000 MiB), 100 MiB otherwise.
	ss := run(101, func(i int) float64 {
		if i > 40 && i <= 60 {
			return 2
		}
		return 0.5
	}, func(i int) int64 {
		if i > 70 && i <= 80 {
			return 900 << 20
		}
		return 100 << 20
	})
	p := Build(ss, 2, 1000<<20, 0)
	s := p.Summary
	if s.Samples != 101 || s.Seconds != 100 || s.CPUPeak != 2 || s.CPUHighSeconds != 20 || s.MemHighSeconds != 10 ||
		s.MemPeak != 900<<20 || s.ReadBytes != 100000 || s.RxBytes != 1000 || s.ProcsPeak != 16 || !s.Guest {
		t.Errorf("summary %+v", s)
	}
	if want := (20*2 + 80*0.5) / 100.0; math.Abs(s.CPUAvg-want) > 1e-9 || math.Abs(s.HostCPUAvg-0.9*want) > 1e-9 {
		t.Errorf("cpu avg %v, host %v, want %v and 90%% of it", s.CPUAvg, s.HostCPUAvg, want)
	}
	if want := int64((10*900 + 90*100) << 20 / 100); s.MemAvg != want {
		t.Errorf("mem avg %d, want %d", s.MemAvg, want)
	}
	if len(p.Points) != 100 {
		t.Errorf("%d points, want one per interval", len(p.Points))
	}
}

// Downsampling keeps every peak, and the summary does not depend on it.
func TestDownsampleKeepsPeaks(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	n := 6 * 3600 // a six-hour job
	cpus := make([]float64, n)
	mems := make([]int64, n)
	for i := range cpus {
		cpus[i] = rng.Float64() * 4
		mems[i] = rng.Int64N(8 << 30)
	}
	cpus[12345], mems[20456] = 7.5, 15<<30
	ss := run(n, func(i int) float64 { return cpus[i] }, func(i int) int64 { return mems[i] })
	full := Build(ss, 8, 16<<30, n)
	small := Build(ss, 8, 16<<30, MaxPoints)
	if len(small.Points) > MaxPoints || len(small.Points) < MaxPoints-1 {
		t.Errorf("%d points, want about %d", len(small.Points), MaxPoints)
	}
	if full.Summary != small.Summary {
		t.Errorf("summary depends on the points:\n%+v\n%+v", full.Summary, small.Summary)
	}
	peakCPU, peakMem, secs, cpuTime := 0.0, int64(0), 0.0, 0.0
	for _, pt := range small.Points {
		peakCPU, peakMem = max(peakCPU, pt.CPUPeak), max(peakMem, pt.Mem)
		secs += pt.Seconds
		cpuTime += pt.CPU * pt.Seconds
	}
	if peakCPU != 7.5 || peakMem != 15<<30 {
		t.Errorf("peaks on the chart: cpu %v mem %d", peakCPU, peakMem)
	}
	if math.Abs(secs-small.Summary.Seconds) > 1e-6 || math.Abs(cpuTime-small.Summary.CPUAvg*small.Summary.Seconds) > 1e-4*cpuTime { // points are rounded
		t.Errorf("points cover %v s and %v CPU-seconds; summary %v s, %v", secs, cpuTime, small.Summary.Seconds,
			small.Summary.CPUAvg*small.Summary.Seconds)
	}
}

// A counter that goes backwards adds nothing; duplicates and disorder are
// harmless; a lone or no sample makes an empty profile.
func TestOddSamples(t *testing.T) {
	ss := []Sample{
		{At: t0.Add(2 * time.Second), CPUSeconds: 0.5, DiskWrite: 10},
		{At: t0, CPUSeconds: 10, DiskWrite: 500},
		{At: t0.Add(time.Second), CPUSeconds: 11, DiskWrite: 700},
		{At: t0.Add(time.Second), CPUSeconds: 11, DiskWrite: 700},
	}
	p := Build(ss, 1, 1<<30, 0)
	if p.Summary.Samples != 3 || p.Summary.CPUPeak != 1 || p.Summary.HostCPUAvg != 0.5 || p.Summary.WriteBytes != 200 || p.Summary.Guest {
		t.Errorf("summary %+v", p.Summary)
	}
	for _, ss := range [][]Sample{nil, {{At: t0}}} {
		if p := Build(ss, 0, -1, 0); p.Summary.Seconds != 0 || len(p.Points) != 0 || p.Points == nil {
			t.Errorf("profile of %d samples: %+v", len(ss), p)
		}
	}
}

func FuzzBuild(f *testing.F) {
	f.Add(uint64(1), uint16(10), uint16(5))
	f.Fuzz(func(t *testing.T, seed uint64, n, pts uint16) {
		rng := rand.New(rand.NewPCG(seed, seed))
		var ss []Sample
		for range int(n) {
			ss = append(ss, Sample{At: t0.Add(time.Duration(rng.Int64N(1e12) - 5e11)), CPUSeconds: rng.NormFloat64() * 100,
				RSS: rng.Int64(), DiskRead: rng.Int64() - rng.Int64(), GuestOK: rng.IntN(2) == 0,
				MemTotal: rng.Int64N(1 << 40), MemAvailable: rng.Int64N(1 << 40), Procs: rng.IntN(1000)})
		}
		p := Build(ss, rng.NormFloat64(), rng.Int64()-rng.Int64(), int(pts)-3)
		if len(p.Points) > max(int(pts)-3, 0) && len(p.Points) > MaxPoints {
			t.Fatalf("%d points", len(p.Points))
		}
		if p.Summary.ReadBytes < 0 || p.Summary.CPUHighSeconds > p.Summary.Seconds+1e-6 {
			t.Fatalf("summary %+v", p.Summary)
		}
	})
}

// A stored profile stays small, however long the job: 600 points.
func TestProfileSize(t *testing.T) {
	ss := run(6*3600, func(i int) float64 { return 1 + float64(i%7)/3 }, func(i int) int64 { return int64(i%1000) << 20 })
	for i := range ss {
		ss[i].DiskRead, ss[i].NetRx, ss[i].RSS, ss[i].DiskUsed = int64(i)*123457, int64(i)*98765, 3<<30+int64(i), 5<<30+int64(i)*4096
	}
	b, err := json.Marshal(Build(ss, 4, 8<<30, 0))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("a six-hour job's profile: %d KiB", len(b)>>10)
	if len(b) > 128<<10 {
		t.Errorf("a six-hour job's profile is %d KiB", len(b)>>10)
	}
}

// Guest rates are over the guest's own readings, which the host's ticks
// need not match; a tick that repeats the last reading falls back to the
// host's view.
func TestGuestRatesOverGuestReadings(t *testing.T) {
	ss := []Sample{
		{At: t0, GuestOK: true, GuestAt: t0.Add(-200 * time.Millisecond), GuestCPUSeconds: 10, CPUSeconds: 5},
		{At: t0.Add(time.Second), GuestOK: true, GuestAt: t0.Add(1300 * time.Millisecond), GuestCPUSeconds: 13, CPUSeconds: 6},
		{At: t0.Add(2 * time.Second), GuestOK: true, GuestAt: t0.Add(1300 * time.Millisecond), GuestCPUSeconds: 13, CPUSeconds: 6.5},
	}
	p := Build(ss, 2, 1<<30, 0)
	if len(p.Points) != 2 || p.Points[0].CPU != 2 || p.Points[1].CPU != 0.5 {
		t.Errorf("points %+v: want 2 vCPUs (3 s over 1.5 s of the guest's), then the host's 0.5", p.Points)
	}
}

// A guest that reports its CPUs' total accounted time is read as busy over
// total, whatever the heartbeats' arrival says; an older guest's rate over
// arrivals is bounded by the VM's vCPUs.
func TestGuestRatesOverGuestAccounting(t *testing.T) {
	// Arrivals 0.5 s apart, as a heartbeat held up on a busy host makes
	// them: by arrival 2 busy seconds in 0.5 s would read 4 vCPUs.
	ss := []Sample{
		{At: t0, GuestOK: true, GuestAt: t0, GuestCPUSeconds: 10, GuestCPUTotal: 100},
		{At: t0.Add(time.Second), GuestOK: true, GuestAt: t0.Add(500 * time.Millisecond), GuestCPUSeconds: 12, GuestCPUTotal: 102.5},
		{At: t0.Add(2 * time.Second), GuestOK: true, GuestAt: t0.Add(2 * time.Second), GuestCPUSeconds: 12.5, GuestCPUTotal: 104},
	}
	p := Build(ss, 2, 1<<30, 0)
	if len(p.Points) != 2 || p.Points[0].CPU != 1.6 || math.Abs(p.Points[1].CPU-0.667) > 1e-9 {
		t.Errorf("points %+v: want 1.6 vCPUs (2 busy of 2.5 s), then 0.667", p.Points)
	}
	for i := range ss {
		ss[i].GuestCPUTotal = 0
	}
	if p := Build(ss, 2, 1<<30, 0); p.Summary.CPUPeak != 2 {
		t.Errorf("an older guest's peak over arrivals: %v vCPUs, want the VM's 2", p.Summary.CPUPeak)
	}
}
