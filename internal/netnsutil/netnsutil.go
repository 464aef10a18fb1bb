// Package netnsutil runs code in another network namespace.
package netnsutil

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// InNetns runs fn on a locked OS thread in ns (-1: where the thread is) and
// then returns the thread to the namespace it started in; if that fails,
// the thread is not unlocked, so it ends with its goroutine instead of
// serving others in the wrong namespace. Sockets fn opens stay in ns.
func InNetns(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		if ns != -1 {
			if err := netns.Set(ns); err != nil {
				errc <- fmt.Errorf("enter netns: %w", err)
				return
			}
		}
		err = fn()
		if serr := netns.Set(orig); serr != nil {
			errc <- fmt.Errorf("back to the test's namespace: %w (after %v)", serr, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}
