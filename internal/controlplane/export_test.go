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
