package pool

import (
	"strings"
	"testing"
	"time"
)

func TestScheduleActive(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	at := func(loc *time.Location, y int, mo time.Month, d, h, m int) time.Time {
		return time.Date(y, mo, d, h, m, 0, 0, loc)
	}
	// 2026-12-07 is a Monday.
	for _, tc := range []struct {
		sched string
		at    time.Time
		want  bool
	}{
		{"", at(time.UTC, 2026, 12, 6, 3, 0), true},
		{"Mon-Fri 07:00-20:00 Europe/Berlin", at(berlin, 2026, 12, 7, 7, 0), true},
		{"Mon-Fri 07:00-20:00 Europe/Berlin", at(berlin, 2026, 12, 7, 6, 59), false},
		{"Mon-Fri 07:00-20:00 Europe/Berlin", at(berlin, 2026, 12, 7, 20, 0), false},
		{"Mon-Fri 07:00-20:00 Europe/Berlin", at(time.UTC, 2026, 12, 7, 6, 30), true}, // 07:30 in Berlin (CET)
		{"Mon-Fri 07:00-20:00 Europe/Berlin", at(time.UTC, 2026, 7, 6, 5, 30), true},  // 07:30 in Berlin (CEST)
		{"Mon-Fri 07:00-20:00 Europe/Berlin", at(time.UTC, 2026, 7, 6, 4, 30), false}, // 06:30 in Berlin (CEST)
		{"Mon-Fri 07:00-20:00 Europe/Berlin", at(berlin, 2026, 12, 12, 12, 0), false}, // Saturday
		{"Fri-Mon 00:00-24:00", at(time.UTC, 2026, 12, 13, 23, 59), true},             // Sunday, wrapped range
		{"Fri-Mon 00:00-24:00", at(time.UTC, 2026, 12, 9, 12, 0), false},              // Wednesday
		{"Mon-Fri 22:00-06:00", at(time.UTC, 2026, 12, 12, 3, 0), true},               // Saturday 03:00: Friday's night
		{"Mon-Fri 22:00-06:00", at(time.UTC, 2026, 12, 7, 3, 0), false},               // Monday 03:00: Sunday had none
		{"Mon-Fri 22:00-06:00", at(time.UTC, 2026, 12, 7, 22, 30), true},
		{"sat 09:00-13:00; Mon,Wed 10:00-11:00 UTC", at(time.UTC, 2026, 12, 9, 10, 15), true},
		{"sat 09:00-13:00; Mon,Wed 10:00-11:00 UTC", at(time.UTC, 2026, 12, 8, 10, 15), false},
		{"daily 08:00-09:00", at(time.UTC, 2026, 12, 13, 8, 30), true},
	} {
		s, err := ParseSchedule(tc.sched)
		if err != nil {
			t.Fatalf("%q: %v", tc.sched, err)
		}
		if got := s.Active(tc.at); got != tc.want {
			t.Errorf("%q at %s: active %v, want %v", tc.sched, tc.at, got, tc.want)
		}
	}
}

func TestScheduleErrors(t *testing.T) {
	for _, tc := range []struct{ sched, want string }{
		{"Mon-Fri", "want \"DAYS HH:MM-HH:MM [ZONE]\""},
		{"Mon-Fry 07:00-20:00", `day "Fry"`},
		{"Monday 07:00-20:00", `day "Monday"`},
		{"Mon-Fri 7-20", `time "7"`},
		{"Mon-Fri 0700", `hours "0700"`},
		{"Mon-Fri 07:00-25:00", `time "25:00"`},
		{"Mon-Fri 24:00-06:00", `time "24:00"`},
		{"Mon-Fri 07:60-08:00", `time "07:60"`},
		{"Mon-Fri 07:00-20:00 Mars/Olympus", `time zone "Mars/Olympus"`},
		{"Mon-Fri 07:00-20:00 Local", `time zone "Local"`},
		{"Mon 07:00-20:00 UTC extra", "want \"DAYS"},
		{"Mon 07:00-20:00;", "want \"DAYS"},
	} {
		_, err := ParseSchedule(tc.sched)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want one containing %q", tc.sched, err, tc.want)
		}
	}
}

func TestTarget(t *testing.T) {
	night, _ := ParseSchedule("Mon-Fri 22:00-23:00")
	monday := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name     string
		z        Sizing
		arrivals int
		want     int
	}{
		{"floor", Sizing{MinIdle: 2, MaxIdle: 8}, 100, 2},
		{"floor above cap", Sizing{MinIdle: 9, MaxIdle: 8}, 0, 8},
		{"outside its schedule", Sizing{MinIdle: 2, MaxIdle: 8, Schedule: night}, 0, 0},
		{"demand: 60 jobs in 10 min, 30 s to boot: 3", Sizing{MinIdle: 1, MaxIdle: 8, Demand: true}, 60, 3},
		{"demand: one job rounds up", Sizing{MaxIdle: 8, Demand: true}, 1, 1},
		{"demand below the floor", Sizing{MinIdle: 2, MaxIdle: 8, Demand: true}, 5, 2},
		{"demand above the cap", Sizing{MinIdle: 1, MaxIdle: 4, Demand: true}, 10000, 4},
		{"no arrivals", Sizing{MaxIdle: 4, Demand: true}, 0, 0},
	} {
		if got := tc.z.Target(monday, tc.arrivals, 10*time.Minute, 30*time.Second); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
}

func FuzzParseSchedule(f *testing.F) {
	for _, s := range []string{"Mon-Fri 07:00-20:00 Europe/Berlin", "daily 00:00-24:00", "Fri-Mon 22:00-06:00; Sat 09:00-10:00 UTC", ";;", "Mon 24:00-24:00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sch, err := ParseSchedule(s)
		if err != nil {
			return
		}
		for h := range 24 * 7 {
			sch.Active(time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC).Add(time.Duration(h) * time.Hour))
		}
	})
}
