// Package pool is the pure part of warm pools: when a pool is kept warm (its
// weekly schedule) and how many idle VMs it should hold (its floor, its
// cap, and in demand mode the recent arrival rate of its jobs). It reads no
// clock and does no I/O; the control plane feeds it times and counts.
package pool

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Schedule is when a pool is kept warm: weekly windows in one time zone,
// written as
//
//	DAYS HH:MM-HH:MM [ZONE] [; DAYS HH:MM-HH:MM [ZONE] …]
//
// for example "Mon-Fri 07:00-20:00 Europe/Berlin". DAYS is a day (Mon …
// Sun), a range of days (Mon-Fri; Fri-Mon wraps over the weekend), a
// comma list of either, or "daily". A window whose end is not after its
// start runs past midnight into the next day ("Mon-Fri 22:00-06:00" holds
// Saturday 03:00); 00:00-24:00 is the whole day. ZONE is an IANA time zone
// name (default UTC), the zone's daylight saving time included. The zero
// Schedule is always active.
type Schedule struct {
	src     string
	windows []window
}

type window struct {
	days       [7]bool // by time.Weekday: the days it starts on
	start, end int     // minutes from midnight; end may be 24*60
	loc        *time.Location
}

var dayNames = map[string]time.Weekday{
	"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday, "wed": time.Wednesday,
	"thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday,
}

// ParseSchedule parses a schedule; "" is the zero Schedule (always).
func ParseSchedule(s string) (Schedule, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Schedule{}, nil
	}
	sch := Schedule{src: s}
	for part := range strings.SplitSeq(s, ";") {
		w, err := parseWindow(strings.Fields(part))
		if err != nil {
			return Schedule{}, fmt.Errorf("schedule %q: %w", s, err)
		}
		sch.windows = append(sch.windows, w)
	}
	return sch, nil
}

func parseWindow(f []string) (window, error) {
	if len(f) < 2 || len(f) > 3 {
		return window{}, errors.New(`want "DAYS HH:MM-HH:MM [ZONE]", e.g. "Mon-Fri 07:00-20:00 Europe/Berlin"`)
	}
	w := window{loc: time.UTC}
	if err := w.parseDays(f[0]); err != nil {
		return window{}, err
	}
	from, to, ok := strings.Cut(f[1], "-")
	if !ok {
		return window{}, fmt.Errorf("hours %q: want HH:MM-HH:MM", f[1])
	}
	var err error
	if w.start, err = minutes(from, false); err != nil {
		return window{}, err
	}
	if w.end, err = minutes(to, true); err != nil {
		return window{}, err
	}
	if len(f) == 3 {
		if w.loc, err = time.LoadLocation(f[2]); err != nil || f[2] == "Local" {
			return window{}, fmt.Errorf("time zone %q: want an IANA name such as Europe/Berlin or UTC", f[2])
		}
	}
	return w, nil
}

func (w *window) parseDays(s string) error {
	if strings.EqualFold(s, "daily") {
		for d := range w.days {
			w.days[d] = true
		}
		return nil
	}
	for item := range strings.SplitSeq(s, ",") {
		a, b, isRange := strings.Cut(item, "-")
		from, ok := dayNames[strings.ToLower(a)]
		if !ok {
			return fmt.Errorf("day %q: want Mon, Tue, Wed, Thu, Fri, Sat, Sun, a range such as Mon-Fri, or daily", a)
		}
		to := from
		if isRange {
			if to, ok = dayNames[strings.ToLower(b)]; !ok {
				return fmt.Errorf("day %q: want Mon, Tue, Wed, Thu, Fri, Sat or Sun", b)
			}
		}
		for d := from; ; d = (d + 1) % 7 {
			w.days[d] = true
			if d == to {
				break
			}
		}
	}
	return nil
}

// minutes parses HH:MM; 24:00 only as an end.
func minutes(s string, end bool) (int, error) {
	h, m, ok := strings.Cut(s, ":")
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	if !ok || err1 != nil || err2 != nil || len(m) != 2 || hh < 0 || mm < 0 || mm > 59 ||
		hh > 24 || hh == 24 && (mm != 0 || !end) {
		return 0, fmt.Errorf("time %q: want HH:MM (00:00 to 23:59, or 24:00 as an end)", s)
	}
	return hh*60 + mm, nil
}

// Active reports whether t falls in one of the schedule's windows.
func (s Schedule) Active(t time.Time) bool {
	if len(s.windows) == 0 {
		return true
	}
	for _, w := range s.windows {
		if w.holds(t) {
			return true
		}
	}
	return false
}

func (w window) holds(t time.Time) bool {
	lt := t.In(w.loc)
	m := lt.Hour()*60 + lt.Minute()
	day := lt.Weekday()
	if w.start < w.end {
		return w.days[day] && m >= w.start && m < w.end
	}
	// Past midnight: the part from start on belongs to today, the part
	// before end to yesterday's window.
	return w.days[day] && m >= w.start || w.days[(day+6)%7] && m < w.end
}

// String is the schedule as written; "always" for the zero Schedule.
func (s Schedule) String() string {
	if s.src == "" {
		return "always"
	}
	return s.src
}
