package mirror

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tandem-ci/tandem/internal/ociimage"
	"github.com/tandem-ci/tandem/internal/syncbuf"
	"github.com/tandem-ci/tandem/internal/testenv"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv("TANDEM_FAKE_REGISTRY"); mode != "" {
		fakeRegistryMain(mode)
	}
	if os.Getenv("TANDEM_MIRROR_HELPER") != "" {
		os.Exit(m.Run()) // in the namespace of the test that runs it
	}
	os.Exit(testenv.RunInNetns(m))
}

// testLogger returns a debug logger writing into a buffer.
func testLogger() (*slog.Logger, *syncbuf.Buffer) {
	buf := &syncbuf.Buffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

func requireBinary(t testing.TB) {
	t.Helper()
	if _, err := FindBinary(""); err != nil {
		t.Fatal(err) // CI installs it (scripts/install-deps.sh)
	}
}

// upstream is a plain docker-registry: the registry a mirror mirrors. As
// root in the test's private namespace it runs in a network namespace of
// its own, joined to the test's by a veth pair (10.231.N.0/30: the test's
// end .1, the registry's .2); otherwise on loopback.
type upstream struct {
	t        testing.TB
	url      string
	hostAddr string // the address on the test's side, for the mirror to listen on
	ns       string
	dir      string
	cfg      string
	access   *syncbuf.Buffer // the registry's access log (stdout)
	errs     *syncbuf.Buffer // its own log (stderr)
	cmd      *exec.Cmd
	done     chan struct{}
}

var nsSeq atomic.Int32

// useNetns reports whether tests may make network namespaces and links:
// as root, inside the private namespace testenv.RunInNetns made.
func useNetns() bool { return os.Geteuid() == 0 && testenv.NetnsName() != "" }

func sh(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%v: %v: %s", args, err, out)
	}
}

func startUpstream(t testing.TB) *upstream {
	t.Helper()
	requireBinary(t)
	u := &upstream{t: t, dir: t.TempDir(), access: &syncbuf.Buffer{}, errs: &syncbuf.Buffer{}}
	listen := ""
	if useNetns() {
		n := nsSeq.Add(1)
		u.ns = fmt.Sprintf("tdmmirror-%d-%d", os.Getpid(), n)
		sh(t, "ip", "netns", "add", u.ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "delete", u.ns).Run() })
		veth := fmt.Sprintf("tdmmir%d", n)
		sh(t, "ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", u.ns)
		t.Cleanup(func() { exec.Command("ip", "link", "del", veth).Run() })
		u.hostAddr = fmt.Sprintf("10.231.%d.1", n)
		sh(t, "ip", "addr", "add", u.hostAddr+"/30", "dev", veth)
		sh(t, "ip", "link", "set", veth, "up")
		sh(t, "ip", "-n", u.ns, "addr", "add", fmt.Sprintf("10.231.%d.2/30", n), "dev", "eth0")
		sh(t, "ip", "-n", u.ns, "link", "set", "eth0", "up")
		sh(t, "ip", "-n", u.ns, "link", "set", "lo", "up")
		listen = fmt.Sprintf("10.231.%d.2:5000", n)
	} else {
		u.hostAddr = "127.0.0.1"
		p, err := freePort(netip.MustParseAddr("127.0.0.1"))
		if err != nil {
			t.Fatal(err)
		}
		listen = fmt.Sprintf("127.0.0.1:%d", p)
	}
	u.url = "http://" + listen
	body, err := renderConfig(listen, filepath.Join(u.dir, "store"), "", "", "", "")
	if err != nil {
		t.Fatal(err)
	}
	// The upstream keeps its access log: the tests count requests in it.
	var rc registryConfig
	if err := yaml.Unmarshal(body, &rc); err != nil {
		t.Fatal(err)
	}
	rc.Log.AccessLog.Disabled = false
	rc.Log.Fields["service"] = "test-upstream"
	if body, err = yaml.Marshal(&rc); err != nil {
		t.Fatal(err)
	}
	u.cfg = filepath.Join(u.dir, "config.yml")
	if err := os.WriteFile(u.cfg, body, 0o600); err != nil {
		t.Fatal(err)
	}
	u.start()
	t.Cleanup(u.stop)
	t.Logf("upstream registry at %s (network namespace %q)", u.url, u.ns)
	return u
}

