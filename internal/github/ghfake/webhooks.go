package ghfake

import (
	"bytes"
	"cmp"
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

const (
	hookID        = 400_000_001
	hookUserAgent = "GitHub-Hookshot/ghfake"
	maxRespBody   = 64 << 10
)

// Faults makes webhook delivery misbehave. Each probability is in [0, 1];
// every decision comes from the seeded RNG. (The control API takes
// max_delay as a duration string such as "250ms".)
type Faults struct {
	// Lose: the webhook is never sent and is not in the deliveries log.
	Lose float64
	// Fail: logged as a failed delivery without reaching the receiver
	// (it can be redelivered).
	Fail float64
	// Duplicate: sent twice with the same guid.
	Duplicate float64
	// Reorder: held back and sent after the next webhook.
	Reorder float64
	// MaxDelay: a random extra latency in [0, MaxDelay] before sending.
	MaxDelay time.Duration
}

// SetFaults replaces the webhook faults; the zero Faults delivers
// faithfully.
func (s *Server) SetFaults(f Faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = f
}

// Delivery is one attempt to deliver a webhook, as the deliveries log
// records it.
type Delivery struct {
	ID             int64
	GUID           string
	Event          string
	Action         string
	DeliveredAt    time.Time
	Redelivery     bool
	Duration       time.Duration
	Status         string // "OK" or why it failed
	StatusCode     int    // 0 when no HTTP answer was received
	InstallationID int64
	RepositoryID   int64
	JobID          int64
	URL            string
	RequestHeaders map[string]string
	Payload        json.RawMessage
	// ResponseHeaders and ResponseBody are the receiver's answer.
	ResponseHeaders map[string]string
	ResponseBody    string
}

// Deliveries returns the deliveries log, oldest first.
func (s *Server) Deliveries() []Delivery {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Delivery, len(s.deliveries))
	for i, d := range s.deliveries {
		out[i] = *d
		out[i].RequestHeaders = maps.Clone(d.RequestHeaders)
		out[i].ResponseHeaders = maps.Clone(d.ResponseHeaders)
		out[i].Payload = slices.Clone(d.Payload)
	}
	return out
}

// Redeliver sends a logged delivery again, asynchronously, as POST
// /app/hook/deliveries/{id}/attempts does: same guid and payload, a new log
// entry with Redelivery set. Faults do not apply to redeliveries.
func (s *Server) Redeliver(id int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.redeliverLocked(id)
}

func (s *Server) redeliverLocked(id int64) error {
	if s.closed {
		return ErrClosed
	}
	i, ok := slices.BinarySearchFunc(s.deliveries, id, func(d *Delivery, id int64) int { return cmp.Compare(d.ID, id) })
	if !ok {
		return fmt.Errorf("redeliver %d: %w", id, ErrNotFound)
	}
	d := s.deliveries[i]
	s.startLocked(&outgoing{
		guid: d.GUID, event: d.Event, action: d.Action, installID: d.InstallationID,
		repoID: d.RepositoryID, jobID: d.JobID, payload: d.Payload, redelivery: true,
	})
	return nil
}

// Quiesce waits until no webhook is in flight. A webhook held back by
// Faults.Reorder is not in flight: it waits for the next one (see Flush).
func (s *Server) Quiesce() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.inflight > 0 {
		s.idle.Wait()
	}
}

// Flush releases a webhook held back by Faults.Reorder and then waits until
// no webhook is in flight.
func (s *Server) Flush() {
	s.mu.Lock()
	if h := s.held; h != nil && !s.closed {
		s.held = nil
		s.startLocked(h)
	}
	s.mu.Unlock()
	s.Quiesce()
}

// outgoing is a webhook on its way.
type outgoing struct {
	guid, event, action      string
	installID, repoID, jobID int64
	payload                  []byte
	redelivery, fail         bool
	delay                    time.Duration
	after                    <-chan struct{} // sent only once this is closed
	dup                      *outgoing       // a duplicate to send after this one
	hook                     hook            // where and how: the App's hook when it started
	done                     chan struct{}
}

type webhookPayload struct {
	Action       string          `json:"action"`
	WorkflowJob  apiJob          `json:"workflow_job"`
	Repository   apiRepo         `json:"repository"`
	Organization *apiAccount     `json:"organization,omitempty"`
	Installation payloadInstall  `json:"installation"`
	Sender       payloadIdentity `json:"sender"`
}

