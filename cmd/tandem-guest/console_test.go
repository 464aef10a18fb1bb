package main

import (
	"strings"
	"testing"
	"time"
)

func TestConsoleLines(t *testing.T) {
	var b strings.Builder
	c := newConsole(&b, func() time.Duration { return 1234567 * time.Microsecond })
	c.logf("modules: %d loaded", 3)
	c.fatalf("root: %s\n", "gone")
	c.raw("TANDEM-PROBE-OK")
	want := "tandem-guest: [1.234] modules: 3 loaded\ntandem-guest: [1.234] fatal: root: gone\nTANDEM-PROBE-OK\n"
	if b.String() != want {
		t.Fatalf("got %q, want %q", b.String(), want)
	}
	if ms(1500*time.Millisecond) != "1500ms" || ms(12340*time.Millisecond) != "12.3s" {
		t.Fatal("ms")
	}
}
