package controlplane_test

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/image"
	"github.com/tandem-ci/tandem/internal/image/imagetest"
)

// TestImageFetchThroughput measures what an agent's fetch of a runner-sized
// image costs over the agent protocol (TLS on loopback): a 2 GiB sparse
// root filesystem holding 300 MiB of data. It runs with
// TANDEM_IMAGE_BENCH=1 (it writes ~1 GiB to the temp dir):
//
//	TANDEM_IMAGE_BENCH=1 go test ./internal/controlplane -run ImageFetchThroughput -v
func TestImageFetchThroughput(t *testing.T) {
	if os.Getenv("TANDEM_IMAGE_BENCH") == "" {
		t.Skip("set TANDEM_IMAGE_BENCH=1 to measure image fetches")
	}
	cpImages := openImages(t, "cp-images")
	t0 := time.Now()
	src := imagetest.Add(t, cpImages, imagetest.Options{Seed: 42, Ref: "test-amd64", RootfsSize: 2 << 30, RootfsData: 300 << 20})
	t.Logf("made the source image in %s", time.Since(t0).Round(time.Millisecond))
	f := newImageFleet(t, cpImages, nil)
	creds, err := agentapi.Enroll(context.Background(), f.tlsSrv.URL, f.enrollToken(), "bench")
	if err != nil {
		t.Fatal(err)
	}
	client := agentapi.NewClient(creds)
	run := func(name string, s image.Source) {
		st, err := image.Open(filepath.Join(t.TempDir(), "agent"))
		if err != nil {
			t.Fatal(err)
		}
		var last image.FetchProgress
		start := time.Now()
		im, err := st.Fetch(context.Background(), s, src.ID, func(p image.FetchProgress) { last = p })
		if err != nil {
			t.Fatal(err)
		}
		wall := time.Since(start)
		tv := time.Now()
		if err := im.Verify(); err != nil {
			t.Fatal(err)
		}
		verify := time.Since(tv)
		tf := time.Now()
		if err := im.VerifyFull(); err != nil {
			t.Fatal(err)
		}
		full := time.Since(tf)
		var sst, dst syscall.Stat_t
		syscall.Stat(src.Rootfs(), &sst)
		syscall.Stat(im.Rootfs(), &dst)
		t.Logf("%s: fetched %.2f GiB (%d MiB of data) in %s: %.0f MiB/s of data, %.2f GiB/s of image; "+
			"hashing on the way in %s; boot-time Verify (stamps) %s; VerifyFull (every byte) %s; "+
			"rootfs allocated %d MiB here, %d MiB at the source",
			name, float64(last.Total)/(1<<30), last.Received>>20, wall.Round(time.Millisecond),
			float64(last.Received)/(1<<20)/wall.Seconds(), float64(last.Total)/(1<<30)/wall.Seconds(),
			last.Hashing.Round(time.Millisecond), verify.Round(time.Microsecond), full.Round(time.Millisecond),
			dst.Blocks*512>>20, sst.Blocks*512>>20)
		os.RemoveAll(st.Root())
	}
	for i := 0; i < 3; i++ {
		run("TLS, agent protocol", client)
	}
	run("same machine, no network (image.LocalSource)", image.LocalSource{Store: cpImages})
}
