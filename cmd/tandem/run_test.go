package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/image"
	"github.com/tandem-ci/tandem/internal/testenv"
	"github.com/tandem-ci/tandem/internal/testenv/testimages"
)

// These tests drive the real `tandem` binary as an operator would, inside
// the test's own network namespace, booting real VMs.

var (
	buildOnce sync.Once
	tandemBin string
	buildErr  error
)

func TestMain(m *testing.M) { os.Exit(testenv.RunInNetns(m)) }

// binary builds the tandem binary under test, once.
func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "tandem-bin")
		if err != nil {
			buildErr = err
			return
		}
		os.Chmod(dir, 0o755) // TestRunNeedsRoot runs it as nobody
		tandemBin = filepath.Join(dir, "tandem")
		if out, err := exec.Command("go", "build", "-o", tandemBin, ".").CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build tandem: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return tandemBin
}

// env is one test's Tandem host: a private data dir sharing the test images.
type env struct {
	t    *testing.T
	data string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	testenv.RequireVM(t)
	shared := testimages.DataDir(t)
	data := testenv.ShortTempDir(t)
	if err := os.Symlink(filepath.Join(shared, "images"), filepath.Join(data, "images")); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, data: data}
	t.Cleanup(func() { e.assertNoLeaks(nil) })
	return e
}

type result struct {
	stdout, stderr string
	code           int
}

func (e *env) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, binary(e.t), append([]string{"--data-dir", e.data}, args...)...)
	cmd.Env = append(os.Environ(), "TANDEM_DATA_DIR=")
	return cmd
}

func (e *env) run(args ...string) result {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := e.command(ctx, args...)
	var o, er bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &er
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("tandem %v: %v", args, err)
	}
	return result{o.String(), er.String(), code}
}

// assertNoLeaks checks that nothing of any VM remains (testenv.AssertNoLeaks).
func (e *env) assertNoLeaks(ids []string) {
	e.t.Helper()
	testenv.AssertNoLeaks(e.t, e.data, ids)
}

func TestRunPrintsGuestKernel(t *testing.T) {
	e := newEnv(t)
	r := e.run("run", "--", "uname", "-r")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	host, _ := exec.Command("uname", "-r").Output()
	got := strings.TrimSpace(r.stdout)
	if !strings.HasSuffix(got, "-cloud-amd64") || got == strings.TrimSpace(string(host)) {
		t.Errorf("uname -r in the VM printed %q (host %q): want Debian's cloud kernel", got, strings.TrimSpace(string(host)))
	}
}

func TestRunArm64(t *testing.T) {
	e := newEnv(t)
	r := e.run("run", "--arch", "arm64", "--json", "--", "uname", "-m")
	if r.code != 0 {
		t.Fatalf("exit %d: %s %s", r.code, r.stdout, r.stderr)
	}
	var j map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &j); err != nil {
		t.Fatalf("--json output: %v\n%s", err, r.stdout)
	}
	if j["stdout"] != "aarch64\n" || j["arch"] != "arm64" || j["emulated"] != true || j["accel"] != "tcg" {
		t.Errorf("arm64 run: %s", r.stdout)
	}
}

