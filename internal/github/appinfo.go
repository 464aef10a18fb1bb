package github

import (
	"context"
	"encoding/json"
)

// App is the GitHub App as GitHub describes it (GET /app): what it is
// called, the permissions it asks for and the webhook events it subscribes
// to.
type App struct {
	ID   int64
	Slug string
	Name string
	// Permissions maps each permission (actions, administration, …) to its
	// level: read, write or admin.
	Permissions map[string]string
	Events      []string
	// Installations is how many accounts installed the App.
	Installations int
}

// GetApp returns the App its JWT authenticates.
func (c *Client) GetApp(ctx context.Context) (App, error) {
	a, _, err := c.gh.Apps.Get(asApp(ctx), "")
	if err != nil {
		return App{}, wrapErr("get the app", err)
	}
	out := App{ID: a.GetID(), Slug: a.GetSlug(), Name: a.GetName(), Events: a.Events,
		Installations: int(a.GetInstallationsCount()), Permissions: map[string]string{}}
	// go-github's permissions are a struct of optional fields: their JSON
	// is the map GitHub sent.
	if b, err := json.Marshal(a.GetPermissions()); err == nil {
		_ = json.Unmarshal(b, &out.Permissions)
	}
	return out, nil
}
