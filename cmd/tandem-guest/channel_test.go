package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestFindPort(t *testing.T) {
	dir := t.TempDir()
	mk := func(dev, name string) {
		os.MkdirAll(filepath.Join(dir, dev), 0o755)
		if name != "" {
			os.WriteFile(filepath.Join(dir, dev, "name"), []byte(name+"\n"), 0o644)
		}
	}
	mk("vport0p0", "")
	mk("vport0p1", "org.qemu.guest_agent.0")
	if dev, seen := findPort(dir, "tandem.0"); dev != "" || !strings.Contains(strings.Join(seen, " "), "vport0p1=org.qemu.guest_agent.0") {
		t.Fatalf("findPort = %q %q", dev, seen)
	}
	mk("vport0p2", "tandem.0")
	if dev, _ := findPort(dir, "tandem.0"); dev != "vport0p2" {
		t.Fatalf("findPort = %q", dev)
	}
	if dev, seen := findPort(filepath.Join(dir, "missing"), "tandem.0"); dev != "" || seen != nil {
		t.Fatal("missing dir")
	}
}

func TestParseUptime(t *testing.T) {
	d, err := parseUptime("12.34 56.78\n")
	if err != nil || d != 12340*time.Millisecond {
		t.Fatalf("parseUptime = %v %v", d, err)
	}
	for _, bad := range []string{"", "x 1", "-1 2"} {
		if _, err := parseUptime(bad); err == nil {
			t.Errorf("parseUptime(%q) succeeded", bad)
		}
	}
}