func (u *upstream) start() {
	t := u.t
	t.Helper()
	bin, _ := FindBinary("")
	args := []string{bin, "serve", u.cfg}
	if u.ns != "" {
		args = append([]string{"ip", "netns", "exec", u.ns}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = u.access, u.errs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	u.cmd, u.done = cmd, make(chan struct{})
	go func() { cmd.Wait(); close(u.done) }()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if resp, err := http.Get(u.url + "/v2/"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		select {
		case <-u.done:
			t.Fatalf("upstream registry exited: %s", u.errs)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("upstream registry did not answer: %s", u.errs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop kills the upstream (it is the test's: no need to be gentle).
func (u *upstream) stop() {
	if u.cmd == nil {
		return
	}
	u.cmd.Process.Kill()
	<-u.done
	u.cmd = nil
}

var accessRe = regexp.MustCompile(`"(GET|HEAD|POST|PUT|PATCH|DELETE) (\S+) HTTP/`)

// requests lists the upstream's requests so far, "METHOD PATH".
func (u *upstream) requests() []string {
	var out []string
	for _, m := range accessRe.FindAllStringSubmatch(u.access.String(), -1) {
		out = append(out, m[1]+" "+m[2])
	}
	return out
}

// quiet waits until the upstream's access log has not grown for a while:
// its log line is written after the response, and the mirror stores a
// blob in the background after it has served it.
func (u *upstream) quiet() []string {
	last, since := -1, time.Now()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		n := len(u.access.String())
		if n != last {
			last, since = n, time.Now()
		} else if time.Since(since) > 400*time.Millisecond {
			break
		}
	}
	return u.requests()
}

func filter(reqs []string, pred func(string) bool) []string {
	var out []string
	for _, r := range reqs {
		if pred(r) {
			out = append(out, r)
		}
	}
	return out
}

func isBlob(r string) bool { return strings.Contains(r, "/blobs/") }

// accept is what dockerd sends when it asks for a manifest.
var accept = strings.Join([]string{ociimage.MediaTypeManifest, "application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json"}, ", ")

// pull fetches repo@ref from a registry as a client does — the manifest,
// then every blob it names — checks every digest and returns the bytes
// transferred.
func pull(ctx context.Context, client *http.Client, base, repo, ref, wantDigest string) (int64, error) {
	get := func(path string, hdr map[string]string) ([]byte, http.Header, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
		if err != nil {
			return nil, nil, err
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return nil, nil, err
		}
		if resp.StatusCode != http.StatusOK {
			return nil, nil, fmt.Errorf("GET %s: %s: %.300s", path, resp.Status, b)
		}
		return b, resp.Header, nil
	}
	man, hdr, err := get("/v2/"+repo+"/manifests/"+ref, map[string]string{"Accept": accept})
	if err != nil {
		return 0, err
	}
	if d := sha(man); d != wantDigest || hdr.Get("Docker-Content-Digest") != wantDigest {
		return 0, fmt.Errorf("manifest digest %s (header %s), want %s", d, hdr.Get("Docker-Content-Digest"), wantDigest)
	}
	var m struct {
		Config struct{ Digest string }
		Layers []struct{ Digest string }
	}
	if err := json.Unmarshal(man, &m); err != nil {
		return 0, fmt.Errorf("manifest: %w", err)
	}
	n := int64(len(man))
	digests := []string{m.Config.Digest}
	for _, l := range m.Layers {
		digests = append(digests, l.Digest)
	}
	for _, d := range digests {
		b, _, err := get("/v2/"+repo+"/blobs/"+d, nil)
		if err != nil {
			return n, err
		}
		if sha(b) != d {
			return n, fmt.Errorf("blob %s arrived as %s", d, sha(b))
		}
		n += int64(len(b))
	}
	return n, nil
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// busybox is a test image; extra adds a file of that many random bytes
// (incompressible, so the layer is about that much bigger).
func busybox(t testing.TB, extra int) *ociimage.Image {
	t.Helper()
	bb, arch, err := ociimage.HostBusybox()
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	if extra > 0 {
		b := make([]byte, extra)
		if _, err := io.ReadFull(rand.Reader, b); err != nil {
			t.Fatal(err)
		}
		files["data/random"] = b
	}
	im, err := ociimage.Busybox(bb, arch, files)
	if err != nil {
		t.Fatal(err)
	}
	return im
}

// waitCached waits until the mirror has stored every blob of im for repo
// (the proxy stores a blob in the background after serving it; until the
// store is committed another request for it still goes upstream).
func waitCached(t testing.TB, cacheDir, repo string, im *ociimage.Image) {
	t.Helper()
	digests := append([]string{im.ConfigDigest()}, im.LayerDigests()...)
	deadline := time.Now().Add(20 * time.Second)
	for _, d := range digests {
		link := filepath.Join(cacheDir, "docker/registry/v2/repositories", repo, "_layers/sha256", strings.TrimPrefix(d, "sha256:"), "link")
		for {
			if _, err := os.Stat(link); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("blob %s of %s never reached the cache", d, repo)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}
