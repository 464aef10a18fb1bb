//go:build linux

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// initFile, in the root filesystem, names the init that tandem-guest hands
// the VM to once it has mounted the root and set up the network: a runner
// image's systemd, which then starts tandem-guest again as a service. The
// test image has none, and tandem-guest stays PID 1.
const initFile = "/etc/tandem/init"

// handOffInit reads initFile: the path of the init to hand over to, or ""
// when there is none.
func handOffInit() (string, error) {
	b, err := os.ReadFile(initFile)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("%s: %w", initFile, err)
	}
	p := strings.TrimSpace(string(b))
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("%s: %q is not an absolute path", initFile, p)
	}
	if err := checkExecutable(p); err != nil {
		return "", fmt.Errorf("%s names %s: %w", initFile, p, err)
	}
	return p, nil
}

// execInit replaces tandem-guest, PID 1, with init. It returns only if the
// exec failed.
func (a *agent) execInit(init string) error {
	a.con.logf("handing over to %s", init)
	drainConsole()
	err := unix.Exec(init, []string{init}, os.Environ())
	return fmt.Errorf("exec %s: %w", init, err)
}

// dockerConfig is the Docker daemon's configuration file in the guest.
var dockerConfig = "/etc/docker/daemon.json"

// configureDockerMirror points the guest's Docker daemon at the host's
// registry mirror, keeping whatever else daemon.json says. Images without
// Docker (no /etc/docker) are left alone. Problems are printed: Docker
// then pulls from the registry itself, which works, only slower.
func configureDockerMirror(con *console, mirror string) {
	if _, err := os.Stat(filepath.Dir(dockerConfig)); err != nil {
		return
	}
	b, err := mergeDockerMirror(dockerConfig, mirror)
	if err == nil {
		tmp := dockerConfig + ".tandem"
		if err = os.WriteFile(tmp, b, 0o644); err == nil {
			err = os.Rename(tmp, dockerConfig)
		}
	}
	if err != nil {
		con.logf("docker: registry mirror %s not configured: %v", mirror, err)
		return
	}
	con.logf("docker: registry mirror %s", mirror)
}

// mergeDockerMirror returns the daemon.json at path (or an empty one) with
// registry-mirrors set to mirror.
func mergeDockerMirror(path, mirror string) ([]byte, error) {
	conf := map[string]any{}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, err
	case len(strings.TrimSpace(string(b))) > 0:
		if err := json.Unmarshal(b, &conf); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	conf["registry-mirrors"] = []string{mirror}
	out, err := json.MarshalIndent(conf, "", "  ")
	return append(out, '\n'), err
}
