package controlplane

import (
	"sync"
	"time"

	"github.com/tandem-ci/tandem/internal/store"
)

// marks are what this process knows of its runners beyond the store: which
// are being stopped, which were handed their runner config, which GitHub
// said were busy. A runner's marks last as long as its VM: its "ended"
// event clears them. A restart forgets them, which only means a runner
// may be retired or configured once more, each of which is idempotent.
//
// It has its own lock and calls nothing while holding it.
type marks struct {
	mu         sync.Mutex
	stopping   map[string]bool      // guarded by mu: being retired or told to stop, not yet ended
	configured map[string]bool      // guarded by mu: handed their JIT config
	busyHold   map[string]time.Time // guarded by mu: GitHub said busy: not retired before then
}

func newMarks() *marks {
	return &marks{stopping: map[string]bool{}, configured: map[string]bool{}, busyHold: map[string]time.Time{}}
}

// configure marks a runner as handed its config, unless it is being
// stopped: then it must not get one (it could take a job just before its
// VM stops), and configure says no.
func (m *marks) configure(name string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopping[name] {
		return false
	}
	m.configured[name] = true
	return true
}

// retiring marks a runner as being stopped. It says whether it was not
// already, and whether the runner was handed its config.
func (m *marks) retiring(name string) (first, configured bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopping[name] {
		return false, m.configured[name]
	}
	m.stopping[name] = true
	return true, m.configured[name]
}

// busy takes back a runner's retirement: GitHub says it runs a job. It is
// not retired again before until.
func (m *marks) busy(name string, until time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.stopping, name)
	m.busyHold[name] = until
}

// stop marks a runner as told to stop.
func (m *marks) stop(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stopping[name] = true
}

// ended forgets a runner whose VM has ended.
func (m *marks) ended(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.stopping, name)
	delete(m.configured, name)
	delete(m.busyHold, name)
}

// retain forgets the runners not in live: the leader's marks of runners
// whose end another replica applied (it holds their host).
func (m *marks) retain(live []store.Runner) {
	keep := make(map[string]bool, len(live))
	for _, r := range live {
		keep[r.Name] = true
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, set := range []map[string]bool{m.stopping, m.configured} {
		for name := range set {
			if !keep[name] {
				delete(set, name)
			}
		}
	}
	for name := range m.busyHold {
		if !keep[name] {
			delete(m.busyHold, name)
		}
	}
}

func (m *marks) isStopping(name string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stopping[name]
}

// held reports whether GitHub said the runner was busy too recently to
// retire it now.
func (m *marks) held(name string, now time.Time) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return now.Before(m.busyHold[name])
}
