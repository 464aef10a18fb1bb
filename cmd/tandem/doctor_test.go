package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/testenv"
)

// doctorRun runs tandem doctor (with prefix before it: nsenter …) and
// returns its output and exit code.
func doctorRun(t *testing.T, prefix []string, dataDir string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	argv := append(append(slices.Clone(prefix), binary(t), "--data-dir", dataDir, "doctor"), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "TANDEM_DATA_DIR=")
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%v: %v", argv, err)
	}
	return o.String(), e.String(), code
}

type doctorResult struct {
	Check, Status, Detail, Fix string
}

// decodeDoctor decodes --json output, checking its schema: a list of
// objects with exactly check, status (ok, warn or fail), detail and fix.
func decodeDoctor(t *testing.T, out string) map[string]doctorResult {
	t.Helper()
	var raw []map[string]any
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		t.Fatalf("--json: %v\n%s", err, out)
	}
	got := map[string]doctorResult{}
	for _, r := range raw {
		var keys []string
		for k, v := range r {
			keys = append(keys, k)
			if _, ok := v.(string); !ok {
				t.Errorf("%v: %s is %T, want a string", r, k, v)
			}
		}
		slices.Sort(keys)
		if !slices.Equal(keys, []string{"check", "detail", "fix", "status"}) {
			t.Errorf("result keys %v, want check, detail, fix, status", keys)
		}
		res := doctorResult{Check: r["check"].(string), Status: r["status"].(string), Detail: r["detail"].(string), Fix: r["fix"].(string)}
		if !slices.Contains([]string{"ok", "warn", "fail"}, res.Status) {
			t.Errorf("%s: status %q", res.Check, res.Status)
		}
		if res.Status != "ok" && res.Fix == "" {
			t.Errorf("%s is %s without a fix: %s", res.Check, res.Status, res.Detail)
		}
		got[res.Check] = res
	}
	return got
}

