package controlplane

import (
	"context"
	"time"
)

// SetImageSlotWait shortens how long an image file request waits for a
// transfer slot; the returned func restores it.
func SetImageSlotWait(d time.Duration) func() {
	old := imageSlotWait
	imageSlotWait = d
	return func() { imageSlotWait = old }
}

// FlushProfiles writes the buffered profile samples now.
func (s *Server) FlushProfiles(ctx context.Context) error { return s.flushProfiles(ctx) }

// Dispatch runs one placement pass now.
func (s *Server) Dispatch(ctx context.Context) error { return s.dispatch(ctx) }

// Quiesce waits for the goroutines the Server started outside Run (the
// launches of a pass).
func (s *Server) Quiesce() { s.wg.Wait() }
