// Command tandem-fakerunner stands in for the official GitHub Actions runner
// in tests against ghfake: it takes a JIT config, runs one job and exits.
//
//	tandem-fakerunner --jitconfig <encoded>     (or ACTIONS_RUNNER_INPUT_JITCONFIG)
//
// It exits 0 when a job ran, whatever its conclusion, and non-zero with a
// message on stderr otherwise. It is a static binary (CGO_ENABLED=0) for
// busybox guests: the JIT config's URL must hold an IP address, as such a
// guest may have no DNS.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/tandem-ci/tandem/internal/github/ghfake/fakerunner"
	"github.com/tandem-ci/tandem/internal/github/ghfake/runnerapi"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
	exitNoJob = 3
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is main without the process: it reads the JIT config from the flags
// or the environment (and removes it from the environment, so the job's
// script cannot read it), runs one job and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("tandem-fakerunner", flag.ContinueOnError)
	fs.SetOutput(stderr)
	jit := fs.String("jitconfig", "", "encoded JIT runner config (default $"+runnerapi.EnvJITConfig+")")
	idle := fs.Duration("idle-timeout", fakerunner.DefaultIdleTimeout, "give up if no job arrives within this time")
	dir := fs.String("work-dir", "", "working directory of the job's script (default: current)")
	verbose := fs.Bool("v", false, "log debug messages")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "tandem-fakerunner: unexpected arguments %q\n", fs.Args())
		return exitUsage
	}
	if *jit == "" {
		*jit = os.Getenv(runnerapi.EnvJITConfig)
	}
	// Before anything runs: the job must not find the config.
	if err := os.Unsetenv(runnerapi.EnvJITConfig); err != nil {
		fmt.Fprintf(stderr, "tandem-fakerunner: unset %s: %v\n", runnerapi.EnvJITConfig, err)
		return exitError
	}
	if *jit == "" {
		fmt.Fprintf(stderr, "tandem-fakerunner: no JIT config: pass --jitconfig or set %s\n", runnerapi.EnvJITConfig)
		return exitUsage
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	start := time.Now()
	err := fakerunner.Run(ctx, *jit, fakerunner.Options{
		Stdout: stdout, Stderr: stderr, IdleTimeout: *idle, Dir: *dir, Logger: log,
		JobStartedHook: os.Getenv(fakerunner.EnvJobStartedHook),
	})
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, fakerunner.ErrNoJob):
		fmt.Fprintf(stderr, "tandem-fakerunner: no job within %s: %v\n", time.Since(start).Round(time.Second), err)
		return exitNoJob
	default:
		fmt.Fprintf(stderr, "tandem-fakerunner: %v\n", err)
		return exitError
	}
}
