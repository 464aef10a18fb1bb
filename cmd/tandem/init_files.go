package main

import (
	"errors"
	"fmt"
	"html/template"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/tandem-ci/tandem/internal/github"
	"github.com/tandem-ci/tandem/internal/labels"
)

// write saves the App's key and webhook secret, then the config that names
// them, each mode 0600; without --force none may exist already.
func (fl *initFlow) write(app *github.NewApp) error {
	if len(app.WebhookSecret) < 16 {
		return errors.New("init: GitHub gave the App no webhook secret (or one shorter than 16 bytes)")
	}
	dir := fl.o.configDir
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	for _, f := range []struct {
		name string
		data []byte
	}{
		{initFiles.key, app.PEM},
		{initFiles.secret, append(append([]byte{}, app.WebhookSecret...), '\n')},
		{initFiles.config, []byte(initConfig(fl.o, app, time.Now()))},
	} {
		if err := writeSecretFile(filepath.Join(dir, f.name), f.data, fl.o.force); err != nil {
			return fmt.Errorf("init: %w (the App %s exists on GitHub: delete it there, or move the files away and write them again by hand)", err, app.HTMLURL)
		}
	}
	return nil
}

// writeSecretFile writes data to path with mode 0600: replacing a file
// only with force, and never leaving a half-written one under path.
func writeSecretFile(path string, data []byte, force bool) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*") // mode 0600
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if force {
		return os.Rename(tmp.Name(), path)
	}
	if err := os.Link(tmp.Name(), path); err != nil { // fails if path exists
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%s appeared meanwhile; not replaced", path)
		}
		return err
	}
	return nil
}

// initConfig is the commented config.yaml for the new App.
func initConfig(o initOptions, app *github.NewApp, now time.Time) string {
	scope := "repo                   # runners register to each job's repository (the App has Administration: write)"
	if o.scope == "org" {
		scope = "org                    # runners register to the organisation (the App has Self-hosted runners: write)"
	}
	return fmt.Sprintf(`# Tandem's configuration, written by tandem init on %s
# for the GitHub App %q (id %d) of %s.
# tandem up --config THIS-FILE runs the control plane and this host's agent;
# tandem server --config THIS-FILE runs the control plane alone.
# Decoding is strict: an unknown key is an error. The secrets are in files
# of their own beside this one (mode 0600), never here; relative paths are
# relative to this file's directory. Every setting is in Tandem's example
# config (packaging/config.yaml.example).

# POST /webhook, GET /healthz, /metrics, /api/v1/... GitHub sends the App's
# webhooks to %s: make that address reach this one
# (a reverse proxy with TLS, or listen on a public address).
listen: 127.0.0.1:8080

github:
  api_url: %s
  app_id: %d
  private_key_file: %s
  webhook_secret_file: %s
  # allow_public: [ORG, ORG/REPO]   # public repositories whose jobs may run (none by default)

labels:
  prefix: %-21s # runs-on: %s[-ARCH][-<N>cpu-<M>gb], e.g. %s

runner:
  scope: %s
  idle_timeout: 10m
  max_job_duration: 6h
  # image_amd64: runner-amd64   # tandem image build --kind runner --arch amd64 --runner-tarball ...
  # image_arm64: runner-arm64

# tandem up only: this host's VMs.
agent:
  vcpus: 0                      # 0: every CPU
  memory: 0                     # 0: all memory less 1 GiB
  # emulate: [arm64]            # also run arm64 jobs here, emulated (slow)

# Re-run on GitHub the jobs Tandem or its host lost; the App then needs
# Actions: write (add it in the App's settings).
# retry:
#   infra_losses: {"*": true}
`, now.UTC().Format("2006-01-02"), app.Name, app.ID, app.Owner, o.webhookURL,
		strconv.Quote(o.apiURL), app.ID, initFiles.key, initFiles.secret,
		labels.DefaultPrefix, labels.DefaultPrefix, exampleLabel(), scope)
}

var initPage = template.Must(template.New("init").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Tandem: create the GitHub App</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em}
code{font-size:90%}button{font-size:1.1em;padding:.5em 1.2em}th{text-align:left;padding-right:1em}</style></head>
<body><main>
<h1>Create Tandem's GitHub App</h1>
<p>The button sends these settings to <code>{{.GitHub}}</code>, which shows them for you to confirm,
creates the App for {{.Owner}} and sends your browser back here.</p>
<table>
<tr><th>Name</th><td id="app-name">{{.Name}}</td></tr>
<tr><th>Webhooks</th><td><code>workflow_job</code> to <code id="webhook-url">{{.Webhook}}</code></td></tr>
<tr><th>Permissions</th><td>{{range $p, $l := .Permissions}}<code>{{$p}}: {{$l}}</code> {{end}}</td></tr>
<tr><th>Installable</th><td>{{if .Public}}by any account{{else}}only by its owner{{end}}</td></tr>
</table>
<form method="post" action="{{.Form}}">
<input type="hidden" name="manifest" value="{{.Manifest}}">
<p><button id="create" type="submit">Create the App on GitHub</button></p>
</form>
</main></body></html>
`))

var initDonePage = template.Must(template.New("done").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Tandem: the GitHub App is created</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em}</style></head>
<body><main id="done">
<h1>The GitHub App {{.App.Name}} is created</h1>
<p>App id {{.App.ID}}, owned by {{.App.Owner}}. Its key and webhook secret are in
{{range .Files}}<code>{{$.Dir}}/{{.}}</code> {{end}}(mode 0600).</p>
<p><a id="install" href="{{.Install}}">Install it on your repositories</a>, start
<code>tandem up</code>, and opt a job in with <code>runs-on: {{.RunsOn}}</code>.</p>
<p>tandem init has finished; you may close this page.</p>
</main></body></html>
`))

var initFailedPage = template.Must(template.New("failed").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Tandem: the GitHub App's credentials were not saved</title></head>
<body><main id="failed">
<h1>The App's credentials were not saved</h1>
<p><code>{{.Err}}</code></p>
<p>tandem init is still waiting: reload this page within the hour to try again.</p>
</main></body></html>
`))
