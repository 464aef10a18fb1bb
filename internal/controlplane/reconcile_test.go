package controlplane

import (
	"slices"
	"testing"
	"time"
)

// A job asked to be verified twice is verified once; take empties the set.
func TestJobSet(t *testing.T) {
	q := newJobSet()
	q.add(3)
	q.add(1)
	q.add(3)
	select {
	case <-q.kick:
	default:
		t.Fatal("add did not signal verifyLoop")
	}
	ids := q.take()
	slices.Sort(ids)
	if !slices.Equal(ids, []int64{1, 3}) {
		t.Errorf("took %v, want [1 3]", ids)
	}
	if ids := q.take(); len(ids) != 0 {
		t.Errorf("took %v from an emptied set", ids)
	}
}

// A redelivery is asked for once, and forgotten once GitHub no longer
// lists the delivery.
func TestRedeliveries(t *testing.T) {
	r := newRedeliveries()
	t0 := time.Unix(1000, 0)
	r.add("old", t0)
	r.add("new", t0.Add(time.Hour))
	if !r.done("old") || !r.done("new") || r.done("other") {
		t.Fatal("done does not say what was asked")
	}
	r.forget(t0.Add(time.Minute))
	if r.done("old") || !r.done("new") {
		t.Errorf("forget: old %v (want false), new %v (want true)", r.done("old"), r.done("new"))
	}
}
