//go:build linux

package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestMergeDockerMirror(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "daemon.json")
	b, err := mergeDockerMirror(p, "http://172.30.0.1:5000")
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	json.Unmarshal(b, &got)
	if !reflect.DeepEqual(got, map[string]any{"registry-mirrors": []any{"http://172.30.0.1:5000"}}) {
		t.Fatalf("no daemon.json: %s", b)
	}
	// An operator's settings stay; an old mirror is replaced.
	os.WriteFile(p, []byte(`{"log-driver":"local","registry-mirrors":["http://old:5000"]}`), 0o644)
	b, err = mergeDockerMirror(p, "http://172.30.0.1:5000")
	if err != nil {
		t.Fatal(err)
	}
	got = nil
	json.Unmarshal(b, &got)
	if got["log-driver"] != "local" || !reflect.DeepEqual(got["registry-mirrors"], []any{"http://172.30.0.1:5000"}) {
		t.Fatalf("merged: %s", b)
	}
	os.WriteFile(p, []byte(`{not json`), 0o644)
	if _, err := mergeDockerMirror(p, "http://x:5000"); err == nil {
		t.Fatal("a broken daemon.json was overwritten")
	}
}
