//go:build linux

package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/tandem-ci/tandem/internal/guest"
)

func TestExitStatus(t *testing.T) {
	for _, tc := range []struct {
		ws   syscall.WaitStatus
		code int
		sig  string
	}{
		{0, 0, ""},
		{7 << 8, 7, ""},
		{255 << 8, 255, ""},
		{syscall.WaitStatus(syscall.SIGKILL), 137, "SIGKILL"},
		{syscall.WaitStatus(syscall.SIGTERM), 143, "SIGTERM"},
		{0x80 | syscall.WaitStatus(syscall.SIGSEGV), 139, "SIGSEGV"}, // core dumped
		{syscall.WaitStatus(40), 168, "SIG40"},
	} {
		code, sig := exitStatus(tc.ws)
		if code != tc.code || sig != tc.sig {
			t.Errorf("exitStatus(%#x) = %d %q, want %d %q", uint32(tc.ws), code, sig, tc.code, tc.sig)
		}
	}
}

func TestStartErrorCode(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code int
	}{
		{&exec.Error{Name: "x", Err: exec.ErrNotFound}, 127},
		{&os.PathError{Op: "fork/exec", Path: "/x", Err: syscall.ENOENT}, 127},
		{&os.PathError{Op: "fork/exec", Path: "/x", Err: syscall.EACCES}, 126},
		{&os.PathError{Op: "fork/exec", Path: "/x", Err: syscall.ENOEXEC}, 126},
		{&os.PathError{Op: "fork/exec", Path: "/x", Err: syscall.E2BIG}, 125},
		{errors.New("other"), 125},
	} {
		if got := startErrorCode(tc.err); got != tc.code {
			t.Errorf("startErrorCode(%v) = %d, want %d", tc.err, got, tc.code)
		}
	}
}

func TestMergeEnv(t *testing.T) {
	got := mergeEnv([]string{"A=1", "PATH=/bin", "B=2"}, map[string]string{"PATH": "/x", "C": "3", "B": ""})
	want := []string{"A=1", "B=", "C=3", "PATH=/x"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("mergeEnv = %q, want %q", got, want)
	}
	if envValue(got, "PATH") != "/x" || envValue(got, "NOPE") != "" {
		t.Fatal("envValue")
	}
}

func TestLookPath(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "tool")
	os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755)
	if p, err := lookPath("tool", "relative:"+dir, ""); err != nil || p != bin {
		t.Fatalf("lookPath = %q, %v", p, err)
	}
	if p, err := lookPath("./tool", "", dir); err != nil || p != bin {
		t.Fatalf("relative lookPath = %q, %v", p, err)
	}
	if _, err := lookPath("tool", "relative", ""); !errors.Is(err, exec.ErrNotFound) {
		t.Fatalf("relative PATH entry used: %v", err)
	}
	if _, err := lookPath(filepath.Base(dir), filepath.Dir(dir), ""); err == nil {
		t.Fatal("a directory was found as a program")
	}
}

// A job with User runs as that account, with its groups, its login
// variables and its home as the working directory.
func TestJobRunsAsUser(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to change user")
	}
	dir := t.TempDir()
	passwd := filepath.Join(dir, "passwd")
	os.WriteFile(passwd, []byte("root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"), 0o644)
	old := passwdFile
	passwdFile = passwd
	defer func() { passwdFile = old }()

	home, err := os.MkdirTemp("", "tandem-home-") // t.TempDir's parent is private
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(home)
	os.Chmod(home, 0o755)
	jr := testRunner()
	var out, errb strings.Builder
	e := jr.run(t.Context(), guest.Job{
		Argv: []string{"/bin/sh", "-c", `echo "$(id -u):$(id -g) $USER $LOGNAME $SHELL"; pwd`},
		User: "nobody", Dir: home,
	}, &out, &errb, nil)
	if e.Code != 0 {
		t.Fatalf("exit %+v, stderr %q", e, errb.String())
	}
	want := "65534:65534 nobody nobody /usr/sbin/nologin\n" + home + "\n"
	if out.String() != want {
		t.Fatalf("output %q, want %q", out.String(), want)
	}

	e = jr.run(t.Context(), guest.Job{Argv: []string{"true"}, User: "no-such-user"}, &out, &errb, nil)
	if e.Code != codeBadJob || !strings.Contains(e.Error, "no-such-user") {
		t.Fatalf("unknown user: %+v", e)
	}
}
