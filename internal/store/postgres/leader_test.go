package postgres

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/store"
	"github.com/tandem-ci/tandem/internal/store/postgres/pgtest"
)

// campaign runs s.Campaign in the background; the term arrives on the
// channel.
func campaign(t *testing.T, s *Store, holder string) <-chan *store.Term {
	t.Helper()
	c := make(chan *store.Term, 1)
	go func() {
		term, err := s.Campaign(t.Context(), holder)
		if err != nil {
			if t.Context().Err() == nil {
				t.Errorf("campaign of %s: %v", holder, err)
			}
			close(c)
			return
		}
		c <- term
	}()
	return c
}

func waitTerm(t *testing.T, c <-chan *store.Term, what string) *store.Term {
	t.Helper()
	select {
	case term, ok := <-c:
		if !ok {
			t.Fatalf("%s: campaign failed", what)
		}
		return term
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: not leading after 30s", what)
	}
	return nil
}

func notYet(t *testing.T, c <-chan *store.Term, what string) {
	t.Helper()
	select {
	case term := <-c:
		t.Fatalf("%s leads (epoch %d) while another does", what, term.Epoch)
	case <-time.After(300 * time.Millisecond):
	}
}

// fencedCount adds one to a counter under a fence.
func fencedCount(s *Store, epoch int64) error {
	return s.Update(store.Fence(context.Background(), epoch), func(tx store.Tx) error { return tx.AddCounter("fenced", 1) })
}

func TestLeaderElection(t *testing.T) {
	url := pgtest.NewDatabase(t)
	a, b := openURL(t, url), openURL(t, url)

	if l, err := a.Leader(ctxT(t)); err != nil || l.Held || l.Epoch != 0 {
		t.Fatalf("before any campaign: %+v, %v", l, err)
	}
	ta := waitTerm(t, campaign(t, a, "replica-a"), "a")
	if ta.Epoch != 1 {
		t.Errorf("first term's epoch %d, want 1", ta.Epoch)
	}
	cb := campaign(t, b, "replica-b")
	notYet(t, cb, "b")
	if l, err := b.Leader(ctxT(t)); err != nil || !l.Held || l.Holder != "replica-a" || l.Epoch != 1 {
		t.Errorf("Leader: %+v, %v; want replica-a, epoch 1, held", l, err)
	}
	if err := fencedCount(a, ta.Epoch); err != nil {
		t.Fatalf("the leader's fenced write: %v", err)
	}

	// a resigns: b leads at once, and a's term is fenced off.
	ta.Resign()
	ta.Resign() // twice is harmless
	tb := waitTerm(t, cb, "b after a resigned")
	if tb.Epoch != 2 {
		t.Errorf("b's epoch %d, want 2", tb.Epoch)
	}
	if err := fencedCount(a, ta.Epoch); !errors.Is(err, store.ErrFenced) {
		t.Errorf("deposed leader's write: %v, want ErrFenced", err)
	}
	if err := fencedCount(b, tb.Epoch); err != nil {
		t.Errorf("new leader's write: %v", err)
	}
	// Unfenced writes (webhooks, agents) go on from every replica.
	if err := a.Update(ctxT(t), func(tx store.Tx) error { return tx.AddCounter("free", 1) }); err != nil {
		t.Error(err)
	}
	var c map[string]int64
	if err := a.View(ctxT(t), func(tx store.ReadTx) error { var err error; c, err = tx.Counters(); return err }); err != nil || c["fenced"] != 2 {
		t.Errorf("fenced writes counted %d, %v; want 2", c["fenced"], err)
	}

	// The server ends b's session (as it does for a leader whose host
	// vanished): b hears its term is lost, a leads.
	ca := campaign(t, a, "replica-a")
	notYet(t, ca, "a")
	if _, err := a.db.ExecContext(ctxT(t), "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'tandem leader'"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-tb.Lost:
	case <-time.After(30 * time.Second):
		t.Fatal("b did not hear that it lost the lead")
	}
	ta2 := waitTerm(t, ca, "a after b's session ended")
	if ta2.Epoch != 3 {
		t.Errorf("a's new epoch %d, want 3", ta2.Epoch)
	}
	if err := fencedCount(b, tb.Epoch); !errors.Is(err, store.ErrFenced) {
		t.Errorf("b's write after losing the lead: %v, want ErrFenced", err)
	}
	tb.Resign() // after Lost: harmless
	if l, err := b.Leader(ctxT(t)); err != nil || !l.Held || l.Holder != "replica-a" || l.Epoch != 3 {
		t.Errorf("Leader: %+v, %v", l, err)
	}
	// Without a Store, as tandem server --check-db reads it.
	if l, err := ReadLeader(ctxT(t), b.db); err != nil || !l.Held || l.Holder != "replica-a" || l.Since.IsZero() {
		t.Errorf("ReadLeader: %+v, %v", l, err)
	}
	// Close ends the store's terms: the lead is free again.
	a.Close()
	if l, err := b.Leader(ctxT(t)); err != nil || l.Held {
		t.Errorf("after the leader's store closed: %+v, %v; want not held", l, err)
	}
}

