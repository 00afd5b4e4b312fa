package main

import (
	"time"
)

// The RPO as the service sees it. At any moment t, a machine's RPO is
// t minus the cut time of the newest point the server shows for it
// (GET /api/v1/machines, last_point): what a disaster at t would lose.
// It is a sawtooth: it grows at one second per second and drops when
// the server first shows a newer point. Its peaks are the worst case,
// just before each new point appears: first(i+1) - cut(i). That is also
// the worst time from a write to the first shown point that holds it (a
// write just after cut(i) first appears in point i+1), so the two
// definitions agree on the worst case; the sawtooth also gives how the
// RPO is spread over time (p50, p99).
//
// The benchmark polls the server every -poll and takes the moment an
// answer arrived as the moment its points were shown: a point's "first"
// is late by at most one poll period plus one request, so the figures
// are upper bounds by that much.

// obs is one answer of GET /api/v1/machines for one machine.
type obs struct {
	at    time.Time // when the answer arrived
	point string    // the newest point's ID
	cut   time.Time // its cut
}

// shown is a point as the server showed it.
type shown struct {
	id    string
	cut   time.Time
	first time.Time // the first answer that showed it
}

// transitions reduces a machine's observations, in order, to the points
// they showed, each with the first answer that showed it.
func transitions(obs []obs) []shown {
	var out []shown
	for _, o := range obs {
		if o.point == "" || len(out) > 0 && out[len(out)-1].id == o.point {
			continue
		}
		out = append(out, shown{id: o.point, cut: o.cut, first: o.at})
	}
	return out
}

// gap is one peak of the sawtooth: from the cut of point prev to the
// first answer showing the next point (or to the window's end).
type gap struct {
	rpo  time.Duration
	prev shown
	next *shown // nil: the window ended before a newer point was shown
}

// rpoStats is the sawtooth of one machine over a window.
type rpoStats struct {
	worst   gap
	samples []time.Duration // the RPO every step over the window
	points  int             // points first shown inside the window
}

// rpoOver evaluates the sawtooth of shown points over [w0, w1]: the
// peaks that fall in the window (the worst of them), and the RPO every
// step from w0 (for percentiles over time). Time before the first shown
// point is left out.
func rpoOver(pts []shown, w0, w1 time.Time, step time.Duration) rpoStats {
	var st rpoStats
	for k := 1; k < len(pts); k++ {
		f := pts[k].first
		if f.Before(w0) || f.After(w1) {
			continue
		}
		st.points++
		if g := f.Sub(pts[k-1].cut); g > st.worst.rpo {
			st.worst = gap{rpo: g, prev: pts[k-1], next: &pts[k]}
		}
	}
	// The window's end is a peak too if no newer point came before it.
	cur := -1
	for k := range pts {
		if !pts[k].first.After(w1) {
			cur = k
		}
	}
	if cur >= 0 {
		if g := w1.Sub(pts[cur].cut); g > st.worst.rpo {
			st.worst = gap{rpo: g, prev: pts[cur]}
		}
	}
	cur = -1
	for t := w0; t.Before(w1); t = t.Add(step) {
		for cur+1 < len(pts) && !pts[cur+1].first.After(t) {
			cur++
		}
		if cur >= 0 {
			st.samples = append(st.samples, t.Sub(pts[cur].cut))
		}
	}
	return st
}
