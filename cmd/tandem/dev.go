package main

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-ci/tandem/internal/fsutil"
	"github.com/tandem-ci/tandem/internal/github"
	"github.com/tandem-ci/tandem/internal/github/ghfake"
)

func devCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "dev", Short: "Developer tools: a GitHub emulator to try Tandem without GitHub, a demo history"}
	cmd.AddCommand(devGHFakeCmd(g), devSeedCmd(g))
	return cmd
}

func devGHFakeCmd(g *globals) *cobra.Command {
	var listen, keyPath, secretPath, webhookURL, runnerURL string
	var appID, seed int64
	var noApp bool
	cmd := &cobra.Command{
		Use:   "ghfake",
		Short: "Run ghfake, a stateful GitHub emulator (App API, JIT runners, webhooks)",
		Long: `Run ghfake, the GitHub emulator Tandem's tests use, as a standalone server.

It serves GitHub's REST API at its root (point github.api_url at it), sends
signed workflow_job webhooks to --webhook-url, and hands queued jobs to the
fake runners (tandem-fakerunner in the test image) that present its JIT
configs. The App's private key and the webhook secret are read from the
given files, or generated into them (mode 0600) when absent. With --no-app
there is no App until the App-manifest flow makes one: try tandem init
--github-url http://ADDR --api-url http://ADDR/ against it (GET /_ghfake/app
shows the App).

Drive it over HTTP (unauthenticated: keep it on a private address):
  POST /_ghfake/installations {"account":"acme","type":"Organization","repos":["acme/app"]}
  POST /_ghfake/jobs          {"repo":"acme/app","labels":["tandem"],"script":"echo hi"}
  POST /_ghfake/jobs/ID/cancel
  GET  /_ghfake/jobs, GET /_ghfake/runners
  PUT  /_ghfake/faults        {"lose":0.1,"duplicate":0.1,"reorder":0.1,"max_delay":"500ms"}`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if seed == 0 {
				seed = time.Now().UnixNano()
			}
			ghCfg := ghfake.Config{RunnerURL: runnerURL, Seed: seed, Logger: g.log}
			if !noApp {
				key, err := loadOrCreateKey(keyPath)
				if err != nil {
					return err
				}
				secret, err := loadOrCreateSecret(secretPath)
				if err != nil {
					return err
				}
				ghCfg.AppID, ghCfg.AppPublicKey, ghCfg.WebhookURL, ghCfg.WebhookSecret = appID, &key.PublicKey, webhookURL, []byte(secret)
			}
			gh := ghfake.New(ghCfg)
			defer gh.Close()
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			srv := &http.Server{Handler: gh.Handler(), ReadHeaderTimeout: 10 * time.Second}
			if noApp {
				fmt.Fprintf(os.Stderr, "ghfake: GitHub API at http://%s/, with no App until the manifest flow (tandem init) makes one\n", ln.Addr())
			} else {
				fmt.Fprintf(os.Stderr, "ghfake: GitHub API at http://%s/ for app %d (key %s); webhooks to %s\n",
					ln.Addr(), appID, keyPath, orText(webhookURL, "nowhere"))
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			go func() {
				<-ctx.Done()
				srv.Close()
			}()
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", "127.0.0.1:9000", "address to serve the emulated GitHub on")
	f.Int64Var(&appID, "app-id", 1, "the GitHub App's id")
	f.StringVar(&keyPath, "app-key", "ghfake-app.pem", "the App's private key (PEM); generated if absent")
	f.StringVar(&secretPath, "webhook-secret-file", "ghfake-webhook-secret", "the webhook secret; generated if absent")
	f.StringVar(&webhookURL, "webhook-url", "http://127.0.0.1:8080/webhook", "where to send webhooks")
	f.StringVar(&runnerURL, "runner-url", "", "base URL the fake runners in VMs reach ghfake at (default: as the control plane reached it)")
	f.Int64Var(&seed, "seed", 0, "seed for its random choices (0: time)")
	f.BoolVar(&noApp, "no-app", false, "start with no App: the App-manifest flow (tandem init) makes it (--app-id, --app-key, --webhook-secret-file and --webhook-url unused)")
	return cmd
}

func orText(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func loadOrCreateKey(path string) (*rsa.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		return github.ParsePrivateKey(b)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	return key, fsutil.WriteFileAtomic(path, pemBytes, 0o600)
}
