package postgres

import (
	"context"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/store/postgres/pgtest"
)

// recv waits for c to receive, failing the test after a generous while.
func recv(t *testing.T, c <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: no notification", what)
	}
}

// quiet checks that c holds nothing now.
func quiet(t *testing.T, c <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-c:
		t.Errorf("%s: notified", what)
	default:
	}
}

// A notification from one replica wakes every subscriber of its topic,
// on every replica on the database and no other topic's; after the
// database restarts, every subscriber is woken (what was sent meanwhile
// is lost); Close stops the listener.
func TestNotify(t *testing.T) {
	srv := pgtest.StartServer(t)
	url := srv.NewDatabase(t)
	a, b := openURL(t, url), openURL(t, url)
	ctx := ctxT(t)
	aLaunch, bLaunch, bApply := a.Subscribe(ctx, "launch"), b.Subscribe(ctx, "launch"), b.Subscribe(ctx, "apply")
	// Each store's listener wakes its subscribers once it listens.
	for what, c := range map[string]<-chan struct{}{"a launch": aLaunch, "b launch": bLaunch, "b apply": bApply} {
		recv(t, c, what+" on connecting")
	}
	if err := b.Notify(ctx, "launch"); err != nil {
		t.Fatal(err)
	}
	recv(t, aLaunch, "a launch")
	recv(t, bLaunch, "b launch")
	// The apply subscriber heard nothing: a notification of its own,
	// which arrives after launch's, shows that it was not skipped.
	if err := a.Notify(ctx, "apply"); err != nil {
		t.Fatal(err)
	}
	recv(t, bApply, "b apply")
	quiet(t, aLaunch, "a launch after apply")

	// A subscription whose context ended is not woken.
	ectx, cancel := context.WithCancel(ctx)
	ended := a.Subscribe(ectx, "launch")
	cancel()
	if err := b.Notify(ctx, "launch"); err != nil {
		t.Fatal(err)
	}
	recv(t, aLaunch, "a launch, again")
	quiet(t, ended, "an ended subscription")

	srv.Stop(t)
	srv.Start(t)
	recv(t, aLaunch, "a launch after the database restarted")
	recv(t, bApply, "b apply after the database restarted")

	done := make(chan struct{})
	go func() {
		a.Close()
		b.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Close waits for the listener")
	}
	if err := a.Notify(ctx, "launch"); err == nil {
		t.Error("Notify on a closed store")
	}
}
