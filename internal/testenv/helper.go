package testenv

import (
	"bufio"
	"os"
	"os/exec"
	"testing"
)

// StartHelper runs this test binary again as a helper process: only the
// test named name runs, with env added to the environment. It returns the
// started process, whose stderr is this one's, and a scanner over its
// stdout (verbose test output: the helper's own lines among the
// framework's). The caller kills or waits for it.
func StartHelper(t testing.TB, name string, env ...string) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+name+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, bufio.NewScanner(stdout)
}
