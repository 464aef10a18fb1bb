// Package github is Tandem's client for the GitHub API and its webhooks.
//
// It has four parts:
//
//   - App authentication (app.go): the App's RS256 JWT and per-installation
//     access tokens, both cached; concurrent callers for one installation share
//     one token request.
//   - A narrow REST client (client.go) on top of go-github, behind the API
//     interface, so the control plane can be tested against a fake and run
//     against github.com, GitHub Enterprise Server or ghfake alike. The API root
//     is configurable and used verbatim ("https://api.github.com/",
//     "https://ghe.example.com/api/v3/", or an httptest server's root).
//   - A rate-limit aware http.RoundTripper (ratelimit.go) under go-github that
//     waits for and retries rate-limited and transient (502/503/504) responses,
//     and holds back further requests of a token whose quota is exhausted.
//   - Webhook verification and parsing (webhook.go) for workflow_job events.
//
// Callers branch on the sentinel errors (ErrNotFound, ErrRateLimited,
// ErrUnauthorized, ErrConflict, ErrInvalidArgument, ErrBadSignature,
// ErrMalformed) with errors.Is; HTTP status failures are *StatusError.
//
// Secrets — the App's private key, the App JWT, installation tokens and
// encoded JIT runner configs — never appear in log records or error strings.
// Credentials are only sent to the configured API host.
//
// Where GitHub's behaviour is not fully documented this package makes
// assumptions, each noted where it is made. The main ones:
//
//   - A runner group ID of 0 in a JIT request means the default group, ID 1
//     (GitHub requires the field and gives the default group ID 1).
//   - Rate limits are tracked per credential, not per resource category: all
//     endpoints used here belong to GitHub's "core" category.
//   - A 403 whose body mentions a "secondary rate limit" but carries neither
//     retry-after nor x-ratelimit-remaining: 0 is retried after one minute, as
//     GitHub's documentation recommends.
//   - Listing workflow runs filtered by status returns at most 1,000 runs per
//     status (a documented GitHub limit); ListQueuedJobs cannot see beyond it.
//   - GitHub answers a re-run it refuses with 403 whatever the reason. RerunJob
//     takes "Resource not accessible by integration" for the App's missing
//     "actions: write" (ErrUnauthorized) and any other 403 that is not a rate
//     limit for a refusal of the job's state (ErrConflict): "This workflow is
//     already running" while its run has not completed.
package github
