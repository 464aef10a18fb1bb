package hostnet

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"sort"
	"strings"
	"time"

	"github.com/tandem-ci/tandem/internal/egress"
	"github.com/tandem-ci/tandem/internal/hostdeps"
)

// quote makes s an nft string literal. Names reaching it were validated
// (letters, digits, '_', '.', '-', and the '*' of a wildcard), so there is
// nothing to escape.
func quote(s string) string { return `"` + s + `"` }

// runNft feeds script to `nft -f -`: one transaction, applied whole or not
// at all.
func runNft(ctx context.Context, script string) error {
	_, err := nft(ctx, script, "-f", "-")
	return err
}

// nft runs nft with args (and stdin, if not empty) and returns its output.
func nft(ctx context.Context, stdin string, args ...string) ([]byte, error) {
	bin, err := hostdeps.Find("nft")
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(errb.String() + out.String())
		if len(msg) > 2000 {
			msg = msg[:2000] + "…"
		}
		return nil, fmt.Errorf("nft: %w: %s", err, msg)
	}
	return out.Bytes(), nil
}

// nftJSON is what `nft -j list …` prints: a list of objects keyed by kind.
type nftJSON struct {
	Nftables []map[string]json.RawMessage `json:"nftables"`
}

func listJSON(ctx context.Context, args ...string) ([]map[string]json.RawMessage, error) {
	out, err := nft(ctx, "", append([]string{"-j", "list"}, args...)...)
	if err != nil {
		return nil, err
	}
	var j nftJSON
	if err := json.Unmarshal(out, &j); err != nil {
		return nil, fmt.Errorf("nft -j list %s: %w", strings.Join(args, " "), err)
	}
	return j.Nftables, nil
}

// hasTables reports whether the network's tables exist (Ensure made them).
func (n *Network) hasTables(ctx context.Context) bool {
	out, err := nft(ctx, "", "list", "tables")
	t := tableName(n.cfg.Bridge)
	return err == nil && bytes.Contains(out, []byte("table inet "+t+"\n")) && bytes.Contains(out, []byte("table bridge "+t+"\n"))
}

// orphans returns the keys of VMs whose chains exist but that hold no lease.
func (n *Network) orphans(ctx context.Context, leases []Lease) ([]string, error) {
	objs, err := listJSON(ctx, "chains", "inet")
	if err != nil {
		return nil, err
	}
	leased := map[string]bool{}
	for _, l := range leases {
		leased[vmKey(l.VMID)] = true
	}
	var out []string
	for _, o := range objs {
		raw, ok := o["chain"]
		if !ok {
			continue
		}
		var c struct{ Table, Name string }
		if err := json.Unmarshal(raw, &c); err != nil {
			return nil, err
		}
		// (A VM's chain is vm_ and its key; vm_to_host is not one.)
		if k, ok := strings.CutPrefix(c.Name, "vm_"); ok && ValidVMID("vm-"+k) && c.Table == tableName(n.cfg.Bridge) && !leased[k] {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out, nil
}

// RemoveRules removes the network's tables and the rules Ensure added to
// other tables' forward chains (for uninstalling; Ensure puts them back).
// Missing ones are not an error.
func (n *Network) RemoveRules(ctx context.Context) error {
	t := tableName(n.cfg.Bridge)
	script := fmt.Sprintf("table inet %s\ndelete table inet %s\ntable bridge %s\ndelete table bridge %s\n", t, t, t, t)
	if err := runNft(ctx, script); err != nil {
		return err
	}
	return n.removeFirewallRules(ctx)
}

// Flows returns what vmID's policy recorded since it was attached, allowed
// flows first, each group by address, protocol and port. A VM whose policy
// records nothing has no flows.
func (n *Network) Flows(ctx context.Context, vmID string) ([]egress.Flow, error) {
	if err := checkVMID(vmID); err != nil {
		return nil, err
	}
	t := tableName(n.cfg.Bridge)
	var flows []egress.Flow
	for _, set := range []struct {
		name    string
		allowed bool
	}{{"flows_", true}, {"blocked_", false}} {
		objs, err := listJSON(ctx, "set", "inet", t, set.name+vmKey(vmID))
		if err != nil {
			return nil, fmt.Errorf("flows of %s: %w", vmID, err)
		}
		fs, err := parseFlowSet(objs, set.allowed)
		if err != nil {
			return nil, fmt.Errorf("flows of %s: %w", vmID, err)
		}
		flows = append(flows, fs...)
	}
	return flows, nil
}

// parseFlowSet reads a flow set's elements: {"elem": {"val": {"concat":
// [addr, proto, port]}, "counter": {"packets": n, ...}}}.
func parseFlowSet(objs []map[string]json.RawMessage, allowed bool) ([]egress.Flow, error) {
	var out []egress.Flow
	for _, o := range objs {
		raw, ok := o["set"]
		if !ok {
			continue
		}
		var s struct {
			Elem []struct {
				Elem struct {
					Val struct {
						Concat []json.RawMessage `json:"concat"`
					} `json:"val"`
					Counter struct {
						Packets int64 `json:"packets"`
					} `json:"counter"`
				} `json:"elem"`
			} `json:"elem"`
		}
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, err
		}
		for _, e := range s.Elem {
			c := e.Elem.Val.Concat
			if len(c) != 3 {
				return nil, fmt.Errorf("flow element with %d fields", len(c))
			}
			var addr, proto string
			var port uint16
			if err := json.Unmarshal(c[0], &addr); err != nil {
				return nil, fmt.Errorf("flow address: %w", err)
			}
			a, err := netip.ParseAddr(addr)
			if err != nil {
				return nil, fmt.Errorf("flow address: %w", err)
			}
			if err := json.Unmarshal(c[1], &proto); err != nil {
				var num int
				if json.Unmarshal(c[1], &num) != nil {
					return nil, fmt.Errorf("flow protocol %s", c[1])
				}
				proto = map[int]string{6: "tcp", 17: "udp"}[num]
			}
			if err := json.Unmarshal(c[2], &port); err != nil {
				return nil, fmt.Errorf("flow port %s: %w", c[2], err)
			}
			out = append(out, egress.Flow{Addr: a, Proto: proto, Port: port, Allowed: allowed, Count: e.Elem.Counter.Packets})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if c := out[i].Addr.Compare(out[j].Addr); c != 0 {
			return c < 0
		}
		if out[i].Proto != out[j].Proto {
			return out[i].Proto < out[j].Proto
		}
		return out[i].Port < out[j].Port
	})
	return out, nil
}

// Pin lets vmID reach addrs for ttl: the answers to a DNS name its
// allowlist allows, added before the forwarder answers. A VM not in
// allowlist mode needs no pins; pinning for it is harmless.
func (n *Network) Pin(ctx context.Context, vmID string, addrs []netip.Addr, ttl time.Duration) error {
	if err := checkVMID(vmID); err != nil {
		return err
	}
	var v4 []netip.Addr
	for _, a := range addrs {
		if a = a.Unmap(); a.Is4() {
			v4 = append(v4, a)
		}
	}
	if len(v4) == 0 {
		return nil
	}
	if err := runNft(ctx, n.renderPin(vmID, v4, ttl)); err != nil {
		return fmt.Errorf("pin %v for %s: %w", v4, vmID, err)
	}
	return nil
}
