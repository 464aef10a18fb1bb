package agentapi

import (
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/profile"
)

// Samples wait for the next heartbeat, at most maxPendingSamples per
// runner (the newest); a failed report puts its samples back before newer
// ones.
func TestDaemonSamples(t *testing.T) {
	d := &Daemon{}
	d.Bind(nil)
	t0 := time.Now()
	for i := range maxPendingSamples + 5 {
		d.Sample("r1", profile.Sample{At: t0.Add(time.Duration(i) * time.Second)})
	}
	d.Sample("r0", profile.Sample{At: t0})
	got := d.takeSamples()
	if len(got) != 2 || got[0].Runner != "r0" || got[1].Runner != "r1" || len(got[1].Samples) != maxPendingSamples ||
		!got[1].Samples[0].At.Equal(t0.Add(5*time.Second)) {
		t.Fatalf("taken: %d runners, %+v", len(got), got[0])
	}
	if again := d.takeSamples(); len(again) != 0 {
		t.Fatalf("taken twice: %+v", again)
	}
	d.Sample("r1", profile.Sample{At: t0.Add(time.Hour)})
	d.putBackSamples(got)
	back := d.takeSamples()
	r1 := back[1].Samples
	if len(r1) != maxPendingSamples || !r1[len(r1)-1].At.Equal(t0.Add(time.Hour)) || !r1[0].At.Equal(t0.Add(6*time.Second)) {
		t.Errorf("after a failed report: %d samples, first %v, last %v", len(r1), r1[0].At.Sub(t0), r1[len(r1)-1].At.Sub(t0))
	}
}
