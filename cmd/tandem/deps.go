package main

import (
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/tandem-ci/tandem/internal/hostdeps"
	"github.com/tandem-ci/tandem/internal/termtext"
)

// depsTasks maps each task `tandem deps --for` knows to what it needs.
var depsTasks = map[string]func(arch string) []hostdeps.Requirement{
	"vm":           func(a string) []hostdeps.Requirement { return append(hostdeps.QEMU(a), hostdeps.Network()...) },
	"image":        hostdeps.TestImage,
	"runner-image": hostdeps.RunnerImage,
	"mirror":       func(string) []hostdeps.Requirement { return hostdeps.Mirror() },
	"test":         func(string) []hostdeps.Requirement { return hostdeps.Tests() },
}

func depsCmd() *cobra.Command {
	var tasks, arches []string
	cmd := &cobra.Command{
		Use:   "deps",
		Short: "Check that this host has every program Tandem runs, and say which Debian package has a missing one",
		Long: `Check that this host has the programs Tandem runs for the given tasks, and
the binfmt_misc registrations that let it build images of another
architecture. Each missing one is named with the Debian package that
installs it; the exit status is 1 if anything is missing.

Tasks: vm (boot VMs: QEMU, nftables), image (build test images),
runner-image (build runner images), mirror (a host's registry mirror),
test (everything the test suite runs). The default is every task but test.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var reqs [][]hostdeps.Requirement
			for _, t := range tasks {
				f, ok := depsTasks[t]
				if !ok {
					known := slices.Sorted(maps.Keys(depsTasks))
					return fmt.Errorf("--for: unknown task %q (want %s)", t, strings.Join(known, ", "))
				}
				for _, a := range arches {
					if a != "amd64" && a != "arm64" {
						return fmt.Errorf("--arch: %q is not amd64 or arm64", a)
					}
					reqs = append(reqs, f(a))
				}
			}
			st := hostdeps.Probe(reqs...)
			tb := termtext.NewTable(os.Stdout, "NEEDS", "PACKAGE", "FOUND", "FOR")
			var missing []hostdeps.Status
			for _, s := range st {
				found := s.Path
				if s.Err != nil {
					found = "MISSING: " + s.Err.Error()
					missing = append(missing, s)
				}
				tb.Row(s.Name, s.Package, found, s.Why)
			}
			tb.Flush()
			if len(missing) > 0 {
				return &exitError{code: 1, err: &hostdeps.MissingError{Missing: missing}}
			}
			return nil
		},
	}
	cmd.Flags().StringSliceVar(&tasks, "for", []string{"vm", "image", "runner-image", "mirror"}, "tasks to check: vm, image, runner-image, mirror, test")
	cmd.Flags().StringSliceVar(&arches, "arch", []string{"amd64", "arm64"}, "guest architectures to check for")
	return cmd
}
