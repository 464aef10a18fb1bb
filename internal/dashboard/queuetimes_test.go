package dashboard

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestOverviewQueueChart(t *testing.T) {
	e := newEnv(t) // now: 03:04:05
	c := e.login("admin-token")
	body := e.do("GET", "/", c, nil, nil).Body.String()
	if !strings.Contains(body, `id="chart-queue"`) || !strings.Contains(body, "no job started in the last 24 hours") ||
		!strings.Contains(body, "0 jobs started") || strings.Contains(body, "<polyline") {
		t.Errorf("overview without jobs:\n%s", body)
	}
	// The answer is kept a minute per scope: a new job shows after it.
	e.be.queue = map[string][]int{"acme": {30, 90}, "globex": {3000}}
	if body := e.do("GET", "/?fragment=1", c, nil, nil).Body.String(); !strings.Contains(body, "0 jobs started") || e.be.qCalls != 1 {
		t.Errorf("the queue times were asked again within a minute (%d calls)", e.be.qCalls)
	}
	e.now = e.now.Add(time.Minute)
	body = e.do("GET", "/?fragment=1", c, nil, nil).Body.String()
	if e.be.qCalls != 2 || !strings.Contains(body, "3 jobs started") || !strings.Contains(body, "<polyline") ||
		!strings.Contains(body, "peak 50m") || !strings.Contains(body, ">04:00 UTC<") || !strings.Contains(body, ">04:00<") {
		t.Errorf("overview with jobs (%d calls):\n%s", e.be.qCalls, body)
	}
	// Another scope has its own answer: acme's jobs only.
	a := e.login("acme-token")
	body = e.do("GET", "/", a, nil, nil).Body.String()
	if !strings.Contains(body, "2 jobs started") || !strings.Contains(body, "peak 1m30s") || strings.Contains(body, "50m00s") {
		t.Errorf("acme's overview:\n%s", body)
	}
	// A new hour asks again, whatever the age of the answer.
	calls := e.be.qCalls
	e.now = time.Date(2026, 1, 2, 4, 0, 0, 0, time.UTC)
	e.do("GET", "/", c, nil, nil)
	if e.be.qCalls != calls+1 {
		t.Errorf("a new hour did not ask again")
	}
}

func TestQueueView(t *testing.T) {
	start := time.Date(2026, 1, 2, 4, 0, 0, 0, time.UTC)
	hours := make([]QueueHour, 24)
	for i := range hours {
		hours[i].Start = start.Add(time.Duration(i) * time.Hour)
	}
	hours[0] = QueueHour{Start: start, Jobs: 3, P50: 20, P95: 70}
	hours[23] = QueueHour{Start: start.Add(23 * time.Hour), Jobs: 1, P50: 5, P95: 5}
	v := makeQueueView(hours, start, 24*time.Hour)
	c := v.Chart
	if v.Jobs != 4 || c.Empty || len(c.Series) != 2 {
		t.Fatalf("%+v", v)
	}
	pts := coords(t, c.Series[1].Line)
	// Each hour at its middle: 30 minutes and 23.5 hours into the day; the
	// top a round time above 70 s: 2 minutes.
	near := func(a, b float64) bool { return math.Abs(a-b) < 0.06 } // coordinates have one decimal
	if len(pts) != 2 || !near(pts[0][0], c.x(1800, 86400)) || !near(pts[1][0], c.x(23.5*3600, 86400)) || c.YTicks[2].Label != "2m" ||
		c.YTicks[1].Label != "1m" || c.YTicks[0].Label != "0" || !near(pts[0][1], c.y(70, 120)) {
		t.Errorf("points %v, y ticks %+v", pts, c.YTicks)
	}
	for s, want := range map[float64]float64{0: 2, 1.5: 2, 3: 4, 45: 60, 3601: 7200, 86401: 2 * 86400, 10 * 86400: 10 * 86400} {
		if got := niceDuration(s); got != want {
			t.Errorf("niceDuration(%v) = %v, want %v", s, got, want)
		}
	}
	for s, want := range map[float64]string{0: "0", 5: "5s", 90: "1m30s", 120: "2m", 1800: "30m", 7200: "2h", 5400: "90m"} {
		if got := fmtAxisSeconds(s); got != want {
			t.Errorf("fmtAxisSeconds(%v) = %q, want %q", s, got, want)
		}
	}
	for _, st := range durationSteps {
		if half := st / 2; half != float64(int(half)) {
			t.Errorf("step %v: its half is not whole seconds", st)
		}
	}
}
