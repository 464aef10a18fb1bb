package hostnet

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"testing"

	"github.com/tandem-ci/tandem/internal/testenv"
	"github.com/vishvananda/netlink"
)

func TestMain(m *testing.M) { os.Exit(testenv.RunInNetns(m)) }

// requireNetns is for tests that change the network: they need root and the
// private namespace RunInNetns made, which -short does without.
func requireNetns(t testing.TB) {
	t.Helper()
	testenv.RequireRoot(t)
	if testing.Short() {
		t.Skip("changes the network: not run with -short")
	}
	if testenv.NetnsName() == "" {
		t.Fatal("not in a private network namespace: refusing to touch the host's network")
	}
}

// newNet makes a Network in a fresh state dir.
func newNet(t testing.TB, mod func(*Config)) *Network {
	t.Helper()
	cfg := Config{StateDir: testenv.ShortTempDir(t), NAT: true, Logger: slog.New(slog.DiscardHandler)}
	if mod != nil {
		mod(&cfg)
	}
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// ensured is newNet plus Ensure; on cleanup it removes the bridge and table
// so that tests do not see one another's.
func ensured(t testing.TB, mod func(*Config)) *Network {
	t.Helper()
	requireNetns(t)
	n := newNet(t, mod)
	t.Cleanup(func() { removeAll(t, n) })
	if err := n.Ensure(context.Background()); err != nil {
		t.Fatal(err)
	}
	return n
}

func removeAll(t testing.TB, n *Network) {
	t.Helper()
	if _, err := n.Reclaim(context.Background(), func(string) bool { return false }); err != nil {
		t.Errorf("cleanup: %v", err)
	}
	if err := n.RemoveRules(context.Background()); err != nil {
		t.Errorf("cleanup: %v", err)
	}
	if br, err := n.bridge(); err == nil {
		if err := netlink.LinkDel(br); err != nil {
			t.Errorf("cleanup: delete bridge: %v", err)
		}
	}
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
