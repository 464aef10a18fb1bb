package postgres

import (
	"log/slog"
	"time"
)

// Options say where the database is and how to reach it. URL is required;
// the rest is optional.
type Options struct {
	// URL is a PostgreSQL connection URL (postgres://user@host:port/db?…)
	// or keyword/value string. It must not hold a password: that comes
	// from PasswordFile, so that a config file can be read by more people
	// than the database's secret.
	URL string
	// PasswordFile holds the password (its first line; a trailing newline
	// is ignored).
	PasswordFile string
	// CAFile makes the connection TLS, verifying the server's certificate
	// and name against these roots (sslmode=verify-full). CertFile and
	// KeyFile are a client certificate, for servers that ask for one.
	CAFile, CertFile, KeyFile string
	// MaxConns caps the connection pool; default 16.
	MaxConns int
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// RetryFor bounds how long Update retries a transaction that lost a
	// serialisation conflict or its connection; default 30s.
	RetryFor time.Duration
}
