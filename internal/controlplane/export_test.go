package controlplane

import "time"

// SetImageSlotWait shortens how long an image file request waits for a
// transfer slot; the returned func restores it.
func SetImageSlotWait(d time.Duration) func() {
	old := imageSlotWait
	imageSlotWait = d
	return func() { imageSlotWait = old }
}
