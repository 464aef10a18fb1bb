package store

import (
	"encoding/json"
	"maps"
	"testing"
)

func TestHistogramMergeJSON(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Histogram
		bad  bool
	}{
		{in: `{}`, want: Histogram{1: 1}},
		{in: `{"0":2,"15":3}`, want: Histogram{0: 2, 1: 1, 15: 3}},
		{in: `{"1":4,"-3":-1}`, want: Histogram{1: 5, -3: -1}},
		// Not the compact form: the slow path takes it.
		{in: ` { "15" : 3 } `, want: Histogram{1: 1, 15: 3}},
		{in: `{"007":1}`, want: Histogram{1: 1, 7: 1}},
		{in: `{"1":1.5}`, bad: true},
		{in: `{"1":1`, bad: true},
		{in: `[1,2]`, bad: true},
		{in: `{"1":1,}`, bad: true},
		{in: `{"99999999999999999999":1}`, bad: true},
	} {
		h := Histogram{1: 1}
		err := h.MergeJSON([]byte(tc.in))
		switch {
		case tc.bad && err == nil:
			t.Errorf("%s: merged into %v, want an error", tc.in, h)
		case !tc.bad && err != nil:
			t.Errorf("%s: %v", tc.in, err)
		case !tc.bad && !maps.Equal(h, tc.want):
			t.Errorf("%s: %v, want %v", tc.in, h, tc.want)
		}
	}
}

// The fast path agrees with encoding/json on everything it takes, and
// leaves what it does not take to it.
func FuzzHistogramMergeJSON(f *testing.F) {
	for _, s := range []string{`{}`, `{"0":2,"15":3}`, `{"1":-4}`, `{"1":1,"1":2}`, ` {"2":1}`, `{"01":1}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h := Histogram{3: 1}
		err := h.MergeJSON(b)
		var o Histogram
		jerr := json.Unmarshal(b, &o)
		if (err == nil) != (jerr == nil) {
			t.Fatalf("%q: MergeJSON %v, json %v", b, err, jerr)
		}
		if err != nil {
			return
		}
		want := Histogram{3: 1}
		for k, v := range o {
			want[k] += v
		}
		if !maps.Equal(h, want) {
			t.Fatalf("%q: %v, want %v", b, h, want)
		}
	})
}
