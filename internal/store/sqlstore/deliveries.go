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
// to a chunk of them, taking (cutoff in unix ms, chunk size).
type PruneStep struct {
	What, SQL string
}

// PruneSteps returns Prune's deletions, in d's SQL. An ended runner's age
// is its EndedAt.
func PruneSteps(d Dialect) []PruneStep {
	steps := []PruneStep{
		{"deliveries", `DELETE FROM deliveries WHERE seq IN (SELECT seq FROM deliveries
			WHERE processed_at <> 0 AND received_at < ? LIMIT ?)`},
		{"job events", `DELETE FROM job_events WHERE seq IN (SELECT seq FROM job_events
			WHERE at < ? LIMIT ?)`},
		{"runners", `DELETE FROM runners WHERE name IN (SELECT name FROM runners
			WHERE state = 'ended' AND ended_at < ? LIMIT ?)`},
		// Samples are made into a profile when their VM ends; any left
		// (a VM whose end was never reported) go with the runners.
		{"profile samples", `DELETE FROM profile_samples WHERE seq IN (SELECT seq FROM profile_samples
			WHERE received_at < ? LIMIT ?)`},
		{"profiles", `DELETE FROM profiles WHERE runner IN (SELECT runner FROM profiles
			WHERE ended_at < ? - ` + ms(store.ProfileExtraRetention) + ` LIMIT ?)`},
		{"parity commits", `DELETE FROM parity_commits WHERE (org, repo, workflow, logical, sha) IN (SELECT org, repo, workflow,
			logical, sha FROM parity_commits` + d.indexedBy("parity_commits_at") + ` WHERE at < ? - ` +
			ms(store.ParityExtraRetention) + ` LIMIT ?)`},
	}
	for i := range steps {
		steps[i].SQL = d.Rebind(steps[i].SQL)
	}
	return steps
}

func ms(d time.Duration) string { return fmt.Sprint(d.Milliseconds()) }

// MsOf encodes a time as the schemas keep it: unix milliseconds, the zero
// time as 0.
func MsOf(t time.Time) int64 { return msOf(t) }
