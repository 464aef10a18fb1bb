package failure

import "testing"

// TestInfrastructure: every kind is classed, and only the losses that are
// Tandem's or its host's count as infrastructure.
func TestInfrastructure(t *testing.T) {
	job := map[Kind]bool{Timeout: true, Cancelled: true, ConsoleLimit: true, DiskFull: true}
	for _, k := range Kinds {
		if got := k.Infrastructure(); got == job[k] {
			t.Errorf("%s.Infrastructure() = %v", k, got)
		}
	}
	if None.Infrastructure() {
		t.Error("no failure counts as an infrastructure loss")
	}
}