func TestRunExitCodeAndJSON(t *testing.T) {
	e := newEnv(t)
	if r := e.run("run", "--", "sh", "-c", "exit 7"); r.code != 7 {
		t.Fatalf("exit %d, want 7: %s", r.code, r.stderr)
	}
	r := e.run("run", "--json", "--cpus", "0.5", "--memory", "256M", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
	if r.code != 3 {
		t.Fatalf("exit %d, want 3: %s", r.code, r.stderr)
	}
	var j struct {
		ExitCode int              `json:"exit_code"`
		VMID     string           `json:"vm_id"`
		Arch     string           `json:"arch"`
		Accel    string           `json:"accel"`
		Emulated *bool            `json:"emulated"`
		Stdout   string           `json:"stdout"`
		Stderr   string           `json:"stderr"`
		Timings  map[string]int64 `json:"timings_ms"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &j); err != nil {
		t.Fatalf("--json: %v\n%s", err, r.stdout)
	}
	if j.ExitCode != 3 || j.Stdout != "out\n" || j.Stderr != "err\n" || j.Arch != "amd64" || j.Emulated == nil || *j.Emulated || j.VMID == "" || j.Accel == "" {
		t.Errorf("json result: %s", r.stdout)
	}
	for _, k := range []string{"prepare", "boot", "run", "teardown", "total"} {
		if _, ok := j.Timings[k]; !ok || j.Timings["total"] <= 0 {
			t.Errorf("timings_ms lacks %q: %v", k, j.Timings)
		}
	}
	e.assertNoLeaks([]string{j.VMID})
}

// TestRunGuestNetwork: a guest reaches the internet through NAT (the
// server sees the host's address), and nothing of its host but the mirror
// and DNS ports: a server on the bridge address is out of its reach.
func TestRunGuestNetwork(t *testing.T) {
	e := newEnv(t)
	// Bring the network up first (the bridge address must exist to listen on it).
	if r := e.run("run", "--", "true"); r.code != 0 {
		t.Fatalf("first run: %d %s", r.code, r.stderr)
	}
	hello := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello guest %s", strings.Split(r.RemoteAddr, ":")[0])
	})
	inet := testenv.Internet(t).Listen(t, 0)
	go http.Serve(inet, hello)
	onHost, err := net.Listen("tcp", "172.30.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer onHost.Close()
	go http.Serve(onHost, hello)
	// (Debian's static busybox 1.35 wget crashes with -q or -T: its progress
	// goes to stderr, and tandem's --timeout bounds it instead.)
	script := fmt.Sprintf("wget -O - http://%s/; echo; if timeout 5 wget -O - http://%s/ 2>/dev/null; then echo HOST-REACHED; fi",
		inet.Addr(), onHost.Addr())
	r := e.run("run", "--timeout", "90s", "--", "sh", "-c", script)
	want := "hello guest " + testenv.InternetGateway.String()
	if r.code != 0 || !strings.HasPrefix(r.stdout, want) {
		t.Errorf("guest → internet: exit %d, stdout %q (want %q first: the host's address, NAT), stderr %s", r.code, r.stdout, want, r.stderr)
	}
	if strings.Contains(r.stdout, "HOST-REACHED") || strings.Contains(r.stdout, "hello guest 172.30.0.") {
		t.Errorf("the guest reached a server on its host's bridge address: %q", r.stdout)
	}
}

func TestRunBadInput(t *testing.T) {
	e := newEnv(t)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--arch", "riscv64"}, "unknown architecture"},
		{[]string{"--cpus", "0"}, "--cpus must be more than 0"},
		{[]string{"--cpus", "4096"}, "more than this host has"},
		{[]string{"--memory", "100T"}, `--memory: bad size "100T"`},
		{[]string{"--memory", "100000G"}, "more than this host has"},
		{[]string{"--image", "no-such-image"}, "tandem image build"},
		{[]string{"--accel", "warp"}, "unknown accelerator"},
	}
	for _, c := range cases {
		r := e.run(append(append([]string{"run"}, c.args...), "--", "true")...)
		lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
		if r.code != exitTandem || !strings.Contains(r.stderr, c.want) || len(lines) != 1 {
			t.Errorf("tandem run %v: exit %d, stderr %q; want exit %d and one line containing %q", c.args, r.code, r.stderr, exitTandem, c.want)
		}
	}
}

func TestRunKVMRefusedWhereItCannotRun(t *testing.T) {
	e := newEnv(t)
	r := e.run("run", "--accel", "kvm", "--", "true")
	if r.code == 0 {
		t.Skip("SKIPPED: KVM works on this host, so --accel kvm is not refused here")
	}
	if r.code != exitTandem || !strings.Contains(r.stderr, "kvm cannot run a guest") {
		t.Errorf("--accel kvm: exit %d, stderr %q", r.code, r.stderr)
	}
	r = e.run("run", "--arch", "arm64", "--accel", "kvm", "--", "true")
	if r.code != exitTandem || !strings.Contains(r.stderr, "can only be emulated") {
		t.Errorf("--arch arm64 --accel kvm: exit %d, stderr %q", r.code, r.stderr)
	}
}

// privateImages is an env whose image store is a private copy of the
// shared test images, which the test may damage.
func privateImages(t *testing.T) (*env, *image.Store) {
	t.Helper()
	testenv.RequireVM(t)
	shared := testimages.DataDir(t)
	data := testenv.ShortTempDir(t)
	if out, err := exec.Command("cp", "-a", filepath.Join(shared, "images"), data).CombinedOutput(); err != nil {
		t.Fatalf("copy images: %v %s", err, out)
	}
	st, err := image.Open(filepath.Join(data, "images"))
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, data: data}, st
}

// flipByte inverts the byte at off in the file at path.
func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0) // root writes the read-only image files
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func TestRunCorruptImage(t *testing.T) {
	e, st := privateImages(t)
	im, err := st.Resolve("test-amd64")
	if err != nil {
		t.Fatal(err)
	}
	flipByte(t, im.Kernel(), 4096)
	r := e.run("run", "--", "true")
	if r.code != exitTandem || !strings.Contains(r.stderr, "corrupt") {
		t.Errorf("corrupt image: exit %d, stderr %q", r.code, r.stderr)
	}
	e.assertNoLeaks(nil)
}

func TestRunNeedsRoot(t *testing.T) {
	e := newEnv(t)
	cmd := e.command(context.Background(), "run", "--", "true")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitTandem || !strings.Contains(string(out), "needs root") {
		t.Errorf("as nobody: %v: %s", err, out)
	}
}

func TestImageCommands(t *testing.T) {
	e, st := privateImages(t)
	r := e.run("image", "list", "--json")
	var ims []struct {
		ID       string `json:"id"`
		Manifest struct {
			Arch string `json:"arch"`
		} `json:"manifest"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &ims); err != nil {
		t.Fatalf("image list --json: %v: %s", err, r.stdout)
	}
	// The shared store may also hold older builds; both refs must be listed.
	listed := map[string]string{}
	for _, im := range ims {
		listed[im.ID] = im.Manifest.Arch
	}
	for _, arch := range []string{"amd64", "arm64"} {
		im, err := st.Resolve("test-" + arch)
		if err != nil {
			t.Fatal(err)
		}
		if listed[im.ID] != arch {
			t.Errorf("image list --json lacks test-%s (%s): %s", arch, im.ID, r.stdout)
		}
	}
	if r := e.run("image", "verify", "test-amd64", "test-arm64"); r.code != 0 || strings.Count(r.stdout, " ok ") != 2 {
		t.Errorf("verify: exit %d: %s %s", r.code, r.stdout, r.stderr)
	}
	im, err := st.Resolve("test-arm64")
	if err != nil {
		t.Fatal(err)
	}
	flipByte(t, im.Initrd(), 100)
	if r := e.run("image", "verify", "test-arm64"); r.code == 0 || !strings.Contains(r.stderr, "corrupt") || !strings.Contains(r.stderr, "initrd") {
		t.Errorf("verify of a corrupt image: exit %d: %s", r.code, r.stderr)
	}
	if r := e.run("image", "rm", "test-arm64"); r.code != 0 || !strings.Contains(r.stdout, "removed "+im.ID) {
		t.Errorf("rm: exit %d: %s %s", r.code, r.stdout, r.stderr)
	}
	if r := e.run("run", "--arch", "arm64", "--", "true"); r.code != exitTandem || !strings.Contains(r.stderr, "tandem image build --kind test --arch arm64") {
		t.Errorf("run after rm: exit %d: %s", r.code, r.stderr)
	}
}
