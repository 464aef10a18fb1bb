package sqlite

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/store"
	"github.com/tandem-ci/tandem/internal/testenv"
)

// crashChildEnv names the database a child process of TestCrashDurability
// writes to.
const crashChildEnv = "TANDEM_SQLITE_CRASH_CHILD_DB"

// TestCrashChild is the child of TestCrashDurability: it inserts deliveries
// from several goroutines and prints "acked N GUID" once each insert has
// returned, until it is killed.
func TestCrashChild(t *testing.T) {
	path := os.Getenv(crashChildEnv)
	if path == "" {
		t.Skip("run by TestCrashDurability")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // in case the parent is gone
	defer cancel()
	s, err := Open(ctx, path, Options{})
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(2)
	}
	var (
		mu sync.Mutex
		n  int
		wg sync.WaitGroup
	)
	payload := []byte(strings.Repeat(`{"action":"queued"}`, 100))
	for g := range 16 {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				guid := fmt.Sprintf("crash-%d-%d", g, i)
				if _, err := s.InsertDelivery(ctx, store.Delivery{GUID: guid, Event: "workflow_job",
					Payload: payload, ReceivedAt: time.Now()}); err != nil {
					return
				}
				mu.Lock()
				n++
				fmt.Fprintf(os.Stdout, "acked %d %s\n", n, guid)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	os.Exit(3) // never reached in a passing run: the parent kills us first
}

// TestCrashDurability SIGKILLs a process that is inserting deliveries and
// checks that every delivery it acknowledged is in the database afterwards.
// (A killed process, not a power cut: the page cache survives. The fsync at
// commit, which power loss needs, is synchronous=FULL's documented effect.)
func TestCrashDurability(t *testing.T) {
	if os.Getenv(crashChildEnv) != "" {
		t.Skip("in the child")
	}
	if testing.Short() {
		// -short runs include the arm64 binary under qemu-user, which cannot
		// re-execute itself; the full (amd64) run does this test.
		t.Skip("re-executes the test binary: not in -short runs")
	}
	path := filepath.Join(t.TempDir(), "crash.db")
	cmd, sc := testenv.StartHelper(t, "TestCrashChild", crashChildEnv+"="+path)
	const killAfter = 400
	var acked []string
	killed := false
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 || f[0] != "acked" {
			continue // test framework output
		}
		acked = append(acked, f[2])
		if !killed && len(acked) >= killAfter {
			if err := cmd.Process.Kill(); err != nil { // SIGKILL
				t.Fatal(err)
			}
			killed = true
		}
	}
	err := cmd.Wait()
	if !killed {
		t.Fatalf("child ended before it was killed (%v) after %d acks", err, len(acked))
	}
	t.Logf("child killed after %d acknowledged deliveries (%v)", len(acked), err)

	s := openT(t, path, Options{})
	missing := 0
	err = s.View(ctxT(t), func(tx store.ReadTx) error {
		for _, guid := range acked {
			if _, err := tx.Delivery(guid); err != nil {
				missing++
				if missing <= 5 {
					t.Errorf("acknowledged delivery %s lost: %v", guid, err)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if missing > 0 {
		t.Errorf("%d of %d acknowledged deliveries lost", missing, len(acked))
	}
}
