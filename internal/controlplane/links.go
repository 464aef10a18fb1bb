package controlplane

import (
	"sync"
	"time"

	"github.com/tandem-ci/tandem/internal/agentapi"
)

// links tracks the agents this process talks to: which hosts have an agent
// attached (in process, or remote over a stream), when each remote host was
// last heard from, and its last heartbeat. The store says what a host is;
// links say whether it can be told anything now.
//
// It has its own lock and calls nothing while holding it (closing a stream
// only closes a channel), so any other lock may be held around its methods.
type links struct {
	mu       sync.Mutex
	agents   map[string]HostAgent          // guarded by mu: attached agents, in process or remote
	remotes  map[string]*remoteHost        // guarded by mu: the remote streams (each also in agents once attached)
	lastSeen map[string]time.Time          // guarded by mu: remote hosts' last word, while streaming here; hostMonitor's clock
	beats    map[string]agentapi.Heartbeat // guarded by mu: each host's last heartbeat
}

func newLinks() *links {
	return &links{agents: map[string]HostAgent{}, remotes: map[string]*remoteHost{},
		lastSeen: map[string]time.Time{}, beats: map[string]agentapi.Heartbeat{}}
}

// attach makes a the agent of host id. An in-process agent sends no
// heartbeats, so its host is not watched for them.
func (l *links) attach(id string, a HostAgent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.agents[id] = a
	if _, remote := a.(*remoteHost); !remote {
		delete(l.lastSeen, id)
	}
}

// detach forgets host id's agent, whatever it is.
func (l *links) detach(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.agents, id)
}

// openStream records a remote agent's new stream, closing the one it
// replaces, and starts watching the host's heartbeats.
func (l *links) openStream(rh *remoteHost, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if old := l.remotes[rh.id]; old != nil {
		old.close() // a reconnect replaces the old stream
	}
	l.remotes[rh.id] = rh
	l.lastSeen[rh.id] = now
}

// closeStream closes rh and forgets it and its agent, unless a newer
// stream replaced it.
func (l *links) closeStream(rh *remoteHost) {
	rh.close()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.remotes[rh.id] == rh {
		delete(l.remotes, rh.id)
		if l.agents[rh.id] == HostAgent(rh) {
			delete(l.agents, rh.id)
		}
	}
}

// heard records a heartbeat from host id. Its clock moves only for a host
// that is watched: its stream is open here. (Hosts whose agents are not
// attached here are the leader's to watch, through the store: replicas.go.)
func (l *links) heard(id string, hb agentapi.Heartbeat, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, remote := l.remotes[id]; remote {
		l.lastSeen[id] = now
	}
	l.beats[id] = hb
}

// silent lists the watched hosts not heard from since cutoff.
func (l *links) silent(cutoff time.Time) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var ids []string
	for id, seen := range l.lastSeen {
		if seen.Before(cutoff) {
			ids = append(ids, id)
		}
	}
	return ids
}

// forget drops everything about host id and closes its stream.
func (l *links) forget(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.lastSeen, id)
	delete(l.beats, id)
	if rh := l.remotes[id]; rh != nil {
		rh.close()
		delete(l.remotes, id)
	}
	delete(l.agents, id)
}

// agent is host id's attached agent.
func (l *links) agent(id string) (HostAgent, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	a, ok := l.agents[id]
	return a, ok
}

// streaming reports whether host id's remote agent holds a stream now.
func (l *links) streaming(id string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.remotes[id]
	return ok
}

// attached is the set of hosts with an agent attached.
func (l *links) attached() map[string]bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := make(map[string]bool, len(l.agents))
	for id := range l.agents {
		m[id] = true
	}
	return m
}

// streams are the open remote streams.
func (l *links) streams() []*remoteHost {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]*remoteHost, 0, len(l.remotes))
	for _, rh := range l.remotes {
		out = append(out, rh)
	}
	return out
}

// seen is when host id was last heard from (zero if not watched) and its
// last heartbeat.
func (l *links) seen(id string) (time.Time, agentapi.Heartbeat, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	hb, ok := l.beats[id]
	return l.lastSeen[id], hb, ok
}
