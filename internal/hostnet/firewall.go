package hostnet

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
)

// Host firewalls: what Ensure does about another table's forward chain
// whose policy drops (Docker's FORWARD policy, ufw, firewalld). nftables
// runs every base chain of a hook, and a drop in any of them is final, so
// VM traffic that table inet tandem_<bridge> accepts would still die
// there, silently.
const (
	// FirewallAdd inserts, at the top of each such chain, two rules: the
	// bridge's outgoing traffic and the replies to it are accepted there
	// (each with the comment FirewallComment). Tandem's own table still
	// filters that traffic, whatever order the chains run in.
	FirewallAdd = "add"
	// FirewallRefuse makes Ensure fail, naming each such chain and what to
	// change, and changes nothing.
	FirewallRefuse = "refuse"
)

// FirewallComment marks the rules Ensure adds to other tables; RemoveRules
// removes exactly those.
func (n *Network) firewallComment() string {
	return "tandem " + n.cfg.Bridge + ": VM traffic, filtered by table inet " + tableName(n.cfg.Bridge)
}

// chainRef names an nftables chain.
type chainRef struct {
	Family, Table, Name string
}

func (c chainRef) String() string { return c.Family + " " + c.Table + " " + c.Name }

// dropForwardChains lists the forward base chains of the ip and inet
// families, outside this network's tables, whose policy is drop.
func (n *Network) dropForwardChains(ctx context.Context) ([]chainRef, error) {
	return dropForwardChains(ctx, n.cfg.Bridge)
}

// DropForwardChains names ("FAMILY TABLE CHAIN") the forward base chains of
// this network namespace, outside the tables of bridge's network, whose
// policy drops: the ones Config.HostFirewall is about. For `tandem doctor`.
func DropForwardChains(ctx context.Context, bridge string) ([]string, error) {
	chains, err := dropForwardChains(ctx, bridge)
	var out []string
	for _, c := range chains {
		out = append(out, c.String())
	}
	return out, err
}

// FirewallFix says what to do about chains that drop the forwarded
// traffic of bridge's VMs: the advice of HostFirewall's "refuse".
func FirewallFix(bridge, chain string) string {
	return fmt.Sprintf("accept %s's traffic in them (e.g. `nft insert rule %s iifname %s accept` and the same with oifname and ct state established,related), "+
		"or let Tandem add these rules (host_firewall: add)", bridge, chain, quote(bridge))
}

func dropForwardChains(ctx context.Context, bridge string) ([]chainRef, error) {
	objs, err := listJSON(ctx, "chains")
	if err != nil {
		return nil, err
	}
	own := tableName(bridge)
	var out []chainRef
	for _, o := range objs {
		raw, ok := o["chain"]
		if !ok {
			continue
		}
		var c struct {
			Family, Table, Name, Hook, Policy string
		}
		if err := json.Unmarshal(raw, &c); err != nil {
			return nil, fmt.Errorf("nft chains: %w", err)
		}
		if c.Hook != "forward" || c.Policy != "drop" || c.Table == own || (c.Family != "ip" && c.Family != "inet") {
			continue
		}
		out = append(out, chainRef{c.Family, c.Table, c.Name})
	}
	return out, nil
}

// ensureFirewall deals with forward chains that drop (see FirewallAdd).
func (n *Network) ensureFirewall(ctx context.Context) error {
	chains, err := n.dropForwardChains(ctx)
	if err != nil {
		return fmt.Errorf("host firewall: %w", err)
	}
	if len(chains) == 0 {
		return nil
	}
	if n.cfg.HostFirewall == FirewallRefuse {
		names := make([]string, len(chains))
		for i, c := range chains {
			names[i] = c.String()
		}
		return fmt.Errorf("host firewall: forward chain(s) %s drop by default, so VM traffic would be dropped there: %s",
			strings.Join(names, ", "), FirewallFix(n.cfg.Bridge, chains[0].String()))
	}
	comment := n.firewallComment()
	for _, c := range chains {
		have, err := n.markedRules(ctx, c)
		if err != nil {
			return fmt.Errorf("host firewall: %w", err)
		}
		if len(have) >= 2 {
			continue
		}
		if len(have) > 0 { // half there: start again
			if err := deleteRules(ctx, c, have); err != nil {
				return fmt.Errorf("host firewall: %w", err)
			}
		}
		br := quote(n.cfg.Bridge)
		script := fmt.Sprintf("insert rule %s oifname %s ct state established,related counter accept comment %s\n"+
			"insert rule %s iifname %s counter accept comment %s\n", c, br, quote(comment), c, br, quote(comment))
		if err := runNft(ctx, script); err != nil {
			return fmt.Errorf("host firewall: accept %s's traffic in %s: %w", n.cfg.Bridge, c, err)
		}
		n.log.Warn("the host firewall drops forwarded traffic: accepting the VM bridge's in it (Tandem's own table still filters it)",
			"chain", c.String(), "bridge", n.cfg.Bridge, "comment", comment)
	}
	return nil
}

// markedRules returns the handles of the rules in c that carry this
// network's comment.
func (n *Network) markedRules(ctx context.Context, c chainRef) ([]int, error) {
	objs, err := listJSON(ctx, "chain", c.Family, c.Table, c.Name)
	if err != nil {
		return nil, err
	}
	comment := n.firewallComment()
	var handles []int
	for _, o := range objs {
		raw, ok := o["rule"]
		if !ok {
			continue
		}
		var r struct {
			Handle  int    `json:"handle"`
			Comment string `json:"comment"`
		}
		if err := json.Unmarshal(raw, &r); err != nil {
			return nil, err
		}
		if r.Comment == comment {
			handles = append(handles, r.Handle)
		}
	}
	return handles, nil
}

func deleteRules(ctx context.Context, c chainRef, handles []int) error {
	var b strings.Builder
	for _, h := range handles {
		fmt.Fprintf(&b, "delete rule %s handle %d\n", c, h)
	}
	return runNft(ctx, b.String())
}

// removeFirewallRules removes the rules ensureFirewall added, from every
// forward chain that still has them.
func (n *Network) removeFirewallRules(ctx context.Context) error {
	objs, err := listJSON(ctx, "chains")
	if err != nil {
		return err
	}
	for _, o := range objs {
		raw, ok := o["chain"]
		if !ok {
			continue
		}
		var c struct{ Family, Table, Name, Hook string }
		if err := json.Unmarshal(raw, &c); err != nil || c.Hook != "forward" {
			continue
		}
		ref := chainRef{c.Family, c.Table, c.Name}
		handles, err := n.markedRules(ctx, ref)
		if err != nil {
			return err
		}
		if len(handles) > 0 {
			if err := deleteRules(ctx, ref, handles); err != nil {
				return err
			}
		}
	}
	return nil
}
