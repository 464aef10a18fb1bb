package store

import "time"

// AuditEntry is one operator action, as the audit log keeps it: who did
// what to which target, when, and from where. Who is a label of the API
// token used (a short fingerprint of it, never the token itself), so the
// log can say "the same token did these" without holding a secret.
type AuditEntry struct {
	Seq    int64     // assigned by AppendAudit, increasing; ignored on append
	At     time.Time // when it was done
	Actor  string    // the token's label, e.g. "token:1a2b3c4d"
	Action string    // e.g. "host.drain"
	Target string    // what it was done to, e.g. a host id
	Addr   string    // the client's address
	Via    string    // "api" or "dashboard"
	Result string    // "ok", or why it failed
}

// AuditFilter selects audit entries, newest first. Zero fields do not
// filter.
type AuditFilter struct {
	Before int64 // only entries with Seq < Before (paging)
	Limit  int   // 0: all
}
