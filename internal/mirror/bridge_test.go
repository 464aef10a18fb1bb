package mirror

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"testing"

	"github.com/tandem-ci/tandem/internal/hostnet"
	"github.com/tandem-ci/tandem/internal/testenv"
)

// TestReachableFromVMBridge runs the mirror as the agent does — on the
// gateway address of a host network that hostnet set up, its nftables
// table included — and pulls through it from a stand-in VM: a network
// namespace on the bridge, as a VM's TAP device would be.
func TestReachableFromVMBridge(t *testing.T) {
	testenv.RequireRoot(t)
	if testenv.NetnsName() == "" {
		t.Skip("changes the network: needs the private namespace the tests make without -short")
	}
	up := startUpstream(t)
	im := busybox(t, 0)
	if err := im.Push(context.Background(), nil, up.url, "library/bb", "1"); err != nil {
		t.Fatal(err)
	}
	const bridge = "tdmmirbr0"
	n, err := hostnet.New(hostnet.Config{Bridge: bridge, Subnet: netip.MustParsePrefix("10.231.200.0/24"),
		StateDir: t.TempDir(), NAT: true, HostPorts: []hostnet.HostPort{{Proto: "tcp", Port: 5000}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.RemoveRules(context.Background())
		exec.Command("ip", "link", "del", bridge).Run()
	})
	if err := n.Ensure(context.Background()); err != nil {
		t.Fatal(err)
	}
	vm := fmt.Sprintf("tdmmirvm-%d", os.Getpid())
	sh(t, "ip", "netns", "add", vm)
	t.Cleanup(func() { exec.Command("ip", "netns", "delete", vm).Run() })
	sh(t, "ip", "link", "add", "tdmmirvm0", "type", "veth", "peer", "name", "eth0", "netns", vm)
	sh(t, "ip", "link", "set", "tdmmirvm0", "master", bridge, "up")
	sh(t, "ip", "-n", vm, "addr", "add", "10.231.200.9/24", "dev", "eth0")
	sh(t, "ip", "-n", vm, "link", "set", "eth0", "up")
	sh(t, "ip", "-n", vm, "link", "set", "lo", "up")

	m := startMirror(t, up, t.TempDir(), func(c *Config) { c.Listen = n.Gateway().String() + ":5000" })
	if m.URL() != "http://10.231.200.1:5000" {
		t.Errorf("URL %s", m.URL())
	}
	wget := func(path string) []byte {
		t.Helper()
		out, err := exec.Command("ip", "netns", "exec", vm, "busybox", "wget", "-q", "-O", "-",
			"--header", "Accept: "+accept, m.URL()+path).Output()
		if err != nil {
			t.Fatalf("wget %s from the VM side: %v", path, err)
		}
		return out
	}
	if got := wget("/v2/library/bb/manifests/1"); !bytes.Equal(got, im.Manifest) {
		t.Errorf("manifest through the bridge: %q", got)
	}
	if got := wget("/v2/library/bb/blobs/" + im.LayerDigests()[0]); !bytes.Equal(got, im.CompressedLayers[0]) {
		t.Error("layer through the bridge differs")
	}
}
