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
	s.mu.Lock()
	body := s.apiAppLocked()
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, body)
}

// apiAppLocked is the App as GitHub shows it: the one the manifest flow
// made, or Config's (whose permissions and events Config.AppPermissions and
// AppEvents may set). s.mu must be held.
func (s *Server) apiAppLocked() apiApp {
	a := s.app
	if a.slug != "" { // made by the manifest flow
		return apiApp{
			ID: a.id, Slug: a.slug, ClientID: a.clientID, NodeID: nodeID("A_", a.id), Owner: a.owner.api(),
			Name: a.name, Description: a.description, ExternalURL: a.externalURL, HTMLURL: a.htmlURL,
			CreatedAt: timestamp(a.created), UpdatedAt: timestamp(a.created),
			Permissions: maps.Clone(a.permissions), Events: nonNil(slices.Clone(a.events)),
			InstallationsCount: len(s.installations),
		}
	}
	perms := s.cfg.AppPermissions
	if perms == nil {
		perms = defaultPermissions()
	}
	events := s.cfg.AppEvents
	if events == nil {
		events = []string{"workflow_job"}
	}
	slug := fmt.Sprintf("tandem-%d", a.id)
	owner := &account{login: "tandem-ci", id: 1, typ: "Organization"}
	return apiApp{
		ID: a.id, Slug: slug, ClientID: fmt.Sprintf("Iv1.%016x", a.id), NodeID: nodeID("A_", a.id),
		Owner: owner.api(), Name: slug, ExternalURL: "https://github.com/tandem-ci/tandem",
		HTMLURL: "https://github.com/apps/" + slug, CreatedAt: timestamp(appEpoch), UpdatedAt: timestamp(appEpoch),
		Permissions: maps.Clone(perms), Events: slices.Clone(events), InstallationsCount: len(s.installations),
	}
}
