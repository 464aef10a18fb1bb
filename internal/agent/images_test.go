package agent_test

import (
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tandem-ci/tandem/internal/agent"
	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/failure"
	"github.com/tandem-ci/tandem/internal/image"
	"github.com/tandem-ci/tandem/internal/testenv"
	"github.com/tandem-ci/tandem/internal/testenv/testhost"
	"github.com/tandem-ci/tandem/internal/testenv/testimages"
)

// flipSource serves another store's images with one byte of one file's
// stream flipped, as a broken control plane would.
type flipSource struct {
	image.LocalSource
	file string
}

func (f flipSource) File(ctx context.Context, id, name string, offset int64) (io.ReadCloser, error) {
	rc, err := f.LocalSource.File(ctx, id, name, offset)
	if err != nil || name != f.file {
		return rc, err
	}
	return &flipReader{ReadCloser: rc, at: 24 + 16 + 1000}, nil
}

type flipReader struct {
	io.ReadCloser
	at, pos int64
}

func (r *flipReader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	if r.at >= r.pos && r.at < r.pos+int64(n) {
		p[r.at-r.pos] ^= 1
	}
	r.pos += int64(n)
	return n, err
}

// newFetchingAgent is an agent whose host starts with an empty image store
// and fetches from src.
func newFetchingAgent(t *testing.T, rec *recorder, src image.Source) (*agent.Agent, *image.Store) {
	t.Helper()
	h := *testhost.New(t)
	st, err := image.Open(filepath.Join(t.TempDir(), "images"))
	if err != nil {
		t.Fatal(err)
	}
	h.Images = st
	images := agent.NewImages(st, src, nil)
	t.Cleanup(images.Close)
	a, err := agent.New(agent.Config{HostID: "h1", Host: &h, Sink: rec.sink, Images: images})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	return a, st
}

// testImageID is the test image's id; the tests that use it boot a VM (or
// want the image, which -short runs do not build).
func testImageID(t *testing.T) string {
	t.Helper()
	testenv.RequireVM(t)
	im, err := testimages.Store(t).Resolve("test-" + string(arch.Host()))
	if err != nil {
		t.Fatal(err)
	}
	return im.ID
}

// A host without the assignment's image fetches it, then boots it.
func TestLaunchFetchesImage(t *testing.T) {
	rec := newRecorder()
	id := testImageID(t)
	a, st := newFetchingAgent(t, rec, image.LocalSource{Store: testimages.Store(t)})
	x := asg("f1", "sh", "-c", "exit 7")
	x.Image = id
	if err := a.Launch(x); err != nil {
		t.Fatal(err)
	}
	rec.wait(t, "f1", agentapi.EventBooting)
	a.Configure("f1", nil)
	end := rec.wait(t, "f1", agentapi.EventEnded)
	if end.ExitCode != 7 || end.Failure != "" {
		t.Errorf("ended %+v: want exit 7", end)
	}
	im, err := st.Resolve(id)
	if err != nil {
		t.Fatal(err)
	}
	if err := im.VerifyFull(); err != nil {
		t.Error(err)
	}
}

// A corrupt image is refused with the reason, and no VM is made.
func TestCorruptImageNotBooted(t *testing.T) {
	rec := newRecorder()
	id := testImageID(t)
	a, st := newFetchingAgent(t, rec, flipSource{image.LocalSource{Store: testimages.Store(t)}, image.InitrdFile})
	x := asg("f2", "true")
	x.Image = id
	if err := a.Launch(x); err != nil {
		t.Fatal(err)
	}
	end := rec.wait(t, "f2", agentapi.EventEnded)
	if end.Failure != failure.Launch || !strings.HasPrefix(end.Detail, "image "+id+": ") ||
		!strings.Contains(end.Detail, "image corrupt") || !strings.Contains(end.Detail, image.InitrdFile) {
		t.Errorf("ended %+v: want launch-failed naming the image, the file and the corruption", end)
	}
	rec.mu.Lock()
	for _, e := range rec.evs {
		if e.Kind == agentapi.EventBooting {
			t.Errorf("a VM booted: %+v", e)
		}
	}
	rec.mu.Unlock()
	if _, err := st.Resolve(id); err == nil {
		t.Error("the corrupt image is in the store")
	}
}
