package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/image"
	"github.com/tandem-ci/tandem/internal/termtext"
	"github.com/tandem-ci/tandem/internal/vm"
)

func imageCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "image", Short: "Build and list VM images"}
	cmd.AddCommand(imageBuildCmd(g), imageListCmd(g), imageVerifyCmd(g), imageRemoveCmd(g))
	return cmd
}

func imageBuildCmd(g *globals) *cobra.Command {
	var kind, archFlag, guestBin, fakeRunner, kernelDeb, runnerTarball string
	var mirrors []string
	var rootfsMiB int
	cmd := &cobra.Command{
		Use:   "build --kind test|runner --arch amd64|arm64",
		Short: "Build an image: a Debian kernel, an initramfs and a root filesystem",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			a, err := arch.Parse(archFlag)
			if err != nil {
				return err
			}
			if kind != "test" && kind != "runner" {
				return fmt.Errorf("unknown image kind %q (this version builds: test, runner)", kind)
			}
			if kind != "runner" && (runnerTarball != "" || len(mirrors) > 0) {
				return fmt.Errorf("--runner-tarball and --mirror are for --kind runner")
			}
			if err := requireRoot("tandem image build"); err != nil {
				return err
			}
			if guestBin == "" {
				if guestBin, err = findBinary("tandem-guest", a); err != nil {
					return err
				}
			}
			if fakeRunner == "" {
				if fakeRunner, err = findBinary("tandem-fakerunner", a); err != nil {
					fmt.Fprintf(os.Stderr, "note: building without tandem-fakerunner (the control plane's test runner): %v\n", err)
					fakeRunner = ""
				}
			}
			st, err := image.Open(filepath.Join(g.dataDir, "images"))
			if err != nil {
				return err
			}
			im, err := st.Build(cmd.Context(), image.BuildOptions{
				Kind: kind, Arch: string(a), GuestBinary: guestBin, FakeRunnerBinary: fakeRunner, KernelDeb: kernelDeb,
				RunnerTarball: runnerTarball, Mirrors: mirrors, RootfsSizeMiB: rootfsMiB,
				CacheDir: filepath.Join(g.dataDir, "cache"), Progress: os.Stderr,
			})
			if err != nil {
				return err
			}
			fmt.Printf("%s %s-%s kernel %s\n", im.ID, kind, a, im.Manifest.Kernel.Version)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&kind, "kind", "test", "image kind: test (busybox + tandem-guest, seconds to build) or runner (Debian 12, systemd, Docker, build tools, GitHub's runner)")
	f.StringVar(&archFlag, "arch", string(arch.Host()), "amd64 or arm64")
	f.StringVar(&guestBin, "guest", "", "tandem-guest binary for the arch (default: tandem-guest-<arch> beside this binary)")
	f.StringVar(&fakeRunner, "fakerunner", "", "tandem-fakerunner binary for the arch (default: tandem-fakerunner-<arch> beside this binary, if there)")
	f.StringVar(&kernelDeb, "kernel-deb", "", "use this linux-image .deb instead of fetching Debian's cloud kernel")
	f.StringVar(&runnerTarball, "runner-tarball", "", "runner images: GitHub's runner, actions-runner-linux-<x64|arm64>-<version>.tar.gz (not downloaded by Tandem)")
	f.StringArrayVar(&mirrors, "mirror", nil, "runner images: a Debian mirror URL, sources.list line or file for mmdebstrap (repeatable; default: mmdebstrap's)")
	f.IntVar(&rootfsMiB, "rootfs-size", 0, "root filesystem size in MiB, sparse (default 256 for test, 10240 for runner)")
	return cmd
}

// findBinary looks for <prog>-<arch> (tandem-guest, tandem-fakerunner)
// where installs put it.
func findBinary(prog string, a arch.Arch) (string, error) {
	name := prog + "-" + string(a)
	var dirs []string
	if d := os.Getenv("TANDEM_GUEST_DIR"); d != "" {
		dirs = append(dirs, d)
	}
	if exe, err := os.Executable(); err == nil {
		dirs = append(dirs, filepath.Dir(exe), filepath.Join(filepath.Dir(exe), "..", "lib", "tandem"))
	}
	dirs = append(dirs, "/usr/local/lib/tandem", "/usr/lib/tandem")
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in %v: build it (scripts/build.sh) or pass its path", name, dirs)
}

