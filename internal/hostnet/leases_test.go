package hostnet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

func vmID(i int) string { return fmt.Sprintf("vm-%010x", i) }

func TestLeasePersistsAcrossNetworks(t *testing.T) {
	ctx := context.Background()
	n := newNet(t, nil)
	l1, isNew, err := n.lease(ctx, vmID(1), openPolicy)
	if err != nil || !isNew {
		t.Fatalf("lease: %v %v", isNew, err)
	}
	if l1.Addr != netip.MustParseAddr("172.30.0.2") {
		t.Errorf("first lease %s, want 172.30.0.2", l1.Addr)
	}
	l2, _, err := n.lease(ctx, vmID(2), openPolicy)
	if err != nil || l2.Addr == l1.Addr {
		t.Fatalf("second lease %v: %v", l2, err)
	}

	// A new Network on the same state dir, as after a process restart.
	m, err := New(Config{StateDir: n.cfg.StateDir})
	if err != nil {
		t.Fatal(err)
	}
	again, isNew, err := m.lease(ctx, vmID(1), openPolicy)
	if err != nil || isNew || again.Addr != l1.Addr || !again.Created.Equal(l1.Created) {
		t.Errorf("lease again: %+v new=%v %v; want %+v", again, isNew, err, l1)
	}
	leases, err := m.Leases()
	if err != nil || len(leases) != 2 || leases[0].VMID != vmID(1) || leases[1].VMID != vmID(2) {
		t.Errorf("Leases: %+v %v", leases, err)
	}

	// Released addresses are not handed out again at once.
	if err := m.release(ctx, vmID(1)); err != nil {
		t.Fatal(err)
	}
	if err := m.release(ctx, vmID(1)); err != nil {
		t.Errorf("second release: %v", err)
	}
	l3, _, err := m.lease(ctx, vmID(3), openPolicy)
	if err != nil || l3.Addr == l1.Addr || l3.Addr == l2.Addr {
		t.Errorf("third lease %v: %v", l3, err)
	}
}

func TestLeasesWithoutStateDir(t *testing.T) {
	n := newNet(t, func(c *Config) { c.StateDir = filepath.Join(c.StateDir, "not", "yet") })
	leases, err := n.Leases()
	if err != nil || len(leases) != 0 {
		t.Errorf("Leases: %v %v", leases, err)
	}
	if _, err := os.Stat(n.cfg.StateDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Leases created the state dir: %v", err)
	}
}

func TestLeaseExhaustion(t *testing.T) {
	ctx := context.Background()
	n := newNet(t, func(c *Config) { c.Subnet = mustPrefix("10.9.8.0/29") })
	got := map[netip.Addr]bool{}
	for i := range 5 { // .2 to .6: .0 network, .1 gateway, .7 broadcast
		l, _, err := n.lease(ctx, vmID(i), openPolicy)
		if err != nil {
			t.Fatalf("lease %d: %v", i, err)
		}
		got[l.Addr] = true
	}
	for _, a := range []string{"10.9.8.2", "10.9.8.3", "10.9.8.4", "10.9.8.5", "10.9.8.6"} {
		if !got[netip.MustParseAddr(a)] {
			t.Errorf("%s not leased; got %v", a, got)
		}
	}
	_, _, err := n.lease(ctx, vmID(99), openPolicy)
	if !errors.Is(err, ErrNoAddress) {
		t.Fatalf("sixth lease: %v, want ErrNoAddress", err)
	}
	// An existing holder still gets its lease back, and a freed address
	// can be leased again.
	if _, _, err := n.lease(ctx, vmID(3), openPolicy); err != nil {
		t.Errorf("existing lease when full: %v", err)
	}
	if err := n.release(ctx, vmID(2)); err != nil {
		t.Fatal(err)
	}
	if l, _, err := n.lease(ctx, vmID(99), openPolicy); err != nil || l.Addr != netip.MustParseAddr("10.9.8.4") {
		t.Errorf("lease after release: %v %v", l, err)
	}
}

func TestLeaseConcurrent(t *testing.T) {
	ctx := context.Background()
	n := newNet(t, nil)
	m, err := New(Config{StateDir: n.cfg.StateDir}) // a second Network, same state
	if err != nil {
		t.Fatal(err)
	}
	const N = 40
	addrs := make([]netip.Addr, N)
	var wg sync.WaitGroup
	for i := range N {
		wg.Go(func() {
			net := n
			if i%2 == 1 {
				net = m
			}
			l, _, err := net.lease(ctx, vmID(i), openPolicy)
			if err != nil {
				t.Error(err)
				return
			}
			addrs[i] = l.Addr
		})
	}
	wg.Wait()
	checkDistinct(t, addrs)
	leases, err := n.Leases()
	if err != nil || len(leases) != N {
		t.Errorf("%d leases, want %d: %v", len(leases), N, err)
	}
}

func checkDistinct(t *testing.T, addrs []netip.Addr) {
	t.Helper()
	seen := map[netip.Addr]int{}
	for i, a := range addrs {
		if !a.IsValid() {
			continue
		}
		if j, dup := seen[a]; dup {
			t.Errorf("vm %d and vm %d both got %s", j, i, a)
		}
		seen[a] = i
	}
}

const helperEnv = "TANDEM_HOSTNET_LEASE_HELPER"

