package procs

import (
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"
)

// TestSleeper is the child TestMatching starts: it sleeps.
func TestSleeper(t *testing.T) {
	if os.Getenv("TANDEM_PROCS_SLEEPER") == "1" {
		time.Sleep(30 * time.Second)
	}
}

// A child started with known arguments is found by them, with its pid;
// this process is found among all of them.
func TestMatching(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestSleeper$", "tandem-procs-test-marker")
	cmd.Env = append(os.Environ(), "TANDEM_PROCS_SLEEPER=1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	got := Matching(func(args []string) bool { return slices.Contains(args, "tandem-procs-test-marker") })
	if !slices.Equal(got, []int{cmd.Process.Pid}) {
		t.Errorf("Matching the marker: %v, want [%d]", got, cmd.Process.Pid)
	}
	var self []string
	Each(func(pid int, args []string) {
		if pid == os.Getpid() {
			self = args
		}
	})
	if len(self) == 0 || self[0] != os.Args[0] {
		t.Errorf("Each gave this process the arguments %q, want %q first", self, os.Args[0])
	}
}
