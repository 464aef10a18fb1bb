package sqlstore

import (
	"context"
	"fmt"
	"time"

	"github.com/tandem-ci/tandem/internal/store"
)

// ValidateDelivery checks what the store requires of a delivery.
func ValidateDelivery(d store.Delivery) error {
	switch {
	case d.GUID == "":
		return fmt.Errorf("%w: delivery without a guid", store.ErrInvalid)
	case d.Event == "":
		return fmt.Errorf("%w: delivery %s: no event", store.ErrInvalid, d.GUID)
	case d.ReceivedAt.IsZero():
		return fmt.Errorf("%w: delivery %s: no receive time", store.ErrInvalid, d.GUID)
	}
	return nil
}

// InsertDeliverySQL adds a delivery (guid, event, payload, received_at)
// unless one with its GUID is there: one row affected means it was new.
const InsertDeliverySQL = `INSERT INTO deliveries (guid, event, payload, received_at)
VALUES (?, ?, ?, ?) ON CONFLICT (guid) DO NOTHING`

// DeliveryArgs returns InsertDeliverySQL's arguments for d.
func DeliveryArgs(d store.Delivery) []any {
	payload := d.Payload
	if payload == nil {
		payload = []byte{}
	}
	return []any{d.GUID, d.Event, payload, msOf(d.ReceivedAt)}
}

const deliveryCols = "seq, guid, event, payload, received_at, processed_at, error"

func scanDelivery(sc scanner) (store.Delivery, error) {
	var (
		d                   store.Delivery
		received, processed int64
	)
	if err := sc.Scan(&d.Seq, &d.GUID, &d.Event, &d.Payload, &received, &processed, &d.Error); err != nil {
		return store.Delivery{}, err
	}
	if len(d.Payload) == 0 {
		d.Payload = nil
	}
	d.ReceivedAt, d.ProcessedAt = timeOf(received), timeOf(processed)
	return d, nil
}

// PendingDeliveries implements store.Store's method on q. limit must be
// positive (store.ErrInvalid otherwise).
func PendingDeliveries(ctx context.Context, q Querier, d Dialect, after int64, limit int) ([]store.Delivery, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("%w: pending deliveries: limit %d", store.ErrInvalid, limit)
	}
	rows, err := q.QueryContext(ctx, d.Rebind("SELECT "+deliveryCols+
		" FROM deliveries WHERE processed_at = 0 AND seq > ? ORDER BY seq LIMIT ?"), after, limit)
	if err != nil {
		return nil, fmt.Errorf("pending deliveries: %w", err)
	}
	ds, err := collect(rows, scanDelivery)
	if err != nil {
		return nil, fmt.Errorf("pending deliveries: %w", err)
	}
	return ds, nil
}

// PruneStep is one kind of row store.Store's Prune deletes: SQL deletes up
// to a chunk of rows older than a cutoff, taking (cutoff in unix ms, chunk
// size); the cutoff is Prune's time less Keep.
type PruneStep struct {
	What, SQL string
	Keep      time.Duration
	Days      bool // the cutoff is the start of its UTC day
}

// Cutoff is the step's cutoff for Prune's time before, in unix ms.
func (p PruneStep) Cutoff(before time.Time) int64 {
	c := msOf(before) - p.Keep.Milliseconds()
	if p.Days {
		c = dayOfMS(c)
	}
	return c
}

// PruneSteps returns Prune's deletions, in d's SQL. An ended runner's age
// is its EndedAt.
func PruneSteps(d Dialect) []PruneStep {
	steps := []PruneStep{
		{What: "deliveries", SQL: `DELETE FROM deliveries WHERE seq IN (SELECT seq FROM deliveries
			WHERE processed_at <> 0 AND received_at < ? LIMIT ?)`},
		{What: "job events", SQL: `DELETE FROM job_events WHERE seq IN (SELECT seq FROM job_events
			WHERE at < ? LIMIT ?)`},
		{What: "runners", SQL: `DELETE FROM runners WHERE name IN (SELECT name FROM runners
			WHERE state = 'ended' AND ended_at < ? LIMIT ?)`},
		// A command no replica took (its host's agent never came back)
		// goes with the runners it was for.
		{What: "runner commands", SQL: `DELETE FROM runner_commands WHERE seq IN (SELECT seq FROM runner_commands
			WHERE at < ? LIMIT ?)`},
		// Samples are made into a profile when their VM ends; any left
		// (a VM whose end was never reported) go with the runners.
		{What: "profile samples", SQL: `DELETE FROM profile_samples WHERE seq IN (SELECT seq FROM profile_samples
			WHERE received_at < ? LIMIT ?)`},
		{What: "profiles", Keep: store.ProfileExtraRetention, SQL: `DELETE FROM profiles WHERE runner IN (SELECT runner FROM profiles
			WHERE ended_at < ? LIMIT ?)`},
		// A commit's records go by whole days: parity_daily's sums stay
		// those of the commits kept.
		{What: "parity commits", Keep: store.ParityExtraRetention, Days: true, SQL: `DELETE FROM parity_commits
			WHERE (org, repo, workflow, logical, sha) IN (SELECT org, repo, workflow, logical, sha
			FROM parity_commits` + d.indexedBy("parity_commits_at") + ` WHERE at < ? LIMIT ?)`},
		{What: "parity days", Keep: store.ParityExtraRetention, Days: true, SQL: `DELETE FROM parity_daily
			WHERE (day, org, repo, workflow, logical) IN (SELECT day, org, repo, workflow, logical
			FROM parity_daily WHERE day < ? LIMIT ?)`},
	}
	for i := range steps {
		steps[i].SQL = d.Rebind(steps[i].SQL)
	}
	return steps
}

// TimeOf decodes a time as the schemas keep it: unix milliseconds UTC, 0
// for the zero time.
func TimeOf(ms int64) time.Time { return timeOf(ms) }

// Prune runs steps, each in chunks of chunk rows, through exec (which runs
// one statement, in a transaction of its own, and says how many rows it
// deleted), and returns how many rows went. If ctx ends half-way, the
// chunks already deleted stay deleted and the count so far comes back with
// the error.
func Prune(ctx context.Context, steps []PruneStep, before time.Time, chunk int,
	exec func(sql string, args ...any) (int64, error)) (int64, error) {
	var total int64
	for _, step := range steps {
		for {
			if err := ctx.Err(); err != nil {
				return total, err
			}
			n, err := exec(step.SQL, step.Cutoff(before), chunk)
			if err != nil {
				return total, fmt.Errorf("prune %s: %w", step.What, err)
			}
			total += n
			if n < int64(chunk) {
				break
			}
		}
	}
	return total, nil
}
