package jobvm

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/guest"
	"github.com/tandem-ci/tandem/internal/profile"
)

// The host samples on its own clock; the guest's stats go into a sample
// while they are fresh, and a guest too busy to send them is sampled all
// the same, without them.
func TestSamplerGuestStats(t *testing.T) {
	var got []profile.Sample
	s := &sampler{inst: selfUsage{}, every: time.Second, emit: func(p profile.Sample) { got = append(got, p) }}
	t0 := time.Now()
	s.take(t0) // before any heartbeat
	payload, _ := json.Marshal(guest.Stats{CPUSeconds: 12.5, Procs: 9, MemTotal: 100, MemAvailable: 40})
	s.heartbeat(t0.Add(500*time.Millisecond), payload)
	s.heartbeat(t0.Add(600*time.Millisecond), []byte("{not json")) // kept: the last good stats
	s.take(t0.Add(time.Second))
	s.take(t0.Add(5 * time.Second)) // the guest has been silent for 4.5 s
	if len(got) != 3 {
		t.Fatalf("%d samples", len(got))
	}
	if got[0].GuestOK || !got[1].GuestOK || got[1].GuestCPUSeconds != 12.5 || got[1].Procs != 9 || got[1].MemUsed() != 60 || got[2].GuestOK {
		t.Errorf("samples %+v", got)
	}
	if got[1].CPUSeconds <= 0 {
		t.Errorf("no host side: %+v", got[1])
	}
}
