package storetest

import (
	"bytes"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/store"
)

func getDelivery(t *testing.T, s store.Store, guid string) (d store.Delivery, err error) {
	t.Helper()
	view(t, s, func(tx store.ReadTx) error {
		d, err = tx.Delivery(guid)
		return nil
	})
	return d, err
}

func pending(t *testing.T, s store.Store, after int64, limit int) []store.Delivery {
	t.Helper()
	ds, err := s.PendingDeliveries(testCtx(t), after, limit)
	noErr(t, "PendingDeliveries", err)
	return ds
}

func guids(ds []store.Delivery) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.GUID
	}
	return out
}

func testDeliveryRoundTrip(t *testing.T, s store.Store) {
	for _, d := range []store.Delivery{delivery("full", 2048), delivery("empty-payload", 0)} {
		if !insert(t, s, d) {
			t.Fatalf("InsertDelivery %s: inserted = false for a new delivery", d.GUID)
		}
		got, err := getDelivery(t, s, d.GUID)
		noErr(t, "Delivery", err)
		if got.Seq <= 0 {
			t.Errorf("%s: Seq = %d, want > 0", d.GUID, got.Seq)
		}
		if !bytes.Equal(got.Payload, d.Payload) {
			t.Errorf("%s: payload of %d bytes came back as %d bytes, or changed", d.GUID, len(d.Payload), len(got.Payload))
		}
		want := d
		want.Seq, want.Payload, got.Payload = got.Seq, nil, nil
		same(t, "delivery "+d.GUID, want, got)
	}
}

func testDeliveryInvalid(t *testing.T, s store.Store) {
	for name, d := range map[string]store.Delivery{
		"no guid":         {Event: "workflow_job", ReceivedAt: t0},
		"no event":        {GUID: "g", ReceivedAt: t0},
		"no receive time": {GUID: "g", Event: "workflow_job"},
	} {
		ok, err := s.InsertDelivery(testCtx(t), d)
		wantErr(t, "InsertDelivery "+name, err, store.ErrInvalid)
		if ok {
			t.Errorf("InsertDelivery %s: inserted = true", name)
		}
	}
	if ds := pending(t, s, 0, 10); len(ds) != 0 {
		t.Errorf("invalid deliveries were stored: %v", guids(ds))
	}
}

func testDeliveryDedupe(t *testing.T, s store.Store) {
	first := delivery("g-1", 100)
	if !insert(t, s, first) {
		t.Fatal("first insert: inserted = false")
	}
	again := delivery("g-1", 50)
	again.Event, again.ReceivedAt = "other", at(time.Hour)
	if insert(t, s, again) {
		t.Error("second insert of the same GUID: inserted = true")
	}
	got, err := getDelivery(t, s, "g-1")
	noErr(t, "Delivery", err)
	if got.Event != first.Event || !bytes.Equal(got.Payload, first.Payload) || !got.ReceivedAt.Equal(ms(first.ReceivedAt)) {
		t.Errorf("duplicate replaced the delivery kept: %+v", got)
	}
	if ds := pending(t, s, 0, 10); len(ds) != 1 {
		t.Errorf("pending = %v, want just g-1", guids(ds))
	}
	// Once processed, the GUID is still known.
	update(t, s, func(tx store.Tx) error { return tx.MarkDelivery("g-1", at(time.Minute), "") })
	if insert(t, s, first) {
		t.Error("insert after processing: inserted = true")
	}
}

func testDeliveryDedupeConcurrent(t *testing.T, s store.Store) {
	const (
		workers   = 50
		perWorker = 20
		distinct  = 120 // worker w inserts GUIDs 2w … 2w+19: heavy overlap
	)
	var (
		wins [distinct]atomic.Int32
		wg   sync.WaitGroup
		errs = make(chan error, workers*perWorker)
	)
	ctx := testCtx(t)
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				// Alternate direction so that neighbours collide.
				k := 2*w + i
				if w%2 == 1 {
					k = 2*w + perWorker - 1 - i
				}
				ok, err := s.InsertDelivery(ctx, delivery(fmt.Sprintf("g-%03d", k), 2048))
				if err != nil {
					errs <- err
					continue
				}
				if ok {
					wins[k].Add(1)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("InsertDelivery: %v", err)
	}
	want := 2*(workers-1) + perWorker
	for k := range want {
		if n := wins[k].Load(); n != 1 {
			t.Errorf("g-%03d: %d callers saw inserted=true, want 1", k, n)
		}
	}
	ds := pending(t, s, 0, 10*distinct)
	if len(ds) != want {
		t.Fatalf("%d deliveries stored, want %d", len(ds), want)
	}
	seen := map[string]bool{}
	for i, d := range ds {
		if seen[d.GUID] {
			t.Errorf("%s stored twice", d.GUID)
		}
		seen[d.GUID] = true
		if i > 0 && d.Seq <= ds[i-1].Seq {
			t.Errorf("seq not increasing: %d after %d", d.Seq, ds[i-1].Seq)
		}
	}
}

