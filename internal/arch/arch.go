// Package arch names CPU architectures, once for all of Tandem: what a job
// asks for, what a host runs natively or emulated, what a VM boots, what an
// image is built for. It has no dependencies, so that every layer can share
// it.
package arch

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
)

// Arch is a CPU architecture, named as Go names it. Any is the one value
// that is not a machine: a job that will take either architecture.
type Arch string

const (
	AMD64 Arch = "amd64"
	ARM64 Arch = "arm64"
	Any   Arch = "any" // a request for either; never a machine's
)

// Machines are the architectures Tandem runs, in a stable order.
var Machines = []Arch{AMD64, ARM64}

// ErrUnknown is returned for an architecture Tandem cannot run.
var ErrUnknown = errors.New("unknown architecture")

// Parse accepts Go's, the kernel's and GitHub's names of a machine
// architecture, in any case: amd64, x86_64, x64, arm64, aarch64.
func Parse(s string) (Arch, error) {
	switch strings.ToLower(s) {
	case "amd64", "x86_64", "x64":
		return AMD64, nil
	case "arm64", "aarch64":
		return ARM64, nil
	}
	return "", fmt.Errorf("%w %q (want amd64 or arm64)", ErrUnknown, s)
}

// ParseRequest is Parse, and also accepts "any".
func ParseRequest(s string) (Arch, error) {
	if strings.EqualFold(s, string(Any)) {
		return Any, nil
	}
	a, err := Parse(s)
	if err != nil {
		return "", fmt.Errorf("%w %q (want amd64, arm64 or any)", ErrUnknown, s)
	}
	return a, nil
}

// Host is the architecture of this machine.
func Host() Arch { return Arch(runtime.GOARCH) }

// IsMachine reports whether a is an architecture a machine can have.
func (a Arch) IsMachine() bool { return a == AMD64 || a == ARM64 }

// Matches reports whether a machine of architecture host satisfies a
// request for a.
func (a Arch) Matches(host Arch) bool {
	return host.IsMachine() && (a == Any || a == host)
}

// UnameMachine is the name `uname -m` prints on a machine of this arch.
func (a Arch) UnameMachine() string {
	switch a {
	case AMD64:
		return "x86_64"
	case ARM64:
		return "aarch64"
	}
	return string(a)
}
