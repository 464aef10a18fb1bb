// Package archname finds one logical job in the job names of a matrix over
// architectures. GitHub names a matrix job after its values: a workflow
// that runs `build` on both architectures has jobs named `build (arm64)`
// and `build (amd64)`, or `build (ubuntu, x64)`, `build-aarch64`,
// `build (tandem-arm64-4cpu-8gb)`, `test (ubuntu-24.04-arm)`. Logical takes
// the architecture words out of such a name, so that the jobs of one
// logical job on either architecture share a name.
//
// It has no dependencies, so that the store can key its records by the
// logical name and the parity matrix can read them back. Changing the
// rules changes stored keys: a store migration must then clear the
// store's parity records and run its statistics backfill again.
package archname

import "strings"

// words are the architecture names people put in matrix values, lower
// case: Go's, the kernel's, GitHub's and the vendors'. "x86_64" and
// "x86-64" are one word here (see Logical).
var words = map[string]bool{
	"amd64": true, "x86_64": true, "x86-64": true, "x64": true, "x86": true,
	"arm64": true, "aarch64": true, "armv8": true, "arm": true,
}

// segment is a run of letters and digits (a word) or of anything else (a
// separator).
type segment struct {
	text string
	word bool
}

func isWordByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func split(s string) []segment {
	var out []segment
	start := 0
	for i := 1; i <= len(s); i++ {
		if i == len(s) || isWordByte(s[i]) != isWordByte(s[start]) {
			out = append(out, segment{text: s[start:i], word: isWordByte(s[start])})
			start = i
		}
	}
	return out
}

// structural separators hold brackets: the matrix's parentheses stay when
// a value inside them goes.
func structural(sep string) bool { return strings.ContainsAny(sep, "()[]{}") }

// Logical returns name without its architecture words. Each such word
// goes with the separator before it (or, when that holds a bracket, the
// one after it), so that `build (ubuntu, x64)` becomes `build (ubuntu)`,
// `build-arm64` becomes `build` and `tandem-arm64-4cpu-8gb` becomes
// `tandem-4cpu-8gb`; brackets left empty go too. A name with no such word
// comes back unchanged; one that is nothing but architecture is "*".
func Logical(name string) string {
	segs := split(name)
	// Join "x86" "_" "64" (and "-") into one word.
	for i := 0; i+2 < len(segs); i++ {
		if strings.EqualFold(segs[i].text, "x86") && (segs[i+1].text == "_" || segs[i+1].text == "-") && segs[i+2].text == "64" {
			segs[i] = segment{text: segs[i].text + segs[i+1].text + segs[i+2].text, word: true}
			segs = append(segs[:i+1], segs[i+3:]...)
		}
	}
	drop := make([]bool, len(segs))
	found := false
	for i, s := range segs {
		if !s.word || !words[strings.ToLower(s.text)] {
			continue
		}
		found = true
		drop[i] = true
		switch {
		case i > 0 && !drop[i-1] && !structural(segs[i-1].text):
			drop[i-1] = true
		case i+1 < len(segs) && !structural(segs[i+1].text):
			drop[i+1] = true
		}
	}
	if !found {
		return name
	}
	var b strings.Builder
	for i, s := range segs {
		if !drop[i] {
			b.WriteString(s.text)
		}
	}
	out := b.String()
	for _, empty := range []string{"( )", "()", "[ ]", "[]", "{ }", "{}"} {
		out = strings.ReplaceAll(out, empty, "")
	}
	out = strings.Join(strings.Fields(out), " ")
	out = strings.Trim(out, " -_/,.:;")
	if out == "" {
		return "*"
	}
	return out
}
