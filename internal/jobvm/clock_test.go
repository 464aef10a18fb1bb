package jobvm

import "testing"

// A kernel that failed to calibrate its TSC against the PIT is taken for
// stuck only while that is the console's last line.
func TestClockStuck(t *testing.T) {
	const pit = "[    0.000000] tsc: Unable to calibrate against PIT"
	for console, want := range map[string]bool{
		"[    0.000000] Linux version 6.1.0\n" + pit + "\n": true,
		pit + "\r\n": true,
		pit:          true,
		pit + "\n[    0.000000] tsc: using HPET reference calibration\n":                 false,
		"[    0.000000] Linux version 6.1.0\n[    0.350000] Run /init as init process\n": false,
		"": false,
	} {
		if got := clockStuck(console) != ""; got != want {
			t.Errorf("clockStuck(%q) = %v, want %v", console, got, want)
		}
	}
}
