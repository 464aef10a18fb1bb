package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/image"
	"github.com/tandem-ci/tandem/internal/ociimage"
	"github.com/tandem-ci/tandem/internal/testenv"
	"github.com/tandem-ci/tandem/internal/testenv/testimages"
)

// serveToVMs serves files to the VMs from the test's internet (VMs reach
// nothing of their host but its mirror and DNS) and returns host:port.
func serveToVMs(t *testing.T, files map[string][]byte) string {
	t.Helper()
	ln := testenv.Internet(t).Listen(t, 0)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, ok := files[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write(b)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// A job in the runner image runs as the runner account, with its own
// Docker daemon: it loads an image from a tarball, builds one from a
// Dockerfile, and runs containers, one of which fetches a page from this
// host through Docker's network and the VM's. It also pulls a "Docker Hub"
// image through the host's registry mirror, whose upstream is a real
// registry in this test's network namespace; a second VM pulls it again,
// and no layer of it reaches the upstream a second time.
func TestRunnerImageDocker(t *testing.T) {
	testenv.RequireVM(t) // before the image, which -short would build for nothing
	dir := testimages.Runner(t, "amd64")
	bb, arch, err := ociimage.HostBusybox()
	if err != nil {
		t.Fatal(err)
	}
	im, err := ociimage.Busybox(bb, arch, nil)
	if err != nil {
		t.Fatal(err)
	}
	var archive bytes.Buffer
	if err := im.WriteDockerArchive(&archive, "tandem-test/busybox:1"); err != nil {
		t.Fatal(err)
	}
	up := startUpstreamRegistry(t)
	hub, err := ociimage.Busybox(bb, arch, map[string][]byte{"/etc/hub-image": []byte("pulled-through-the-mirror\n")})
	if err != nil {
		t.Fatal(err)
	}
	if err := hub.Push(t.Context(), http.DefaultClient, up.reg, "library/tandem-hub", "1"); err != nil {
		t.Fatal(err)
	}
	s := newSystem(t, options{dataDir: dir, runner: "  image_amd64: runner-amd64\n",
		extra: "  mirror:\n    upstream: " + up.url + "\n    insecure_upstream: true\n"})
	hostport := serveToVMs(t, map[string][]byte{
		"/busybox.tar": archive.Bytes(), "/hello": []byte("hello-from-the-host\n"),
	})
	s.install("acme", "app")
	pull := `docker pull tandem-hub:1
docker run --rm tandem-hub:1 cat /etc/hub-image
`
	script := fmt.Sprintf(`set -eux
echo "user=$(id -un) groups=$(id -Gn) runner=$(readlink /proc/$PPID/exe)"
echo "init=$(cat /proc/1/comm) agents=$(pgrep -xc tandem-guest) agent-cgroup=$(cat /proc/$(pgrep -xo tandem-guest)/cgroup) docker-socket=$(test -S /run/docker.sock && echo yes)"
echo "tmp=[$(ls -A /tmp | grep -vxE '[.](X11|ICE|XIM|font)-unix|systemd-private-.*' | tr '\n' ' ')]"
echo early > /tmp/early
sudo -n true && echo sudo-ok
echo "docker=$(docker info --format '{{.CgroupVersion}}/{{.Driver}} mirrors={{.RegistryConfig.Mirrors}}')"
curl -fsS -o /tmp/busybox.tar http://%[1]s/busybox.tar
docker load -i /tmp/busybox.tar
mkdir -p /tmp/ctx
printf 'FROM tandem-test/busybox:1\nRUN echo built-in-the-vm > /built\n' > /tmp/ctx/Dockerfile
docker build -t tandem-test/built:1 /tmp/ctx
docker run --rm tandem-test/built:1 cat /built
docker run --rm tandem-test/busybox:1 wget -O - http://%[1]s/hello
echo "kept=$(cat /tmp/early)"
`, hostport) + pull
	up.take() // the push
	j := runJob(t, s, script)
	// tmp=[]: the job's /tmp holds nothing but what systemd makes there
	// (X11 socket directories, services' private /tmp), though the runner no longer waits for systemd's
	// boot-time cleaning of it (tandem-guest empties it before systemd
	// starts); kept=early: nothing emptied it under the running job.
	// init=systemd agents=1 agent-cgroup=0::/init.scope: the guest agent
	// that PID 1 started before handing over to systemd runs the job
	// (systemd moved it into its own scope, as all it found running, not a
	// unit's), and no second one; docker-socket=yes: the image's
	// job-started hook held the first step until Docker's socket was there.
	for _, want := range []string{"user=runner", "init=systemd agents=1 agent-cgroup=0::/init.scope docker-socket=yes", "tmp=[]", "kept=early", " docker", "sudo-ok", "docker=2/overlay2",
		"mirrors=[http://" + s.gateway + ":5000/]", "built-in-the-vm", "hello-from-the-host", "pulled-through-the-mirror"} {
		if !strings.Contains(j.Output, want) {
			t.Errorf("job output lacks %q", want)
		}
	}
	// The image starts GitHub's runner layout (run.sh --jitconfig) when it
	// was built with a runner tarball, tandem-fakerunner otherwise.
	st, err := image.Open(filepath.Join(dir, "images"))
	if err != nil {
		t.Fatal(err)
	}
	ri, err := st.Resolve("runner-amd64")
	if err != nil {
		t.Fatal(err)
	}
	want := "runner=/usr/bin/tandem-fakerunner"
	if ri.Manifest.Runner.TarballSHA256 != "" {
		want = "runner=/home/runner/actions-runner/bin/Runner.Listener"
	}
	if !strings.Contains(j.Output, want) {
		t.Errorf("job output lacks %q: the image's runner did not run the job", want)
	}
	// The first pull fetched every blob from the upstream (distribution's
	// proxy fetches a missed blob twice: for the client and for its store).
	first := up.take()
	fetched := map[string]bool{}
	for _, r := range blobGets(first) {
		fetched[r[strings.LastIndex(r, "/")+1:]] = true
	}
	for _, d := range append(hub.LayerDigests(), hub.ConfigDigest()) {
		if !fetched[d] {
			t.Errorf("first pull: blob %s never reached the upstream: %q", d, first)
		}
	}

	// Another VM, the same pull: served from the host's cache.
	j = runJob(t, s, "set -eux\n"+pull)
	if !strings.Contains(j.Output, "pulled-through-the-mirror") {
		t.Errorf("second pull: output lacks the image's file")
	}
	second := up.take()
	t.Logf("second pull, upstream requests: %q", second)
	if b := blobGets(second); len(b) > 0 {
		t.Errorf("second pull by another VM fetched %q from the upstream", b)
	}
}

// runJob queues script as a job of acme/app on an amd64 2-vCPU 2 GiB VM,
// waits for it, and fails the test unless it succeeded.
func runJob(t *testing.T, s *system, script string) ghfake.JobInfo {
	t.Helper()
	id, _ := s.gh.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"tandem-2cpu-2gb"}, Script: script})
	s.waitGitHubDone([]int64{id}, 8*time.Minute)
	j, _ := s.gh.Job(id)
	t.Logf("job %d output:\n%s", id, j.Output)
	if j.Conclusion != "success" {
		t.Fatalf("job %d: conclusion %q (exit %d)", id, j.Conclusion, j.ExitCode)
	}
	s.waitTandemState([]int64{id}, time.Minute, "completed")
	return j
}

