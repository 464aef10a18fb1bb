package github

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Webhook request headers.
const (
	HeaderSignature = "X-Hub-Signature-256"
	HeaderEvent     = "X-GitHub-Event"
	HeaderDelivery  = "X-GitHub-Delivery"
)

// workflow_job actions, as documented by GitHub. They double as job statuses.
const (
	ActionQueued     = "queued"
	ActionInProgress = "in_progress"
	ActionCompleted  = "completed"
	ActionWaiting    = "waiting"
)

const signaturePrefix = "sha256="

// VerifySignature checks a webhook body against its X-Hub-Signature-256
// header ("sha256=<hex HMAC-SHA256 of body>") in constant time. It returns an
// error wrapping ErrBadSignature if the header is missing, malformed or wrong,
// or if no secret is configured.
func VerifySignature(secret, body []byte, header string) error {
	if len(secret) == 0 {
		return fmt.Errorf("github: %w: no webhook secret configured", ErrBadSignature)
	}
	if header == "" {
		return fmt.Errorf("github: %w: missing %s header", ErrBadSignature, HeaderSignature)
	}
	hexSig, ok := strings.CutPrefix(header, signaturePrefix)
	if !ok {
		if alg, _, found := strings.Cut(header, "="); found && len(alg) <= 16 {
			return fmt.Errorf("github: %w: unsupported algorithm %q in %s (want sha256)", ErrBadSignature, alg, HeaderSignature)
		}
		return fmt.Errorf("github: %w: %s does not start with %q", ErrBadSignature, HeaderSignature, signaturePrefix)
	}
	got, err := hex.DecodeString(hexSig)
	if err != nil || len(got) != sha256.Size {
		return fmt.Errorf("github: %w: malformed %s: want %d hex digits after %q", ErrBadSignature, HeaderSignature, 2*sha256.Size, signaturePrefix)
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write(body)
	if !hmac.Equal(got, mac.Sum(nil)) {
		return fmt.Errorf("github: %w: signature does not match", ErrBadSignature)
	}
	return nil
}

// WorkflowJobEvent is a parsed workflow_job webhook.
type WorkflowJobEvent struct {
	Action         string
	Job            Job // Job.Repo is Repo.FullName
	Repo           Repository
	Org            string // organization.login; "" for a user-owned repository
	InstallationID int64
	Sender         string
}

// The wire format: only the fields Tandem uses; unknown fields are ignored
// and JSON null leaves a field at its zero value (runner_id, runner_name,
// conclusion, completed_at and workflow_name may be null).
type (
	wireWorkflowJobEvent struct {
		Action       string           `json:"action"`
		WorkflowJob  *wireWorkflowJob `json:"workflow_job"`
		Repository   *wireRepository  `json:"repository"`
		Organization *wireAccount     `json:"organization"`
		Installation *struct {
			ID int64 `json:"id"`
		} `json:"installation"`
		Sender *wireAccount `json:"sender"`
	}
	wireWorkflowJob struct {
		ID            int64     `json:"id"`
		RunID         int64     `json:"run_id"`
		RunAttempt    int       `json:"run_attempt"`
		Name          string    `json:"name"`
		WorkflowName  string    `json:"workflow_name"`
		Status        string    `json:"status"`
		Conclusion    string    `json:"conclusion"`
		Labels        []string  `json:"labels"`
		RunnerID      int64     `json:"runner_id"`
		RunnerName    string    `json:"runner_name"`
		RunnerGroupID int64     `json:"runner_group_id"`
		HeadBranch    string    `json:"head_branch"`
		HeadSHA       string    `json:"head_sha"`
		HTMLURL       string    `json:"html_url"`
		CreatedAt     time.Time `json:"created_at"`
		StartedAt     time.Time `json:"started_at"`
		CompletedAt   time.Time `json:"completed_at"`
	}
	wireRepository struct {
		ID         int64        `json:"id"`
		Name       string       `json:"name"`
		FullName   string       `json:"full_name"`
		Private    *bool        `json:"private"`
		Visibility string       `json:"visibility"`
		Owner      *wireAccount `json:"owner"`
	}
	wireAccount struct {
		Login string `json:"login"`
	}
)

// ParseWorkflowJobEvent parses a workflow_job webhook body. It returns an
// error wrapping ErrMalformed if the body is not JSON of the expected shape,
// the action is not one GitHub documents, or workflow_job.id,
// repository.full_name ("owner/name") or installation.id is missing.
func ParseWorkflowJobEvent(body []byte) (WorkflowJobEvent, error) {
	var w wireWorkflowJobEvent
	if err := json.Unmarshal(body, &w); err != nil {
		return WorkflowJobEvent{}, fmt.Errorf("github: %w: %w", ErrMalformed, err)
	}
	switch w.Action {
	case ActionQueued, ActionInProgress, ActionCompleted, ActionWaiting:
	case "":
		return WorkflowJobEvent{}, fmt.Errorf("github: %w: missing action", ErrMalformed)
	default:
		return WorkflowJobEvent{}, fmt.Errorf("github: %w: unknown action %.40q", ErrMalformed, w.Action)
	}
	if w.WorkflowJob == nil || w.WorkflowJob.ID <= 0 {
		return WorkflowJobEvent{}, fmt.Errorf("github: %w: missing workflow_job.id", ErrMalformed)
	}
	if w.Repository == nil || w.Repository.FullName == "" {
		return WorkflowJobEvent{}, fmt.Errorf("github: %w: missing repository.full_name", ErrMalformed)
	}
	owner, name, ok := strings.Cut(w.Repository.FullName, "/")
	if !ok || owner == "" || name == "" || strings.Contains(name, "/") {
		return WorkflowJobEvent{}, fmt.Errorf("github: %w: repository.full_name %.100q is not owner/name", ErrMalformed, w.Repository.FullName)
	}
	if w.Installation == nil || w.Installation.ID <= 0 {
		return WorkflowJobEvent{}, fmt.Errorf("github: %w: missing installation.id", ErrMalformed)
	}

	j := w.WorkflowJob
	repo := Repository{
		ID:         w.Repository.ID,
		FullName:   w.Repository.FullName,
		Owner:      owner,
		Name:       name,
		Visibility: visibility(w.Repository.Visibility, w.Repository.Private),
	}
	if w.Repository.Owner != nil && w.Repository.Owner.Login != "" {
		repo.Owner = w.Repository.Owner.Login
	}
	if w.Repository.Name != "" {
		repo.Name = w.Repository.Name
	}
	ev := WorkflowJobEvent{
		Action: w.Action,
		Job: Job{
			ID:            j.ID,
			RunID:         j.RunID,
			RunAttempt:    j.RunAttempt,
			Repo:          w.Repository.FullName,
			Name:          j.Name,
			WorkflowName:  j.WorkflowName,
			Status:        j.Status,
			Conclusion:    j.Conclusion,
			Labels:        j.Labels,
			RunnerID:      j.RunnerID,
			RunnerName:    j.RunnerName,
			RunnerGroupID: j.RunnerGroupID,
			HeadBranch:    j.HeadBranch,
			HeadSHA:       j.HeadSHA,
			HTMLURL:       j.HTMLURL,
			CreatedAt:     j.CreatedAt,
			StartedAt:     j.StartedAt,
			CompletedAt:   j.CompletedAt,
		},
		Repo:           repo,
		InstallationID: w.Installation.ID,
	}
	if w.Organization != nil {
		ev.Org = w.Organization.Login
	}
	if w.Sender != nil {
		ev.Sender = w.Sender.Login
	}
	return ev, nil
}

// InstallationEvent is a parsed installation or installation_repositories
// webhook: what happened to an installation of the App, or to the
// repositories it may act for.
type InstallationEvent struct {
	Event          string // "installation" or "installation_repositories"
	Action         string // deleted, suspend, unsuspend, created, …; added, removed
	InstallationID int64
	Account        string
	Sender         string
	Removed        []string // installation_repositories removed: full names
}

// ParseInstallationEvent parses the body of an installation or
// installation_repositories webhook (event is the X-GitHub-Event header).
// It returns an error wrapping ErrMalformed if the body is not JSON of the
// expected shape or installation.id is missing.
func ParseInstallationEvent(event string, body []byte) (InstallationEvent, error) {
	var w struct {
		Action       string `json:"action"`
		Installation *struct {
			ID      int64        `json:"id"`
			Account *wireAccount `json:"account"`
		} `json:"installation"`
		Sender  *wireAccount `json:"sender"`
		Removed []struct {
			FullName string `json:"full_name"`
		} `json:"repositories_removed"`
	}
	if event != "installation" && event != "installation_repositories" {
		return InstallationEvent{}, fmt.Errorf("github: %w: %.40q is not an installation event", ErrMalformed, event)
	}
	if err := json.Unmarshal(body, &w); err != nil {
		return InstallationEvent{}, fmt.Errorf("github: %w: %w", ErrMalformed, err)
	}
	if w.Action == "" || len(w.Action) > 40 {
		return InstallationEvent{}, fmt.Errorf("github: %w: missing or overlong action", ErrMalformed)
	}
	if w.Installation == nil || w.Installation.ID <= 0 {
		return InstallationEvent{}, fmt.Errorf("github: %w: missing installation.id", ErrMalformed)
	}
	ev := InstallationEvent{Event: event, Action: w.Action, InstallationID: w.Installation.ID}
	if a := w.Installation.Account; a != nil {
		ev.Account = a.Login
	}
	if w.Sender != nil {
		ev.Sender = w.Sender.Login
	}
	for _, r := range w.Removed {
		owner, name, ok := strings.Cut(r.FullName, "/")
		if !ok || owner == "" || name == "" || strings.Contains(name, "/") {
			return InstallationEvent{}, fmt.Errorf("github: %w: repositories_removed: %.100q is not owner/name", ErrMalformed, r.FullName)
		}
		ev.Removed = append(ev.Removed, r.FullName)
	}
	return ev, nil
}

// visibility is a repository's visibility from its payload's visibility
// and private fields: "" when neither says.
func visibility(v string, private *bool) string {
	switch v = strings.ToLower(v); v {
	case "public", "private", "internal":
		return v
	}
	switch {
	case private == nil:
		return ""
	case *private:
		return "private"
	}
	return "public"
}
