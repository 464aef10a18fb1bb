package sqlstore

import (
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/tandem-ci/tandem/internal/store"
)

// Enrolment tokens and agent credentials (migration 0002). Only hashes are
// stored; errors name host ids but never a hash.

func (t *readTx) AgentCredential(hostID string) (store.AgentCredential, error) {
	c := store.AgentCredential{HostID: hostID}
	var created, revoked int64
	err := t.queryRow("SELECT hash, created_at, revoked_at FROM agent_credentials WHERE host_id = ?", hostID).
		Scan(&c.Hash, &created, &revoked)
	if errors.Is(err, sql.ErrNoRows) {
		return store.AgentCredential{}, fmt.Errorf("credential of host %s: %w", hostID, store.ErrNotFound)
	}
	if err != nil {
		return store.AgentCredential{}, fmt.Errorf("credential of host %s: %w", hostID, err)
	}
	c.CreatedAt, c.RevokedAt = timeOf(created), timeOf(revoked)
	return c, nil
}

func (t *readTx) EnrollTokens() ([]store.EnrollToken, error) {
	rows, err := t.query(`SELECT ` + tokenCols + `
		FROM enroll_tokens ORDER BY created_at DESC, hash`)
	if err != nil {
		return nil, fmt.Errorf("enrolment tokens: %w", err)
	}
	ts, err := collect(rows, scanEnrollToken)
	if err != nil {
		return nil, fmt.Errorf("enrolment tokens: %w", err)
	}
	return ts, nil
}

const tokenCols = "hash, created_at, expires_at, used_at, used_by, comment, host_id, readmit"

func scanEnrollToken(sc scanner) (store.EnrollToken, error) {
	var e store.EnrollToken
	var created, expires, used int64
	if err := sc.Scan(&e.Hash, &created, &expires, &used, &e.UsedBy, &e.Comment, &e.HostID, &e.Readmit); err != nil {
		return e, err
	}
	e.CreatedAt, e.ExpiresAt, e.UsedAt = timeOf(created), timeOf(expires), timeOf(used)
	return e, nil
}

func (t *writeTx) CreateEnrollToken(e store.EnrollToken) error {
	switch {
	case e.Hash == "":
		return fmt.Errorf("%w: enrolment token without a hash", store.ErrInvalid)
	case e.CreatedAt.IsZero():
		return fmt.Errorf("%w: enrolment token without a creation time", store.ErrInvalid)
	case e.ExpiresAt.Before(e.CreatedAt):
		return fmt.Errorf("%w: enrolment token expires before its creation", store.ErrInvalid)
	}
	if e.Readmit && e.HostID == "" {
		return fmt.Errorf("%w: an enrolment token that re-admits names its host", store.ErrInvalid)
	}
	res, err := t.exec(`INSERT INTO enroll_tokens (`+tokenCols+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (hash) DO NOTHING`,
		e.Hash, msOf(e.CreatedAt), msOf(e.ExpiresAt), msOf(e.UsedAt), e.UsedBy, e.Comment, e.HostID, e.Readmit)
	if err != nil {
		return fmt.Errorf("create enrolment token: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("create enrolment token: %w", err)
	}
	if n == 0 {
		return fmt.Errorf("create enrolment token: %w", store.ErrExists)
	}
	return nil
}

// UseEnrollToken spends the token with one conditional UPDATE, so that of
// concurrent uses exactly one matches a row whatever the isolation; only
// when none matched does it look at the row to tell unknown from spent.
func (t *writeTx) UseEnrollToken(hash, hostID string, now time.Time) (store.EnrollToken, error) {
	switch {
	case hash == "":
		return store.EnrollToken{}, fmt.Errorf("%w: enrolment token without a hash", store.ErrInvalid)
	case hostID == "":
		return store.EnrollToken{}, fmt.Errorf("%w: enrolment token used by no host", store.ErrInvalid)
	case now.IsZero():
		return store.EnrollToken{}, fmt.Errorf("%w: enrolment token used at the zero time", store.ErrInvalid)
	}
	res, err := t.exec(`UPDATE enroll_tokens SET used_at = ?, used_by = ?
		WHERE hash = ? AND used_at = 0 AND expires_at > ? AND (host_id = '' OR host_id = ?)`,
		msOf(now), hostID, hash, msOf(now), hostID)
	if err != nil {
		return store.EnrollToken{}, fmt.Errorf("use enrolment token for %s: %w", hostID, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return store.EnrollToken{}, fmt.Errorf("use enrolment token for %s: %w", hostID, err)
	}
	e, err := scanEnrollToken(t.queryRow("SELECT "+tokenCols+" FROM enroll_tokens WHERE hash = ?", hash))
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return store.EnrollToken{}, fmt.Errorf("use enrolment token for %s: %w", hostID, store.ErrNotFound)
	case err != nil:
		return store.EnrollToken{}, fmt.Errorf("use enrolment token for %s: %w", hostID, err)
	case n == 1:
		return e, nil
	case e.UsedAt.IsZero() && now.Before(e.ExpiresAt) && e.HostID != hostID:
		return store.EnrollToken{}, fmt.Errorf("use enrolment token for %s: %w", hostID, store.ErrTokenHost)
	}
	return store.EnrollToken{}, fmt.Errorf("use enrolment token for %s: %w", hostID, store.ErrTokenSpent)
}

func (t *writeTx) PutAgentCredential(c store.AgentCredential) error {
	switch {
	case c.HostID == "":
		return fmt.Errorf("%w: agent credential without a host", store.ErrInvalid)
	case c.Hash == "":
		return fmt.Errorf("%w: agent credential of host %s without a hash", store.ErrInvalid, c.HostID)
	case c.CreatedAt.IsZero():
		return fmt.Errorf("%w: agent credential of host %s without a creation time", store.ErrInvalid, c.HostID)
	}
	_, err := t.exec(`INSERT INTO agent_credentials (host_id, hash, created_at, revoked_at)
		VALUES (?, ?, ?, ?)
		ON CONFLICT (host_id) DO UPDATE SET
			hash = excluded.hash, created_at = excluded.created_at, revoked_at = excluded.revoked_at`,
		c.HostID, c.Hash, msOf(c.CreatedAt), msOf(c.RevokedAt))
	if err != nil {
		return fmt.Errorf("put credential of host %s: %w", c.HostID, err)
	}
	return nil
}

func (t *writeTx) RevokeAgent(hostID string, at time.Time) error {
	switch {
	case hostID == "":
		return fmt.Errorf("%w: revoke a credential without a host", store.ErrInvalid)
	case at.IsZero():
		return fmt.Errorf("%w: revoke credential of host %s at the zero time", store.ErrInvalid, hostID)
	}
	res, err := t.exec(`UPDATE agent_credentials
		SET revoked_at = CASE WHEN revoked_at = 0 THEN ? ELSE revoked_at END
		WHERE host_id = ?`, msOf(at), hostID)
	if err != nil {
		return fmt.Errorf("revoke credential of host %s: %w", hostID, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("revoke credential of host %s: %w", hostID, err)
	}
	if n == 0 {
		return fmt.Errorf("revoke credential of host %s: %w", hostID, store.ErrNotFound)
	}
	return nil
}
