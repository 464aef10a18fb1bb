// Package testhost gives tests a real VM host: QEMU, the shared test images
// and a bridge network in the test's network namespace, checked on cleanup
// for anything a test left behind.
package testhost

import (
	"context"
	"log/slog"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/tandem-ci/tandem/internal/hostnet"
	"github.com/tandem-ci/tandem/internal/image"
	"github.com/tandem-ci/tandem/internal/jobvm"
	"github.com/tandem-ci/tandem/internal/testenv"
	"github.com/tandem-ci/tandem/internal/testenv/testimages"
	"github.com/tandem-ci/tandem/internal/vm"
	"github.com/tandem-ci/tandem/internal/vm/qemu"
)

// New returns a host whose VMs get 2 vCPUs and 4 GiB at most, on bridge
// tandem0 (172.30.0.0/24); mods, if any, change its driver's config. The
// test must run in a private network namespace (testenv.RunInNetns). On
// cleanup it fails the test if any VM or address lease remains.
func New(t testing.TB, mods ...func(*qemu.Config)) *jobvm.Host {
	t.Helper()
	testenv.RequireVM(t)
	images := testimages.Store(t)
	h := open(t, images, testenv.ShortTempDir(t), mods)
	t.Cleanup(func() { AssertEmpty(t, h) })
	return h
}

// Restart plays h's process exiting and a new one starting on the same
// host: h's driver lets go of its VMs, which run on, and the host
// returned, with a driver and network of its own over h's state (its
// driver config changed by mods, as New's), can recover them. New's
// cleanup checks what remains.
func Restart(t testing.TB, h *jobvm.Host, mods ...func(*qemu.Config)) *jobvm.Host {
	t.Helper()
	if err := h.Driver.Close(); err != nil {
		t.Fatal(err)
	}
	return open(t, h.Images, h.StateDir, mods)
}

// open makes a host over the state in dir.
func open(t testing.TB, images *image.Store, state string, mods []func(*qemu.Config)) *jobvm.Host {
	t.Helper()
	cfg := qemu.Config{StateDir: state, Limits: vm.Limits{VCPUs: 2, MemoryMiB: 4096}}
	for _, m := range mods {
		m(&cfg)
	}
	drv, err := qemu.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	n, err := hostnet.New(hostnet.Config{Bridge: "tandem0", Subnet: netip.MustParsePrefix("172.30.0.0/24"),
		StateDir: filepath.Join(state, "net"), NAT: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Ensure(context.Background()); err != nil {
		t.Fatal(err)
	}
	return &jobvm.Host{Driver: drv, Images: images, Net: n, Log: slog.Default(), StateDir: state}
}

// AssertEmpty fails t for every VM or address lease h still holds.
func AssertEmpty(t testing.TB, h *jobvm.Host) {
	t.Helper()
	infos, err := h.Driver.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range infos {
		t.Errorf("vm left behind: %s (%s)", i.ID, i.State)
	}
	leases, err := h.Net.Leases()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range leases {
		t.Errorf("lease left behind: %s %s", l.VMID, l.Addr)
	}
}