// firewallNetns makes a network namespace whose forward chain drops by
// default, as Docker, ufw and firewalld leave hosts, and returns the
// command prefix that runs a program in it. `ip netns exec` would remount
// /sys and hide the cgroups: nsenter enters the network namespace alone.
func firewallNetns(t *testing.T) []string {
	t.Helper()
	name := fmt.Sprintf("tdmdoc-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "delete", name).Run() })
	enter := []string{"nsenter", "--net=/var/run/netns/" + name}
	nft := exec.Command(enter[0], append(enter[1:], "nft", "-f", "-")...)
	nft.Stdin = strings.NewReader("table inet hostfw {\n chain forward {\n  type filter hook forward priority 0; policy drop;\n }\n}\n")
	if out, err := nft.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	// Forwarding off, as a host that never forwarded has it.
	if out, err := exec.Command(enter[0], append(enter[1:], "sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward")...).CombinedOutput(); err != nil {
		t.Fatalf("ip_forward: %v: %s", err, out)
	}
	return enter
}

// TestDoctorHostFirewall: a forward chain that drops by default is
// reported with its fix: a warning when the agent will add its rules (the
// default), a failure (exit 1) with host_firewall: refuse.
func TestDoctorHostFirewall(t *testing.T) {
	testenv.RequireRoot(t)
	enter := firewallNetns(t)
	data := t.TempDir()

	out, stderr, code := doctorRun(t, enter, data, "--json", "--check", "host_firewall,ip_forward,tun")
	if code != 0 {
		t.Fatalf("exit %d with warnings only: %s%s", code, out, stderr)
	}
	got := decodeDoctor(t, out)
	fw := got["host_firewall"]
	if fw.Status != "warn" || !strings.Contains(fw.Detail, "inet hostfw forward drop by default") ||
		!strings.Contains(fw.Detail, "host_firewall: add") || !strings.Contains(fw.Fix, `nft insert rule inet hostfw forward iifname "tandem0" accept`) {
		t.Errorf("host_firewall: %+v", fw)
	}
	if r := got["ip_forward"]; r.Status != "warn" || !strings.Contains(r.Fix, "sysctl -w net.ipv4.ip_forward=1") {
		t.Errorf("ip_forward in a fresh namespace: %+v", r)
	}
	if len(got) != 3 || got["tun"].Status != "ok" {
		t.Errorf("results: %+v", got)
	}

	cfg := writeTestConfig(t, "agent: {bridge: tdmdoc0, network: {host_firewall: refuse}}\n")
	out, stderr, code = doctorRun(t, enter, data, "--config", cfg, "--check", "host_firewall")
	if code != 1 {
		t.Fatalf("exit %d, want 1 (a failure): %s%s", code, out, stderr)
	}
	for _, want := range []string{"✓ config", "✗ host_firewall  forward chain(s) inet hostfw forward drop by default",
		"host_firewall: refuse stops the agent", "fix: accept tdmdoc0's traffic in them (e.g. `nft insert rule inet hostfw forward iifname \"tdmdoc0\" accept`",
		"1 problem(s) stop jobs from running here"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}

// TestDoctorExitCodes: 1 when a check fails, 0 when all pass, and a usage
// error for a check that does not exist.
func TestDoctorExitCodes(t *testing.T) {
	data := t.TempDir()
	out, _, code := doctorRun(t, nil, data, "--json", "--check", "images")
	if r := decodeDoctor(t, out)["images"]; code != 1 || r.Status != "fail" || !strings.Contains(r.Fix, "tandem image build --kind test --arch") {
		t.Errorf("no images: exit %d, %+v", code, r)
	}
	out, _, code = doctorRun(t, nil, data, "--check", "tun,disk")
	if code != 0 || !strings.Contains(out, "✓ tun") {
		t.Errorf("exit %d:\n%s", code, out)
	}
	_, stderr, code := doctorRun(t, nil, data, "--check", "kvmm")
	if code == 0 || code == 1 || !strings.Contains(stderr, `no check "kvmm"`) || !strings.Contains(stderr, "host_firewall") {
		t.Errorf("unknown check: exit %d: %s", code, stderr)
	}
	// A config that does not load is a failure of its own, with the
	// host's checks after it.
	bad := writeTestConfig(t, "agent: {vcpu: 2}\n")
	out, _, code = doctorRun(t, nil, data, "--json", "--config", bad, "--check", "tun")
	got := decodeDoctor(t, out)
	if r := got["config"]; code != 1 || r.Status != "fail" || !strings.Contains(r.Detail, "config.yaml:2: agent.vcpu: unknown key (did you mean agent.vcpus?)") ||
		got["tun"].Status != "ok" {
		t.Errorf("bad config: exit %d, %+v", code, got)
	}
}

// TestDoctorKVM boots the driver's KVM probe, as the agent does: on these
// machines (nested PVM, or no /dev/kvm) KVM cannot run guests, and doctor
// says so as a warning naming the probe's failure and the cost; on a host
// where KVM works, it says that the probe reached userspace.
func TestDoctorKVM(t *testing.T) {
	e := newEnv(t)
	out, stderr, code := doctorRun(t, nil, e.data, "--json", "--check", "kvm")
	if code != 0 {
		t.Fatalf("exit %d: %s%s", code, out, stderr)
	}
	r := decodeDoctor(t, out)["kvm"]
	switch r.Status {
	case "warn":
		if !strings.Contains(r.Detail, "KVM cannot run guests here (") || !strings.Contains(r.Detail, "10-50x slower") ||
			!(strings.Contains(r.Detail, "probe boot under kvm") || strings.Contains(r.Detail, "/dev/kvm")) {
			t.Errorf("kvm: %+v", r)
		}
		if !strings.Contains(r.Fix, "nested virtualisation") {
			t.Errorf("kvm fix: %q", r.Fix)
		}
	case "ok":
		if !strings.Contains(r.Detail, "probe boot under kvm reached userspace") {
			t.Errorf("kvm: %+v", r)
		}
	default:
		t.Errorf("kvm: %+v", r)
	}
	t.Logf("kvm: %+v", r)
}

// TestMissingConfigFirstRun: tandem up and tandem server without a config
// say how to make one, or how to try Tandem without GitHub.
func TestMissingConfigFirstRun(t *testing.T) {
	for _, sub := range []string{"up", "server"} {
		missing := filepath.Join(t.TempDir(), "config.yaml")
		cmd := exec.Command(binary(t), "--data-dir", t.TempDir(), sub, "--config", missing)
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Fatalf("tandem %s without a config ran", sub)
		}
		for _, want := range []string{"no config file at " + missing, "tandem init --org ORG --webhook-url", "--config-dir " + filepath.Dir(missing), "tandem up --demo", "--config FILE"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("tandem %s: %s\nwant it to contain %q", sub, out, want)
			}
		}
	}
}
