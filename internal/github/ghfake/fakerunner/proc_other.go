//go:build !unix

package fakerunner

import (
	"os"
	"os/exec"
)

func setProcessGroup(*exec.Cmd) {}

func killGroup(p *os.Process) { _ = p.Kill() }

func exitCode(ps *os.ProcessState) int { return ps.ExitCode() }
