package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"database/sql"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-ci/tandem/internal/store/postgres"
	"github.com/tandem-ci/tandem/internal/store/sqlite"
)

// runDB runs `tandem args...` in process, with the db commands and
// server, and returns what it printed.
func runDB(t *testing.T, dataDir string, args ...string) (string, error) {
	t.Helper()
	g := &globals{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	root := &cobra.Command{Use: "tandem", SilenceUsage: true, SilenceErrors: true}
	root.PersistentFlags().StringVar(&g.dataDir, "data-dir", dataDir, "")
	root.AddCommand(dbCmd(g), serverCmd(g))
	var out bytes.Buffer
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(io.Discard)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

// writeTestConfig writes a config (its GitHub secrets too) with extra
// appended and returns its path.
func writeTestConfig(t *testing.T, extra string) string {
	t.Helper()
	dir := t.TempDir()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "app.pem"), pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600)
	os.WriteFile(filepath.Join(dir, "secret"), []byte("a-webhook-secret-of-some-length\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "pg-password"), []byte("pg-s3cret-pw\n"), 0o600)
	p := filepath.Join(dir, "config.yaml")
	body := "github: {app_id: 7, private_key_file: app.pem, webhook_secret_file: secret}\n" + extra
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// tandem db copy refuses bad arguments before it touches a database, and
// never repeats a password it was given.
func TestDBCopyArgs(t *testing.T) {
	dir := t.TempDir()
	lite := filepath.Join(dir, "tandem.db")
	sqliteCfg := writeTestConfig(t, "database: "+lite+"\n")
	const pg = "postgres://tandem@127.0.0.1:1/tandem"
	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"no from":            {[]string{"--to", pg}, "--from: give the SQLite database to copy, as sqlite:PATH"},
		"from a url":         {[]string{"--from", "postgres://u:hunter2@db/x", "--to", pg}, "--from: want sqlite:PATH, the SQLite database to copy (not postgres:…)"},
		"from a bare path":   {[]string{"--from", "/var/lib/tandem/tandem.db", "--to", pg}, "--from: want sqlite:PATH"},
		"from no file":       {[]string{"--from", "sqlite:", "--to", pg}, "--from: sqlite: names no file"},
		"to not postgres":    {[]string{"--from", "sqlite:" + lite, "--to", "mysql://u@db/x"}, "--to: want a PostgreSQL URL"},
		"to with a password": {[]string{"--from", "sqlite:" + lite, "--to", "postgres://u:hunter2@db/x"}, "--to: the URL holds a password"},
		"to and config":      {[]string{"--from", "sqlite:" + lite, "--to", pg, "--config", sqliteCfg}, "give --to or --config, not both"},
		"password file alone": {[]string{"--from", "sqlite:" + lite, "--password-file", "/p", "--config", sqliteCfg},
			"--password-file goes with --to"},
		"config is sqlite":  {[]string{"--from", "sqlite:" + lite, "--config", sqliteCfg}, "database: is SQLite, not PostgreSQL: give --to"},
		"no config":         {[]string{"--from", "sqlite:" + lite, "--config", filepath.Join(dir, "none.yaml")}, "none.yaml"},
		"no source":         {[]string{"--from", "sqlite:" + filepath.Join(dir, "none.db"), "--to", pg}, "--from: stat " + filepath.Join(dir, "none.db")},
		"arguments":         {[]string{"extra", "--from", "sqlite:" + lite, "--to", pg}, `unknown command "extra"`},
		"sqlite url prefix": {[]string{"--from", "sqlite://" + filepath.Join(dir, "none.db"), "--to", pg}, "--from: stat " + filepath.Join(dir, "none.db")},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := runDB(t, dir, append([]string{"db", "copy"}, tc.args...)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %q", err, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), "hunter2") {
				t.Errorf("the error shows the password: %v", err)
			}
		})
	}
}

