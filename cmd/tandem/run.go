package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/failure"
	"github.com/tandem-ci/tandem/internal/jobvm"
	"github.com/tandem-ci/tandem/internal/vm"
)

// Exit codes of `tandem run` besides the job's own.
const (
	exitTimeout   = 124 // the job outlived --timeout (as timeout(1))
	exitTandem    = 125 // Tandem could not run the job (bad input, boot failure, guest crash)
	exitCancelled = 130 // interrupted (Ctrl-C)
)

// maxCapture bounds the stdout and stderr kept for --json.
const maxCapture = 16 << 20

type runOptions struct {
	arch, image, accel, memory string
	cpus                       float64
	timeout                    time.Duration
	user                       string
	jsonOut                    bool
	env                        []string
	workdir                    string
	net                        hostFlags
	mirror                     mirrorFlags
}

func runCmd(g *globals) *cobra.Command {
	o := &runOptions{}
	cmd := &cobra.Command{
		Use:   "run [flags] -- CMD [ARG...]",
		Short: "Boot a fresh microVM, run CMD in it, destroy it",
		Long: `Boot a fresh microVM, run CMD in it and print its output as it comes; exit with
its exit code. The VM and everything it used on the host are gone afterwards.

Exit codes besides CMD's own: 124 the job outlived --timeout; 125 Tandem could
not run the job (bad input, missing image, the guest failed); 130 interrupted.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return runRun(cmd.Context(), g, o, args) },
	}
	f := cmd.Flags()
	f.StringVar(&o.arch, "arch", string(arch.Host()), "guest architecture: amd64 or arm64 (another arch than the host's is emulated)")
	f.Float64Var(&o.cpus, "cpus", 1, "vCPUs; fractions such as 0.5 are capped by a CPU quota")
	f.StringVar(&o.memory, "memory", "512M", "guest memory, e.g. 512M or 2G")
	f.StringVar(&o.image, "image", "", "image ref or id (default test-<arch>)")
	f.StringVar(&o.accel, "accel", "auto", "accelerator: auto (KVM if a probe boot works, else TCG), kvm or tcg")
	f.DurationVar(&o.timeout, "timeout", 0, "kill the job after this long, e.g. 10m (0: no limit)")
	f.BoolVar(&o.jsonOut, "json", false, "print one JSON object with the result instead of streaming output")
	f.StringArrayVarP(&o.env, "env", "e", nil, "set an environment variable in the job, KEY=VALUE (repeatable)")
	f.StringVarP(&o.workdir, "workdir", "w", "", "working directory of the job inside the VM")
	f.StringVarP(&o.user, "user", "u", "", "guest account to run the job as (e.g. runner in runner images; default root)")
	o.net.add(cmd)
	o.mirror.add(cmd, false)
	return cmd
}

// runJSON is what --json prints.
type runJSON struct {
	jobvm.Result
	Stdout          string `json:"stdout"`
	Stderr          string `json:"stderr"`
	OutputTruncated bool   `json:"output_truncated,omitempty"`
	Error           string `json:"error,omitempty"`
}

func runRun(ctx context.Context, g *globals, o *runOptions, argv []string) error {
	guestArch, err := arch.Parse(o.arch)
	if err != nil {
		return &exitError{exitTandem, err}
	}
	accel, err := vm.ParseAccel(o.accel)
	if err != nil {
		return &exitError{exitTandem, err}
	}
	mem, err := parseMemory(o.memory)
	if err != nil {
		return &exitError{exitTandem, fmt.Errorf("--memory: %w", err)}
	}
	if o.cpus <= 0 {
		return &exitError{exitTandem, fmt.Errorf("--cpus must be more than 0, got %g", o.cpus)}
	}
	if o.timeout < 0 {
		return &exitError{exitTandem, fmt.Errorf("--timeout must not be negative")}
	}
	env := map[string]string{}
	for _, kv := range o.env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return &exitError{exitTandem, fmt.Errorf("--env %q: want KEY=VALUE", kv)}
		}
		env[k] = v
	}
	mc, mpw, err := o.mirror.config()
	if err != nil {
		return &exitError{exitTandem, err}
	}
	if err := requireRoot("tandem run"); err != nil {
		return &exitError{exitTandem, err}
	}

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	if mc.On() {
		o.net.mirrorPort = mc.Port
	}
	h, closeHost, err := newHost(ctx, g, &o.net)
	if err != nil {
		return &exitError{exitTandem, err}
	}
	defer closeHost()
	// Whatever an earlier run left behind (killed with SIGKILL, say) goes first.
	if _, err := h.Collect(ctx, nil); err != nil {
		g.log.Warn("reclaiming leftovers failed", "err", err)
	}
	stopMirror, err := startMirror(ctx, g, h, mc, mpw, g.dataDir, false)
	if err != nil {
		return &exitError{exitTandem, err}
	}
	defer stopMirror()

	req := jobvm.Request{
		Arch: guestArch, VCPUs: o.cpus, MemoryMiB: mem, Image: o.image, Accel: accel,
		Argv: argv, User: o.user, Env: env, Dir: o.workdir, Timeout: o.timeout,
		Owner: vm.ProcessOwner(), DieWithOwner: true,
	}
	var stdout, stderr capture
	if o.jsonOut {
		req.Stdout, req.Stderr = &stdout, &stderr
	} else {
		req.Stdout, req.Stderr = os.Stdout, os.Stderr
	}
	res, err := h.Run(ctx, req)
	if o.jsonOut {
		out := runJSON{Result: res, Stdout: stdout.String(), Stderr: stderr.String(),
			OutputTruncated: stdout.truncated || stderr.truncated}
		if err != nil {
			out.Error = err.Error()
		}
		if err == nil && res.Failure != "" {
			out.Error = string(res.Failure) + ": " + res.Detail
		}
		printValue(os.Stdout, out)
	}
	code := exitCode(res, err)
	if ctx.Err() != nil && code == exitTandem {
		code = exitCancelled // interrupted before the job ran
	}
	if o.jsonOut {
		return &exitError{code: code}
	}
	switch {
	case err != nil:
		return &exitError{code, err}
	case res.Failure == "" && res.Detail != "":
		// The job could not start in the guest (no such command, say).
		return &exitError{code, errors.New(res.Detail)}
	case res.Failure != "":
		return &exitError{code, fmt.Errorf("%s: %s", res.Failure, res.Detail)}
	case code != 0:
		return &exitError{code: code}
	}
	return nil
}

func exitCode(res jobvm.Result, err error) int {
	var fe *jobvm.FailureError
	switch {
	case res.Failure == failure.Cancelled:
		return exitCancelled
	case res.Failure == failure.Timeout:
		return exitTimeout
	case err != nil || errors.As(err, &fe) || res.Failure != "":
		return exitTandem
	}
	return res.ExitCode
}

// capture keeps up to maxCapture bytes of a stream.
type capture struct {
	mu        sync.Mutex
	buf       bytes.Buffer
	truncated bool
}

var _ io.Writer = (*capture)(nil)

func (c *capture) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	room := maxCapture - c.buf.Len()
	if len(p) > room {
		c.buf.Write(p[:max(room, 0)])
		c.truncated = true
		return len(p), nil
	}
	return c.buf.Write(p)
}

func (c *capture) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}
