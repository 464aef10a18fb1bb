package controlplane_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/agent"
	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/image"
	"github.com/tandem-ci/tandem/internal/image/imagetest"
	"github.com/tandem-ci/tandem/internal/labels"
	"github.com/tandem-ci/tandem/internal/store"
)

// newImageFleet is a fleet whose control plane names the images of its own
// store cpImages (test-amd64 must be there).
func newImageFleet(t *testing.T, cpImages *image.Store, configure func(*controlplane.Config)) *fleet {
	t.Helper()
	return newFleetWith(t, func(c *controlplane.Config) {
		c.Images = cpImages
		c.Runner.Images = map[arch.Arch]string{arch.AMD64: "test-amd64", arch.ARM64: "test-arm64"}
		if configure != nil {
			configure(c)
		}
	})
}

// countingSource counts what an agent asks the control plane for.
type countingSource struct {
	image.Source
	manifests, files atomic.Int32
}

func (c *countingSource) Manifest(ctx context.Context, id string) ([]byte, error) {
	c.manifests.Add(1)
	return c.Source.Manifest(ctx, id)
}

func (c *countingSource) File(ctx context.Context, id, name string, offset int64) (io.ReadCloser, error) {
	c.files.Add(1)
	return c.Source.File(ctx, id, name, offset)
}

// fetchingAgent is a remote agent whose host fetches its images from the
// control plane into a store of its own, as `tandem agent` does.
type fetchingAgent struct {
	*remoteAgent
	store  *image.Store
	source *countingSource
}

func (f *fleet) joinFetching(id string) *fetchingAgent {
	f.t.Helper()
	creds, err := agentapi.Enroll(context.Background(), f.tlsSrv.URL, f.enrollToken(), id)
	if err != nil {
		f.t.Fatal(err)
	}
	st, err := image.Open(filepath.Join(f.t.TempDir(), "agent-images"))
	if err != nil {
		f.t.Fatal(err)
	}
	client := agentapi.NewClient(creds)
	src := &countingSource{Source: client}
	images := agent.NewImages(st, src, slog.New(slog.NewTextHandler(io.Discard, nil)))
	h := newGoHost(creds.HostID)
	h.images = images
	d := &agentapi.Daemon{Client: client, AgentVersion: "test", HeartbeatInterval: fleetHeartbeat,
		Capacity: func() agentapi.Capacity {
			return agentapi.Capacity{VCPUs: 4, MemoryMiB: 8192, Arches: []agentapi.ArchSupport{{Arch: arch.AMD64}}}
		}}
	h.sink = d.Event
	d.Bind(h)
	ctx, cancel := context.WithCancel(context.Background())
	a := &remoteAgent{id: creds.HostID, host: h, daemon: d, cancel: cancel, done: make(chan error, 1)}
	go func() { a.done <- d.Run(ctx) }()
	f.t.Cleanup(func() { a.stop(); h.stopAll(); images.Close() })
	f.hosts = append(f.hosts, h)
	f.waitHost(creds.HostID, "online", true)
	return &fetchingAgent{remoteAgent: a, store: st, source: src}
}

func (a *fetchingAgent) has(id string) bool {
	im, err := a.store.Resolve(id)
	return err == nil && im.ID == id
}

func (a *fetchingAgent) booted() []string {
	a.host.mu.Lock()
	defer a.host.mu.Unlock()
	return slices.Clone(a.host.booted)
}

func (f *fleet) namedImages() []controlplane.NamedImage {
	var out struct{ Images []controlplane.NamedImage }
	if code := f.call("GET", "/api/v1/images", rigReadToken, &out); code != 200 {
		f.t.Fatalf("GET /api/v1/images: %d", code)
	}
	return out.Images
}

