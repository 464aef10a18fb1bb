package main

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestDemoPoll: a wait in the demo ends when its condition holds, fails
// after its limit, and ends at once when tandem up ends, leaving that
// result for the demo's deferred wait (which would block forever
// otherwise).
func TestDemoPoll(t *testing.T) {
	ctx := context.Background()
	n := 0
	if err := demoPoll(ctx, nil, time.Millisecond, time.Minute, "three calls", func() (bool, error) {
		n++
		return n == 3, nil
	}); err != nil || n != 3 {
		t.Errorf("demoPoll: %v after %d calls, want nil after 3", err, n)
	}

	err := demoPoll(ctx, nil, time.Millisecond, 20*time.Millisecond, "never", func() (bool, error) { return false, nil })
	if err == nil || !strings.Contains(err.Error(), "waited 20ms for never") {
		t.Errorf("demoPoll past its limit: %v", err)
	}

	boom := errors.New("boom")
	if err := demoPoll(ctx, nil, time.Millisecond, time.Minute, "x", func() (bool, error) { return false, boom }); !errors.Is(err, boom) {
		t.Errorf("demoPoll with a failing check: %v, want boom", err)
	}

	served := make(chan error, 1)
	served <- errors.New("listen tcp 198.51.100.2:8080: address already in use")
	err = demoPoll(ctx, served, time.Hour, time.Hour, "the control plane to answer", func() (bool, error) { return false, nil })
	if err == nil || !strings.Contains(err.Error(), "tandem up ended while waiting for the control plane to answer: listen tcp") {
		t.Errorf("demoPoll once tandem up ended: %v", err)
	}
	select {
	case err := <-served:
		if err == nil || !strings.Contains(err.Error(), "address already in use") {
			t.Errorf("served holds %v, want tandem up's error", err)
		}
	default:
		t.Error("demoPoll took tandem up's result and did not put it back: the demo's deferred wait would hang")
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := demoPoll(cctx, nil, time.Hour, time.Hour, "x", func() (bool, error) { return false, nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("demoPoll with its context ended: %v", err)
	}
}