// tandem db copy refuses a SQLite database a control plane has open.
func TestDBCopySourceInUse(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tandem.db")
	st, err := sqlite.Open(t.Context(), path, sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	_, err = runDB(t, dir, "db", "copy", "--from", "sqlite:"+path, "--to", "postgres://tandem@127.0.0.1:1/tandem")
	if err == nil || !strings.Contains(err.Error(), "is open in another process: stop the control plane") {
		t.Errorf("error %v, want the database in use", err)
	}
}

// The schema versions this binary knows are its migrations'.
func TestDBKnownSchema(t *testing.T) {
	for dir, known := range map[string]int{"sqlite": sqlite.KnownVersion(), "postgres": postgres.KnownVersion()} {
		ms, err := filepath.Glob(filepath.Join("..", "..", "internal", "store", dir, "migrations", "*.sql"))
		if err != nil || len(ms) == 0 {
			t.Fatalf("%s migrations: %v", dir, err)
		}
		if len(ms) != known {
			t.Errorf("store/%s has %d migrations, and KnownVersion says %d", dir, len(ms), known)
		}
	}
}

// tandem db migrate on SQLite: a new database gets the whole schema, and
// one up to date stays so.
func TestDBMigrate(t *testing.T) {
	known := sqlite.KnownVersion()
	dir := t.TempDir()
	path := filepath.Join(dir, "tandem.db")
	cfg := writeTestConfig(t, "database: "+path+"\n")
	out, err := runDB(t, dir, "db", "migrate", "--config", cfg)
	if want := fmt.Sprintf("sqlite %s: schema version 0 → %d\n", path, known); err != nil || out != want {
		t.Errorf("first migrate: %q, %v; want %q", out, err, want)
	}
	out, err = runDB(t, dir, "db", "migrate", "--config", cfg)
	if want := fmt.Sprintf("sqlite %s: schema version %d, up to date\n", path, known); err != nil || out != want {
		t.Errorf("second migrate: %q, %v; want %q", out, err, want)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("files beside the database: %v", ents)
	}
}

// tandem server --check-db says which database it is and its schema
// beside this binary's, migrates nothing, and fails only for a database
// the server could not use.
func TestServerCheckDB(t *testing.T) {
	known := sqlite.KnownVersion()
	dir := t.TempDir()
	path := filepath.Join(dir, "tandem.db")
	cfg := writeTestConfig(t, "database: "+path+"\n")
	check := func(cfg string) (string, int) {
		t.Helper()
		out, err := runDB(t, dir, "server", "--check-db", "--config", cfg)
		var ee *exitError
		switch {
		case err == nil:
			return out, 0
		case errors.As(err, &ee):
			return out + "error: " + err.Error(), ee.code
		}
		t.Fatalf("check-db: %v, not an exit code", err)
		return "", 0
	}

	out, code := check(cfg)
	if want := fmt.Sprintf("database: sqlite %s\nschema: none yet, the server makes it at start (this binary's: version %d)\nusable: yes\n", path, known); code != 0 || out != want {
		t.Errorf("no database yet: %d %q, want %q", code, out, want)
	}
	if _, err := os.Stat(path); err == nil {
		t.Error("check-db made the database")
	}

	st, err := sqlite.Open(t.Context(), path, sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	if out, code := check(cfg); code != 0 || !strings.Contains(out, fmt.Sprintf("schema: version %d, this binary's\nusable: yes\n", known)) {
		t.Errorf("current database: %d %q", code, out)
	}

	execSQLiteFile(t, path, "DELETE FROM schema_migrations WHERE version > 15")
	if out, code := check(cfg); code != 0 || !strings.Contains(out, fmt.Sprintf("schema: version 15, this binary's %d: the server applies %d migrations at start\nusable: yes\n", known, known-15)) {
		t.Errorf("older database: %d %q", code, out)
	}
	for v := 16; v <= known+1; v++ {
		execSQLiteFile(t, path, fmt.Sprintf("INSERT INTO schema_migrations VALUES (%d, 'm%d', 0)", v, v))
	}
	if out, code := check(cfg); code != 1 || !strings.Contains(out, fmt.Sprintf("schema: version %d, newer than this binary's %d\nusable: no\n", known+1, known)) ||
		!strings.Contains(out, "upgrade tandem") {
		t.Errorf("newer database: %d %q", code, out)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("files beside the database: %v", ents)
	}

	// PostgreSQL out of reach: named without its password, not usable.
	pgCfg := writeTestConfig(t, "database: postgres://tandem@127.0.0.1:1/tandemdb\npostgres: {password_file: pg-password}\n")
	out, code = check(pgCfg)
	if code != 1 || !strings.HasPrefix(out, `database: postgres database "tandemdb" on 127.0.0.1:1 as tandem`+"\nusable: no\n") {
		t.Errorf("unreachable PostgreSQL: %d %q", code, out)
	}
	if strings.Contains(out, "pg-s3cret-pw") {
		t.Errorf("check-db shows the password: %q", out)
	}
}

// execSQLiteFile runs a statement on the SQLite database at path.
func execSQLiteFile(t *testing.T, path, stmt string) {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(t.Context(), stmt); err != nil {
		t.Fatal(err)
	}
}
