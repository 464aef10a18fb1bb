package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"

	"github.com/tandem-ci/tandem/internal/apiclient"
	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/demo"
	"github.com/tandem-ci/tandem/internal/fsutil"
	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/image"
	"github.com/tandem-ci/tandem/internal/netnsutil"
)

// tandem up --demo: Tandem on this machine against ghfake, the GitHub
// emulator, with no GitHub account, no App and no config.
//
// GitHub sits on a stand-in "internet": a network namespace behind a veth
// pair, at 198.51.100.2 (TEST-NET-2, never routed). The control plane
// reaches it directly and ghfake sends its webhooks to the host's end of
// the veth (198.51.100.1:8080, where Tandem listens); the fake runner in
// each VM reaches it only through the host's NAT, as a runner reaches
// GitHub. Nothing else can reach either: the addresses exist on this
// machine alone. Everything the demo makes (config, App key, webhook
// secret, database, ghfake's log) is in <data-dir>/demo, made anew at each
// start; the namespace and veth go when it ends.
const (
	demoNetns  = "tandem-demo-inet"
	demoVeth   = "tdmdemo0"
	demoHost   = "198.51.100.1"
	demoGitHub = "198.51.100.2"
)

// demoJob is one of the jobs the demo queues.
type demoJob struct {
	label string
	id    int64
}

