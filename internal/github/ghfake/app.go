package ghfake

import (
	"fmt"
	"maps"
	"net/http"
	"slices"
	"time"
)

// ---- GET /app ----

// apiApp is GitHub's "Get the authenticated app" answer: the App itself,
// its permissions and the events it subscribes to.
type apiApp struct {
	ID                 int64             `json:"id"`
	Slug               string            `json:"slug"`
	ClientID           string            `json:"client_id"`
	NodeID             string            `json:"node_id"`
	Owner              apiAccount        `json:"owner"`
	Name               string            `json:"name"`
	Description        *string           `json:"description"`
	ExternalURL        string            `json:"external_url"`
	HTMLURL            string            `json:"html_url"`
	CreatedAt          string            `json:"created_at"`
	UpdatedAt          string            `json:"updated_at"`
	Permissions        map[string]string `json:"permissions"`
	Events             []string          `json:"events"`
	InstallationsCount int               `json:"installations_count"`
}

// appEpoch is when the fake App was made, as GitHub would report it.
var appEpoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func (s *Server) getApp(w http.ResponseWriter, r *http.Request) {
	perms := s.cfg.AppPermissions
	if perms == nil {
		perms = defaultPermissions()
	}
	events := s.cfg.AppEvents
	if events == nil {
		events = []string{"workflow_job"}
	}
	s.mu.Lock()
	n := len(s.installations)
	s.mu.Unlock()
	slug := fmt.Sprintf("tandem-%d", s.cfg.AppID)
	owner := &account{login: "tandem-ci", id: 1, typ: "Organization"}
	writeJSON(w, http.StatusOK, apiApp{
		ID: s.cfg.AppID, Slug: slug, ClientID: fmt.Sprintf("Iv1.%016x", s.cfg.AppID), NodeID: nodeID("A_", s.cfg.AppID),
		Owner: owner.api(), Name: slug, ExternalURL: "https://github.com/tandem-ci/tandem",
		HTMLURL: "https://github.com/apps/" + slug, CreatedAt: timestamp(appEpoch), UpdatedAt: timestamp(appEpoch),
		Permissions: maps.Clone(perms), Events: slices.Clone(events), InstallationsCount: n,
	})
}
