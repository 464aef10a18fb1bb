package controlplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/tandem-ci/tandem/internal/github"
	"github.com/tandem-ci/tandem/internal/store"
)

// maxDeliveryLen bounds X-GitHub-Delivery (GitHub's are 36-character GUIDs).
const maxDeliveryLen = 100

// checkHookHeaders says what is wrong with a webhook's delivery and event
// headers ("": nothing).
func checkHookHeaders(guid, event string) string {
	switch {
	case guid == "":
		return "the X-GitHub-Delivery header is missing"
	case len(guid) > maxDeliveryLen:
		return fmt.Sprintf("the X-GitHub-Delivery header is longer than %d characters", maxDeliveryLen)
	case event == "":
		return "the X-GitHub-Event header is missing"
	case len(event) > maxDeliveryLen:
		return fmt.Sprintf("the X-GitHub-Event header is longer than %d characters", maxDeliveryLen)
	}
	return ""
}

// handleWebhook is POST /webhook: workflow_job, and the installation events
// that say the App lost access (installations.go). It answers within
// milliseconds: the only work before the reply is reading the body,
// checking the signature, a cheap parse and one durable insert; applying
// the event happens in applyLoop.
//
// Replies: 202 stored; 200 a duplicate delivery, a ping, or an event Tandem
// does not use (answered from the headers, before the body is read); 400
// malformed, each saying what; 401 a missing or bad signature, saying
// which; 403 a hook of another GitHub App; 405 not POST; 413 too big; 415
// not JSON; 503 the store failed (GitHub shows the failure and the
// delivery can be redelivered). 4xx replies change no state.
func (s *Server) handleWebhook(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	result := "error"
	defer func() { s.metrics.webhook(result, time.Since(start)) }()
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		result = "bad-method"
		httpError(w, http.StatusMethodNotAllowed, "POST only")
		return
	}
	guid, event := r.Header.Get("X-GitHub-Delivery"), r.Header.Get("X-GitHub-Event")
	if msg := checkHookHeaders(guid, event); msg != "" {
		result = "malformed"
		httpError(w, http.StatusBadRequest, msg)
		return
	}
	// A hook of another App (a misdirected or copied webhook URL) is not
	// ours, whatever its signature.
	if target := r.Header.Get("X-GitHub-Hook-Installation-Target-ID"); target != "" && s.cfg.AppID != 0 &&
		target != strconv.FormatInt(s.cfg.AppID, 10) {
		result = "other-app"
		httpError(w, http.StatusForbidden, fmt.Sprintf("this webhook is for GitHub App %.20q; this control plane serves App %d", target, s.cfg.AppID))
		return
	}
	switch event {
	case "workflow_job", "ping", "installation", "installation_repositories":
	default:
		// Nothing in the body could change what Tandem does with it.
		result = "ignored"
		writeJSON(w, http.StatusOK, map[string]string{"status": "ignored", "event": event})
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			result = "too-large"
			httpError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body larger than the limit of %d bytes (github.webhook_max_body)", s.cfg.MaxBody))
			return
		}
		result = "bad-body"
		httpError(w, http.StatusBadRequest, "reading body failed")
		return
	}
	// The signature covers the raw body and is checked before anything in
	// it is looked at.
	if err := github.VerifySignature(s.cfg.WebhookSecret, body, r.Header.Get(github.HeaderSignature)); err != nil {
		result = "bad-signature"
		msg := strings.TrimPrefix(err.Error(), "github: ")
		if r.Header.Get(github.HeaderSignature) == "" && r.Header.Get("X-Hub-Signature") != "" {
			msg += " (only the SHA-1 X-Hub-Signature was sent: Tandem takes SHA-256 signatures only)"
		}
		s.log.Warn("webhook refused", "why", msg, "remote", r.RemoteAddr, "delivery", guid)
		httpError(w, http.StatusUnauthorized, msg)
		return
	}
	if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct != "application/json" {
		result = "bad-content-type"
		httpError(w, http.StatusUnsupportedMediaType, "set the webhook's content type to application/json")
		return
	}
	if event == "ping" {
		result = "ping"
		writeJSON(w, http.StatusOK, map[string]string{"status": "pong"})
		return
	}
	var perr error
	if event == "workflow_job" {
		_, perr = github.ParseWorkflowJobEvent(body)
	} else {
		_, perr = github.ParseInstallationEvent(event, body)
	}
	if perr != nil {
		result = "malformed"
		httpError(w, http.StatusBadRequest, perr.Error())
		return
	}
	inserted, err := s.st.InsertDelivery(r.Context(), store.Delivery{
		GUID: guid, Event: event, Payload: body, ReceivedAt: s.now().UTC(),
	})
	if err != nil {
		s.log.Error("webhook not stored", "delivery", guid, "err", err)
		httpError(w, http.StatusServiceUnavailable, "could not store the delivery; redeliver it")
		return
	}
	if !inserted {
		result = "duplicate"
		writeJSON(w, http.StatusOK, map[string]string{"status": "duplicate"})
		return
	}
	result = "accepted"
	s.kickApply()
	writeJSON(w, http.StatusAccepted, map[string]string{"status": "accepted"})
}

// applyBatch is how many deliveries one transaction applies.
const applyBatch = 100

// applyLoop applies stored deliveries in the order they were received,
// waking when ingest stores one and every few seconds regardless (a
// delivery stored just before a restart is applied after it).
func (s *Server) applyLoop(ctx context.Context) {
	wake := s.subscribe(ctx, topicApply)
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		for {
			n, err := s.applyPending(ctx)
			if err != nil && ctx.Err() == nil {
				s.log.Error("applying deliveries", "err", err)
			}
			if err != nil || n < applyBatch {
				break
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-s.applyKick:
		case <-wake:
		case <-t.C:
		}
	}
}

// applyPending applies one batch and returns how many deliveries it took.
func (s *Server) applyPending(ctx context.Context) (int, error) {
	ds, err := s.st.PendingDeliveries(ctx, 0, applyBatch)
	if err != nil || len(ds) == 0 {
		return 0, err
	}
	var results []applied
	err = s.update(ctx, func(tx store.Tx, fx *afterCommit) error {
		results = results[:0]
		for _, d := range ds {
			res, err := s.applyDelivery(tx, fx, d)
			if err != nil {
				return err
			}
			results = append(results, res)
		}
		return nil
	})
	if err != nil {
		// One bad delivery must not hold up the others: apply one by one,
		// and give up on (mark) only a delivery that fails by itself.
		return len(ds), s.applyOneByOne(ctx, ds)
	}
	s.afterApply(results)
	return len(ds), nil
}

func (s *Server) applyOneByOne(ctx context.Context, ds []store.Delivery) error {
	for _, d := range ds {
		var res applied
		err := s.update(ctx, func(tx store.Tx, fx *afterCommit) error {
			var err error
			res, err = s.applyDelivery(tx, fx, d)
			return err
		})
		if err == nil {
			s.afterApply([]applied{res})
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.log.Error("delivery could not be applied; marking it failed", "delivery", d.GUID, "err", err)
		if merr := s.st.Update(ctx, func(tx store.Tx) error {
			return tx.MarkDelivery(d.GUID, s.now().UTC(), err.Error())
		}); merr != nil {
			return merr
		}
	}
	return nil
}

// afterApply logs and wakes the dispatcher when something changed.
func (s *Server) afterApply(rs []applied) {
	changed := false
	for _, r := range rs {
		s.metrics.applied(r.outcome)
		if r.changed {
			changed = true
		}
	}
	if changed {
		s.kickPlacement()
	}
}
