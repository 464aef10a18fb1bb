package controlplane_test

import (
	"testing"

	"github.com/tandem-ci/tandem/internal/deptest"
)

// Dependencies point one way. The control plane runs no VM: it must not
// link the VM runtime, so that a `tandem server` machine needs none of it
// and the lifecycle cannot reach past the agent protocol. (The checks of
// other packages live here too: one place lists the rules.)
func TestDeps(t *testing.T) {
	const m = "github.com/tandem-ci/tandem/internal/"
	runtime := "the control plane talks to hosts through agentapi only"
	for _, pkg := range []string{m + "controlplane", m + "agentapi"} {
		deptest.Check(t, pkg, map[string]string{
			m + "agent":   runtime,
			m + "jobvm":   runtime,
			m + "vm/qemu": runtime,
			m + "hostnet": runtime,
			m + "vmdns":   runtime,
			m + "mirror":  runtime,
			m + "guest":   runtime,
		})
	}
	deptest.Check(t, m+"jobvm", map[string]string{
		m + "vm/qemu": "jobvm drives VMs through vm.Driver only; the hypervisor is chosen by its caller",
	})
	pure := "a pure core: no store, no network, no VM"
	for _, pkg := range []string{m + "lifecycle", m + "scheduler"} {
		deptest.Check(t, pkg, map[string]string{
			m + "store/...": pure, m + "controlplane/...": pure, m + "agentapi": pure,
			m + "vm/...": pure, m + "github/...": pure, "net/http": pure, "database/sql": pure,
		})
	}
}
