package storetest

import (
	"errors"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/store"
)

// TouchHosts moves LastSeen of the hosts the replica holds, and of no
// other host.
func testTouchHosts(t *testing.T, s store.Store) {
	update(t, s, func(tx store.Tx) error {
		for id, replica := range map[string]string{"a": "cp-1", "b": "cp-1", "c": "cp-2", "d": ""} {
			if err := tx.PutHost(store.Host{ID: id, State: store.HostOnline, Replica: replica, LastSeen: at(0)}); err != nil {
				return err
			}
		}
		return nil
	})
	var n int
	update(t, s, func(tx store.Tx) (err error) {
		n, err = tx.TouchHosts("cp-1", []string{"a", "c", "d", "unknown"}, at(time.Minute))
		return err
	})
	if n != 1 {
		t.Errorf("TouchHosts touched %d hosts, want 1 (a: c and d are not cp-1's)", n)
	}
	update(t, s, func(tx store.Tx) (err error) {
		n, err = tx.TouchHosts("cp-1", nil, at(time.Minute))
		return err
	})
	if n != 0 {
		t.Errorf("TouchHosts of no host touched %d", n)
	}
	view(t, s, func(tx store.ReadTx) error {
		hs, err := tx.Hosts()
		if err != nil {
			return err
		}
		want := map[string]time.Time{"a": at(time.Minute), "b": at(0), "c": at(0), "d": at(0)}
		for _, h := range hs {
			if !h.LastSeen.Equal(want[h.ID].Truncate(time.Millisecond)) {
				t.Errorf("host %s last seen %v, want %v", h.ID, h.LastSeen, want[h.ID])
			}
		}
		return nil
	})
}

// Runner commands come back oldest first, for the hosts asked, at most as
// many as asked, and once: taking them removes them. A rolled-back take
// leaves them queued.
func testRunnerCommands(t *testing.T, s store.Store) {
	cmds := []store.RunnerCommand{
		{HostID: "a", Runner: "r1", Kind: store.CommandLaunch, At: at(0)},
		{HostID: "b", Runner: "r2", Kind: store.CommandLaunch, At: at(1)},
		{HostID: "a", Runner: "r1", Kind: store.CommandStop, Reason: "spare: no queued job needs it", At: at(2)},
		{HostID: "c", Runner: "r3", Kind: store.CommandStop, At: at(3)},
		{HostID: "a", Runner: "r4", Kind: store.CommandClaim, At: at(4)},
	}
	update(t, s, func(tx store.Tx) error {
		for _, c := range cmds {
			if err := tx.AddRunnerCommand(c); err != nil {
				return err
			}
		}
		return nil
	})
	for name, c := range map[string]store.RunnerCommand{
		"no host":      {Runner: "r", Kind: store.CommandLaunch},
		"no runner":    {HostID: "a", Kind: store.CommandStop},
		"unknown kind": {HostID: "a", Runner: "r", Kind: "reboot"},
	} {
		var err error
		update(t, s, func(tx store.Tx) error {
			err = tx.AddRunnerCommand(c)
			return nil
		})
		wantErr(t, "AddRunnerCommand "+name, err, store.ErrInvalid)
	}
	errRollback := errors.New("roll back")
	err := s.Update(testCtx(t), func(tx store.Tx) error {
		got, err := tx.TakeRunnerCommands([]string{"a", "b", "c"}, 10)
		if err != nil {
			return err
		}
		if len(got) != 5 {
			t.Errorf("took %d commands, want 5", len(got))
		}
		return errRollback
	})
	wantErr(t, "rolled-back take", err, errRollback)
	take := func(hosts []string, max int) []store.RunnerCommand {
		var got []store.RunnerCommand
		update(t, s, func(tx store.Tx) (err error) {
			got, err = tx.TakeRunnerCommands(hosts, max)
			return err
		})
		for i := range got {
			got[i].Seq = 0
		}
		return got
	}
	same(t, "first two of a and b", []store.RunnerCommand{cmds[0], cmds[1]}, take([]string{"a", "b"}, 2))
	same(t, "the rest of a and b", []store.RunnerCommand{cmds[2], cmds[4]}, take([]string{"b", "a"}, 10))
	if got := take([]string{"a", "b"}, 10); len(got) != 0 {
		t.Errorf("commands taken twice: %+v", got)
	}
	if got := take(nil, 10); len(got) != 0 {
		t.Errorf("commands of no host: %+v", got)
	}
	same(t, "c's", []store.RunnerCommand{cmds[3]}, take([]string{"c"}, 10))
}
