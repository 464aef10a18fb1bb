// Package testimages gives tests a Tandem image store holding the test image
// for both architectures, built once per CI run and shared.
package testimages

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/image"
	"github.com/tandem-ci/tandem/internal/testenv"
)

var (
	once    sync.Once
	dataDir string
	onceErr error
)

// DataDir returns a data dir whose images/ holds test-amd64 and test-arm64.
// It uses $TANDEM_TEST_DATA where scripts/test.sh built them; otherwise it
// builds them there (default /var/tmp/tandem-test) from this source tree.
//
// -short runs build no image: a test that wants one checks RequireVM (or
// skips under -short) first, and DataDir fails one that did not.
func DataDir(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Fatal("test images asked for under -short: check testenv.RequireVM (or testing.Short) before asking")
	}
	testenv.RequireRoot(t)
	once.Do(func() { dataDir, onceErr = prepare() })
	if onceErr != nil {
		t.Fatalf("test images: %v", onceErr)
	}
	return dataDir
}

// Store opens the shared image store.
func Store(t testing.TB) *image.Store {
	t.Helper()
	st, err := image.Open(filepath.Join(DataDir(t), "images"))
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func prepare() (string, error) {
	dir := os.Getenv("TANDEM_TEST_DATA")
	if dir == "" {
		dir = "/var/tmp/tandem-test"
	}
	st, err := image.Open(filepath.Join(dir, "images"))
	if err != nil {
		return "", err
	}
	for _, arch := range []string{"amd64", "arm64"} {
		if err := ensure(st, dir, "test", arch); err != nil {
			return "", err
		}
	}
	return dir, nil
}

var (
	runnerMu   sync.Mutex
	runnerErrs = map[string]error{}
)

// Runner returns the shared data dir (see DataDir) with runner-<arch>, the
// runner image (Debian, systemd, Docker; tandem-fakerunner as its runner,
// laid out as GitHub's when scripts/build.sh made its tarball), in its
// images/. scripts/test.sh builds it once per run; otherwise the
// first test to want it builds it (a minute for amd64, a few for arm64).
func Runner(t testing.TB, arch string) string {
	t.Helper()
	dir := DataDir(t)
	runnerMu.Lock()
	defer runnerMu.Unlock()
	err, done := runnerErrs[arch]
	if !done {
		var st *image.Store
		if st, err = image.Open(filepath.Join(dir, "images")); err == nil {
			err = ensure(st, dir, "runner", arch)
		}
		runnerErrs[arch] = err
	}
	if err != nil {
		t.Fatalf("runner image for %s: %v", arch, err)
	}
	return dir
}

// ensure builds <kind>-<arch> into st unless scripts/test.sh did for this
// run; a build of the same inputs keeps the stored image.
func ensure(st *image.Store, dir, kind, arch string) error {
	if _, err := st.Resolve(kind + "-" + arch); err == nil && os.Getenv("TANDEM_TEST_DATA") != "" {
		return nil // built by scripts/test.sh for this run
	}
	bins := map[string]string{}
	for _, prog := range []string{"tandem-guest", "tandem-fakerunner"} {
		bins[prog] = filepath.Join(dir, prog+"-"+arch)
		build := exec.Command("go", "build", "-trimpath", "-o", bins[prog], "./cmd/"+prog)
		build.Dir = moduleRoot()
		build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
		if out, err := build.CombinedOutput(); err != nil {
			return &buildError{prog, arch, err, out}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	o := image.BuildOptions{Kind: kind, Arch: arch, GuestBinary: bins["tandem-guest"],
		FakeRunnerBinary: bins["tandem-fakerunner"], CacheDir: filepath.Join(dir, "cache")}
	if kind == "runner" {
		// scripts/build.sh's stand-in for GitHub's runner tarball, if there.
		gh := map[string]string{"amd64": "x64", "arm64": "arm64"}[arch]
		tb := filepath.Join(os.Getenv("TANDEM_BIN"), "fake-actions-runner-linux-"+gh+".tar.gz")
		if _, err := os.Stat(tb); err == nil && os.Getenv("TANDEM_BIN") != "" {
			o.RunnerTarball = tb
		}
	}
	_, err := st.Build(ctx, o)
	return err
}

type buildError struct {
	prog string
	arch string
	err  error
	out  []byte
}

func (e *buildError) Error() string {
	return "build " + e.prog + " for " + e.arch + ": " + e.err.Error() + ": " + string(e.out)
}

func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..")
}
