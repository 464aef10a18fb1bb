// Package cptest starts a real control plane for tests: SQLite in a temp
// dir, ghfake as GitHub with a fresh App key, the GitHub client pointed at
// it, and the control plane's HTTP handler on an httptest server that
// ghfake sends its webhooks to. Hosts are the test's business.
package cptest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"

	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/github"
	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/labels"
	"github.com/tandem-ci/tandem/internal/store"
	"github.com/tandem-ci/tandem/internal/store/sqlite"
)

// AppID is the GitHub App id every System uses.
const AppID = 4711

// System is a running control plane and its GitHub.
type System struct {
	GH     *ghfake.Server
	CP     *controlplane.Server
	Store  *sqlite.Store
	Web    *httptest.Server // the control plane's Handler: webhook, API, metrics
	Client *github.Client
	Secret []byte // the webhook secret
	Ctx    context.Context
}

// Start starts a System; configure may change the control plane's config
// (its Store, GitHub, WebhookSecret and Labels are set, the reconcilers are
// off, and the runner command is "runner") before it is made. Everything
// stops on the test's cleanup.
func Start(t testing.TB, seed int64, configure func(*controlplane.Config)) *System {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	s := &System{Secret: []byte("cptest-webhook-secret")}
	// ghfake needs the webhook URL before the control plane exists.
	var mu sync.RWMutex
	var handler http.Handler = http.NotFoundHandler()
	s.Web = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		mu.RLock()
		h := handler
		mu.RUnlock()
		h.ServeHTTP(w, req)
	}))
	s.GH = ghfake.New(ghfake.Config{AppID: AppID, AppPublicKey: &key.PublicKey, WebhookURL: s.Web.URL + "/webhook",
		WebhookSecret: s.Secret, Seed: seed})
	ghSrv := httptest.NewServer(s.GH.Handler())
	if s.Store, err = sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "cp.db"), sqlite.Options{Synchronous: sqlite.SyncNormal}); err != nil {
		t.Fatal(err)
	}
	if s.Client, err = github.New(github.Config{BaseURL: ghSrv.URL + "/", AppID: AppID, PrivateKey: key}); err != nil {
		t.Fatal(err)
	}
	parser, err := labels.NewParser("tandem", 1, 1024)
	if err != nil {
		t.Fatal(err)
	}
	cfg := controlplane.Config{Store: s.Store, GitHub: s.Client, WebhookSecret: s.Secret, Labels: parser, AppID: AppID,
		Runner:    controlplane.RunnerSpec{GroupID: 1, Command: []string{"runner"}},
		Reconcile: controlplane.Intervals{MissedWebhooks: -1, FailedDeliveries: -1, Orphans: -1},
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil))}
	if configure != nil {
		configure(&cfg)
	}
	if s.CP, err = controlplane.New(cfg); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	handler = s.CP.Handler()
	mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	s.Ctx = ctx
	done := make(chan struct{})
	go func() {
		s.CP.Run(ctx)
		close(done)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		s.GH.Close()
		ghSrv.Close()
		s.Web.Close()
		s.Store.Close()
	})
	return s
}

// Job reads job id from st, and says whether it is there.
func Job(st store.Store, id int64) (store.Job, bool) {
	var j store.Job
	err := st.View(context.Background(), func(tx store.ReadTx) error {
		var err error
		j, err = tx.Job(id)
		return err
	})
	return j, err == nil
}
