package retention

import (
	"cmp"
	"fmt"
	"slices"
	"time"
)

// Point is a recovery point as retention sees it.
type Point struct {
	ID   string
	Time time.Time
	App  bool // app-consistent
}

// Decision is what Apply decided for one point. If Keep is true, Reasons
// lists every reason to keep the point; otherwise it holds one line saying
// why the grid does not keep it.
type Decision struct {
	Point   Point
	Keep    bool
	Reasons []string
}

// Apply decides which of points, the recovery points of one machine, p keeps
// at time now. The package documentation defines the rules. points may be in
// any order and is not modified; the result has one decision per point,
// newest first (equal times by descending ID). Apply is deterministic and
// never panics, but p should be valid (see Policy.Validate).
func Apply(p Policy, now time.Time, points []Point) []Decision {
	now = now.Round(0) // drop any monotonic reading: compare wall times only
	ds := make([]Decision, len(points))
	for i, pt := range points {
		ds[i].Point = pt
	}
	slices.SortFunc(ds, func(a, b Decision) int { return comparePoints(a.Point, b.Point) })

	// ds is oldest first, so the points in the future are at the end.
	past := len(ds)
	for past > 0 && ds[past-1].Point.Time.Round(0).After(now) {
		past--
	}
	names := make([]string, len(p.Terms))
	for i, t := range p.Terms {
		names[i] = t.String()
	}
	appReason := fmt.Sprintf("keep-app=%s: app-consistent and younger than %[1]s", FormatDuration(p.KeepApp))
	lastReason := fmt.Sprintf("keep-last=%d: one of the %[1]d newest points", p.KeepLast)
	if p.KeepLast == 1 {
		lastReason = "keep-last=1: the newest point"
	}

	for i := range ds {
		d := &ds[i]
		if i >= past {
			d.Keep = true
			d.Reasons = []string{"future: point time is after now (clock skew)"}
			continue
		}
		age := now.Sub(d.Point.Time.Round(0))
		reason, keep := gridReason(p.Terms, names, age, ds, i)
		if keep {
			d.Reasons = append(d.Reasons, reason)
		}
		if d.Point.App && age < p.KeepApp {
			d.Reasons = append(d.Reasons, appReason)
		}
		if past-i <= p.KeepLast {
			d.Reasons = append(d.Reasons, lastReason)
		}
		d.Keep = len(d.Reasons) > 0
		if !d.Keep {
			d.Reasons = []string{reason}
		}
	}
	slices.Reverse(ds)
	return ds
}

// gridReason says whether the grid keeps ds[i], of the given age, and why.
// ds is sorted oldest first; names[i] is terms[i].String().
func gridReason(terms []Term, names []string, age time.Duration, ds []Decision, i int) (string, bool) {
	for j, term := range terms {
		if age >= term.Span {
			continue
		}
		if term.Interval <= 0 {
			return names[j] + ": every point of the band is kept", true
		}
		start := bucketStart(ds[i].Point.Time, term.Interval)
		when := start.UTC().Format(time.RFC3339Nano)
		// ds is sorted, so ds[i] is the oldest point of its bucket unless
		// its predecessor is in the same bucket.
		if i > 0 && bucketStart(ds[i-1].Point.Time, term.Interval).Equal(start) {
			return names[j] + ": not the oldest point of the bucket starting " + when, false
		}
		return names[j] + ": oldest point of the bucket starting " + when, true
	}
	if len(terms) == 0 {
		return "no grid terms", false
	}
	return "older than the last span " + FormatDuration(terms[len(terms)-1].Span), false
}

// bucketStart returns the start of the bucket of length d holding t, buckets
// being aligned to the Unix epoch. (Time.Truncate aligns to the zero Time,
// hence the shift by e.)
func bucketStart(t time.Time, d time.Duration) time.Time {
	epoch := time.Unix(0, 0)
	e := epoch.Sub(epoch.Truncate(d))
	return t.Add(-e).Truncate(d).Add(e)
}

// comparePoints orders points oldest first; equal times by ID, then
// crash-consistent before app-consistent, so that the order is total.
func comparePoints(a, b Point) int {
	if c := a.Time.Round(0).Compare(b.Time.Round(0)); c != 0 {
		return c
	}
	if c := cmp.Compare(a.ID, b.ID); c != 0 {
		return c
	}
	switch {
	case a.App == b.App:
		return 0
	case b.App:
		return -1
	}
	return 1
}

// Forget returns the points that decisions do not keep, in the same order.
func Forget(decisions []Decision) []Point {
	var out []Point
	for _, d := range decisions {
		if !d.Keep {
			out = append(out, d.Point)
		}
	}
	return out
}
