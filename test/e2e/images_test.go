package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/image"
	"github.com/tandem-ci/tandem/internal/testenv"
	"github.com/tandem-ci/tandem/internal/testenv/testimages"
)

// A host whose agent starts with no images fetches the ones the control
// plane names from it (checked against their sha256s) and runs a job in a
// real VM booted from the fetched image.
func TestFleetAgentFetchesImages(t *testing.T) {
	testenv.RequireVM(t)
	setupFleetNet(t)
	s := newSystem(t, options{fleet: true})
	s.install("acme", "app")
	h := newFleetHost(t, 1)
	if err := os.Remove(filepath.Join(h.data, "images")); err != nil { // no shared images: an empty store
		t.Fatal(err)
	}
	h.start(s.agentURL, s.enrollToken())
	s.waitHost(h.id, "online", true, time.Minute)
	start := time.Now()
	id, _ := s.gh.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"tandem-1cpu-0.25gb"}, Script: "echo fetched-ok"})
	s.waitTandemState([]int64{id}, 3*time.Minute, "completed")
	t.Logf("queued to completed, image fetch included: %s", time.Since(start).Round(100*time.Millisecond))
	want, err := testimages.Store(t).Resolve("test-amd64")
	if err != nil {
		t.Fatal(err)
	}
	st, err := image.Open(filepath.Join(h.data, "images"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := st.Resolve(want.ID)
	if err != nil {
		t.Fatalf("the agent's store: %v", err)
	}
	if err := got.VerifyFull(); err != nil {
		t.Error(err)
	}
	if _, err := os.Stat(filepath.Join(got.Dir, ".fetched")); err != nil {
		t.Errorf("not marked as fetched: %v", err)
	}
	log, _ := os.ReadFile(h.logPath)
	if !strings.Contains(string(log), "image fetched and verified") {
		t.Errorf("the agent's log does not report the fetch")
	}
	h.stopWhenIdle()
}
