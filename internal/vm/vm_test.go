package vm

import (
	"strings"
	"testing"

	"github.com/tandem-ci/tandem/internal/arch"
)

func TestNewIDIsValidAndUnique(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		id := NewID()
		if !ValidID(id) || seen[id] {
			t.Fatalf("bad or repeated id %q", id)
		}
		seen[id] = true
	}
	for _, bad := range []string{"", "vm-", "vm-0123456789a", "vm-ABCDEF0123", "../vm-0123456789", "vm-01234/6789"} {
		if ValidID(bad) {
			t.Errorf("ValidID(%q) = true", bad)
		}
	}
}

func TestSpecValidate(t *testing.T) {
	ok := Spec{ID: NewID(), Arch: arch.Host(), VCPUs: 0.5, MemoryMiB: 256, Kernel: "k", Initrd: "i", Accel: AccelTCG}
	lim := Limits{VCPUs: 2, MemoryMiB: 1024}
	if err := ok.Validate(lim); err != nil {
		t.Fatalf("valid spec refused: %v", err)
	}
	cases := map[string]func(*Spec){
		"vcpus must be more than 0":          func(s *Spec) { s.VCPUs = 0 },
		"more than this host has (2)":        func(s *Spec) { s.VCPUs = 3 },
		"at least 64 MiB":                    func(s *Spec) { s.MemoryMiB = 10 },
		"more than this host has (1024 MiB)": func(s *Spec) { s.MemoryMiB = 2048 },
		"unknown architecture":               func(s *Spec) { s.Arch = "mips" },
		"must be resolved":                   func(s *Spec) { s.Accel = AccelAuto },
		"invalid vm id":                      func(s *Spec) { s.ID = "x" },
		"cpu weight must be from 1 to 10000": func(s *Spec) { s.CPUWeight = 10001 },
	}
	for want, mut := range cases {
		s := ok
		mut(&s)
		err := s.Validate(lim)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want error containing %q, got %v", want, err)
		}
	}
	for _, w := range []int{CPUWeightMin, CPUWeightIdle, CPUWeightNormal, CPUWeightMax} {
		s := ok
		s.CPUWeight = w
		if err := s.Validate(lim); err != nil {
			t.Errorf("cpu weight %d refused: %v", w, err)
		}
	}
	if err := CheckCPUWeight(0); err == nil {
		t.Error("cpu weight 0 accepted (only a Spec may leave it unset)")
	}
	if ok.GuestCPUs() != 1 {
		t.Errorf("0.5 vCPU should round up to 1 guest CPU, got %d", ok.GuestCPUs())
	}
}

func TestOwnerAlive(t *testing.T) {
	if !OwnerAlive(ProcessOwner()) {
		t.Error("this process is not alive as an owner")
	}
	if !OwnerAlive("agent") {
		t.Error("agent owners are kept")
	}
	for _, dead := range []string{"", "run:1:999999999999", "run:x:y", "run:999999999:1", "garbage"} {
		if OwnerAlive(dead) {
			t.Errorf("OwnerAlive(%q) = true", dead)
		}
	}
}