type payloadInstall struct {
	ID     int64  `json:"id"`
	NodeID string `json:"node_id"`
}

type payloadIdentity struct {
	Login string `json:"login"`
	ID    int64  `json:"id"`
	Type  string `json:"type"`
}

// emitLocked sends a workflow_job webhook for the job's current state,
// subject to Faults.
func (s *Server) emitLocked(action string, j *job) {
	rp := j.run.repo
	if s.closed || s.app.hook.url == "" || rp.installID == 0 || s.installations[rp.installID].suspended {
		return
	}
	p := webhookPayload{
		Action: action, WorkflowJob: j.api(), Repository: rp.api(),
		Installation: payloadInstall{ID: rp.installID, NodeID: nodeID("MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9u", rp.installID)},
		Sender:       payloadIdentity{Login: "monalisa", ID: 1, Type: "User"},
	}
	if rp.owner.typ == AccountOrganization {
		org := rp.owner.api()
		org.URL = "https://api.github.com/orgs/" + rp.owner.login
		p.Organization = &org
	}
	payload, err := json.Marshal(p)
	if err != nil {
		s.log.Error("ghfake: encode webhook", "err", err)
		return
	}
	s.sendLocked(&outgoing{
		guid: s.guidLocked(), event: "workflow_job", action: action, installID: rp.installID,
		repoID: rp.id, jobID: j.id, payload: payload,
	})
}

// emitInstallationLocked sends an installation webhook ("deleted",
// "suspend", "unsuspend") or, with removed repositories, an
// installation_repositories "removed" one, subject to Faults.
func (s *Server) emitInstallationLocked(in *installation, action string, removed []*repo) {
	if s.closed || s.app.hook.url == "" {
		return
	}
	type repoRef struct {
		ID       int64  `json:"id"`
		Name     string `json:"name"`
		FullName string `json:"full_name"`
		Private  bool   `json:"private"`
	}
	p := map[string]any{
		"action": action,
		"installation": map[string]any{"id": in.id, "account": in.account.api(),
			"app_id": s.app.id, "target_type": in.account.typ},
		"sender": payloadIdentity{Login: "monalisa", ID: 1, Type: "User"},
	}
	event := "installation"
	if removed != nil {
		event = "installation_repositories"
		refs := []repoRef{}
		for _, r := range removed {
			refs = append(refs, repoRef{ID: r.id, Name: r.name, FullName: r.fullName()})
		}
		p["repositories_removed"], p["repositories_added"], p["repository_selection"] = refs, []repoRef{}, "selected"
	}
	payload, err := json.Marshal(p)
	if err != nil {
		s.log.Error("ghfake: encode webhook", "err", err)
		return
	}
	s.sendLocked(&outgoing{guid: s.guidLocked(), event: event, action: action, installID: in.id, payload: payload})
}

// sendLocked sends o, subject to Faults.
func (s *Server) sendLocked(o *outgoing) {
	f := s.faults
	roll := func(p float64) bool { return p > 0 && s.rng.Float64() < p }
	if roll(f.Lose) {
		s.log.Debug("ghfake: webhook lost", "guid", o.guid, "job", o.jobID, "action", o.action)
		return
	}
	o.fail = roll(f.Fail)
	if !o.fail && roll(f.Duplicate) {
		o.dup = &outgoing{}
		*o.dup = *o
		o.dup.dup = nil
	}
	reorder := roll(f.Reorder)
	if f.MaxDelay > 0 {
		o.delay = time.Duration(s.rng.Int64N(int64(f.MaxDelay) + 1))
	}
	prev := s.held
	s.held = nil
	if reorder && prev == nil {
		s.held = o
		s.log.Debug("ghfake: webhook held back", "guid", o.guid)
	} else {
		s.startLocked(o)
	}
	if prev != nil {
		if o.done != nil {
			prev.after = o.done
		}
		s.startLocked(prev)
	}
}

