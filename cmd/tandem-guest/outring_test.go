package main

import (
	"bytes"
	"testing"

	"github.com/tandem-ci/tandem/internal/guest"
)

// readAll reads r from offset from on, in pieces of at most max bytes.
func readAll(r *outRing, from int64, max int) (out, errs []byte, start int64) {
	start = -1
	for {
		s, off, d := r.next(from, max)
		if len(d) == 0 {
			return out, errs, start
		}
		if start < 0 {
			start = off
		}
		if len(d) > max {
			panic("piece too large")
		}
		if s == guest.StreamStdout {
			out = append(out, d...)
		} else {
			errs = append(errs, d...)
		}
		from = off + int64(len(d))
	}
}

func TestOutRingKeepsOrderAndStreams(t *testing.T) {
	r := newOutRing(1 << 10)
	r.add(guest.StreamStdout, []byte("hello "))
	r.add(guest.StreamStderr, []byte("oops"))
	r.add(guest.StreamStdout, []byte("world"))
	out, errs, start := readAll(r, 0, 3)
	if string(out) != "hello world" || string(errs) != "oops" || start != 0 {
		t.Fatalf("got %q %q from %d", out, errs, start)
	}
	out, errs, start = readAll(r, 8, 100)
	if string(out) != "world" || string(errs) != "ps" || start != 8 {
		t.Fatalf("from 8: got %q %q from %d", out, errs, start)
	}
	if _, off, d := r.next(15, 10); d != nil || off != 15 {
		t.Fatalf("at end: %q at %d", d, off)
	}
}

func TestOutRingDropsOldest(t *testing.T) {
	r := newOutRing(10)
	var all []byte
	for i := range 7 {
		p := bytes.Repeat([]byte{'a' + byte(i)}, 3)
		r.add(guest.StreamStdout, p)
		all = append(all, p...)
	}
	if r.oldest != 11 || r.end != 21 || r.held != 10 {
		t.Fatalf("oldest %d end %d held %d", r.oldest, r.end, r.held)
	}
	out, _, start := readAll(r, 0, 4)
	if start != 11 || !bytes.Equal(out, all[11:]) {
		t.Fatalf("got %q from %d, want %q from 11", out, start, all[11:])
	}
	r.add(guest.StreamStdout, bytes.Repeat([]byte{'z'}, 25))
	if r.oldest != 36 || r.held != 10 || len(r.chunks) != 1 {
		t.Fatalf("after a large write: oldest %d held %d chunks %d", r.oldest, r.held, len(r.chunks))
	}
}
