package controlplane_test

import (
	"encoding/json"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/controlplane/cptest"
	"github.com/tandem-ci/tandem/internal/profile"
	"github.com/tandem-ci/tandem/internal/store"
)

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkProfileIngest measures what profiles cost the control plane for
// a fleet of 500 VMs sampled at 1 Hz (10 hosts of 50 VMs): every 5 s each
// host's report carries 250 samples (decoded from JSON, as the report
// endpoint does), and every 2 s the buffer is written to SQLite. One
// iteration is one simulated minute; it reports the process's CPU time
// as a share of one core over that minute, and the storage of one VM-hour
// as samples and as its profile.
//
//	go test -run '^$' -bench ProfileIngest -benchtime 3x ./internal/controlplane
func BenchmarkProfileIngest(b *testing.B) {
	const hosts, perHost = 10, 50
	sys := cptest.Start(b, 1, func(*controlplane.Config) {})
	now := time.Now()
	err := sys.Store.Update(b.Context(), func(tx store.Tx) error {
		for h := range hosts {
			for v := range perHost {
				r := store.Runner{Name: fmt.Sprintf("tandem-%02d-%02d", h, v), HostID: fmt.Sprintf("h%d", h),
					State: store.RunnerBusy, VCPUs: 4, MemoryMiB: 8192, CreatedAt: now, UpdatedAt: now}
				if err := tx.PutRunner(r); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	sample := func(t time.Time, i int) profile.Sample {
		return profile.Sample{At: t, CPUSeconds: float64(i) * 1.3, RSS: 3 << 30, DiskAlloc: 2 << 30, DiskRead: int64(i) << 20,
			DiskWrite: int64(i) << 19, NetRx: int64(i) << 16, NetTx: int64(i) << 12, GuestOK: true, GuestCPUSeconds: float64(i) * 1.4,
			Load1: 2.5, MemTotal: 8 << 30, MemAvailable: 5 << 30, DiskUsed: 6 << 30, DiskTotal: 20 << 30, Procs: 180}
	}
	var cpu time.Duration
	sec := 0
	b.ResetTimer()
	for range b.N {
		// The agents' side, encoded before the clock starts: 12 reports
		// per host in a minute.
		var bodies [12][hosts][]byte
		for beat := range 12 {
			for h := range hosts {
				rep := agentapi.Report{}
				for v := range perHost {
					rs := agentapi.RunnerSamples{Runner: fmt.Sprintf("tandem-%02d-%02d", h, v)}
					for k := range 5 {
						at := sec + beat*5 + k
						rs.Samples = append(rs.Samples, sample(now.Add(time.Duration(at)*time.Second), at))
					}
					rep.Samples = append(rep.Samples, rs)
				}
				body, err := json.Marshal(rep)
				if err != nil {
					b.Fatal(err)
				}
				bodies[beat][h] = body
			}
		}
		c0 := cpuTime()
		for step := range 60 { // a simulated second each
			if step%5 == 4 {
				for h := range hosts {
					var got agentapi.Report
					if err := json.Unmarshal(bodies[step/5][h], &got); err != nil {
						b.Fatal(err)
					}
					sys.CP.HostSamples(fmt.Sprintf("h%d", h), got.Samples)
				}
			}
			if step%2 == 1 {
				if err := sys.CP.FlushProfiles(b.Context()); err != nil {
					b.Fatal(err)
				}
			}
		}
		cpu += cpuTime() - c0
		sec += 60
	}
	b.StopTimer()
	b.ReportMetric(100*cpu.Seconds()/(60*float64(b.N)), "%core")
	// Storage of one VM-hour: as samples, and as the profile made of them.
	var hour []profile.Sample
	for i := range 3600 {
		hour = append(hour, sample(now.Add(time.Duration(i)*time.Second), i))
	}
	raw, _ := json.Marshal(hour)
	p := profile.Build(hour, 4, 8<<30, 0)
	summary, _ := json.Marshal(p.Summary)
	points, _ := json.Marshal(p.Points)
	b.ReportMetric(float64(len(raw))/1024, "KiB-samples/VM-hour")
	b.ReportMetric(float64(len(summary)+len(points))/1024, "KiB-profile/VM-hour")
}
