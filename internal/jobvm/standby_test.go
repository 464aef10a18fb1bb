package jobvm

import (
	"slices"
	"testing"

	"github.com/tandem-ci/tandem/internal/vm"
)

// weighed is an Instance that records the CPU weights it is given.
type weighed struct {
	vm.Instance
	set []int
}

func (w *weighed) SetCPUWeight(weight int) error {
	w.set = append(w.set, weight)
	return nil
}

// A claim raises the VM there is, once; one that comes before the VM is
// made, or between two boots, raises the VM made after it; none reaches
// a VM let go.
func TestStandbyClaim(t *testing.T) {
	normal := []int{vm.CPUWeightNormal}

	var s Standby
	a := &weighed{}
	s.attach(a)
	if len(a.set) != 0 {
		t.Errorf("an unclaimed VM was weighted: %v", a.set)
	}
	s.Claim()
	s.Claim()
	if !slices.Equal(a.set, normal) {
		t.Errorf("claimed twice: weights %v, want %v", a.set, normal)
	}

	var early Standby
	early.Claim()
	b := &weighed{}
	early.attach(b)
	if !slices.Equal(b.set, normal) {
		t.Errorf("made after its claim: weights %v, want %v", b.set, normal)
	}

	var gone Standby
	c := &weighed{}
	gone.attach(c)
	gone.attach(nil)
	gone.Claim()
	if len(c.set) != 0 {
		t.Errorf("a VM let go was weighted: %v", c.set)
	}

	var none *Standby
	if err := none.Claim(); err != nil {
		t.Errorf("a nil Standby's claim: %v", err)
	}
	none.attach(&weighed{})
}
