// Package runnerapi defines the wire types of Tandem's fake-runner protocol,
// shared by the ghfake GitHub emulator and the fakerunner that talks to it.
//
// The protocol is Tandem's own. The official GitHub Actions runner exchanges
// its just-in-time (JIT) configuration for credentials and then speaks an
// undocumented broker protocol with GitHub's Actions service; nothing here
// imitates that. What is imitated is the observable behaviour: a JIT config is
// single use, a runner comes online when its process starts, an idle runner is
// handed any queued job its labels match, and an ephemeral runner takes exactly
// one job.
//
// Endpoints (paths relative to JITConfig.URL):
//
//	POST /_runner/session                 Authorization: RunnerToken <JITConfig.Token>
//	     → 200 Session; 401 unknown token; 409 config already used
//	POST /_runner/acquire?wait=30s        Authorization: RunnerSession <Session.Token>
//	     → 200 Job, or 204 when no job arrived within wait
//	POST /_runner/jobs/{id}/heartbeat     → 200 Heartbeat
//	POST /_runner/jobs/{id}/complete      body Completion → 204
package runnerapi

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// EnvJITConfig is the environment variable the official runner reads its
// inputs from (ACTIONS_RUNNER_INPUT_<NAME>), here the JIT configuration.
const EnvJITConfig = "ACTIONS_RUNNER_INPUT_JITCONFIG"

// Authorization schemes.
const (
	SchemeRunnerToken   = "RunnerToken"
	SchemeRunnerSession = "RunnerSession"
)

// Paths of the protocol.
const (
	PathSession = "/_runner/session"
	PathAcquire = "/_runner/acquire"
	PathJobs    = "/_runner/jobs/"
)

// Conclusions a runner reports.
const (
	ConclusionSuccess = "success"
	ConclusionFailure = "failure"
)

// MaxOutput is the most job output, in bytes, a runner reports.
const MaxOutput = 64 << 10

// ErrInvalidJITConfig reports an encoded JIT config that cannot be used.
var ErrInvalidJITConfig = errors.New("invalid jit config")

// JITConfig is what ghfake encodes into encoded_jit_config. GitHub's real
// value is an opaque blob only the official runner understands.
type JITConfig struct {
	URL        string   `json:"url"`
	RunnerID   int64    `json:"runner_id"`
	RunnerName string   `json:"runner_name"`
	Token      string   `json:"token"`
	Labels     []string `json:"labels"`
	// Scope is "owner/repo" for a repository runner or "org" for an
	// organization runner.
	Scope string `json:"scope"`
}

// Encode returns the base64 form handed out as encoded_jit_config.
func (c JITConfig) Encode() (string, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return "", fmt.Errorf("encode jit config: %w", err)
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

// DecodeJITConfig parses and checks an encoded JIT config. Errors never
// include the config itself: it carries a secret.
func DecodeJITConfig(encoded string) (JITConfig, error) {
	var c JITConfig
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(encoded))
	if err != nil {
		return c, fmt.Errorf("%w: not base64", ErrInvalidJITConfig)
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return c, fmt.Errorf("%w: not json", ErrInvalidJITConfig)
	}
	switch {
	case c.Token == "":
		return c, fmt.Errorf("%w: no token", ErrInvalidJITConfig)
	case c.RunnerName == "":
		return c, fmt.Errorf("%w: no runner name", ErrInvalidJITConfig)
	}
	u, err := url.Parse(c.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return c, fmt.Errorf("%w: bad url", ErrInvalidJITConfig)
	}
	return c, nil
}

// Session is the answer to a session request.
type Session struct {
	RunnerID   int64  `json:"runner_id"`
	RunnerName string `json:"runner_name"`
	// Token authenticates the session's later requests.
	Token string `json:"token"`
}

// Job is a job handed to a runner.
type Job struct {
	ID     int64  `json:"id"`
	RunID  int64  `json:"run_id"`
	Repo   string `json:"repo"`
	Name   string `json:"name"`
	Script string `json:"script"`
	// RunAttempt is the run's attempt the job belongs to (1, and more
	// once re-run); 0 from a server that does not say.
	RunAttempt int      `json:"run_attempt,omitempty"`
	Labels     []string `json:"labels"`
}

// Heartbeat is the answer to a heartbeat.
type Heartbeat struct {
	Cancelled bool `json:"cancelled"`
}

// Completion reports the end of a job.
type Completion struct {
	Conclusion string `json:"conclusion"`
	ExitCode   int    `json:"exit_code"`
	Output     string `json:"output"`
}

// Error is the body of every non-2xx answer.
type Error struct {
	Message string `json:"message"`
}
