package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tandem-ci/tandem/internal/testenv"
	"github.com/tandem-ci/tandem/internal/testenv/testimages"
)

// tandem up --demo --demo-exit, as scripts/demo.sh runs it away from a
// terminal: a job on each architecture runs in its own VM against the
// emulated GitHub, Tandem prints both jobs' stories and outputs and the
// dashboard's address, exits 0, and leaves nothing behind: no VM, no
// watchdog, not the demo's namespace or veth.
func TestUpDemo(t *testing.T) {
	testenv.RequireVM(t)
	data := testenv.ShortTempDir(t)
	if err := os.Symlink(filepath.Join(testimages.DataDir(t), "images"), filepath.Join(data, "images")); err != nil {
		t.Fatal(err)
	}
	// A namespace of its own: the demo's addresses are those of the
	// test's internet (testenv.Internet), which other tests here use.
	ns := fmt.Sprintf("tdm-e2e-%d-demo", os.Getpid())
	sh(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	sh(t, "ip", "-n", ns, "link", "set", "lo", "up")
	cmd := exec.Command("nsenter", "--net=/run/netns/"+ns, "--", binary(t), "--data-dir", data, "up", "--demo", "--demo-exit")
	cmd.Env = append(os.Environ(), "TANDEM_DATA_DIR=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("tandem up --demo --demo-exit: %v\n%s", err, out)
	}
	for _, want := range []string{
		"hello from a x86_64 runner VM", "hello from a aarch64 runner VM",
		"completed(success)", "transitions:", "The dashboard: http://198.51.100.1:8080/",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the demo's output lacks %q:\n%s", want, out)
		}
	}
	if b, err := os.ReadFile(filepath.Join(data, "demo", "config.yaml")); err != nil || !strings.Contains(string(b), "api_url: http://198.51.100.2:9000/") {
		t.Errorf("the demo's config: %v\n%s", err, b)
	}
	testenv.AssertNoLeaks(t, data, nil)
	if out, _ := exec.Command("ip", "netns", "list").CombinedOutput(); strings.Contains(string(out), "tandem-demo-inet") {
		t.Errorf("the demo's namespace is left: %s", out)
	}
	if err := exec.Command("ip", "-n", ns, "link", "show", "tdmdemo0").Run(); err == nil {
		t.Errorf("the demo's veth is left")
	}
}