// TestLeaseHelper is not a test: TestLeaseTwoProcesses runs it in child
// processes to lease addresses from the same state dir.
func TestLeaseHelper(t *testing.T) {
	spec := os.Getenv(helperEnv)
	if spec == "" {
		t.Skip("helper process only")
	}
	dir, from, _ := strings.Cut(spec, ",")
	var base int
	fmt.Sscan(from, &base)
	n, err := New(Config{StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 25 {
		l, _, err := n.lease(context.Background(), vmID(base+i), openPolicy)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Printf("LEASE %s %s\n", l.VMID, l.Addr)
	}
}

func TestLeaseTwoProcesses(t *testing.T) {
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	outs := make([][]byte, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for p := range 2 {
		wg.Go(func() {
			args := []string{"-test.run=^TestLeaseHelper$", "-test.count=1"}
			if testing.Short() {
				args = append(args, "-test.short")
			}
			env := append(os.Environ(), fmt.Sprintf("%s=%s,%d", helperEnv, dir, 1000*(p+1)))
			outs[p], errs[p] = runSelf(self, args, env)
		})
	}
	wg.Wait()
	var addrs []netip.Addr
	for p := range 2 {
		if errs[p] != nil {
			t.Fatalf("helper %d: %v\n%s", p, errs[p], outs[p])
		}
		for _, line := range strings.Split(string(outs[p]), "\n") {
			if f := strings.Fields(line); len(f) == 3 && f[0] == "LEASE" {
				addrs = append(addrs, netip.MustParseAddr(f[2]))
			}
		}
	}
	if len(addrs) != 50 {
		t.Fatalf("%d leases reported, want 50:\n%s\n%s", len(addrs), outs[0], outs[1])
	}
	checkDistinct(t, addrs)
	n := newNet(t, func(c *Config) { c.StateDir = dir })
	leases, err := n.Leases()
	if err != nil || len(leases) != 50 {
		t.Errorf("%d leases in the file, want 50: %v", len(leases), err)
	}
}

func TestCorruptLeaseFile(t *testing.T) {
	ctx := context.Background()
	for name, content := range map[string]string{
		"garbage":       "{not json",
		"truncated":     `{"version":1,"leases":[{"vm_id":"vm-0000000001","addr":"172.30.`,
		"empty":         "",
		"wrong version": `{"version":7,"leases":[]}`,
		"bad id":        `{"version":1,"leases":[{"vm_id":"../etc","addr":"172.30.0.2"}]}`,
		"bad addr":      `{"version":1,"leases":[{"vm_id":"vm-0000000001","addr":"nope"}]}`,
		"duplicate":     `{"version":1,"leases":[{"vm_id":"vm-0000000001","addr":"172.30.0.2"},{"vm_id":"vm-0000000002","addr":"172.30.0.2"}]}`,
	} {
		t.Run(name, func(t *testing.T) {
			n := newNet(t, nil)
			p := filepath.Join(n.cfg.StateDir, leaseFileName)
			if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := n.Leases(); !errors.Is(err, ErrCorruptLeases) {
				t.Errorf("Leases: %v, want ErrCorruptLeases", err)
			}
			if _, _, err := n.lease(ctx, vmID(5), openPolicy); !errors.Is(err, ErrCorruptLeases) {
				t.Errorf("lease: %v, want ErrCorruptLeases", err)
			}
			if err := n.release(ctx, vmID(1)); !errors.Is(err, ErrCorruptLeases) {
				t.Errorf("release: %v, want ErrCorruptLeases", err)
			}
			if b, _ := os.ReadFile(p); string(b) != content {
				t.Errorf("corrupt file was rewritten to %q", b)
			}
		})
	}
}

func TestLeaseSubnetChange(t *testing.T) {
	ctx := context.Background()
	n := newNet(t, nil)
	if _, _, err := n.lease(ctx, vmID(1), openPolicy); err != nil {
		t.Fatal(err)
	}
	m := newNet(t, func(c *Config) { c.StateDir = n.cfg.StateDir; c.Subnet = mustPrefix("10.7.0.0/24") })
	if _, _, err := m.lease(ctx, vmID(2), openPolicy); err == nil || !strings.Contains(err.Error(), "subnet") {
		t.Errorf("lease in another subnet: %v", err)
	}
	if err := m.release(ctx, vmID(1)); err != nil {
		t.Fatal(err)
	}
	if l, _, err := m.lease(ctx, vmID(2), openPolicy); err != nil || l.Addr != netip.MustParseAddr("10.7.0.2") {
		t.Errorf("lease after the old ones are gone: %v %v", l, err)
	}
}

// runSelf runs the test binary again. Under qemu-user (the arm64 suite runs
// with -exec qemu-aarch64-static) the host cannot run it by itself: then it
// goes through the same emulator.
func runSelf(self string, args, env []string) ([]byte, error) {
	machine := map[string]string{"arm64": "aarch64", "amd64": "x86_64"}[runtime.GOARCH]
	cmd := exec.Command(self, args...)
	// uname is a binary of the host: it tells the host's machine even
	// where this process runs emulated.
	if out, err := exec.Command("uname", "-m").Output(); err == nil && machine != "" &&
		strings.TrimSpace(string(out)) != machine {
		qemu, err := exec.LookPath("qemu-" + machine + "-static")
		if err != nil {
			return nil, fmt.Errorf("emulated %s on %s, and no emulator: %w", machine, bytes.TrimSpace(out), err)
		}
		cmd = exec.Command(qemu, append([]string{self}, args...)...)
	}
	cmd.Env = env
	return cmd.CombinedOutput()
}
