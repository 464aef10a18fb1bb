//go:build !linux

package dbcopy

// SQLiteInUse reports whether a connection has the SQLite database at path
// open. Only Linux can tell (open file description locks); elsewhere it
// reports false.
func SQLiteInUse(path string) (bool, error) { return false, nil }
