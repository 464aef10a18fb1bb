package main

import (
	"strings"
	"testing"
)

func TestParseModuleList(t *testing.T) {
	in := "# virtio stack, in dependency order\r\nvirtio.ko\n\n  virtio_ring.ko  \nvirtio_mmio.ko\n/abs/virtio_blk.ko.xz\n"
	got, err := parseModuleList(strings.NewReader(in), "/lib/modules")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/lib/modules/virtio.ko", "/lib/modules/virtio_ring.ko", "/lib/modules/virtio_mmio.ko", "/abs/virtio_blk.ko.xz"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("got %q, want %q", got, want)
	}
	if _, err := parseModuleList(strings.NewReader("a.ko\nb.ko debug=1\n"), "/m"); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("want a line 2 error, got %v", err)
	}
	if got, err := parseModuleList(strings.NewReader(""), "/m"); err != nil || len(got) != 0 {
		t.Fatalf("empty list: %q %v", got, err)
	}
}

func TestModuleNames(t *testing.T) {
	if n := moduleName("/lib/modules/virtio_net.ko"); n != "virtio_net" {
		t.Fatal(n)
	}
	if n := moduleName("failover.ko.zst"); n != "failover" {
		t.Fatal(n)
	}
	if compressedModule("/lib/modules/virtio.ko") || !compressedModule("virtio.ko.xz") {
		t.Fatal("compressedModule")
	}
}

func TestModuleParams(t *testing.T) {
	cmdline := "console=ttyS0 virtio_mmio.device=512@0xfeb00e00:12 virtio-mmio.device=512@0xfeb00c00:11 virtio_blk.queue_depth=8 virtio_mmiox.bad=1 quiet"
	if got, want := moduleParams(cmdline, "virtio_mmio"), "device=512@0xfeb00e00:12 device=512@0xfeb00c00:11"; got != want {
		t.Errorf("virtio_mmio params %q, want %q", got, want)
	}
	if got := moduleParams(cmdline, "virtio_blk"); got != "queue_depth=8" {
		t.Errorf("virtio_blk params %q", got)
	}
	if got := moduleParams(cmdline, "virtio_net"); got != "" {
		t.Errorf("virtio_net params %q, want none", got)
	}
}
