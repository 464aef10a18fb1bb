package dbcopy

import (
	"database/sql"
	"fmt"
)

// converter turns a value as the SQLite driver returns it (int64, float64,
// string, []byte or nil) into one for a PostgreSQL column.
type converter func(v any) (any, error)

// converterFor returns the converter for a column of PostgreSQL type
// pgType (information_schema's data_type).
func converterFor(pgType string) (converter, error) {
	switch pgType {
	case "boolean":
		return toBool, nil
	case "bytea":
		return toBytes, nil
	case "bigint", "integer", "smallint":
		return toInt, nil
	case "double precision", "real":
		return toFloat, nil
	case "text", "character varying":
		return toText, nil
	}
	return nil, fmt.Errorf("no conversion to PostgreSQL's %s", pgType)
}

// toBool reads SQLite's 0/1 flags.
func toBool(v any) (any, error) {
	switch v := v.(type) {
	case nil, bool:
		return v, nil
	case int64:
		switch v {
		case 0:
			return false, nil
		case 1:
			return true, nil
		}
	}
	return nil, fmt.Errorf("%T %v is not a flag (0 or 1)", v, v)
}

func toBytes(v any) (any, error) {
	switch v := v.(type) {
	case nil, []byte:
		return v, nil
	case string:
		return []byte(v), nil
	}
	return nil, fmt.Errorf("%T is not bytes", v)
}

func toInt(v any) (any, error) {
	switch v.(type) {
	case nil, int64:
		return v, nil
	}
	return nil, fmt.Errorf("%T %v is not an integer", v, v)
}

func toFloat(v any) (any, error) {
	switch v := v.(type) {
	case nil, float64:
		return v, nil
	case int64:
		return float64(v), nil
	}
	return nil, fmt.Errorf("%T %v is not a number", v, v)
}

func toText(v any) (any, error) {
	switch v := v.(type) {
	case nil, string:
		return v, nil
	case []byte:
		return string(v), nil
	}
	return nil, fmt.Errorf("%T %v is not text", v, v)
}

// rowSource feeds a table's SQLite rows, converted, to pgx's CopyFrom
// (pgx.CopyFromSource).
type rowSource struct {
	rows *sql.Rows
	t    table
	conv []converter
	raw  []any // scanned values
	ptrs []any // pointers into raw, for Scan
	vals []any // converted values of the current row
	err  error
}

func newRowSource(rows *sql.Rows, t table, conv []converter) *rowSource {
	s := &rowSource{rows: rows, t: t, conv: conv, raw: make([]any, len(conv)), ptrs: make([]any, len(conv)), vals: make([]any, len(conv))}
	for i := range s.raw {
		s.ptrs[i] = &s.raw[i]
	}
	return s
}

// Next reads and converts the next row; on an error it stops, and Err
// says why.
func (s *rowSource) Next() bool {
	if s.err != nil || !s.rows.Next() {
		return false
	}
	if err := s.rows.Scan(s.ptrs...); err != nil {
		s.err = fmt.Errorf("sqlite: %s: %w", s.t.name, err)
		return false
	}
	for i, v := range s.raw {
		cv, err := s.conv[i](v)
		if err != nil {
			s.err = fmt.Errorf("%s.%s: %w", s.t.name, s.t.cols[i].name, err)
			return false
		}
		s.vals[i] = cv
	}
	return true
}

func (s *rowSource) Values() ([]any, error) { return s.vals, nil }

func (s *rowSource) Err() error {
	if s.err != nil {
		return s.err
	}
	if err := s.rows.Err(); err != nil {
		return fmt.Errorf("sqlite: %s: %w", s.t.name, err)
	}
	return nil
}