// A new leader's term begins only after the old leader's fenced
// transactions in flight have ended; the old leader's next one is refused.
func TestFenceWaitsForTheDeposedLeader(t *testing.T) {
	url := pgtest.NewDatabase(t)
	a, b := openURL(t, url), openURL(t, url)
	ta := waitTerm(t, campaign(t, a, "a"), "a")
	inTx, release := make(chan struct{}), make(chan struct{})
	committed := make(chan error, 1)
	go func() {
		committed <- a.Update(store.Fence(context.Background(), ta.Epoch), func(tx store.Tx) error {
			close(inTx)
			<-release
			return tx.AddCounter("late", 1)
		})
	}()
	<-inTx
	cb := campaign(t, b, "b")
	ta.Resign() // the lock is free, but a's transaction holds the leader row
	notYet(t, cb, "b, while a's transaction is open")
	close(release)
	if err := <-committed; err != nil {
		t.Fatalf("a's transaction begun in its term: %v", err)
	}
	tb := waitTerm(t, cb, "b")
	if err := fencedCount(a, ta.Epoch); !errors.Is(err, store.ErrFenced) {
		t.Errorf("a after b's term began: %v, want ErrFenced", err)
	}
	if tb.Epoch != ta.Epoch+1 {
		t.Errorf("epochs %d then %d", ta.Epoch, tb.Epoch)
	}
}

// A leader process killed with SIGKILL: the next replica leads.
func TestLeaderKilled(t *testing.T) {
	if testing.Short() {
		// -short runs include the arm64 binary under qemu-user, which
		// cannot start its own binary again.
		t.Skip("short: starts the test binary again as the leader")
	}
	url := pgtest.NewDatabase(t)
	s := openURL(t, url)
	cmd := exec.Command(os.Args[0], "-test.run=^TestLeaderChild$")
	cmd.Env = append(os.Environ(), "TANDEM_LEADER_CHILD="+url)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := bufio.NewScanner(out)
	leading := false
	for lines.Scan() {
		if strings.HasPrefix(lines.Text(), "leading ") {
			leading = true
			break
		}
	}
	if !leading {
		t.Fatalf("the child did not lead: %v", lines.Err())
	}
	c := campaign(t, s, "survivor")
	notYet(t, c, "the survivor, while the child leads")
	start := time.Now()
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	term := waitTerm(t, c, "the survivor after the leader was killed")
	t.Logf("led %s after the kill, epoch %d", time.Since(start).Round(time.Millisecond), term.Epoch)
	if term.Epoch != 2 {
		t.Errorf("epoch %d, want 2", term.Epoch)
	}
}

// TestLeaderChild is TestLeaderKilled's leader, in a process of its own.
func TestLeaderChild(t *testing.T) {
	url := os.Getenv("TANDEM_LEADER_CHILD")
	if url == "" {
		t.Skip("run by TestLeaderKilled")
	}
	s, err := Open(context.Background(), Options{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	term, err := s.Campaign(context.Background(), "child")
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("leading %d\n", term.Epoch)
	select {} // until killed
}
