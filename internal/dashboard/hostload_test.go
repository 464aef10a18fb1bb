package dashboard

import (
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/store"
)

// dayOfLoad is a day and a half of an 8-vCPU host's records, one a minute
// ending at end: two VMs busy, and for one minute of the last day seven,
// with memory available falling to 512 MiB; disk counted.
func dayOfLoad(end time.Time) []store.HostLoad {
	var out []store.HostLoad
	for i := 36 * 60; i >= 0; i-- {
		l := store.HostLoad{Host: "h1", At: end.Add(-time.Duration(i) * time.Minute), State: store.HostOnline,
			VCPUs: 8, AllocVCPUs: 4, MemoryMiB: 16384, AllocMemoryMiB: 8192, DiskMiB: 100 << 10, AllocDiskMiB: 40 << 10,
			VMs: 2, Load1: 3.5, MemAvailableMiB: 6000, HeartbeatAge: 2}
		if i == 90 {
			l.VMs, l.AllocVCPUs, l.MemAvailableMiB, l.HeartbeatAge = 7, 8, 512, 14
		}
		out = append(out, l)
	}
	return out
}

func TestHostLoadView(t *testing.T) {
	end := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	v := makeHostLoadView(dayOfLoad(end), end)
	ids := []string{}
	for _, c := range v.Charts {
		ids = append(ids, c.ID)
	}
	if got := strings.Join(ids, " "); got != "chart-host-cpu chart-host-mem chart-host-disk chart-host-vms chart-host-load" {
		t.Fatalf("charts %s", got)
	}
	if v.Records != 36*60+1 || v.MaxBeat != "14s" {
		t.Errorf("records %d, heartbeat %q", v.Records, v.MaxBeat)
	}
	for _, c := range v.Charts {
		for _, s := range c.Series {
			pts := coords(t, s.Line)
			if len(pts) < hostLoadSlots-1 || len(pts) > hostLoadSlots+1 {
				t.Errorf("%s %s: %d points, want about %d (a day in five-minute slots)", c.ID, s.Name, len(pts), hostLoadSlots)
			}
			for _, p := range pts {
				if p[0] < c.X0 || p[0] > c.X1 || p[1] < c.Y0 || p[1] > c.Y1 {
					t.Errorf("%s: point %v outside the plot", c.ID, p)
				}
			}
		}
		if c.XTicks[0].Label != "03:04" || c.XTicks[1].Label != "15:04" || c.XTicks[2].Label != "03:04 UTC" {
			t.Errorf("%s: x labels %+v, want the day's times", c.ID, c.XTicks)
		}
	}
	// The one busy minute survives the downsampling; so does the lowest
	// memory available.
	peak := func(id, series string) string {
		for _, c := range v.Charts {
			for _, s := range c.Series {
				if c.ID == id && s.Name == series {
					return s.Peak
				}
			}
		}
		return "none"
	}
	if got := peak("chart-host-vms", "VMs"); got != "7" {
		t.Errorf("VMs peak %s, want 7", got)
	}
	if got := peak("chart-host-cpu", "allocated"); got != "8 vCPU" {
		t.Errorf("vCPU peak %s, want 8 vCPU", got)
	}
	mem := v.Charts[1]
	if ys := coords(t, mem.Series[2].Line); !strings.HasPrefix(mem.Series[2].Name, "available") || len(ys) == 0 {
		t.Fatalf("memory series %+v", mem.Series)
	} else {
		lowest := 0.0
		for _, p := range ys {
			lowest = max(lowest, p[1]) // y grows downwards
		}
		top := 20.0 * (1 << 30) // niceBytes(16 GiB)
		if want := mem.Y1 - (mem.Y1-mem.Y0)*512*(1<<20)/top; math.Abs(lowest-want) > 0.11 {
			t.Errorf("the lowest memory available is drawn at y %v, want %v (512 MiB)", lowest, want)
		}
	}

	// Nothing recorded: the charts say so; no disk chart when disk is not
	// counted; values that are not numbers stay on the plot.
	empty := makeHostLoadView(nil, end)
	if len(empty.Charts) != 4 || !empty.Charts[0].Empty || !strings.Contains(empty.Charts[0].EmptyText, "once a minute") {
		t.Errorf("no records: %+v", empty.Charts)
	}
	odd := []store.HostLoad{{At: end.Add(-time.Hour), VCPUs: math.NaN(), AllocVCPUs: math.Inf(1), Load1: -3, HeartbeatAge: math.NaN()},
		{At: end.Add(time.Hour), VCPUs: 4}} // from the future: left out
	for _, c := range makeHostLoadView(odd, end).Charts {
		for _, s := range c.Series {
			for _, p := range coords(t, s.Line) {
				if p[0] < c.X0 || p[0] > c.X1 || p[1] < c.Y0 || p[1] > c.Y1 {
					t.Errorf("%s: point %v outside the plot", c.ID, p)
				}
			}
			if n := len(coords(t, s.Line)); n != 1 {
				t.Errorf("%s %s: %d points, want 1", c.ID, s.Name, n)
			}
		}
	}
}

func TestHostPageCharts(t *testing.T) {
	e := newEnv(t)
	c := e.login("read-token")
	body := e.do("GET", "/hosts/h1", c, nil, nil).Body.String()
	if !strings.Contains(body, `id="chart-host-cpu"`) || !strings.Contains(body, "nothing recorded yet") || strings.Contains(body, "<polyline") {
		t.Errorf("host page without records:\n%s", body)
	}
	if got := e.be.loadSince[0]; !got.Equal(e.now.Add(-24 * time.Hour)) {
		t.Errorf("the page asked for records since %v, want a day before %v", got, e.now)
	}
	e.be.loads = map[string][]store.HostLoad{"h1": dayOfLoad(e.now)}
	w := e.do("GET", "/hosts/h1?fragment=1", c, nil, nil)
	body = w.Body.String()
	if w.Code != http.StatusOK || strings.Count(body, "<figure class=\"chart\"") != 5 || !strings.Contains(body, `<polyline class="line"`) ||
		!strings.Contains(body, "1441 load records") || !strings.Contains(body, "at most 14s old") || strings.Contains(body, "style=") {
		t.Errorf("host page fragment with a day of records (%d):\n%s", w.Code, body)
	}
	if n := len(body); n > 80<<10 {
		t.Errorf("the host page is %d KiB every refresh: too much", n>>10)
	}
}