func openImages(t *testing.T, name string) *image.Store {
	t.Helper()
	st, err := image.Open(filepath.Join(t.TempDir(), name))
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// An agent with an empty image store fetches the named image and runs the
// job on it; when the control plane names a new version, the agent fetches
// it in the background, new jobs boot it, and the old version goes once
// the job still running on it has ended.
func TestAgentFetchesNamedImages(t *testing.T) {
	cpImages := openImages(t, "cp-images")
	v1 := imagetest.Add(t, cpImages, imagetest.Options{Seed: 1, Ref: "test-amd64"})
	f := newImageFleet(t, cpImages, nil)
	f.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	named := f.namedImages()
	if len(named) != 2 || named[0].ID != v1.ID || named[0].Arch != arch.AMD64 || named[0].Size < 64<<20 || named[0].Kind != "test" ||
		named[1].Arch != arch.ARM64 || named[1].ID != "" || named[1].Ref != "test-arm64" {
		t.Fatalf("named images %+v: want test-amd64 → %s, and test-arm64 unresolved (not built: optional)", named, v1.ID)
	}
	j1 := f.queue("acme/app", "tandem", "true")
	a := f.joinFetching("a1")
	f.waitStates([]int64{j1}, 20*time.Second, store.JobCompleted)
	if b := a.booted(); len(b) == 0 || slices.ContainsFunc(b, func(id string) bool { return id != v1.ID }) {
		t.Errorf("booted %v, want %s", b, v1.ID)
	}
	im, err := a.store.Resolve(v1.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := im.VerifyFull(); err != nil {
		t.Fatal(err)
	}
	if m := a.source.manifests.Load(); m != 1 {
		t.Errorf("the image's manifest was asked for %d times, want once (prefetch and launch share a fetch)", m)
	}

	// A new version: prefetched while a job still runs on the old one,
	// which stays until that job has ended.
	gate := filepath.Join(t.TempDir(), "gate")
	j2 := f.queue("acme/app", "tandem", "while [ ! -e "+gate+" ]; do sleep 0.05; done")
	f.waitStates([]int64{j2}, 20*time.Second, store.JobRunning)
	v2 := imagetest.Add(t, cpImages, imagetest.Options{Seed: 2, Ref: "test-amd64"})
	parser, _ := labels.NewParser("tandem", 1, 256)
	set, err := controlplane.ResolveImages(cpImages, parser, map[arch.Arch]string{arch.AMD64: "test-amd64"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.cp.SetImages(set)
	if named := f.namedImages(); len(named) != 1 || named[0].ID != v2.ID { // the new set names no arm64 image
		t.Errorf("named after the switch: %+v", named)
	}
	f.waitFor("the new version prefetched", 10*time.Second, func() bool { return a.has(v2.ID) })
	j3 := f.queue("acme/app", "tandem", "true")
	f.waitStates([]int64{j3}, 20*time.Second, store.JobCompleted)
	// (A spare runner may boot too: any idle runner may take any job.)
	if b := a.booted(); b[len(b)-1] != v2.ID || slices.Contains(b[slices.Index(b, v2.ID):], v1.ID) {
		t.Errorf("booted %v: want the new version from the switch on", b)
	}
	if !a.has(v1.ID) {
		t.Fatal("the old version went while a job still ran on it")
	}
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	f.waitStates([]int64{j2}, 20*time.Second, store.JobCompleted)
	f.waitFor("the old version collected", 10*time.Second, func() bool { return !a.has(v1.ID) })
	if !a.has(v2.ID) {
		t.Error("the named version was collected")
	}
	// The control plane's own store is the operator's: untouched.
	if _, err := cpImages.Resolve(v1.ID); err != nil {
		t.Errorf("the control plane's copy of the old version: %v", err)
	}
}

// A control plane serving a corrupt image: every launch fails with the
// reason, nothing boots, the job fails after its attempts, and the agent's
// store holds nothing of it.
func TestCorruptImageNeverBoots(t *testing.T) {
	cpImages := openImages(t, "cp-images")
	v1 := imagetest.Add(t, cpImages, imagetest.Options{Seed: 3, Ref: "test-amd64"})
	f := newImageFleet(t, cpImages, nil)
	f.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	imagetest.Corrupt(t, v1, image.RootfsFile, 5<<20) // after the control plane checked it
	a := f.joinFetching("c1")
	j := f.queue("acme/app", "tandem", "true")
	f.waitStates([]int64{j}, 30*time.Second, store.JobFailed)
	job, _ := f.job(j)
	for _, want := range []string{"launch-failed", "image " + v1.ID, "image corrupt", "rootfs.ext4 has sha256"} {
		if !strings.Contains(job.Reason, want) {
			t.Errorf("job reason %q does not say %q", job.Reason, want)
		}
	}
	if job.Attempts != 3 {
		t.Errorf("%d launches, want 3", job.Attempts)
	}
	if b := a.booted(); len(b) != 0 {
		t.Errorf("booted %v from a corrupt image", b)
	}
	if ims, _ := a.store.List(); len(ims) != 0 {
		t.Errorf("agent store holds %d images", len(ims))
	}
	// A background prefetch of it may still be failing.
	f.waitFor("no fetch leftovers", 5*time.Second, func() bool {
		left, _ := filepath.Glob(filepath.Join(a.store.Root(), ".fetch-*"))
		return len(left) == 0
	})
	if ims, _ := a.store.List(); len(ims) != 0 {
		t.Errorf("agent store holds %d images", len(ims))
	}
}

// The image endpoints serve named images only, to enrolled agents only,
// and a bounded number of files at once.
func TestImageEndpoints(t *testing.T) {
	defer controlplane.SetImageSlotWait(200 * time.Millisecond)()
	cpImages := openImages(t, "cp-images")
	v1 := imagetest.Add(t, cpImages, imagetest.Options{Seed: 4, Ref: "test-amd64", RootfsSize: 128 << 20, RootfsData: 64 << 20})
	unnamed := imagetest.Add(t, cpImages, imagetest.Options{Seed: 5})
	f := newImageFleet(t, cpImages, func(c *controlplane.Config) { c.MaxImageTransfers = 1 })
	creds, err := agentapi.Enroll(context.Background(), f.tlsSrv.URL, f.enrollToken(), "e1")
	if err != nil {
		t.Fatal(err)
	}
	c := agentapi.NewClient(creds)
	ctx := context.Background()
	if _, err := c.Manifest(ctx, v1.ID); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{unnamed.ID, "0123456789abcdef", "test-amd64", v1.ID[:8]} {
		if _, err := c.Manifest(ctx, id); !errors.Is(err, image.ErrNotFound) {
			t.Errorf("manifest of %s: %v, want ErrNotFound", id, err)
		}
	}
	for _, name := range []string{"manifest.json", ".verified", "../refs/test-amd64", "nope"} {
		if _, err := c.File(ctx, v1.ID, name, 0); !errors.Is(err, image.ErrNotFound) {
			t.Errorf("file %q: %v, want ErrNotFound", name, err)
		}
	}
	if _, err := c.File(ctx, v1.ID, image.RootfsFile, 1<<40); !errors.Is(err, image.ErrRefused) {
		t.Errorf("offset beyond the end: %v, want a refusal", err)
	}
	// Without the credential: refused.
	bad := creds
	bad.Credential = "not-it"
	if _, err := agentapi.NewClient(bad).Manifest(ctx, v1.ID); !errors.Is(err, agentapi.ErrRevoked) || !errors.Is(err, image.ErrRefused) {
		t.Errorf("wrong credential: %v", err)
	}
	// One transfer at a time: a second waits, then is told to come back.
	first, err := c.File(ctx, v1.ID, image.RootfsFile, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := first.Read(make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	_, err = c.File(ctx, v1.ID, filepath.Base(v1.Kernel()), 0)
	if err == nil || !strings.Contains(err.Error(), "503") || errors.Is(err, image.ErrRefused) {
		t.Errorf("second transfer at once: %v, want 503 (to be retried)", err)
	}
	first.Close()
	f.waitFor("the slot freed", 5*time.Second, func() bool {
		rc, err := c.File(ctx, v1.ID, image.InitrdFile, 0)
		if err == nil {
			io.Copy(io.Discard, rc)
			rc.Close()
		}
		return err == nil
	})
}

// The configured images are resolved strictly, with errors that say what
// to do.
func TestResolveImages(t *testing.T) {
	st := openImages(t, "images")
	amd := imagetest.Add(t, st, imagetest.Options{Seed: 6, Ref: "test-amd64"})
	arm := imagetest.Add(t, st, imagetest.Options{Seed: 7, Arch: "arm64", Kind: "runner", Ref: "runner-arm64"})
	parser, _ := labels.NewParser("tandem", 2, 4096)
	arches := func(amd64, arm64 string) map[arch.Arch]string {
		return map[arch.Arch]string{arch.AMD64: amd64, arch.ARM64: arm64}
	}
	set, err := controlplane.ResolveImages(st, parser, arches("test-amd64", "test-arm64"),
		map[string]string{"tandem-aarch64-4cpu-8gb": "runner-arm64", "tandem-2cpu-4gb": amd.ID[:10]})
	if err != nil {
		t.Fatal(err)
	}
	if set.Arch[arch.AMD64].ID != amd.ID || set.Arch[arch.ARM64].ID != "" || set.Labels["tandem-arm64-4cpu-8gb"].ID != arm.ID ||
		set.Labels["tandem-amd64-2cpu-4gb"].ID != amd.ID {
		t.Errorf("resolved %+v", set)
	}
	if ids := set.IDs(nil); !slices.Equal(ids, sorted(amd.ID, arm.ID)) {
		t.Errorf("ids %v", ids)
	}
	if ids := set.IDs([]arch.Arch{arch.AMD64}); !slices.Equal(ids, []string{amd.ID}) {
		t.Errorf("amd64 ids %v", ids)
	}
	for name, c := range map[string]struct {
		arch   map[arch.Arch]string
		labels map[string]string
		want   string
	}{
		"missing ref":       {arches("runner-amd64", ""), nil, "build it with `tandem image build --kind runner --arch amd64`"},
		"wrong arch":        {arches("runner-arm64", ""), nil, "is for arm64, not amd64"},
		"label wrong arch":  {nil, map[string]string{"tandem-4cpu-8gb": "runner-arm64"}, "is for arm64, not amd64"},
		"any label":         {nil, map[string]string{"tandem-any": "runner-arm64"}, "either architecture"},
		"not a label":       {nil, map[string]string{"self-hosted": "runner-arm64"}, "not a tandem label"},
		"same label twice":  {nil, map[string]string{"tandem-arm64": "runner-arm64", "tandem-aarch64-2cpu-4gb": "runner-arm64"}, "both mean"},
		"label missing ref": {nil, map[string]string{"tandem-arm64": "test-arm64"}, "not found"},
	} {
		if _, err := controlplane.ResolveImages(st, parser, c.arch, c.labels); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
	imagetest.Corrupt(t, amd, image.InitrdFile, 100)
	if _, err := controlplane.ResolveImages(st, parser, arches("test-amd64", ""), nil); !errors.Is(err, image.ErrCorrupt) {
		t.Errorf("corrupt image: %v, want ErrCorrupt", err)
	}
}

func sorted(s ...string) []string {
	slices.Sort(s)
	return s
}

// A runs-on label with an image of its own boots that image; other labels
// boot their architecture's.
func TestLabelImage(t *testing.T) {
	cpImages := openImages(t, "cp-images")
	def := imagetest.Add(t, cpImages, imagetest.Options{Seed: 8, Ref: "test-amd64"})
	big := imagetest.Add(t, cpImages, imagetest.Options{Seed: 9, Kind: "runner", Ref: "runner-amd64"})
	f := newImageFleet(t, cpImages, func(c *controlplane.Config) {
		c.Runner.LabelImages = map[string]string{"tandem-x64-2cpu-1gb": "runner-amd64"}
	})
	f.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	a := f.joinFetching("l1")
	j1 := f.queue("acme/app", "Tandem-2cpu-1gb", "true")
	f.waitStates([]int64{j1}, 20*time.Second, store.JobCompleted)
	if b := a.booted(); len(b) == 0 || b[len(b)-1] != big.ID {
		t.Errorf("the label's job booted %v, want %s", b, big.ID)
	}
	j2 := f.queue("acme/app", "tandem-1cpu-1gb", "true")
	f.waitStates([]int64{j2}, 20*time.Second, store.JobCompleted)
	if b := a.booted(); b[len(b)-1] != def.ID {
		t.Errorf("another label's job booted %v, want %s", b, def.ID)
	}
	// Both are named, so both stay.
	f.waitFor("both images kept", 5*time.Second, func() bool { return a.has(def.ID) && a.has(big.ID) })
}
