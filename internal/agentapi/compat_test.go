package agentapi

import (
	"bytes"
	"encoding"
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"
)

var updateWire = flag.Bool("update-wire", false, "write testdata/protocol-v1 from the current types (only when starting a new baseline)")

// wireMessages are the protocol's messages, each with every field set:
// what one side of version 1 sends the other.
func wireMessages() map[string]any {
	return map[string]any{
		"enroll-request.json":  filled[EnrollRequest](),
		"enroll-response.json": filled[EnrollResponse](),
		"hello.json":           filled[Hello](),
		"report.json":          filled[Report](),
		"command.json":         filled[Command](),
		"error.json":           filled[ErrorBody](),
	}
}

// The wire format of protocol version 1 is kept in testdata/protocol-v1,
// as this version's agents and control planes send it. Whatever the types
// become, both directions must keep working across a version step (an
// agent upgraded before its control plane, or after): every field an
// older peer sends is still read, none refused as unknown; and every
// field it reads is still sent. Adding optional fields keeps this test
// green (the readers on both sides, the control plane's decodeBody and
// the client's, skip fields they do not know); renaming or dropping one,
// or changing its JSON type, fails it. Regenerate the baseline
// (-args -update-wire) only for a new protocol version.
func TestWireCompatibleWithProtocolV1(t *testing.T) {
	for name, msg := range wireMessages() {
		path := filepath.Join("testdata", "protocol-v1", name)
		if *updateWire {
			b, err := json.MarshalIndent(msg, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		t.Run(name, func(t *testing.T) {
			old, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			// An older peer's message, read by this version.
			v := reflect.New(reflect.TypeOf(msg))
			dec := json.NewDecoder(bytes.NewReader(old))
			dec.DisallowUnknownFields()
			if err := dec.Decode(v.Interface()); err != nil {
				t.Fatalf("version 1's %s no longer reads: %v", name, err)
			}
			// This version's message, as an older peer reads it.
			now, err := json.Marshal(v.Elem().Interface())
			if err != nil {
				t.Fatal(err)
			}
			var was, is any
			if err := json.Unmarshal(old, &was); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(now, &is); err != nil {
				t.Fatal(err)
			}
			for _, missing := range lostKeys(was, is, "") {
				t.Errorf("%s: %s is no longer sent as version 1 sent it", name, missing)
			}
		})
	}
}

// lostKeys lists the paths of was's values that is lacks or gives another
// JSON type.
func lostKeys(was, is any, path string) []string {
	switch w := was.(type) {
	case map[string]any:
		i, ok := is.(map[string]any)
		if !ok {
			return []string{path + " (an object)"}
		}
		var lost []string
		for _, k := range slices.Sorted(maps.Keys(w)) {
			iv, ok := i[k]
			if !ok {
				lost = append(lost, path+"."+k)
				continue
			}
			lost = append(lost, lostKeys(w[k], iv, path+"."+k)...)
		}
		return lost
	case []any:
		i, ok := is.([]any)
		if !ok || len(i) != len(w) {
			return []string{path + " (an array)"}
		}
		var lost []string
		for n := range w {
			lost = append(lost, lostKeys(w[n], i[n], fmt.Sprintf("%s[%d]", path, n))...)
		}
		return lost
	}
	if reflect.TypeOf(was) != reflect.TypeOf(is) {
		return []string{fmt.Sprintf("%s (a %T)", path, was)}
	}
	return nil
}

// filled is a T with every field set, so that the baseline holds every
// field (a zero value under omitempty would not be there).
func filled[T any]() T {
	var v T
	fill(reflect.ValueOf(&v).Elem(), 0)
	return v
}

var wireTime = time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)

func fill(v reflect.Value, depth int) {
	if depth > 6 {
		return
	}
	if v.CanAddr() {
		switch v.Addr().Interface().(type) {
		case *time.Time:
			v.Set(reflect.ValueOf(wireTime))
			return
		case json.Unmarshaler, encoding.TextUnmarshaler:
			return // a type of its own format: left zero
		}
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString("x")
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(2)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(2)
	case reflect.Float32, reflect.Float64:
		v.SetFloat(1.5)
	case reflect.Pointer:
		p := reflect.New(v.Type().Elem())
		fill(p.Elem(), depth+1)
		v.Set(p)
	case reflect.Slice:
		s := reflect.MakeSlice(v.Type(), 1, 1)
		fill(s.Index(0), depth+1)
		v.Set(s)
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
		fill(k, depth+1)
		fill(e, depth+1)
		m.SetMapIndex(k, e)
		v.Set(m)
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				fill(v.Field(i), depth+1)
			}
		}
	}
}
