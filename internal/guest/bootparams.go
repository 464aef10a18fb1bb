package guest

import (
	"fmt"
	"net/netip"
	"net/url"
	"strings"
)

// ProbeMarker is printed on the console by a guest booted with tandem.probe=1,
// right before it powers off. The host's accelerator probe looks for it.
const ProbeMarker = "TANDEM-PROBE-OK"

// BootParams travel on the kernel command line as tandem.* parameters: they
// are what the guest needs before its channel to the host is open.
type BootParams struct {
	Root     string       // block device of the root filesystem; empty: stay in the initramfs
	Addr     netip.Prefix // address of the guest's NIC; invalid: no network
	Gateway  netip.Addr
	DNS      []netip.Addr
	Hostname string
	// Mirror is the host's registry mirror (http://<bridge address>:<port>)
	// the guest's Docker daemon pulls Docker Hub images through; "" for none.
	Mirror string
	Probe  bool // print ProbeMarker and power off at once
}

// Cmdline renders the parameters for the kernel command line.
func (p BootParams) Cmdline() string {
	var b []string
	if p.Root != "" {
		b = append(b, "tandem.root="+p.Root)
	}
	if p.Addr.IsValid() {
		b = append(b, "tandem.ip="+p.Addr.String())
	}
	if p.Gateway.IsValid() {
		b = append(b, "tandem.gw="+p.Gateway.String())
	}
	if len(p.DNS) > 0 {
		s := make([]string, len(p.DNS))
		for i, a := range p.DNS {
			s[i] = a.String()
		}
		b = append(b, "tandem.dns="+strings.Join(s, ","))
	}
	if p.Hostname != "" {
		b = append(b, "tandem.hostname="+p.Hostname)
	}
	if p.Mirror != "" {
		b = append(b, "tandem.mirror="+p.Mirror)
	}
	if p.Probe {
		b = append(b, "tandem.probe=1")
	}
	return strings.Join(b, " ")
}

// ParseBootParams reads the tandem.* parameters of a kernel command line
// (the contents of /proc/cmdline) and ignores everything else.
func ParseBootParams(cmdline string) (BootParams, error) {
	var p BootParams
	for _, f := range strings.Fields(cmdline) {
		k, v, _ := strings.Cut(f, "=")
		var err error
		switch k {
		case "tandem.root":
			p.Root = v
		case "tandem.ip":
			p.Addr, err = netip.ParsePrefix(v)
		case "tandem.gw":
			p.Gateway, err = netip.ParseAddr(v)
		case "tandem.dns":
			for _, s := range strings.Split(v, ",") {
				var a netip.Addr
				if a, err = netip.ParseAddr(s); err != nil {
					break
				}
				p.DNS = append(p.DNS, a)
			}
		case "tandem.hostname":
			p.Hostname = v
		case "tandem.mirror":
			err = checkMirror(v)
			p.Mirror = v
		case "tandem.probe":
			p.Probe = v == "1"
		}
		if err != nil {
			return p, fmt.Errorf("kernel parameter %s: %w", k, err)
		}
	}
	return p, nil
}

// checkMirror accepts what a registry mirror's address can be: an http or
// https URL with a host and nothing after it but an optional "/".
func checkMirror(v string) error {
	u, err := url.Parse(v)
	if err != nil {
		return err
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") ||
		u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("%q: want http(s)://host[:port]", v)
	}
	return nil
}
