package hostnet

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"

	"github.com/tandem-ci/tandem/internal/hostdeps"
)

// Policy is where VM isolation plugs in (for instance: a VM may not reach
// the host, other VMs, or metadata addresses such as 169.254.169.254). This
// package implements none; with Config.Policy nil the table holds only NAT
// and the forward accepts.
//
// The table is re-rendered as a whole and replaced in one nft transaction
// whenever it may change: by Ensure, and — when a Policy is set — after
// every Attach, Detach and Reclaim that changed the leases, so Rules sees
// the VMs that hold leases at that moment.
type Policy interface {
	// Rules returns the policy's part of table "inet tandem". Every
	// string is nft syntax as it would appear inside the table block of an
	// `nft -f` script. Rules must be a pure function of env.
	Rules(env PolicyEnv) (PolicyRules, error)
}

// PolicyEnv is what a Policy knows about the network.
type PolicyEnv struct {
	Table   string // "tandem" (family inet)
	Bridge  string
	Subnet  netip.Prefix
	Gateway netip.Addr
	DNS     []netip.Addr
	VMs     []PolicyVM // every VM holding a lease, ordered by address
}

// PolicyVM is one VM as a Policy sees it.
type PolicyVM struct {
	VMID string
	TAP  string
	MAC  string // the guest's MAC, e.g. "02:01:23:45:67:89"
	Addr netip.Addr
}

// PolicyRules is a Policy's contribution to the table.
type PolicyRules struct {
	// Input rules go into chain "input" (hook input, policy accept): traffic
	// from VMs to the host itself, e.g. `iifname "tandem0" ip daddr != 172.30.0.1 drop`.
	Input []string
	// Forward rules go into chain "forward" (hook forward, policy accept)
	// before its accepts: routed traffic to and from VMs, e.g.
	// `iifname "tandem0" ip daddr 169.254.0.0/16 drop`.
	Forward []string
	// Chains are further complete blocks, `chain NAME { ... }` or
	// `set NAME { ... }`, that the rules above may jump to or reference.
	// (Traffic between VMs on the bridge is switched, not routed: stopping
	// it takes bridge port isolation or a bridge-family table, which a
	// Policy would add beside this one.)
	Chains []string
}

// applyRules replaces table "inet tandem" with the rules for leases, in one
// transaction. Call it with the lease lock held so that concurrent callers
// apply in the order of the lease changes.
func (n *Network) applyRules(ctx context.Context, leases []Lease) error {
	script, err := n.renderRules(leases)
	if err != nil {
		return err
	}
	return runNft(ctx, script)
}

// renderRules returns the nft script for the table. It first creates the
// table (a no-op if it exists) so that deleting it cannot fail, then
// deletes and recreates it: nft runs the whole script as one transaction,
// so the old rules are replaced at once and never partly.
func (n *Network) renderRules(leases []Lease) (string, error) {
	br := quote(n.cfg.Bridge)
	var pr PolicyRules
	if n.cfg.Policy != nil {
		env := PolicyEnv{
			Table:   TableName,
			Bridge:  n.cfg.Bridge,
			Subnet:  n.cfg.Subnet,
			Gateway: n.gateway,
			DNS:     append([]netip.Addr(nil), n.cfg.DNS...),
		}
		for _, l := range leases {
			env.VMs = append(env.VMs, PolicyVM{VMID: l.VMID, TAP: TAPName(l.VMID), MAC: GuestMAC(l.VMID).String(), Addr: l.Addr})
		}
		var err error
		if pr, err = n.cfg.Policy.Rules(env); err != nil {
			return "", fmt.Errorf("isolation policy: %w", err)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s\n", TableName)
	fmt.Fprintf(&b, "delete table inet %s\n", TableName)
	fmt.Fprintf(&b, "table inet %s {\n", TableName)
	if n.cfg.NAT {
		b.WriteString("\tchain postrouting {\n")
		b.WriteString("\t\ttype nat hook postrouting priority srcnat; policy accept;\n")
		fmt.Fprintf(&b, "\t\tip saddr %s oifname != %s masquerade\n", n.cfg.Subnet, br)
		b.WriteString("\t}\n")
	}
	b.WriteString("\tchain input {\n")
	b.WriteString("\t\ttype filter hook input priority filter; policy accept;\n")
	writeRules(&b, pr.Input)
	b.WriteString("\t}\n")
	b.WriteString("\tchain forward {\n")
	b.WriteString("\t\ttype filter hook forward priority filter; policy accept;\n")
	// Isolation comes first, so that it can drop what the accepts below
	// would let through.
	writeRules(&b, pr.Forward)
	fmt.Fprintf(&b, "\t\tiifname %s accept\n", br)
	fmt.Fprintf(&b, "\t\toifname %s accept\n", br)
	b.WriteString("\t}\n")
	for _, c := range pr.Chains {
		b.WriteString("\t" + strings.TrimSpace(c) + "\n")
	}
	b.WriteString("}\n")
	return b.String(), nil
}

func writeRules(b *strings.Builder, rules []string) {
	for _, r := range rules {
		if r = strings.TrimSpace(r); r != "" {
			b.WriteString("\t\t" + r + "\n")
		}
	}
}

// quote makes s an nft string literal. Names reaching it were validated
// (letters, digits, '_', '.', '-'), so there is nothing to escape.
func quote(s string) string { return `"` + s + `"` }

// runNft feeds script to `nft -f -`.
func runNft(ctx context.Context, script string) error {
	bin, err := hostdeps.Find("nft")
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, bin, "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(out.String())
		if len(msg) > 2000 {
			msg = msg[:2000] + "…"
		}
		return fmt.Errorf("nft: %w: %s", err, msg)
	}
	return nil
}

// DeleteRules removes table "inet tandem" altogether (for uninstalling;
// Ensure puts it back). A missing table is not an error.
func DeleteRules(ctx context.Context) error {
	return runNft(ctx, fmt.Sprintf("table inet %s\ndelete table inet %s\n", TableName, TableName))
}
