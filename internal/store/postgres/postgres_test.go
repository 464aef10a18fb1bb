package postgres

import (
	"context"
	"os"
	"testing"

	"github.com/tandem-ci/tandem/internal/store"
	"github.com/tandem-ci/tandem/internal/store/postgres/pgtest"
	"github.com/tandem-ci/tandem/internal/store/storetest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// openFresh opens a store on a new, empty database, closed when t ends.
func openFresh(t *testing.T) *Store {
	t.Helper()
	s, err := Open(context.Background(), Options{URL: pgtest.NewDatabase(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return openFresh(t) })
}
