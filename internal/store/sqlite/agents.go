package sqlite

import (
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/tandem-ci/tandem/internal/store"
)

func (t *readTx) AgentCredential(hostID string) (store.AgentCredential, error) {
	c := store.AgentCredential{HostID: hostID}
	var created, revoked int64
	err := t.q.QueryRowContext(t.ctx, "SELECT hash, created_at, revoked_at FROM agent_credentials WHERE host_id = ?", hostID).
		Scan(&c.Hash, &created, &revoked)
	if errors.Is(err, sql.ErrNoRows) {
		return c, fmt.Errorf("credential of host %s: %w", hostID, store.ErrNotFound)
	}
	if err != nil {
		return c, fmt.Errorf("credential of host %s: %w", hostID, err)
	}
	c.CreatedAt, c.RevokedAt = timeOf(created), timeOf(revoked)
	return c, nil
}

func (t *readTx) EnrollTokens() ([]store.EnrollToken, error) {
	rows, err := t.q.QueryContext(t.ctx, `SELECT hash, created_at, expires_at, used_at, used_by, comment
		FROM enroll_tokens ORDER BY created_at DESC, hash`)
	if err != nil {
		return nil, fmt.Errorf("enrolment tokens: %w", err)
	}
	defer rows.Close()
	var out []store.EnrollToken
	for rows.Next() {
		var e store.EnrollToken
		var created, expires, used int64
		if err := rows.Scan(&e.Hash, &created, &expires, &used, &e.UsedBy, &e.Comment); err != nil {
			return nil, fmt.Errorf("enrolment tokens: %w", err)
		}
		e.CreatedAt, e.ExpiresAt, e.UsedAt = timeOf(created), timeOf(expires), timeOf(used)
		out = append(out, e)
	}
	return out, rows.Err()
}

func (t *writeTx) CreateEnrollToken(e store.EnrollToken) error {
	if e.Hash == "" || e.CreatedAt.IsZero() || e.ExpiresAt.Before(e.CreatedAt) {
		return fmt.Errorf("%w: enrolment token (hash, created and expiry after creation required)", store.ErrInvalid)
	}
	res, err := t.q.ExecContext(t.ctx, `INSERT INTO enroll_tokens (hash, created_at, expires_at, used_at, used_by, comment)
		VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (hash) DO NOTHING`,
		e.Hash, msOf(e.CreatedAt), msOf(e.ExpiresAt), msOf(e.UsedAt), e.UsedBy, e.Comment)
	if err != nil {
		return fmt.Errorf("enrolment token: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("enrolment token: %w", err)
	} else if n == 0 {
		return fmt.Errorf("enrolment token: %w", store.ErrExists)
	}
	return nil
}

func (t *writeTx) UseEnrollToken(hash, hostID string, now time.Time) error {
	if hash == "" || hostID == "" || now.IsZero() {
		return fmt.Errorf("%w: use enrolment token: hash, host and time required", store.ErrInvalid)
	}
	var expires, used int64
	err := t.q.QueryRowContext(t.ctx, "SELECT expires_at, used_at FROM enroll_tokens WHERE hash = ?", hash).Scan(&expires, &used)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("enrolment token: %w", store.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("enrolment token: %w", err)
	}
	if used != 0 || !now.Before(timeOf(expires)) {
		return fmt.Errorf("enrolment token: %w", store.ErrTokenSpent)
	}
	if _, err := t.q.ExecContext(t.ctx, "UPDATE enroll_tokens SET used_at = ?, used_by = ? WHERE hash = ? AND used_at = 0",
		msOf(now), hostID, hash); err != nil {
		return fmt.Errorf("enrolment token: %w", err)
	}
	return nil
}

func (t *writeTx) PutAgentCredential(c store.AgentCredential) error {
	if c.HostID == "" || c.Hash == "" || c.CreatedAt.IsZero() {
		return fmt.Errorf("%w: agent credential: host, hash and creation time required", store.ErrInvalid)
	}
	_, err := t.q.ExecContext(t.ctx, `INSERT INTO agent_credentials (host_id, hash, created_at, revoked_at) VALUES (?, ?, ?, ?)
		ON CONFLICT (host_id) DO UPDATE SET hash = excluded.hash, created_at = excluded.created_at, revoked_at = excluded.revoked_at`,
		c.HostID, c.Hash, msOf(c.CreatedAt), msOf(c.RevokedAt))
	if err != nil {
		return fmt.Errorf("agent credential of %s: %w", c.HostID, err)
	}
	return nil
}

func (t *writeTx) RevokeAgent(hostID string, at time.Time) error {
	if at.IsZero() {
		return fmt.Errorf("%w: revoke %s: no time", store.ErrInvalid, hostID)
	}
	res, err := t.q.ExecContext(t.ctx, `UPDATE agent_credentials SET revoked_at = CASE WHEN revoked_at = 0 THEN ? ELSE revoked_at END
		WHERE host_id = ?`, msOf(at), hostID)
	if err != nil {
		return fmt.Errorf("revoke %s: %w", hostID, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("revoke %s: %w", hostID, err)
	} else if n == 0 {
		return fmt.Errorf("revoke %s: %w", hostID, store.ErrNotFound)
	}
	return nil
}