// runDemo runs tandem up --demo until SIGINT or SIGTERM or, with exit, until
// its jobs are done (an error if one did not succeed).
func runDemo(parent context.Context, g *globals, exit bool) (err error) {
	ctx, stop := signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
	defer stop()
	dir := filepath.Join(g.dataDir, "demo")
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	host := arch.Host()
	other := arch.ARM64
	if host == arch.ARM64 {
		other = arch.AMD64
	}
	for _, a := range []arch.Arch{host, other} {
		if err := ensureTestImage(ctx, g, a); err != nil {
			return err
		}
	}
	closeNet, err := demoNetwork(ctx)
	if err != nil {
		return err
	}
	defer closeNet()

	// GitHub: an App of id 1, its key and webhook secret made here.
	key, err := loadOrCreateKey(filepath.Join(dir, "app.pem"))
	if err != nil {
		return err
	}
	secret, err := loadOrCreateSecret(filepath.Join(dir, "webhook-secret"))
	if err != nil {
		return err
	}
	ghLog, err := os.OpenFile(filepath.Join(dir, "ghfake.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer ghLog.Close()
	gh := ghfake.New(ghfake.Config{AppID: 1, AppPublicKey: &key.PublicKey,
		WebhookURL: "http://" + demoHost + ":8080/webhook", WebhookSecret: []byte(secret),
		Seed: time.Now().UnixNano(), Logger: slog.New(slog.NewTextHandler(ghLog, nil))})
	defer gh.Close()
	ns, err := netns.GetFromName(demoNetns)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer ns.Close()
	var ln net.Listener
	if err := netnsutil.InNetns(ns, func() (err error) {
		ln, err = net.Listen("tcp", demoGitHub+":9000")
		return err
	}); err != nil {
		return fmt.Errorf("demo: GitHub's listener: %w", err)
	}
	ghSrv := &http.Server{Handler: gh.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go ghSrv.Serve(ln)
	defer ghSrv.Close()

	cfgPath := filepath.Join(dir, "config.yaml")
	cfg := fmt.Sprintf(`# tandem up --demo: against ghfake, the GitHub emulator (made anew at each start).
listen: %s:8080
database: %s
github:
  api_url: http://%s:9000/
  app_id: 1
  private_key_file: app.pem
  webhook_secret_file: webhook-secret
agent:
  emulate: [%s]
`, demoHost, filepath.Join(dir, "tandem.db"), demoGitHub, other)
	if err := fsutil.WriteFileAtomic(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	// Four weeks of made-up history (several orgs, both architectures,
	// profiles): the dashboard, tandem insights and tandem rightsize show
	// something from the start.
	st, _, err := seedStore(ctx, g, cfgPath, "")
	if err != nil {
		return err
	}
	_, _, err = seed(ctx, st, demo.Make(time.Now().UTC(), demo.Options{Seed: 1}))
	st.Close()
	if err != nil {
		return fmt.Errorf("demo: seeding the history: %w", err)
	}

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- serve(sctx, g, cfgPath, true) }()
	defer func() {
		cancel()
		if serr := <-served; serr != nil && err == nil {
			err = serr
		}
	}()
	base := "http://" + demoHost + ":8080"
	if err := waitHealthy(ctx, base, served); err != nil {
		return err
	}

	out := os.Stdout
	fmt.Fprintln(out, "\n# GitHub (ghfake) has an organisation, acme, with the App installed on acme/app")
	gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	var jobs []demoJob
	for _, a := range []arch.Arch{host, other} {
		label := fmt.Sprintf("tandem-%s-1cpu-0.25gb", a)
		id, _ := gh.QueueJob(ghfake.JobSpec{Repo: "acme/app", Name: "hello (" + string(a) + ")", Labels: []string{label},
			Script: `echo "hello from a $(uname -m) runner VM, kernel $(uname -r)"`})
		jobs = append(jobs, demoJob{label: label, id: id})
		fmt.Fprintf(out, "# a workflow job with runs-on: %s is queued (job %d); GitHub sends the webhook\n", label, id)
	}
	token, err := loadOrCreateSecret(filepath.Join(g.dataDir, "api-admin-token"))
	if err != nil {
		return err
	}
	api, err := apiclient.New(apiclient.Options{Server: base, Token: token, UserAgent: "tandem/" + version})
	if err != nil {
		return err
	}
	ok, err := waitDemoJobs(ctx, out, gh, api, jobs, served)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, `
The dashboard: %s/ (from this machine; log in with the token in %s)
The operator commands: export TANDEM_SERVER=%s; tandem jobs; tandem job ID; tandem hosts; tandem rightsize
`, base, filepath.Join(g.dataDir, "api-admin-token"), base)
	if exit {
		if !ok {
			return errors.New("demo: a job did not succeed")
		}
		return nil
	}
	fmt.Fprintln(out, "Tandem keeps running for you to look around; Ctrl-C ends the demo.")
	select {
	case <-ctx.Done():
	case err := <-served:
		served <- err
	}
	return nil
}

// ensureTestImage builds the test image for a if this host has none: it
// takes a few seconds, from Debian's kernel package.
func ensureTestImage(ctx context.Context, g *globals, a arch.Arch) error {
	st, err := image.Open(filepath.Join(g.dataDir, "images"))
	if err != nil {
		return err
	}
	if _, err := st.Resolve("test-" + string(a)); err == nil {
		return nil
	}
	guest, err := findBinary("tandem-guest", a)
	if err != nil {
		return fmt.Errorf("demo: the %s test image: %w (scripts/build.sh builds it)", a, err)
	}
	runner, err := findBinary("tandem-fakerunner", a)
	if err != nil {
		return fmt.Errorf("demo: the %s test image: %w (scripts/build.sh builds it)", a, err)
	}
	fmt.Fprintf(os.Stderr, "tandem: building the %s test image (once)\n", a)
	_, err = st.Build(ctx, image.BuildOptions{Kind: "test", Arch: string(a), GuestBinary: guest, FakeRunnerBinary: runner,
		CacheDir: filepath.Join(g.dataDir, "cache"), Progress: io.Discard})
	if err != nil {
		return fmt.Errorf("demo: building the %s test image: %w", a, err)
	}
	return nil
}

// demoNetwork makes the demo's stand-in internet (see runDemo), removing
// what a killed demo left first; close removes it.
func demoNetwork(ctx context.Context) (close func(), err error) {
	ip := func(args ...string) error {
		out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("demo network: ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	close = func() {
		exec.Command("ip", "link", "del", demoVeth).Run()
		exec.Command("ip", "netns", "del", demoNetns).Run()
	}
	close()
	defer func() {
		if err != nil {
			close()
		}
	}()
	for _, args := range [][]string{
		{"netns", "add", demoNetns},
		{"link", "add", demoVeth, "type", "veth", "peer", "name", "eth0", "netns", demoNetns},
		{"addr", "add", demoHost + "/24", "dev", demoVeth},
		{"link", "set", demoVeth, "up"},
		{"-n", demoNetns, "addr", "add", demoGitHub + "/24", "dev", "eth0"},
		{"-n", demoNetns, "link", "set", "eth0", "up"},
		{"-n", demoNetns, "link", "set", "lo", "up"},
		{"-n", demoNetns, "route", "add", "default", "via", demoHost},
	} {
		if err := ip(args...); err != nil {
			return nil, err
		}
	}
	return close, nil
}

// waitHealthy waits until the control plane at base answers.
func waitHealthy(ctx context.Context, base string, served chan error) error {
	return demoPoll(ctx, served, 100*time.Millisecond, time.Minute, "the control plane to answer", func() (bool, error) {
		resp, err := http.Get(base + "/healthz")
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
}

// waitDemoJobs follows the demo's jobs on GitHub until each is done,
// printing Tandem's view of each (tandem job) and its output as its runner
// reported it, and says whether all succeeded.
func waitDemoJobs(ctx context.Context, out io.Writer, gh *ghfake.Server, api *apiclient.Client, jobs []demoJob, served chan error) (bool, error) {
	done := map[int64]bool{}
	ok := true
	err := demoPoll(ctx, served, 200*time.Millisecond, 10*time.Minute, "the jobs to finish", func() (bool, error) {
		for _, j := range jobs {
			info, _ := gh.Job(j.id)
			if done[j.id] || info.Status != "completed" {
				continue
			}
			done[j.id] = true
			ok = ok && info.Conclusion == "success"
			fmt.Fprintf(out, "\n$ tandem job %d   # Tandem's view: every transition, timestamped\n", j.id)
			if v, err := demoJobView(ctx, api, j.id); err != nil {
				fmt.Fprintf(out, "(Tandem's view of the job: %v)\n", err)
			} else {
				printJob(out, v, time.Now())
			}
			fmt.Fprintf(out, "# the job's output, as the runner in the VM reported it to GitHub:\n%s\n",
				strings.TrimRight(info.Output, "\n"))
		}
		return len(done) == len(jobs), nil
	})
	return ok && err == nil, err
}

// demoJobView is Tandem's view of a job GitHub has completed, once Tandem
// has heard so too (the completed webhook may come a moment later).
func demoJobView(ctx context.Context, api *apiclient.Client, id int64) (controlplane.JobView, error) {
	var v controlplane.JobView
	err := demoPoll(ctx, nil, 200*time.Millisecond, 30*time.Second, "Tandem to hear the job completed", func() (bool, error) {
		_, err := api.Call(ctx, http.MethodGet, fmt.Sprintf("/api/v1/jobs/%d", id), nil, nil, &v)
		return v.CompletedAt != nil, err
	})
	return v, err
}

// demoPoll calls check every interval until it reports done or fails. It
// gives up when ctx ends, after limit, or when tandem up ends (a value on
// served, which it puts back for runDemo's deferred wait; nil: not
// watched).
func demoPoll(ctx context.Context, served chan error, every, limit time.Duration, what string, check func() (bool, error)) error {
	deadline := time.Now().Add(limit)
	for {
		done, err := check()
		if done || err != nil {
			return err
		}
		select {
		case err := <-served:
			served <- err
			return fmt.Errorf("demo: tandem up ended while waiting for %s: %v", what, err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(every):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("demo: waited %s for %s", limit, what)
		}
	}
}
