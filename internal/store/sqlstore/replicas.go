package sqlstore

import (
	"fmt"
	"strings"
	"time"

	"github.com/tandem-ci/tandem/internal/store"
)

// TouchHosts implements store.Tx.
func (t *writeTx) TouchHosts(replica string, ids []string, at time.Time) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	w := &where{d: t.d}
	w.add("replica = ?", replica)
	if err := in(w, "id", ids); err != nil {
		return 0, err
	}
	res, err := t.exec("UPDATE hosts SET last_seen = ? WHERE "+strings.Join(w.conds, " AND "),
		append([]any{msOf(at)}, w.args...)...)
	if err != nil {
		return 0, fmt.Errorf("touch hosts: %w", err)
	}
	n, err := res.RowsAffected()
	return int(n), err
}

// AddRunnerCommand implements store.Tx.
func (t *writeTx) AddRunnerCommand(c store.RunnerCommand) error {
	if err := c.Validate(); err != nil {
		return err
	}
	if _, err := t.exec("INSERT INTO runner_commands (host_id, runner, kind, reason, at) VALUES (?, ?, ?, ?, ?)",
		c.HostID, c.Runner, string(c.Kind), c.Reason, msOf(c.At)); err != nil {
		return fmt.Errorf("queue %s of runner %s: %w", c.Kind, c.Runner, err)
	}
	return nil
}

// TakeRunnerCommands implements store.Tx.
func (t *writeTx) TakeRunnerCommands(hosts []string, max int) ([]store.RunnerCommand, error) {
	if len(hosts) == 0 || max <= 0 {
		return nil, nil
	}
	w := &where{d: t.d}
	if err := in(w, "host_id", hosts); err != nil {
		return nil, err
	}
	rows, err := t.query("SELECT seq, host_id, runner, kind, reason, at FROM runner_commands WHERE "+
		strings.Join(w.conds, " AND ")+" ORDER BY seq LIMIT "+fmt.Sprint(max), w.args...)
	if err != nil {
		return nil, fmt.Errorf("take runner commands: %w", err)
	}
	cmds, err := collect(rows, func(sc scanner) (store.RunnerCommand, error) {
		var (
			c    store.RunnerCommand
			kind string
			at   int64
		)
		err := sc.Scan(&c.Seq, &c.HostID, &c.Runner, &kind, &c.Reason, &at)
		c.Kind, c.At = store.CommandKind(kind), timeOf(at)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("take runner commands: %w", err)
	}
	if len(cmds) == 0 {
		return nil, nil
	}
	seqs := make([]int64, len(cmds))
	for i, c := range cmds {
		seqs[i] = c.Seq
	}
	d := &where{d: t.d}
	if err := in(d, "seq", seqs); err != nil {
		return nil, err
	}
	if _, err := t.exec("DELETE FROM runner_commands WHERE "+strings.Join(d.conds, " AND "), d.args...); err != nil {
		return nil, fmt.Errorf("take runner commands: %w", err)
	}
	return cmds, nil
}
