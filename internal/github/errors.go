package github

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"unicode"

	gh "github.com/google/go-github/v89/github"
)

// Sentinel errors. Callers branch on them with errors.Is.
var (
	// ErrNotFound: the resource does not exist, or the credential cannot see it
	// (GitHub answers 404 for both).
	ErrNotFound = errors.New("not found")
	// ErrRateLimited: GitHub refused the request for rate limiting and the
	// transport gave up (retries exhausted, or the required wait is longer than
	// allowed).
	ErrRateLimited = errors.New("rate limited")
	// ErrUnauthorized: 401, or 403 that is not a rate limit (nor, for
	// RerunJob, a refusal of the job's state).
	ErrUnauthorized = errors.New("unauthorized")
	// ErrConflict: 409, e.g. a runner with the requested name already exists;
	// or a request that the resource's state refuses, e.g. RerunJob while
	// the job's run has not completed (GitHub answers 403).
	ErrConflict = errors.New("conflict")
	// ErrUnprocessable: 422, e.g. deleting a runner that is running a job.
	ErrUnprocessable = errors.New("unprocessable")
	// ErrInvalidArgument: the caller's input was rejected before any request.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrBadSignature: a webhook's signature is missing, malformed or wrong.
	ErrBadSignature = errors.New("bad webhook signature")
	// ErrMalformed: a webhook payload is not a usable event.
	ErrMalformed = errors.New("malformed webhook payload")
)

// StatusError is a non-success HTTP response from GitHub. It unwraps to the
// matching sentinel error, if any.
type StatusError struct {
	Method     string
	Path       string // URL path only, no query
	StatusCode int
	Message    string // GitHub's "message", sanitised and truncated
	kind       error
}

func (e *StatusError) Error() string {
	s := fmt.Sprintf("%s %s: %d %s", e.Method, e.Path, e.StatusCode, http.StatusText(e.StatusCode))
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// Unwrap returns the sentinel error for the status, or nil.
func (e *StatusError) Unwrap() error { return e.kind }

func newStatusError(resp *http.Response, message string, kind error) *StatusError {
	se := &StatusError{Message: sanitizeMessage(message), kind: kind}
	if resp != nil {
		se.StatusCode = resp.StatusCode
		if resp.Request != nil {
			se.Method = resp.Request.Method
			if resp.Request.URL != nil {
				se.Path = resp.Request.URL.Path
			}
		}
		if kind == nil {
			se.kind = classifyStatus(resp.StatusCode, resp.Header)
		}
	}
	return se
}

// classifyStatus maps a status code to a sentinel error, or nil.
func classifyStatus(code int, h http.Header) error {
	switch code {
	case http.StatusNotFound:
		return ErrNotFound
	case http.StatusUnauthorized:
		return ErrUnauthorized
	case http.StatusTooManyRequests:
		return ErrRateLimited
	case http.StatusConflict:
		return ErrConflict
	case http.StatusUnprocessableEntity:
		return ErrUnprocessable
	case http.StatusForbidden:
		if h.Get(headerRemaining) == "0" || h.Get(headerRetryAfter) != "" {
			return ErrRateLimited
		}
		return ErrUnauthorized
	}
	return nil
}

// sanitizeMessage keeps GitHub's error message readable and bounded: control
// characters are dropped and it is cut to 200 runes.
func sanitizeMessage(s string) string {
	const max = 200
	var b strings.Builder
	n := 0
	for _, r := range s {
		if unicode.IsControl(r) {
			r = ' '
		}
		if n == max {
			b.WriteString("…")
			break
		}
		b.WriteRune(r)
		n++
	}
	return strings.TrimSpace(b.String())
}

// wrapErr turns an error from go-github into ours: "github: <op>: <detail>",
// with the matching sentinel reachable through errors.Is. go-github's own
// errors are replaced, not wrapped, since their text repeats the full URL.
func wrapErr(op string, err error) error {
	if err == nil {
		return nil
	}
	var (
		rle *gh.RateLimitError
		are *gh.AbuseRateLimitError
		er  *gh.ErrorResponse
	)
	switch {
	case errors.As(err, &rle):
		err = newStatusError(rle.Response, rle.Message, ErrRateLimited)
	case errors.As(err, &are):
		err = newStatusError(are.Response, are.Message, ErrRateLimited)
	case errors.As(err, &er):
		err = newStatusError(er.Response, er.Message, nil)
	}
	return fmt.Errorf("github: %s: %w", op, err)
}