func imageListCmd(g *globals) *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the images on this host",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := image.Open(filepath.Join(g.dataDir, "images"))
			if err != nil {
				return err
			}
			ims, err := st.List()
			if err != nil {
				return err
			}
			if jsonOut {
				if ims == nil {
					ims = []*image.Image{}
				}
				return printValue(os.Stdout, ims)
			}
			tb := termtext.NewTable(os.Stdout, "ID", "KIND", "ARCH", "KERNEL", "SIZE", "CREATED")
			for _, im := range ims {
				var size int64
				for _, f := range im.Manifest.Files {
					size += f.Size
				}
				tb.Row(im.ID, im.Manifest.Kind, im.Manifest.Arch, im.Manifest.Kernel.Version,
					fmt.Sprintf("%.1f MiB", float64(size)/(1<<20)), im.Manifest.Created)
			}
			return tb.Flush()
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print JSON")
	return cmd
}

// imageRefsCmd is an image subcommand that does one thing to each image
// its arguments name, in turn, and prints what it did.
func imageRefsCmd(g *globals, use, short string, do func(*image.Store, *image.Image) (string, error)) *cobra.Command {
	return &cobra.Command{
		Use:   use + " REF...",
		Short: short,
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := image.Open(filepath.Join(g.dataDir, "images"))
			if err != nil {
				return err
			}
			for _, ref := range args {
				im, err := st.Resolve(ref)
				if err != nil {
					return err
				}
				done, err := do(st, im)
				if err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), done)
			}
			return nil
		},
	}
}

func imageVerifyCmd(g *globals) *cobra.Command {
	return imageRefsCmd(g, "verify", "Re-hash every file of images against their manifests",
		func(_ *image.Store, im *image.Image) (string, error) {
			return fmt.Sprintf("%s ok (%d files)", im.ID, len(im.Manifest.Files)), im.VerifyFull()
		})
}

func imageRemoveCmd(g *globals) *cobra.Command {
	return imageRefsCmd(g, "rm", "Remove images and the refs naming them",
		func(st *image.Store, im *image.Image) (string, error) {
			return "removed " + im.ID, st.Remove(im.ID)
		})
}

func gcCmd(g *globals) *cobra.Command {
	var nf hostFlags
	var abandoned bool
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Reclaim VMs, TAP devices, disks and address leases left by dead processes",
		Long: `Reclaim what dead processes left: VMs whose owner is gone (a tandem run
killed, say), and TAP devices, disks and address leases of no live VM. The VMs
of an agent that is running, or that stopped and may come back for them
(within its --return-within), are spared; with --abandoned, those of a
stopped agent are reclaimed too: it is not coming back (the package is being
removed, the host retired).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireRoot("tandem gc"); err != nil {
				return err
			}
			nf.allowUncapped = true // gc starts no VM
			var keep func(vm.Info) bool
			if abandoned {
				nf.existing = true // a network half taken away is not set up again
				keep = agentRunning
			}
			h, closeHost, err := newHost(cmd.Context(), g, &nf)
			if err != nil {
				return err
			}
			defer closeHost()
			ids, err := h.Collect(cmd.Context(), keep)
			for _, id := range ids {
				fmt.Println("reclaimed", id)
			}
			if err == nil && len(ids) == 0 {
				fmt.Println("nothing to reclaim")
			}
			return err
		},
	}
	nf.add(cmd)
	cmd.Flags().BoolVar(&abandoned, "abandoned", false, "also reclaim the VMs of agents that stopped: none is coming back for them")
	return cmd
}

// agentRunning keeps a VM of an agent (vm.AgentOwner) only while the
// agent's process runs, whatever time its lease gave it to come back; a
// VM of any other owner is kept as Collect decides.
func agentRunning(info vm.Info) bool {
	path, ok := strings.CutPrefix(info.Spec.Owner, "agent:")
	if !ok {
		return true
	}
	r, err := vm.ReadLease(path)
	return err == nil && r.ProcessAlive()
}
