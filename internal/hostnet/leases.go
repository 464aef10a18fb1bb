package hostnet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"time"

	"github.com/tandem-ci/tandem/internal/egress"
	"github.com/tandem-ci/tandem/internal/fsutil"
)

const (
	leaseFileName = "leases.json"
	lockFileName  = "leases.lock"
	leaseVersion  = 1
)

// leaseState is the lease file's content.
type leaseState struct {
	Version int    `json:"version"`
	Subnet  string `json:"subnet,omitempty"` // the subnet the leases were made in
	// Last is the address leased last; the next search starts after it, so
	// that a freed address is not handed out again at once (neighbours may
	// still cache its old MAC).
	Last   netip.Addr `json:"last,omitzero"`
	Leases []Lease    `json:"leases"`
}

// leaseStore keeps leases in dir/leases.json. Every access holds an flock
// on dir/leases.lock, taken through a file opened for that access alone, so
// that goroutines, Network values and processes all exclude one another.
type leaseStore struct {
	dir string
}

func newLeaseStore(dir string) *leaseStore { return &leaseStore{dir: dir} }

func (s *leaseStore) path() string { return filepath.Join(s.dir, leaseFileName) }

// withLock runs fn holding the lock, exclusive or shared. Waiting for it
// ends with ctx.
func (s *leaseStore) withLock(ctx context.Context, exclusive bool, fn func() error) error {
	if !exclusive {
		// A reader of a state dir that does not exist yet sees no leases;
		// it does not create the directory.
		if _, err := os.Stat(s.dir); errors.Is(err, os.ErrNotExist) {
			return fn()
		}
	}
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	unlock, err := fsutil.Lock(ctx, filepath.Join(s.dir, lockFileName), exclusive, nil)
	if err != nil {
		return fmt.Errorf("lease lock: %w", err)
	}
	defer unlock()
	return fn()
}

// load reads the lease file; a missing file is an empty state. Call it with
// the lock held.
func (s *leaseStore) load() (*leaseState, error) {
	b, err := os.ReadFile(s.path())
	if errors.Is(err, os.ErrNotExist) {
		return &leaseState{Version: leaseVersion}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read leases: %w", err)
	}
	var st leaseState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%w: %s: %v (fix or remove it by hand; it is never reset)", ErrCorruptLeases, s.path(), err)
	}
	if err := st.check(); err != nil {
		return nil, fmt.Errorf("%w: %s: %v (fix or remove it by hand; it is never reset)", ErrCorruptLeases, s.path(), err)
	}
	slices.SortFunc(st.Leases, func(a, b Lease) int { return a.Addr.Compare(b.Addr) })
	return &st, nil
}

func (st *leaseState) check() error {
	if st.Version != leaseVersion {
		return fmt.Errorf("version %d, want %d", st.Version, leaseVersion)
	}
	if st.Subnet != "" {
		if _, err := netip.ParsePrefix(st.Subnet); err != nil {
			return fmt.Errorf("subnet: %v", err)
		}
	}
	ids := map[string]bool{}
	addrs := map[netip.Addr]bool{}
	for i, l := range st.Leases {
		switch {
		case !ValidVMID(l.VMID):
			return fmt.Errorf("lease %d: bad vm id %q", i, l.VMID)
		case !l.Addr.Is4():
			return fmt.Errorf("lease %d (%s): bad address %q", i, l.VMID, l.Addr)
		case ids[l.VMID]:
			return fmt.Errorf("vm %s leased twice", l.VMID)
		case addrs[l.Addr]:
			return fmt.Errorf("address %s leased twice", l.Addr)
		}
		ids[l.VMID], addrs[l.Addr] = true, true
	}
	return nil
}

// save writes st atomically: a temporary file, fsynced, renamed over the
// old one, and the directory fsynced. Call it with the lock held.
func (s *leaseStore) save(st *leaseState) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode leases: %w", err)
	}
	b = append(b, '\n')
	if err := fsutil.WriteFileAtomic(s.path(), b, 0o644); err != nil {
		return fmt.Errorf("write leases: %w", err)
	}
	return nil
}

// acquire returns vmID's lease, making one in subnet if it has none (then
// isNew is true). Call it with the exclusive lock held.
func (s *leaseStore) acquire(subnet netip.Prefix, gateway netip.Addr, vmID string, pol egress.Policy, now time.Time) (l Lease, isNew bool, err error) {
	st, err := s.load()
	if err != nil {
		return Lease{}, false, err
	}
	for i, l := range st.Leases {
		if l.VMID == vmID {
			if !subnet.Contains(l.Addr) {
				return Lease{}, false, fmt.Errorf("vm %s holds %s, outside subnet %s: detach it first", vmID, l.Addr, subnet)
			}
			if !reflect.DeepEqual(l.Egress, pol) {
				st.Leases[i].Egress = pol
				if err := s.save(st); err != nil {
					return Lease{}, false, err
				}
			}
			return st.Leases[i], false, nil
		}
	}
	if st.Subnet != subnet.String() {
		if st.Subnet != "" && len(st.Leases) > 0 {
			return Lease{}, false, fmt.Errorf("lease file %s holds leases of subnet %s, config says %s: detach or reclaim them first", s.path(), st.Subnet, subnet)
		}
		st.Subnet, st.Last = subnet.String(), netip.Addr{}
	}
	addr, ok := pickAddr(subnet, gateway, st)
	if !ok {
		return Lease{}, false, fmt.Errorf("%w: %s (%d leases)", ErrNoAddress, subnet, len(st.Leases))
	}
	l = Lease{VMID: vmID, Addr: addr, Created: now.UTC().Truncate(time.Millisecond), Egress: pol}
	st.Leases = append(st.Leases, l)
	st.Last = addr
	if err := s.save(st); err != nil {
		return Lease{}, false, err
	}
	return l, true, nil
}

// pickAddr returns the first free host address of subnet after st.Last,
// wrapping around; the network, gateway and broadcast addresses are never
// handed out.
func pickAddr(subnet netip.Prefix, gateway netip.Addr, st *leaseState) (netip.Addr, bool) {
	used := make(map[netip.Addr]bool, len(st.Leases))
	for _, l := range st.Leases {
		used[l.Addr] = true
	}
	first := gateway.Next()
	last := lastAddr(subnet).Prev() // before broadcast
	if first.Compare(last) > 0 {
		return netip.Addr{}, false
	}
	start := first
	if st.Last.IsValid() && subnet.Contains(st.Last) && st.Last.Compare(first) >= 0 && st.Last.Compare(last) < 0 {
		start = st.Last.Next()
	}
	a := start
	for {
		if !used[a] {
			return a, true
		}
		if a == last {
			a = first
		} else {
			a = a.Next()
		}
		if a == start {
			return netip.Addr{}, false
		}
	}
}

// lastAddr is subnet's broadcast address.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v |= host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// drop removes the leases gone reports true for and returns them. Call it
// with the exclusive lock held.
func (s *leaseStore) drop(gone func(Lease) bool) (dropped []Lease, st *leaseState, err error) {
	st, err = s.load()
	if err != nil {
		return nil, nil, err
	}
	kept := st.Leases[:0:0]
	for _, l := range st.Leases {
		if gone(l) {
			dropped = append(dropped, l)
		} else {
			kept = append(kept, l)
		}
	}
	if len(dropped) == 0 {
		return nil, st, nil
	}
	st.Leases = kept
	if err := s.save(st); err != nil {
		return nil, nil, err
	}
	return dropped, st, nil
}