// startLocked starts a sender goroutine for o (and its duplicate).
func (s *Server) startLocked(o *outgoing) {
	if s.closed {
		return
	}
	o.done = make(chan struct{})
	o.hook = s.app.hook
	s.inflight++
	s.senders.Add(1)
	go s.send(o)
	if d := o.dup; d != nil {
		o.dup = nil
		d.after = o.done
		s.startLocked(d)
	}
}

// send delivers o once and logs the attempt.
func (s *Server) send(o *outgoing) {
	defer s.senders.Done()
	defer func() {
		s.mu.Lock()
		s.inflight--
		if s.inflight == 0 {
			s.idle.Broadcast()
		}
		s.mu.Unlock()
	}()
	defer close(o.done)
	if o.after != nil {
		select {
		case <-o.after:
		case <-s.ctx.Done():
			return
		}
	}
	if o.delay > 0 {
		t := time.NewTimer(o.delay)
		select {
		case <-t.C:
		case <-s.ctx.Done():
			t.Stop()
			return
		}
	}
	d := &Delivery{
		GUID: o.guid, Event: o.event, Action: o.action, DeliveredAt: s.now(), Redelivery: o.redelivery,
		InstallationID: o.installID, RepositoryID: o.repoID, JobID: o.jobID, URL: o.hook.url,
		RequestHeaders: s.hookHeaders(o), Payload: o.payload,
	}
	start := time.Now()
	if o.fail {
		d.Status = "failed to connect to host"
	} else if !s.post(d) {
		return // the server is closing
	}
	d.Duration = time.Since(start)
	s.mu.Lock()
	s.ids.delivery++
	d.ID = s.ids.delivery
	s.deliveries = append(s.deliveries, d)
	s.mu.Unlock()
	s.log.Debug("ghfake: webhook delivered", "guid", d.GUID, "id", d.ID, "status", d.Status,
		"code", d.StatusCode, "redelivery", d.Redelivery)
}

// hookHeaders returns the headers GitHub sends with a webhook.
func (s *Server) hookHeaders(o *outgoing) map[string]string {
	h := map[string]string{
		"Accept":                                 "*/*",
		"Content-Type":                           "application/json",
		"User-Agent":                             hookUserAgent,
		"X-GitHub-Event":                         o.event,
		"X-GitHub-Delivery":                      o.guid,
		"X-GitHub-Hook-ID":                       strconv.Itoa(hookID),
		"X-GitHub-Hook-Installation-Target-Type": "integration",
		"X-GitHub-Hook-Installation-Target-ID":   strconv.FormatInt(o.hook.appID, 10),
	}
	if len(o.hook.secret) > 0 {
		h["X-Hub-Signature"] = "sha1=" + mac(sha1.New, o.hook.secret, o.payload)
		h["X-Hub-Signature-256"] = "sha256=" + mac(sha256.New, o.hook.secret, o.payload)
	}
	return h
}

func mac(h func() hash.Hash, key, msg []byte) string {
	m := hmac.New(h, key)
	m.Write(msg)
	return hex.EncodeToString(m.Sum(nil))
}

// post sends d's request and records the outcome in d. It reports false if
// the server closed meanwhile.
func (s *Server) post(d *Delivery) bool {
	req, err := http.NewRequestWithContext(s.ctx, http.MethodPost, d.URL, bytes.NewReader(d.Payload))
	if err != nil {
		d.Status = "invalid webhook url"
		return true
	}
	for k, v := range d.RequestHeaders {
		req.Header.Set(k, v)
	}
	resp, err := s.hooks.Do(req)
	if err != nil {
		if s.ctx.Err() != nil {
			return false
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			d.Status = "timed out"
		} else {
			d.Status = "failed to connect to host"
		}
		return true
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxRespBody))
	d.StatusCode = resp.StatusCode
	d.ResponseBody = string(body)
	d.ResponseHeaders = make(map[string]string, len(resp.Header))
	for k, v := range resp.Header {
		d.ResponseHeaders[k] = strings.Join(v, ", ")
	}
	if resp.StatusCode >= 200 && resp.StatusCode <= 299 {
		d.Status = "OK"
	} else {
		d.Status = fmt.Sprintf("Invalid HTTP Response: %d", resp.StatusCode)
	}
	return true
}

// ---- /app/hook/deliveries ----

