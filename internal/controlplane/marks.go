package controlplane

import (
	"maps"
	"sync"
	"time"

	"github.com/tandem-ci/tandem/internal/store"
)

// marks are what this process knows of its runners beyond the store: which
// are being stopped, which are being or were handed their runner config
// (and through which link), which GitHub said were busy. A runner's marks
// last as long as its VM: its "ended" event clears them. A restart forgets
// them, which only means a runner may be retired or configured once more,
// each of which is idempotent.
//
// It has its own lock and calls nothing while holding it.
type marks struct {
	mu          sync.Mutex
	stopping    map[string]bool      // guarded by mu: being retired or told to stop, not yet ended
	configuring map[string]bool      // guarded by mu: a JIT config is being fetched for them
	configured  map[string]HostAgent // guarded by mu: handed their JIT config, through this link
	busyHold    map[string]time.Time // guarded by mu: GitHub said busy: not retired before then
}

func newMarks() *marks {
	return &marks{stopping: map[string]bool{}, configuring: map[string]bool{}, configured: map[string]HostAgent{},
		busyHold: map[string]time.Time{}}
}

// beginConfigure marks a runner's config as being fetched. It says no if
// it is already, or if the runner is being stopped, or if the config went
// through link a already (nil: any link): commands on one stream arrive in
// order, so that one will reach the VM. endConfigure ends what it began.
func (m *marks) beginConfigure(name string, a HostAgent) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopping[name] || m.configuring[name] {
		return false
	}
	if via, ok := m.configured[name]; ok && (a == nil || via == a) {
		return false
	}
	m.configuring[name] = true
	return true
}

func (m *marks) endConfigure(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.configuring, name)
}

// configure marks a runner as handed its config through link a, unless it
// is being stopped: then it must not get one (it could take a job just
// before its VM stops), and configure says no.
func (m *marks) configure(name string, a HostAgent) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopping[name] {
		return false
	}
	m.configured[name] = a
	return true
}

// retiring marks a runner as being stopped. It says whether it was not
// already, and whether the runner was (or is being) handed its config.
func (m *marks) retiring(name string) (first, configured bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, configured = m.configured[name]
	configured = configured || m.configuring[name]
	if m.stopping[name] {
		return false, configured
	}
	m.stopping[name] = true
	return true, configured
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
	delete(m.configuring, name)
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
	forget := func(name string) bool { return !keep[name] }
	maps.DeleteFunc(m.stopping, func(name string, _ bool) bool { return forget(name) })
	maps.DeleteFunc(m.configured, func(name string, _ HostAgent) bool { return forget(name) })
	maps.DeleteFunc(m.busyHold, func(name string, _ time.Time) bool { return forget(name) })
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
