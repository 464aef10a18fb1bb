package sqlstore

import (
	"encoding/json"
	"fmt"

	"time"

	"github.com/tandem-ci/tandem/internal/store"
)

// Host load history (migration 0014): a JSON record per host and minute.

func (t *readTx) HostLoad(host string, since time.Time) ([]store.HostLoad, error) {
	rows, err := t.query("SELECT load FROM host_load WHERE host = ? AND at >= ? ORDER BY at", host, msOf(since))
	if err != nil {
		return nil, fmt.Errorf("load of host %s: %w", host, err)
	}
	defer rows.Close()
	var out []store.HostLoad
	for rows.Next() {
		var raw string
		if err := rows.Scan(&raw); err != nil {
			return nil, fmt.Errorf("load of host %s: %w", host, err)
		}
		var l store.HostLoad
		if err := json.Unmarshal([]byte(raw), &l); err != nil {
			return nil, fmt.Errorf("load of host %s: %w", host, err)
		}
		out = append(out, l)
	}
	return out, rows.Err()
}

func (t *writeTx) AddHostLoad(loads []store.HostLoad) error {
	for _, l := range loads {
		if l.Host == "" || l.At.IsZero() {
			return fmt.Errorf("%w: host load without a host or a time", store.ErrInvalid)
		}
		l.At = storedTime(l.At)
		b, err := json.Marshal(l)
		if err != nil {
			return fmt.Errorf("load of host %s: %w", l.Host, err)
		}
		if _, err := t.exec(upsertHostLoadSQL,
			l.Host, msOf(l.At), string(b)); err != nil {
			return fmt.Errorf("load of host %s: %w", l.Host, err)
		}
	}
	return nil
}

func (t *writeTx) PruneHostLoad(before time.Time) (int64, error) {
	res, err := t.exec("DELETE FROM host_load WHERE at < ?", msOf(before))
	if err != nil {
		return 0, fmt.Errorf("prune host load: %w", err)
	}
	return res.RowsAffected()
}

var upsertHostLoadSQL = upsert("host_load", "host, at, load", "host, at")
