// Package ghfake is a stateful emulator of the parts of GitHub that Tandem
// uses: a GitHub App's REST API (JWT and installation-token auth, installation
// tokens, just-in-time runners, self-hosted runners, workflow runs and jobs,
// webhook deliveries), its workflow_job webhooks, and the runners that take
// jobs. Every Tandem control-plane test talks to it, because GitHub cannot be
// reached from our machines.
//
// It speaks GitHub's documented HTTP API (any client, go-github included,
// works against Server.Handler mounted at the API root, as
// https://api.github.com/), and reproduces the awkward parts on purpose:
//
//   - A queued job goes to ANY idle online runner whose labels include all of
//     the job's labels (case-insensitively) and whose scope covers the
//     repository, chosen at random; not to the runner created for it.
//   - Runner groups (SetRunnerGroup, GET /orgs/{org}/actions/runner-groups):
//     every organization has "Default" (id 1); an organization runner joins
//     the group its JIT request names, and takes a job only when the group
//     allows the job's repository (visibility all, selected or private;
//     public repositories only when the group allows them, which no group
//     does by default). A job that targets a group (JobSpec.RunnerGroup,
//     runs-on: {group: NAME}) goes only to that group's runners, and its
//     queued payload does not say so: runner_group_id and _name appear once
//     a runner takes it. Repository runners are in no group.
//   - Webhooks are delivered asynchronously, one goroutine each, so they may
//     arrive out of order even without faults; there are no automatic retries;
//     Faults can lose, fail, duplicate, reorder and delay them.
//   - Installation tokens expire; a token only sees its installation's
//     repositories (others answer 404, not 403); rate limits can be switched
//     on for the next n requests.
//   - Ephemeral (JIT) runners take one job and are then removed; a busy
//     runner cannot be deleted (422).
//   - A queued job's started_at is already set (to its creation time), as in
//     GitHub's payloads.
//   - Job, run and delivery ids exceed 2^31, as GitHub's do.
//   - An in-progress job that is cancelled completes only when its runner
//     learns of it (at a heartbeat) and reports.
//   - Re-running a job (POST .../actions/jobs/{job_id}/rerun, or RerunJob)
//     starts a new attempt of its run, in which the job runs again as a new
//     job (new id, run_attempt one more, a "queued" webhook); the old job
//     keeps its id, attempt and conclusion, and the run is in progress again
//     until the new job completes. The App needs actions: write
//     (SetPermissions); installations have actions: read by default.
//   - A job whose runner is not heard from (no heartbeat) for
//     Config.RunnerLostAfter fails, as GitHub's do when "the self-hosted
//     runner lost communication with the server", and the runner is removed.
//
// # The App
//
// Config names the App (AppID, AppPublicKey, WebhookURL, WebhookSecret), or
// the App-manifest flow makes it (manifest.go): POST /settings/apps/new or
// /organizations/{org}/settings/apps/new with a manifest form field
// redirects at once (GitHub first asks for confirmation) to the manifest's
// redirect_url with a code, and POST /app-manifests/{code}/conversions
// exchanges the code, once and within the hour, for the new App's id, key
// and webhook secret. ghfake emulates one App at a time.
//
// # Runners
//
// generate-jitconfig answers with encoded_jit_config, which for GitHub is an
// opaque blob only the official runner understands. Here it is the base64 of a
// runnerapi.JITConfig (url, runner_id, runner_name, a random single-use token,
// labels, scope). The official runner then speaks an undocumented broker
// protocol; the fake runner (package fakerunner, command tandem-fakerunner)
// speaks Tandem's own small protocol under /_runner/ instead, described in
// package runnerapi.
//
// # Test control
//
// Tests drive the emulator through Go methods (AddInstallation,
// SetPermissions, QueueJob, QueueRun, CancelJob, RerunJob, App, Job, Jobs,
// Runners, Deliveries, Redeliver, SetFaults, RateLimit, Quiesce, Flush)
// or, when it runs as a standalone process (tandem dev ghfake), through the
// unauthenticated HTTP control API under /_ghfake/. All state sits behind one mutex; Close ends long polls and
// waits for every webhook sender.
//
// # Guesses
//
// Where GitHub's documentation is silent ghfake guesses, and these guesses
// are the first suspects if real GitHub behaves differently:
//
//   - JIT runners get exactly the requested labels, all of type "custom";
//     runner_group_id is required (422 without it); an organization's JIT
//     request naming a group it does not have gets 404; a repository's
//     accepts any positive id (repository runners are in no group).
//   - visible_to_repository naming no repository of the organization: 404.
//   - The wording of error messages, and of a failed delivery's status
//     ("failed to connect to host", "timed out", "Invalid HTTP Response: 503";
//     status_code 0 when no HTTP answer was received).
//   - Duplicated webhooks appear twice in the deliveries log, both with
//     redelivery false; redeliveries (POST .../attempts) are never subject to
//     Faults.
//   - Rate limits are counted globally, not per token or per app; the JWT
//     rules (iss as string or number, exp at most 10 minutes after iat, 60 s
//     of clock skew) follow the documentation.
//   - Jobs in repositories where no installation exists are queued and can
//     run, but no webhook is sent for them (the App is not installed there).
//   - Only workflow_job webhooks, and the installation and
//     installation_repositories ones of SuspendInstallation,
//     RemoveInstallation and RemoveRepos, are sent (no workflow_run,
//     check_run, ...).
//   - Token requests cannot narrow repositories or permissions (the body is
//     ignored).
//   - Permissions (SetPermissions) are checked as the installation has them
//     at the request, whatever they were when its token was created. Only
//     the endpoints that say so check them; the others answer whatever the
//     installation's permissions.
//   - A run's attempt n holds the jobs that attempt ran and, for the others,
//     their job of the newest earlier attempt: a job that is not re-run
//     belongs to every later attempt, with its own (earlier) run_attempt.
//     So the jobs listing's filter=latest, and the run's status and
//     conclusion, cover each job's newest attempt; attempts/{n}/jobs lists
//     the run as it stood at attempt n. A filter other than latest or all
//     is a 422.
//   - Re-running a job: a repository the token cannot see is a 404, then an
//     installation without actions: write gets 403 "Resource not accessible
//     by integration" even for a job that does not exist, then an unknown
//     job is a 404. A job whose run has not completed gets 403 "This
//     workflow is already running" (the answer reported for re-runs of live
//     runs); a job that a later attempt re-ran gets a 403 (message guessed:
//     only a job's latest attempt can be re-run); so does a run re-run 50
//     times already (the limit is documented, the message guessed). A body
//     that is not JSON, or whose enable_debug_logging is not a boolean, is
//     a 400; the flag changes nothing. Only the job itself runs again
//     (GitHub also re-runs the jobs that need it; ghfake's jobs need
//     none), and one that deploys to an environment waits for approval
//     again. Re-runs through the REST API are for the App's installed
//     repositories only; RerunJob re-runs any job, without a webhook where
//     the App is not installed.
package ghfake
