package guest

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestBootParamsRoundTrip(t *testing.T) {
	for _, p := range []BootParams{
		{},
		{Probe: true},
		{
			Root:     "/dev/vda",
			Addr:     netip.MustParsePrefix("172.30.0.2/30"),
			Gateway:  netip.MustParseAddr("172.30.0.1"),
			DNS:      []netip.Addr{netip.MustParseAddr("1.1.1.1"), netip.MustParseAddr("2606:4700::1111")},
			Hostname: "tandem-job-42",
			Mirror:   "http://172.30.0.1:5000",
		},
		{Addr: netip.MustParsePrefix("fd00::2/64"), Gateway: netip.MustParseAddr("fd00::1")},
	} {
		line := "console=ttyS0 reboot=t " + p.Cmdline() + " quiet virtio_mmio.device=4K@0xfeb00e00:12"
		got, err := ParseBootParams(line)
		if err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		if !reflect.DeepEqual(got, p) {
			t.Fatalf("%q:\ngot  %+v\nwant %+v", line, got, p)
		}
	}
}

func TestBootParamsKeepsHostAddress(t *testing.T) {
	p, err := ParseBootParams("tandem.ip=10.0.0.5/24")
	if err != nil || p.Addr.Addr() != netip.MustParseAddr("10.0.0.5") || p.Addr.Bits() != 24 {
		t.Fatalf("%+v %v", p, err)
	}
	if p, _ := ParseBootParams("tandem.probe=0"); p.Probe {
		t.Fatal("probe=0 is not a probe")
	}
}

func TestBootParamsBad(t *testing.T) {
	for _, line := range []string{
		"tandem.ip=10.0.0.300/24",
		"tandem.ip=10.0.0.2", // no prefix length
		"tandem.ip=10.0.0.2/33",
		"tandem.ip=",
		"tandem.gw=gateway",
		"tandem.dns=1.1.1.1,nope",
		"tandem.dns=",
		"tandem.mirror=172.30.0.1:5000", // no scheme
		"tandem.mirror=ftp://172.30.0.1",
		"tandem.mirror=http://172.30.0.1:5000/v2/",
		"tandem.mirror=http://user:pw@172.30.0.1:5000",
		"tandem.mirror=",
	} {
		_, err := ParseBootParams("console=ttyS0 " + line)
		if err == nil {
			t.Errorf("%q: no error", line)
			continue
		}
		key, _, _ := strings.Cut(line, "=")
		if !strings.Contains(err.Error(), key) {
			t.Errorf("%q: error %q does not name %s", line, err, key)
		}
	}
}

func TestBootParamsEmpty(t *testing.T) {
	p, err := ParseBootParams("")
	if err != nil || !reflect.DeepEqual(p, BootParams{}) {
		t.Fatalf("%+v %v", p, err)
	}
	if (BootParams{}).Cmdline() != "" {
		t.Fatal("empty params render as non-empty")
	}
}
