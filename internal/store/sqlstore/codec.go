package sqlstore

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/store"

	"github.com/tandem-ci/tandem/internal/egress"
)

// scanner is a *sql.Row or *sql.Rows.
type scanner interface {
	Scan(dest ...any) error
}

// msOf encodes a time as unix milliseconds, the zero time as 0.
func msOf(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

// timeOf decodes msOf.
func timeOf(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}

// jsonOf encodes a slice as a JSON array ("[]" when empty).
func jsonOf[T any](v []T) (string, error) {
	if len(v) == 0 {
		return "[]", nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// sliceOf decodes jsonOf; an empty array gives nil.
func sliceOf[T any](s string) ([]T, error) {
	if s == "" || s == "[]" {
		return nil, nil
	}
	var v []T
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		return nil, fmt.Errorf("decode json column: %w", err)
	}
	if len(v) == 0 {
		return nil, nil
	}
	return v, nil
}

// collect scans every row with scan and closes rows.
func collect[T any](rows *sql.Rows, scan func(scanner) (T, error)) ([]T, error) {
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

const jobCols = `id, run_id, run_attempt, installation, org, repo, name, workflow,
	labels, label_key, arch, vcpus, memory_mib, state, reason, runner_name, host_id,
	attempts, reopens, avoid_hosts, conclusion,
	created_at, queued_at, updated_at, started_at, completed_at,
	head_branch, head_sha, html_url, sender, gh_started_at, gh_completed_at, public`

// jobArgs returns j's values in jobCols order.
func jobArgs(j store.Job) ([]any, error) {
	ls, err := jsonOf(j.Labels)
	if err != nil {
		return nil, fmt.Errorf("job %d: labels: %w", j.ID, err)
	}
	avoid, err := jsonOf(j.AvoidHosts)
	if err != nil {
		return nil, fmt.Errorf("job %d: avoid hosts: %w", j.ID, err)
	}
	return []any{j.ID, j.RunID, j.RunAttempt, j.Installation, j.Org, j.Repo, j.Name, j.Workflow,
		ls, j.LabelKey, string(j.Arch), j.VCPUs, j.MemoryMiB, string(j.State), j.Reason, j.RunnerName, j.HostID,
		j.Attempts, j.Reopens, avoid, j.Conclusion,
		msOf(j.CreatedAt), msOf(j.QueuedAt), msOf(j.UpdatedAt), msOf(j.StartedAt), msOf(j.CompletedAt),
		j.HeadBranch, j.HeadSHA, j.HTMLURL, j.Sender, msOf(j.GitHubStartedAt), msOf(j.GitHubCompletedAt), j.Public}, nil
}

func scanJob(sc scanner) (store.Job, error) {
	var (
		j                                           store.Job
		ls, avoid, archName, state                  string
		created, queued, updated, started, complete int64
		ghStarted, ghCompleted                      int64
	)
	if err := sc.Scan(&j.ID, &j.RunID, &j.RunAttempt, &j.Installation, &j.Org, &j.Repo, &j.Name, &j.Workflow,
		&ls, &j.LabelKey, &archName, &j.VCPUs, &j.MemoryMiB, &state, &j.Reason, &j.RunnerName, &j.HostID,
		&j.Attempts, &j.Reopens, &avoid, &j.Conclusion,
		&created, &queued, &updated, &started, &complete,
		&j.HeadBranch, &j.HeadSHA, &j.HTMLURL, &j.Sender, &ghStarted, &ghCompleted, &j.Public); err != nil {
		return store.Job{}, err
	}
	var err error
	if j.Labels, err = sliceOf[string](ls); err != nil {
		return store.Job{}, fmt.Errorf("job %d: labels: %w", j.ID, err)
	}
	if j.AvoidHosts, err = sliceOf[string](avoid); err != nil {
		return store.Job{}, fmt.Errorf("job %d: avoid hosts: %w", j.ID, err)
	}
	j.Arch, j.State = arch.Arch(archName), store.JobState(state)
	j.CreatedAt, j.QueuedAt, j.UpdatedAt = timeOf(created), timeOf(queued), timeOf(updated)
	j.StartedAt, j.CompletedAt = timeOf(started), timeOf(complete)
	j.GitHubStartedAt, j.GitHubCompletedAt = timeOf(ghStarted), timeOf(ghCompleted)
	return j, nil
}

const eventCols = "seq, job_id, at, from_state, to_state, source, reason, runner, host"

func scanEvent(sc scanner) (store.JobEvent, error) {
	var (
		e        store.JobEvent
		at       int64
		from, to string
	)
	if err := sc.Scan(&e.Seq, &e.JobID, &at, &from, &to, &e.Source, &e.Reason, &e.Runner, &e.Host); err != nil {
		return store.JobEvent{}, err
	}
	e.At, e.From, e.To = timeOf(at), store.JobState(from), store.JobState(to)
	return e, nil
}

const runnerCols = `name, host_id, job_id, installation, org, repo, labels, label_key,
	arch, emulated, vcpus, memory_mib, state, reason, github_id, vm_id, exit_code,
	created_at, updated_at, started_at, busy_at, ended_at, egress, egress_record, runner_group,
	pool, image, ready_at, claimed_at, kept_until`

// runnerArgs returns r's values in runnerCols order.
func runnerArgs(r store.Runner) ([]any, error) {
	ls, err := jsonOf(r.Labels)
	if err != nil {
		return nil, fmt.Errorf("runner %s: labels: %w", r.Name, err)
	}
	pol, err := objectJSON(r.Egress, r.Egress.Mode == "")
	if err != nil {
		return nil, fmt.Errorf("runner %s: egress: %w", r.Name, err)
	}
	rec, err := objectJSON(r.EgressRecord, r.EgressRecord == nil)
	if err != nil {
		return nil, fmt.Errorf("runner %s: egress record: %w", r.Name, err)
	}
	return []any{r.Name, r.HostID, r.JobID, r.Installation, r.Org, r.Repo, ls, r.LabelKey,
		string(r.Arch), r.Emulated, r.VCPUs, r.MemoryMiB, string(r.State), r.Reason, r.GitHubID, r.VMID, r.ExitCode,
		msOf(r.CreatedAt), msOf(r.UpdatedAt), msOf(r.StartedAt), msOf(r.BusyAt), msOf(r.EndedAt), pol, rec, r.Group,
		r.Pool, r.Image, msOf(r.ReadyAt), msOf(r.ClaimedAt), msOf(r.KeptUntil)}, nil
}

// objectJSON encodes v as a JSON column; empty: "".
func objectJSON(v any, empty bool) (string, error) {
	if empty {
		return "", nil
	}
	b, err := json.Marshal(v)
	return string(b), err
}

func scanRunner(sc scanner) (store.Runner, error) {
	var (
		r                                  store.Runner
		ls, archName, state, pol, rec      string
		created, updated, started, busy, e int64
		ready, claimed, kept               int64
	)
	if err := sc.Scan(&r.Name, &r.HostID, &r.JobID, &r.Installation, &r.Org, &r.Repo, &ls, &r.LabelKey,
		&archName, &r.Emulated, &r.VCPUs, &r.MemoryMiB, &state, &r.Reason, &r.GitHubID, &r.VMID, &r.ExitCode,
		&created, &updated, &started, &busy, &e, &pol, &rec, &r.Group,
		&r.Pool, &r.Image, &ready, &claimed, &kept); err != nil {
		return store.Runner{}, err
	}
	var err error
	if r.Labels, err = sliceOf[string](ls); err != nil {
		return store.Runner{}, fmt.Errorf("runner %s: labels: %w", r.Name, err)
	}
	if pol != "" {
		if err := json.Unmarshal([]byte(pol), &r.Egress); err != nil {
			return store.Runner{}, fmt.Errorf("runner %s: egress: %w", r.Name, err)
		}
	}
	if rec != "" {
		r.EgressRecord = new(egress.Record)
		if err := json.Unmarshal([]byte(rec), r.EgressRecord); err != nil {
			return store.Runner{}, fmt.Errorf("runner %s: egress record: %w", r.Name, err)
		}
	}
	r.Arch, r.State = arch.Arch(archName), store.RunnerState(state)
	r.CreatedAt, r.UpdatedAt, r.StartedAt = timeOf(created), timeOf(updated), timeOf(started)
	r.BusyAt, r.EndedAt = timeOf(busy), timeOf(e)
	r.ReadyAt, r.ClaimedAt, r.KeptUntil = timeOf(ready), timeOf(claimed), timeOf(kept)
	return r, nil
}

const hostCols = "id, arches, vcpus, memory_mib, state, reason, version, last_seen, created_at, disk_mib, replica"

// hostArgs returns h's values in hostCols order.
func hostArgs(h store.Host) ([]any, error) {
	arches, err := jsonOf(h.Arches)
	if err != nil {
		return nil, fmt.Errorf("host %s: arches: %w", h.ID, err)
	}
	return []any{h.ID, arches, h.VCPUs, h.MemoryMiB, string(h.State), h.Reason, h.Version,
		msOf(h.LastSeen), msOf(h.CreatedAt), h.DiskMiB, h.Replica}, nil
}

func scanHost(sc scanner) (store.Host, error) {
	var (
		h                 store.Host
		arches, state     string
		lastSeen, created int64
	)
	if err := sc.Scan(&h.ID, &arches, &h.VCPUs, &h.MemoryMiB, &state, &h.Reason, &h.Version,
		&lastSeen, &created, &h.DiskMiB, &h.Replica); err != nil {
		return store.Host{}, err
	}
	var err error
	if h.Arches, err = sliceOf[store.ArchSupport](arches); err != nil {
		return store.Host{}, fmt.Errorf("host %s: arches: %w", h.ID, err)
	}
	h.State, h.LastSeen, h.CreatedAt = store.HostState(state), timeOf(lastSeen), timeOf(created)
	return h, nil
}

func scanRepo(sc scanner) (store.Repo, error) {
	var (
		r    store.Repo
		last int64
	)
	if err := sc.Scan(&r.FullName, &r.Installation, &last); err != nil {
		return store.Repo{}, err
	}
	r.LastActive = timeOf(last)
	return r, nil
}