type apiDelivery struct {
	ID             int64            `json:"id"`
	GUID           string           `json:"guid"`
	DeliveredAt    string           `json:"delivered_at"`
	Redelivery     bool             `json:"redelivery"`
	Duration       float64          `json:"duration"`
	Status         string           `json:"status"`
	StatusCode     int              `json:"status_code"`
	Event          string           `json:"event"`
	Action         *string          `json:"action"`
	InstallationID *int64           `json:"installation_id"`
	RepositoryID   *int64           `json:"repository_id"`
	ThrottledAt    *string          `json:"throttled_at"`
	URL            string           `json:"url,omitempty"`
	Request        *apiHookRequest  `json:"request,omitempty"`
	Response       *apiHookResponse `json:"response,omitempty"`
}

type apiHookRequest struct {
	Headers map[string]string `json:"headers"`
	Payload json.RawMessage   `json:"payload"`
}

type apiHookResponse struct {
	Headers map[string]string `json:"headers"`
	Payload *string           `json:"payload"`
}

func (d *Delivery) api(full bool) apiDelivery {
	a := apiDelivery{
		ID: d.ID, GUID: d.GUID, DeliveredAt: timestamp(d.DeliveredAt), Redelivery: d.Redelivery,
		Duration: d.Duration.Seconds(), Status: d.Status, StatusCode: d.StatusCode, Event: d.Event,
	}
	if d.Action != "" {
		a.Action = &d.Action
	}
	if d.InstallationID != 0 {
		a.InstallationID = &d.InstallationID
	}
	if d.RepositoryID != 0 {
		a.RepositoryID = &d.RepositoryID
	}
	if full {
		a.URL = d.URL
		a.Request = &apiHookRequest{Headers: d.RequestHeaders, Payload: d.Payload}
		a.Response = &apiHookResponse{Headers: nonNilMap(d.ResponseHeaders)}
		if d.StatusCode != 0 {
			a.Response.Payload = &d.ResponseBody
		}
	}
	return a
}

func nonNilMap(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

const cursorPrefix = "v1_"

// listDeliveries lists deliveries newest first, paginated by cursor as
// GitHub does (per_page and cursor; Link rel="next").
func (s *Server) listDeliveries(w http.ResponseWriter, r *http.Request) {
	per := pageOf(r).per
	before := int64(-1)
	if c := r.URL.Query().Get("cursor"); c != "" {
		v, err := strconv.ParseInt(strings.TrimPrefix(c, cursorPrefix), 10, 64)
		if err != nil || !strings.HasPrefix(c, cursorPrefix) {
			writeError(w, http.StatusUnprocessableEntity, "Invalid cursor")
			return
		}
		before = v
	}
	s.mu.Lock()
	var out []apiDelivery
	more := false
	for i := len(s.deliveries) - 1; i >= 0; i-- {
		d := s.deliveries[i]
		if before >= 0 && d.ID >= before {
			continue
		}
		if len(out) == per {
			more = true
			break
		}
		out = append(out, d.api(false))
	}
	s.mu.Unlock()
	if more {
		q := r.URL.Query()
		q.Set("cursor", cursorPrefix+strconv.FormatInt(out[len(out)-1].ID, 10))
		q.Set("per_page", strconv.Itoa(per))
		w.Header().Set("Link", fmt.Sprintf("<%s>; rel=\"next\"", selfURL(r, q)))
	}
	writeJSON(w, http.StatusOK, nonNil(out))
}

// deliveryLocked finds delivery {id}, or answers 404.
func (s *Server) deliveryLocked(w http.ResponseWriter, r *http.Request) (*Delivery, bool) {
	i, ok := -1, false
	if id, valid := pathID(r, "id"); valid {
		i, ok = slices.BinarySearchFunc(s.deliveries, id, func(d *Delivery, id int64) int { return cmp.Compare(d.ID, id) })
	}
	if !ok {
		notFound(w)
		return nil, false
	}
	return s.deliveries[i], true
}

func (s *Server) getDelivery(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.deliveryLocked(w, r)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, d.api(true))
}

func (s *Server) redeliver(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.deliveryLocked(w, r)
	if !ok {
		return
	}
	if err := s.redeliverLocked(d.ID); err != nil {
		writeError(w, http.StatusServiceUnavailable, "Service Unavailable")
		return
	}
	writeJSON(w, http.StatusAccepted, struct{}{})
}