// busyboxFor returns Debian's static busybox for arch, from the package
// the test images were built with.
func busyboxFor(t *testing.T, dataDir, arch string) []byte {
	t.Helper()
	debs, _ := filepath.Glob(filepath.Join(dataDir, "cache", "busybox-static_*_"+arch+".deb"))
	if len(debs) == 0 {
		t.Fatalf("no busybox-static package for %s in %s/cache", arch, dataDir)
	}
	dir := t.TempDir()
	if out, err := exec.Command("dpkg-deb", "-x", debs[0], dir).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb: %v: %s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(dir, "bin", "busybox"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The arm64 runner image boots under emulation (TCG: slow) and runs a job
// with Docker: an arm64 container from a tarball.
func TestRunnerImageArm64(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: an emulated arm64 VM with systemd and Docker")
	}
	testenv.RequireVM(t)
	dir := testimages.Runner(t, "arm64")
	im, err := ociimage.Busybox(busyboxFor(t, dir, "arm64"), "arm64", nil)
	if err != nil {
		t.Fatal(err)
	}
	var archive bytes.Buffer
	if err := im.WriteDockerArchive(&archive, "tandem-test/busybox:arm64"); err != nil {
		t.Fatal(err)
	}
	s := newSystem(t, options{dataDir: dir, runner: "  image_arm64: runner-arm64\n"})
	hostport := serveToVMs(t, map[string][]byte{"/busybox.tar": archive.Bytes()})
	s.install("acme", "app")
	script := fmt.Sprintf(`set -eux
echo "arch=$(uname -m) user=$(id -un)"
curl -fsS -o /tmp/busybox.tar http://%s/busybox.tar
docker load -i /tmp/busybox.tar
docker run --rm tandem-test/busybox:arm64 sh -c 'echo "container=$(uname -m)"'
`, hostport)
	id, _ := s.gh.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"tandem-arm64-2cpu-2gb"}, Script: script})
	s.waitGitHubDone([]int64{id}, 10*time.Minute)
	j, _ := s.gh.Job(id)
	t.Logf("job output:\n%s", j.Output)
	if j.Conclusion != "success" {
		t.Fatalf("job %d: conclusion %q (exit %d)", id, j.Conclusion, j.ExitCode)
	}
	for _, want := range []string{"arch=aarch64 user=runner", "container=aarch64"} {
		if !strings.Contains(j.Output, want) {
			t.Errorf("job output lacks %q", want)
		}
	}
	s.waitTandemState([]int64{id}, time.Minute, "completed")
}
