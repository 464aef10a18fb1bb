package config

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Locating errors: every error Load returns says where in which file, what,
// and how to fix it, as FILE:LINE: KEY: problem (fix).
//
// Validate's errors each begin with the dotted path of the key they are
// about ("runner.scope", "pools[0]", "agent.mirror.port"), or are a
// *FieldError that carries it. Load parses the file a second time into a
// yaml.Node tree, which knows every key's line, and maps each error's path
// to the line of the deepest key of that path the file holds: a required key
// that is missing is reported at its section (or, with no section, at the
// file). Decoding errors carry "line N" instead; the key at that line
// names them. An unknown key is named with the nearest known one, when one
// is close enough to be a typo.

// FieldError is a problem with one key of the file.
type FieldError struct {
	// Key is the dotted path: github.app_id, pools[1].labels.
	Key string
	// Problem says what is wrong, Fix how to put it right ("" if the
	// problem says so itself).
	Problem, Fix string
}

func (e *FieldError) Error() string {
	if e.Fix == "" {
		return e.Key + ": " + e.Problem
	}
	return e.Key + ": " + e.Problem + " (" + e.Fix + ")"
}

// keyAt is one key of the file: its dotted path and its line.
type keyAt struct {
	path, name string
	line       int
}

// fileKeys lists the keys of a parsed file, depth first.
func fileKeys(b []byte) []keyAt {
	var doc yaml.Node
	if yaml.Unmarshal(b, &doc) != nil || len(doc.Content) == 0 {
		return nil
	}
	var out []keyAt
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		switch n.Kind {
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k := n.Content[i]
				p := k.Value
				if path != "" {
					p = path + "." + k.Value
				}
				out = append(out, keyAt{path: p, name: k.Value, line: k.Line})
				walk(n.Content[i+1], p)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				p := fmt.Sprintf("%s[%d]", path, i)
				out = append(out, keyAt{path: p, line: c.Line})
				walk(c, p)
			}
		}
	}
	walk(doc.Content[0], "")
	return out
}

// lineOf returns the line of path's deepest key the file holds, and that
// key's path; 0 when not even its first part is there.
func lineOf(keys []keyAt, path string) (int, string) {
	for p := path; p != ""; p = parentPath(p) {
		for _, k := range keys {
			if k.path == p {
				return k.line, p
			}
		}
	}
	return 0, ""
}

// parentPath drops the last part of a dotted path: a.b[2] → a.b → a → "".
func parentPath(p string) string {
	if strings.HasSuffix(p, "]") {
		if i := strings.LastIndexByte(p, '['); i > 0 {
			return p[:i]
		}
	}
	if i := strings.LastIndexByte(p, '.'); i >= 0 {
		return p[:i]
	}
	return ""
}

// leadingKey matches the key path an error message starts with.
var leadingKey = regexp.MustCompile(`^([a-z][a-z0-9_]*(?:\[\d+\])*(?:\.[A-Za-z0-9_*/-]+(?:\[\d+\])*)*)(?:[ :]|$)`)

// lineError matches a decoding error's "line N: …".
var lineError = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

// unknownField matches yaml.v3's message for a key no field decodes.
var unknownField = regexp.MustCompile(`^field (\S+) not found in type \S+$`)

// locate turns err, from Parse, Validate or readSecrets, into one message
// line per problem, each FILE:LINE: KEY: problem.
func locate(file string, b []byte, err error) error {
	keys := fileKeys(b)
	var lines []string
	for _, e := range leaves(err) {
		for _, msg := range splitMessage(e) {
			lines = append(lines, locateOne(file, keys, e, msg))
		}
	}
	if len(lines) == 1 {
		return &LoadError{File: file, msg: "config: " + lines[0], err: err}
	}
	return &LoadError{File: file, msg: fmt.Sprintf("config: %d problems in %s:\n  %s", len(lines), file, strings.Join(lines, "\n  ")), err: err}
}

// LoadError is what Load returns for a file that exists but cannot be
// used: one line per problem. It unwraps to the underlying errors.
type LoadError struct {
	File string
	msg  string
	err  error
}

func (e *LoadError) Error() string { return e.msg }
func (e *LoadError) Unwrap() error { return e.err }

// leaves flattens joined errors, and strips the "config: " wrappers of
// Parse and Validate.
func leaves(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, leaves(e)...)
		}
		return out
	}
	if u := errors.Unwrap(err); u != nil && err.Error() == "config: "+u.Error() {
		return leaves(u)
	}
	return []error{err}
}

// splitMessage splits one error's message into its problems: yaml.v3
// reports all its type errors in one ("yaml: unmarshal errors:\n  line
// 3: …\n  line 5: …").
func splitMessage(e error) []string {
	msg := strings.TrimPrefix(e.Error(), "config: ")
	if rest, ok := strings.CutPrefix(msg, "yaml: unmarshal errors:\n"); ok {
		var out []string
		for _, l := range strings.Split(rest, "\n") {
			if l = strings.TrimSpace(l); l != "" {
				out = append(out, l)
			}
		}
		return out
	}
	return []string{msg}
}

