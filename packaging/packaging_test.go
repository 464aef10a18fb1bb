package packaging

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"debug/elf"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/tandem-ci/tandem/internal/config"
	"github.com/tandem-ci/tandem/internal/hostdeps"
	"github.com/tandem-ci/tandem/internal/testenv"
)

// unit is a systemd unit file: section → key → values, in order.
type unit map[string]map[string][]string

func readUnit(t *testing.T, path string) unit {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: not a key=value line in a section: %q", path, n, line)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return u
}

func (u unit) get(section, key string) string {
	v := u[section][key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

func units(t *testing.T) map[string]unit {
	t.Helper()
	paths, err := filepath.Glob("systemd/*.service")
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]unit{}
	for _, p := range paths {
		m[filepath.Base(p)] = readUnit(t, p)
	}
	for _, want := range []string{"tandem-agent.service", "tandem-server.service", "tandem-up.service"} {
		if m[want] == nil {
			t.Fatalf("no %s in systemd/", want)
		}
	}
	return m
}

// TestUnits checks what a unit must get right for Tandem to work under it:
// the command, the state directory, and, for the two that run VMs, no
// sandboxing option that would take away what the agent needs.
func TestUnits(t *testing.T) {
	for name, u := range units(t) {
		t.Run(name, func(t *testing.T) {
			exec := u.get("Service", "ExecStart")
			role := strings.TrimSuffix(strings.TrimPrefix(name, "tandem-"), ".service")
			if !strings.HasPrefix(exec, "/usr/bin/tandem "+role) {
				t.Errorf("ExecStart=%s, want /usr/bin/tandem %s …", exec, role)
			}
			if got := u.get("Service", "StateDirectory"); got != "tandem" {
				t.Errorf("StateDirectory=%q, want tandem (the default --data-dir /var/lib/tandem; ProtectSystem=strict allows writes there only)", got)
			}
			if got := u.get("Install", "WantedBy"); got != "multi-user.target" {
				t.Errorf("WantedBy=%q", got)
			}
			for _, k := range []string{"NoNewPrivileges", "ProtectHome", "PrivateTmp"} {
				if u.get("Service", k) != "yes" {
					t.Errorf("%s is not yes", k)
				}
			}
			if u.get("Service", "ProtectSystem") != "strict" {
				t.Errorf("ProtectSystem=%q, want strict", u.get("Service", "ProtectSystem"))
			}
			if role == "server" {
				return
			}
			// Runs VMs: each of these would break it.
			for k, why := range map[string]string{
				"MemoryDenyWriteExecute": "QEMU's TCG writes and runs translated code",
				"ProtectControlGroups":   "each QEMU gets a cgroup of its own",
				"PrivateDevices":         "QEMU opens /dev/kvm and /dev/net/tun",
				"ProtectKernelTunables":  "the agent sets net.ipv4.ip_forward",
				"RestrictNamespaces":     "QEMU's sandbox and the agent use namespaces",
			} {
				if v := u.get("Service", k); v != "" && v != "no" && v != "false" {
					t.Errorf("%s=%s, but %s", k, v, why)
				}
			}
			if km := u.get("Service", "KillMode"); km != "process" {
				t.Errorf("KillMode=%q, want process: on SIGTERM the agent detaches from its VMs, which run on for the next agent "+
					"(or until its watchdog stops them); QEMU and the watchdog must not be killed with the service", km)
			}
			caps := u.get("Service", "CapabilityBoundingSet")
			if !strings.HasPrefix(caps, "~") {
				t.Fatalf("CapabilityBoundingSet=%q: want the ~ form, dropping what the agent never needs", caps)
			}
			for _, c := range []string{"CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_NET_BIND_SERVICE"} {
				if strings.Contains(caps, c) {
					t.Errorf("CapabilityBoundingSet drops %s, which the agent needs", c)
				}
			}
		})
	}
}

// tandemBin is the tandem binary scripts/build.sh made, or "".
func tandemBin() string {
	if d := os.Getenv("TANDEM_BIN"); d != "" {
		return filepath.Join(d, "tandem")
	}
	if p, err := filepath.Abs("../bin/tandem"); err == nil {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// TestUnitsUseRealFlags checks every flag the units and the agent's
// defaults file give against the binary's own --help.
func TestUnitsUseRealFlags(t *testing.T) {
	bin := tandemBin()
	if bin == "" {
		if testenv.InCI() {
			t.Fatal("no tandem binary: scripts/build.sh makes bin/tandem")
		}
		t.Skip("SKIPPED: no bin/tandem (scripts/build.sh makes it)")
	}
	def, err := os.ReadFile("tandem-agent.default")
	if err != nil {
		t.Fatal(err)
	}
	cmds := map[string]string{}
	for name, u := range units(t) {
		cmds[name] = strings.TrimPrefix(u.get("Service", "ExecStart"), "/usr/bin/tandem ")
	}
	// The commented example of TANDEM_AGENT_OPTS.
	m := regexp.MustCompile(`(?m)^#TANDEM_AGENT_OPTS="([^"]*)"`).FindSubmatch(def)
	if m == nil {
		t.Fatal("tandem-agent.default has no commented TANDEM_AGENT_OPTS example")
	}
	cmds["tandem-agent.default"] = "agent " + string(m[1])
	for where, c := range cmds {
		f := strings.Fields(c)
		help, err := exec.Command(bin, f[0], "--help").CombinedOutput()
		if err != nil {
			t.Fatalf("tandem %s --help: %v\n%s", f[0], err, help)
		}
		for _, a := range f[1:] {
			if flag, ok := strings.CutPrefix(a, "--"); ok && !strings.HasPrefix(flag, "$") {
				if !bytes.Contains(help, []byte("--"+flag+" ")) {
					t.Errorf("%s: tandem %s has no flag --%s", where, f[0], flag)
				}
			}
		}
	}
}

// TestExampleConfigLoads loads the shipped example as a new operator's
// /etc/tandem/config.yaml, with its secret files beside it.
func TestExampleConfigLoads(t *testing.T) {
	dir := t.TempDir()
	b, err := os.ReadFile("config.yaml.example")
	if err != nil {
		t.Fatal(err)
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	for name, content := range map[string][]byte{"config.yaml": b, "app.pem": pemKey, "webhook-secret": []byte("a-webhook-secret-of-32-characters\n")} {
		if err := os.WriteFile(filepath.Join(dir, name), content, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c, err := config.Load(filepath.Join(dir, "config.yaml"))
	if err != nil {
		t.Fatalf("the example config does not load: %v", err)
	}
	if c.GitHub.AppID != 123456 || c.Listen != "127.0.0.1:8080" || c.Runner.Scope != "repo" {
		t.Errorf("example config read as %+v", c)
	}
}

// debFixture is a Debian package of Tandem, installed by apt into a clean
// Debian chroot (scripts/package-chroot.sh), or for an architecture not the
// host's, its install simulated and its files extracted.
type debFixture struct {
	deb, root string
	installed bool
}

// fixture returns the chroot scripts/test.sh prepared for arch under
// $TANDEM_TEST_DATA/pkg, or prepares it.
func fixture(t *testing.T, arch string) debFixture {
	t.Helper()
	base := os.Getenv("TANDEM_TEST_DATA")
	if base == "" {
		base = "/var/tmp/tandem-test"
	}
	dir := filepath.Join(base, "pkg", arch)
	find := func() debFixture {
		debs, _ := filepath.Glob(filepath.Join(dir, "tandem_*_"+arch+".deb"))
		if len(debs) != 1 {
			return debFixture{}
		}
		mode, err := os.ReadFile(filepath.Join(dir, "mode"))
		if err != nil {
			return debFixture{}
		}
		return debFixture{deb: debs[0], root: filepath.Join(dir, "root"), installed: strings.TrimSpace(string(mode)) == "installed"}
	}
	if f := find(); f.deb != "" {
		return f
	}
	t.Logf("building the %s package and its chroot in %s", arch, dir)
	cmd := exec.Command("../scripts/package-chroot.sh", arch, dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("scripts/package-chroot.sh %s: %v\n%s", arch, err, out)
	}
	f := find()
	if f.deb == "" {
		t.Fatalf("scripts/package-chroot.sh %s left no package and chroot in %s", arch, dir)
	}
	return f
}

// in runs a command in the fixture's chroot.
func (f debFixture) in(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("chroot", append([]string{f.root}, args...)...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive"}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (f debFixture) field(t *testing.T, name string) string {
	t.Helper()
	out, err := exec.Command("dpkg-deb", "--field", f.deb, name).Output()
	if err != nil {
		t.Fatalf("dpkg-deb --field %s: %v", name, err)
	}
	return strings.TrimSpace(string(out))
}

// TestDebianPackage installs nothing itself: scripts/package-chroot.sh has
// apt install the package, with only what it depends on, into a clean
// Debian 12 tree; this test checks the result the way a host uses it, then
// removes, purges, reinstalls and upgrades it there (offline, from the .deb).
// The other architecture's package, whose install apt only simulated (its
// Depends resolve there), is checked for its files and its binary runs.
func TestDebianPackage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds Debian packages and chroots: not run with -short")
	}
	testenv.RequireRoot(t)
	for _, arch := range []string{"amd64", "arm64"} {
		t.Run(arch, func(t *testing.T) { checkPackage(t, fixture(t, arch), arch) })
	}
}

func checkPackage(t *testing.T, f debFixture, arch string) {
	version := f.field(t, "Version")
	if f.field(t, "Architecture") != arch {
		t.Errorf("Architecture: %s, want %s", f.field(t, "Architecture"), arch)
	}
	// The package depends on what running VMs needs, as hostdeps names it.
	depends := map[string]bool{}
	for _, d := range strings.Split(f.field(t, "Depends"), ",") {
		depends[strings.Fields(d)[0]] = true
	}
	for _, r := range append(hostdeps.QEMU(arch), hostdeps.Network()...) {
		if !depends[r.Package] {
			t.Errorf("Depends lacks %s, which provides %s (%s)", r.Package, r.Name, r.Why)
		}
	}

	// The binaries: tandem for the package's architecture, the guest agents
	// for both; all static, so that they run on any Debian release.
	machine := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}
	for path, a := range map[string]string{
		"usr/bin/tandem": arch, "usr/lib/tandem/tandem-guest-amd64": "amd64", "usr/lib/tandem/tandem-guest-arm64": "arm64",
	} {
		e, err := elf.Open(filepath.Join(f.root, path))
		if err != nil {
			t.Errorf("%s: %v", path, err)
			continue
		}
		if e.Machine != machine[a] {
			t.Errorf("%s is for %v, want %s", path, e.Machine, a)
		}
		for _, p := range e.Progs {
			if p.Type == elf.PT_INTERP {
				t.Errorf("%s is dynamically linked", path)
			}
		}
		e.Close()
	}

	// Static, so it runs in the extracted tree too (through qemu-user
	// for the other architecture).
	out, err := f.in(t, "/usr/bin/tandem", "--version")
	if err != nil || strings.TrimSpace(out) != "tandem version "+version {
		t.Errorf("tandem --version: %q, %v; want tandem version %s", out, err, version)
	}
	if !f.installed {
		t.Logf("the %s package's install was simulated (not this host's architecture): its units and scripts are checked with the host's", arch)
		return
	}
	// apt installed the Depends alone: they must be all an agent needs.
	if out, err := f.in(t, "tandem", "deps", "--for", "vm", "--arch", arch); err != nil {
		t.Errorf("tandem deps --for vm in a host with only the package's Depends: %v\n%s", err, out)
	}
	verify := []string{"systemd-analyze", "verify"}
	for name := range units(t) {
		verify = append(verify, "/lib/systemd/system/"+name)
	}
	if out, err := f.in(t, verify...); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	if out, _ := f.in(t, "dpkg-query", "-W", "-f", "${Status}", "tandem"); out != "install ok installed" {
		t.Fatalf("tandem's status in the chroot: %q", out)
	}

	// Remove keeps the conffile, purge removes it; reinstall and upgrade
	// (the same .deb again) keep an operator's edit of it.
	conf := filepath.Join(f.root, "etc/default/tandem-agent")
	debIn := "/tmp/" + filepath.Base(f.deb)
	copyFile(t, f.deb, filepath.Join(f.root, debIn))
	steps := []struct {
		args     []string
		bin, cfg bool // /usr/bin/tandem and the conffile present after
	}{
		{[]string{"dpkg", "--remove", "tandem"}, false, true},
		{[]string{"dpkg", "--purge", "tandem"}, false, false},
		{[]string{"dpkg", "--install", debIn}, true, true},
	}
	for _, s := range steps {
		if out, err := f.in(t, s.args...); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(s.args, " "), err, out)
		}
		if got := exists(filepath.Join(f.root, "usr/bin/tandem")); got != s.bin {
			t.Errorf("after %s: /usr/bin/tandem present = %v", strings.Join(s.args, " "), got)
		}
		if got := exists(conf); got != s.cfg {
			t.Errorf("after %s: /etc/default/tandem-agent present = %v", strings.Join(s.args, " "), got)
		}
	}
	edited := "TANDEM_AGENT_OPTS=\"--server https://cp.test:8443\"\n"
	if err := os.WriteFile(conf, []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := f.in(t, "dpkg", "--force-confold", "--install", debIn); err != nil {
		t.Fatalf("upgrade: %v\n%s", err, out)
	}
	if b, _ := os.ReadFile(conf); string(b) != edited {
		t.Errorf("upgrade replaced the operator's /etc/default/tandem-agent with %q", b)
	}
	if fi, err := os.Stat(filepath.Join(f.root, "etc/tandem")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("/etc/tandem (for secrets): %v, %v; want a 0700 directory", fi, err)
	}
	os.Remove(filepath.Join(f.root, debIn))
	if out, _ := f.in(t, "dpkg", "--audit"); strings.TrimSpace(out) != "" {
		t.Errorf("dpkg --audit: %s", out)
	}
}

func exists(p string) bool { _, err := os.Lstat(p); return err == nil }

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