func testPendingDeliveries(t *testing.T, s store.Store) {
	var names []string
	for i := range 10 {
		d := delivery(fmt.Sprintf("p-%d", i), 10+i)
		d.ReceivedAt = at(time.Duration(i) * time.Second)
		insert(t, s, d)
		names = append(names, d.GUID)
	}
	all := pending(t, s, 0, 100)
	if got := guids(all); fmt.Sprint(got) != fmt.Sprint(names) {
		t.Fatalf("pending = %v, want %v (insertion order)", got, names)
	}
	for i, d := range all {
		if i > 0 && d.Seq <= all[i-1].Seq {
			t.Errorf("seq not increasing: %d after %d", d.Seq, all[i-1].Seq)
		}
		if !d.ProcessedAt.IsZero() {
			t.Errorf("%s: pending but processed at %v", d.GUID, d.ProcessedAt)
		}
		if len(d.Payload) != 10+i {
			t.Errorf("%s: payload of %d bytes, want %d", d.GUID, len(d.Payload), 10+i)
		}
	}
	if got := guids(pending(t, s, all[3].Seq, 100)); fmt.Sprint(got) != fmt.Sprint(names[4:]) {
		t.Errorf("pending after %s = %v, want %v", names[3], got, names[4:])
	}
	if got := guids(pending(t, s, 0, 3)); fmt.Sprint(got) != fmt.Sprint(names[:3]) {
		t.Errorf("pending limit 3 = %v, want %v", got, names[:3])
	}
	if got := guids(pending(t, s, all[1].Seq, 2)); fmt.Sprint(got) != fmt.Sprint(names[2:4]) {
		t.Errorf("pending after %s limit 2 = %v, want %v", names[1], got, names[2:4])
	}
	if got := pending(t, s, all[9].Seq, 100); len(got) != 0 {
		t.Errorf("pending after the last = %v, want none", guids(got))
	}
	_, err := s.PendingDeliveries(testCtx(t), 0, 0)
	wantErr(t, "PendingDeliveries limit 0", err, store.ErrInvalid)

	update(t, s, func(tx store.Tx) error {
		if err := tx.MarkDelivery("p-2", at(time.Minute), "no such job"); err != nil {
			return err
		}
		return tx.MarkDelivery("p-5", at(time.Minute), "")
	})
	var want []string
	for _, n := range names {
		if n != "p-2" && n != "p-5" {
			want = append(want, n)
		}
	}
	if got := guids(pending(t, s, 0, 100)); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("pending after marking = %v, want %v", got, want)
	}
	d, err := getDelivery(t, s, "p-2")
	noErr(t, "Delivery p-2", err)
	if !d.ProcessedAt.Equal(ms(at(time.Minute))) || d.Error != "no such job" {
		t.Errorf("p-2: processed %v error %q, want %v %q", d.ProcessedAt, d.Error, ms(at(time.Minute)), "no such job")
	}
	err = s.Update(testCtx(t), func(tx store.Tx) error { return tx.MarkDelivery("nope", t0, "") })
	wantErr(t, "MarkDelivery unknown", err, store.ErrNotFound)
}

func testDeliverySeqNotReused(t *testing.T, s store.Store) {
	insert(t, s, delivery("a", 1))
	insert(t, s, delivery("b", 1))
	ds := pending(t, s, 0, 10)
	if len(ds) != 2 {
		t.Fatalf("pending = %v", guids(ds))
	}
	update(t, s, func(tx store.Tx) error {
		if err := tx.MarkDelivery("a", t0, ""); err != nil {
			return err
		}
		return tx.MarkDelivery("b", t0, "")
	})
	n, err := s.Prune(testCtx(t), at(time.Hour))
	noErr(t, "Prune", err)
	if n != 2 {
		t.Errorf("Prune removed %d rows, want 2", n)
	}
	if !insert(t, s, delivery("c", 1)) {
		t.Fatal("insert c: inserted = false")
	}
	c, err := getDelivery(t, s, "c")
	noErr(t, "Delivery c", err)
	if c.Seq <= ds[1].Seq {
		t.Errorf("seq %d reused or went back (last was %d)", c.Seq, ds[1].Seq)
	}
}