func locateOne(file string, keys []keyAt, e error, msg string) string {
	// A decoding error: the line is known, the key is the one there.
	if m := lineError.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		problem := m[2]
		if f := unknownField.FindStringSubmatch(problem); f != nil {
			path := keyOnLine(keys, line, f[1])
			return fmt.Sprintf("%s:%d: %s: unknown key (%s)", file, line, path, unknownFix(path))
		}
		if want := wantedType(problem); want != "" {
			problem += " (want " + want + ")"
		}
		if path := keyOnLine(keys, line, ""); path != "" {
			return fmt.Sprintf("%s:%d: %s: %s", file, line, path, problem)
		}
		return fmt.Sprintf("%s:%d: %s", file, line, problem)
	}
	key := ""
	var fe *FieldError
	if errors.As(e, &fe) {
		key = fe.Key
	} else if m := leadingKey.FindStringSubmatch(msg); m != nil {
		key = m[1]
	}
	if line, _ := lineOf(keys, key); line > 0 {
		return fmt.Sprintf("%s:%d: %s", file, line, msg)
	}
	return fmt.Sprintf("%s: %s", file, msg)
}

// cannotUnmarshal matches yaml.v3's message for a value of the wrong type.
var cannotUnmarshal = regexp.MustCompile("^cannot unmarshal .* into (\\S+)$")

// wantedType says in words what a value of the Go type in a "cannot
// unmarshal" error is written as.
func wantedType(problem string) string {
	m := cannotUnmarshal.FindStringSubmatch(problem)
	if m == nil {
		return ""
	}
	switch t := m[1]; {
	case strings.HasPrefix(t, "int"), strings.HasPrefix(t, "uint"), strings.HasPrefix(t, "float"):
		return "a number"
	case t == "bool":
		return "true or false"
	case t == "string":
		return "a string"
	case strings.HasPrefix(t, "[]"):
		return "a list"
	case strings.HasPrefix(t, "map["):
		return "a mapping, KEY: VALUE"
	case strings.Contains(t, "."):
		return "a mapping of its keys"
	}
	return ""
}

// keyOnLine returns the path of the key on line named name or, if name is
// "", of the last key at or before the line: the deepest on it (flow
// mappings put several on one line, and the line cannot say which), or
// the one whose value starts a line of its own (in a list).
func keyOnLine(keys []keyAt, line int, name string) string {
	best := ""
	for _, k := range keys {
		switch {
		case k.line == line && name != "" && k.name == name:
			return k.path
		case k.line <= line && name == "":
			best = k.path // the last key on the line: the deepest
		}
	}
	if best == "" {
		return name
	}
	return best
}

// unknownFix suggests the known key nearest to an unknown one, or lists
// the known keys of its section.
func unknownFix(path string) string {
	name := path
	if i := strings.LastIndexAny(path, ".]"); i >= 0 {
		name = path[i+1:]
	}
	known := knownKeys(reflect.TypeOf(Config{}), parentPath(path))
	if len(known) == 0 {
		return "remove it"
	}
	bestD, best := 1<<30, ""
	for _, k := range known {
		if d := editDistance(name, k); d < bestD {
			bestD, best = d, k
		}
	}
	if bestD <= max(2, len(name)/3) {
		return fmt.Sprintf("did you mean %s?", joinPath(parentPath(path), best))
	}
	return "remove it; the keys here are " + strings.Join(known, ", ")
}

func joinPath(parent, name string) string {
	if parent == "" {
		return name
	}
	return parent + "." + name
}

// knownKeys lists the keys the config type t accepts at path.
func knownKeys(t reflect.Type, path string) []string {
	var parts []string
	for p := path; p != ""; p = parentPath(p) {
		last := p[len(parentPath(p)):]
		parts = append([]string{strings.TrimPrefix(last, ".")}, parts...)
	}
	for _, part := range parts {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		switch {
		case strings.HasPrefix(part, "["):
			if t.Kind() != reflect.Slice {
				return nil
			}
			t = t.Elem()
		case t.Kind() == reflect.Map:
			t = t.Elem()
		case t.Kind() == reflect.Struct:
			f, ok := fieldByKey(t, part)
			if !ok {
				return nil
			}
			t = f.Type
		default:
			return nil
		}
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return nil
	}
	return structKeys(t)
}

func yamlName(f reflect.StructField) (name string, inline bool) {
	tag := f.Tag.Get("yaml")
	name, opts, _ := strings.Cut(tag, ",")
	if strings.Contains(opts, "inline") {
		return "", true
	}
	if name == "" {
		name = strings.ToLower(f.Name)
	}
	return name, false
}

func fieldByKey(t reflect.Type, key string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, inline := yamlName(f)
		if inline && f.Type.Kind() == reflect.Struct {
			if g, ok := fieldByKey(f.Type, key); ok {
				return g, true
			}
		}
		if name == key && name != "-" {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

func structKeys(t reflect.Type) []string {
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, inline := yamlName(f)
		switch {
		case inline && f.Type.Kind() == reflect.Struct:
			out = append(out, structKeys(f.Type)...)
		case name != "-" && name != "":
			out = append(out, name)
		}
	}
	return out
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
